#!/usr/bin/env python3
"""Turns operator-bench's JSON results into bench/results.md and bench/ready-over-time.png.

  report.py annotate RUN.json --label L --command C --k8s V --eso V [--reuse-peer OLD.json]
      adds what the harness cannot know (machine, versions, date, command); with
      --reuse-peer, copies the peer's figures from an earlier run at the same N.
  report.py render DATA_DIR --out BENCH_DIR
      every run in DATA_DIR side by side, per N: results.md and the PNG.
  report.py line RUN.json
      the issue's closing `bench:` line for one run (`bench-scale:` for a scale run).
"""
import argparse
import datetime
import glob
import json
import os
import platform
import subprocess
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = 0.0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_gib = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model}), {mem_gib:.0f} GiB RAM, Linux {platform.release()}"


def tool_version(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def policy_note(m):
    """Whether the run had the chart's finalizer policy (older runs did not record it)."""
    if "admission_policy" not in m:
        return ""
    return "; with the chart's finalizer MutatingAdmissionPolicy" if m["admission_policy"] else "; without the finalizer policy"


def annotate(a):
    run = load(a.run)
    run["meta"] = {
        "label": a.label,
        "command": a.command,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "kubernetes": a.k8s,
        "external_secrets": a.eso,
        "rustc": tool_version(["rustc", "--version"]),
        # The chart's finalizer MutatingAdmissionPolicy: one write fewer per new identity.
        "admission_policy": a.admission_policy == "1",
    }
    if a.reuse_peer:
        old = load(a.reuse_peer)
        if old.get("n") != run.get("n"):
            sys.exit(f"report: --reuse-peer {a.reuse_peer} is for n={old.get('n')}, not n={run.get('n')}")
        run["eso"] = old["eso"]
        run["eso"]["reused_from"] = old.get("meta", {}).get("label", a.reuse_peer)
        run["raw"] = run.get("raw") or old.get("raw")
    with open(a.run, "w") as f:
        json.dump(run, f, indent=1)


def g(d, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def num(v, fmt="{:.1f}"):
    if v is None:
        return "–"
    if isinstance(v, list):
        return " → ".join(f"{x:.1f}" for x in v)
    return fmt.format(v)


def bench_line(r):
    def f(*p):
        v = g(r, *p)
        return float("nan") if v is None else float(v)

    ours, eso = f("ours", "create", "ready_s"), f("eso", "create", "ready_s")
    return (
        f"bench: n={r['n']} ours_ready_s={ours:.1f} eso_ready_s={eso:.1f} "
        f"throughput_ratio={eso / ours:.2f} ours_rss_mib={f('ours', 'peak_rss_mib'):.0f} "
        f"eso_rss_mib={f('eso', 'peak_rss_mib'):.0f} "
        f"ours_writes_per_object={f('ours', 'create', 'api_writes_per_object'):.1f} "
        f"eso_writes_per_object={f('eso', 'create', 'api_writes_per_object'):.1f} "
        f"ours_acs_per_identity={f('ours', 'create', 'acs_per_identity'):.2f}"
    )


def scale_line(r):
    def f(*p):
        v = g(r, "scale", *p)
        return float("nan") if v is None else float(v)

    return (
        f"bench-scale: n={r['n']} ready_per_s={f('create', 'per_s'):.0f} "
        f"margin_kib_per_identity={f('create', 'rss_margin_kib_per_identity'):.2f} "
        f"rss_mib={f('create', 'rss_full_mib'):.0f} "
        f"restart_known_s={f('restart', 'all_known_s'):.1f} restart_acs={f('restart', 'acs_per_identity') * r['n']:.0f} "
        f"restart_writes={f('restart', 'api_writes_excluding_leases'):.0f} restart_gets={f('restart', 'api_gets'):.0f} "
        f"failover_known_s={f('failover', 'all_known_s'):.1f} failover_acs={f('failover', 'acs_per_identity') * r['n']:.0f} "
        f"failover_writes={f('failover', 'api_writes_excluding_leases'):.0f} failover_gets={f('failover', 'api_gets'):.0f} "
        f"wave_last_s={f('wave', 'last_s'):.0f} wave_bound_s={f('wave', 'bound_s'):.0f} wave_429={f('wave', 'acs_429'):.0f} "
        f"peak_rss_mib={f('peak_rss_mib'):.0f}"
    )


SCALE_ROWS = [
    ("time to all Ready (s)", ("create", "ready_s"), "{:.1f}"),
    ("identities/s to Ready", ("create", "per_s"), "{:.0f}"),
    ("RSS with N/2 Ready (MiB)", ("create", "rss_half_mib"), "{:.0f}"),
    ("RSS with N Ready (MiB)", ("create", "rss_full_mib"), "{:.0f}"),
    ("**memory per identity at the margin (KiB)** (goal ≤ 4)", ("create", "rss_margin_kib_per_identity"), "{:.2f}"),
    ("API writes per new identity", ("create", "api_writes_per_object"), "{:.2f}"),
    ("GETs per new identity", ("create", "api_gets_per_object"), "{:.2f}"),
    ("restart: every identity known (s after the start; goal ≤ 30)", ("restart", "all_known_s"), "{:.1f}"),
    ("restart: ACS requests per identity (goal 0)", ("restart", "acs_per_identity"), "{:.3f}"),
    ("restart: API writes, Lease renewals excluded (goal 0)", ("restart", "api_writes_excluding_leases"), "{:.0f}"),
    ("restart: GETs (goal: none per identity)", ("restart", "api_gets"), "{:.0f}"),
    ("restart: peak RSS (MiB)", ("restart", "peak_rss_mib"), "{:.0f}"),
    ("restart: RSS once every identity is known (MiB)", ("restart", "rss_mib"), "{:.0f}"),
    ("failover: Lease taken (s after the leader's SIGKILL)", ("failover", "lease_taken_s"), "{:.1f}"),
    ("failover: every identity known (s after the SIGKILL)", ("failover", "all_known_s"), "{:.1f}"),
    ("failover: every identity known after taking the Lease (s; goal ≤ 30)", ("failover", "known_after_lease_s"), "{:.1f}"),
    ("failover: ACS requests per identity (goal 0)", ("failover", "acs_per_identity"), "{:.3f}"),
    ("failover: API writes, Lease renewals excluded (goal 0)", ("failover", "api_writes_excluding_leases"), "{:.0f}"),
    ("failover: GETs", ("failover", "api_gets"), "{:.0f}"),
    ("failover: peak RSS of the standby (MiB)", ("failover", "peak_rss_mib"), "{:.0f}"),
    ("wave: ACS issue outage (s)", ("wave", "outage_s"), "{:.0f}"),
    ("wave: last renewal after the outage (s)", ("wave", "last_s"), "{:.0f}"),
    ("wave: N / quota (s)", ("wave", "bound_s"), "{:.0f}"),
    ("wave: last / (N / quota) (goal ≤ 1.1)", ("wave", "last_over_bound"), "{:.2f}"),
    ("wave: answered 429 (goal ≤ 1)", ("wave", "acs_429"), "{:.0f}"),
    ("wave: ACS requests per identity", ("wave", "acs_per_identity"), "{:.2f}"),
    ("delete all (s)", ("delete", "seconds"), "{:.1f}"),
]


def render_scale(runs):
    if not runs:
        return []
    out = ["## Scale: ours alone (`make bench-scale`)", "",
           "`hack/bench/run.sh --scale` → `operator-bench --scale` (src/bin/operator-bench/scale.rs):",
           "N identities created in two halves (RSS after each half gives the memory per identity",
           "at the margin), then a restart (SIGTERM, a fresh process), a failover (a standby",
           "campaigns, the leader is SIGKILLed), an ACS issue outage longer than `renewBefore`",
           "with ACS's issue limit (1000 / 30 s) switched on at the emulator and in the",
           "service's client-side quota, and delete-all. The operator runs with leader",
           "election throughout; *known* means its `acs_operator_identities{ready=\"true\"}` gauge",
           "counts N. API requests come from the audit log as above; Lease renewals are",
           "counted apart.", ""]
    runs = sorted(runs, key=lambda r: g(r, "meta", "date") or "")
    out += ["| | " + " | ".join(f"{g(r, 'meta', 'label')} (N = {r['n']:,})" for r in runs) + " |",
            "|---|" + "---|" * len(runs)]
    for title, path, fmt in SCALE_ROWS:
        out.append(f"| {title} | " + " | ".join(num(g(r, "scale", *path), fmt) for r in runs) + " |")
    out.append("")
    for phase in ("restart", "failover"):
        keys = sorted({k for r in runs for k in (g(r, "scale", phase, "api_requests") or {})})
        if not keys:
            continue
        out += [f"API requests during the {phase}, by verb and resource:", "",
                "| verb resource | " + " | ".join(str(g(r, "meta", "label")) for r in runs) + " |",
                "|---|" + "---|" * len(runs)]
        for k in keys:
            out.append(f"| {k} | " + " | ".join(
                str((g(r, "scale", phase, "api_requests") or {}).get(k, 0)) for r in runs) + " |")
        out.append("")
    out += ["Runs:", ""]
    for r in runs:
        m = r["meta"]
        loads = "; ".join(f"{ph} {num(g(r, 'scale', ph, 'load_1m'))}" for ph in ("create", "restart", "failover", "wave"))
        out.append(f"- **{m['label']}**, {m['date']}: `{m['command']}`; {m['machine']}; Kubernetes "
                   f"{m['kubernetes']}, {m['rustc']}; token period {g(r, 'scale', 'period_s')} s; load (1 min) {loads}"
                   f"{policy_note(m)}.")
        out.append(f"    {scale_line(r)}")
    out.append("")
    return out


def acs_total(stats):
    return None if stats is None else stats.get("total")


def columns_for(runs):
    """Each run's own pair, oldest first: the peer as measured in that run (the load on the
    shared cores differs between runs, so each of ours sits beside the peer of its run),
    then ours. A run that reused the peer's figures shows only ours."""
    runs = sorted(runs, key=lambda r: g(r, "meta", "date") or "")
    cols = []
    for r in runs:
        label = g(r, "meta", "label")
        if r.get("eso") and not g(r, "eso", "reused_from"):
            cols.append((f"external-secrets {g(r, 'meta', 'external_secrets')} (run {label})", r, "eso"))
        if r.get("ours"):
            cols.append((f"ours @ {label}", r, "ours"))
    return cols


ROWS = [
    # (title, function(run, side) -> value, format, goal)
    ("time to all Ready (s)", lambda r, s: g(r, s, "create", "ready_s"), "{:.1f}", ""),
    ("objects Ready per second", lambda r, s: g(r, s, "create", "per_s"), "{:.0f}",
     "ours ≥ 100/s and ≥ 2× the peer"),
    ("fraction of the raw Secret-create rate", lambda r, s: (g(r, s, "create", "per_s") or 0) / g(r, "raw", "per_s")
     if g(r, "raw", "per_s") else None, "{:.2f}", "≥ 0.5"),
    ("latency creation → Ready p50 (s)", lambda r, s: g(r, s, "create", "latency_p50_s"), "{:.2f}", ""),
    ("latency creation → Ready p99 (s)", lambda r, s: g(r, s, "create", "latency_p99_s"), "{:.2f}", ""),
    ("ACS requests per identity", lambda r, s: g(r, s, "create", "acs_per_identity"), "{:.2f}", "exactly 1"),
    ("API writes per object", lambda r, s: g(r, s, "create", "api_writes_per_object"), "{:.1f}", "≤ 5"),
    ("API GETs per object", lambda r, s: g(r, s, "create", "api_gets_per_object"), "{:.1f}", "≤ 2"),
    ("API LISTs per object", lambda r, s: g(r, s, "create", "api_lists_per_object"), "{:.2f}", ""),
    ("CPU seconds (create → Ready)", lambda r, s: g(r, s, "create", "cpu_s"), "{:.1f}", ""),
    ("kube-apiserver CPU seconds (create → Ready)", lambda r, s: g(r, s, "create", "apiserver_cpu_s"), "{:.1f}", ""),
    ("etcd CPU seconds (create → Ready)", lambda r, s: g(r, s, "create", "etcd_cpu_s"), "{:.1f}", ""),
    ("RSS when all Ready (MiB)", lambda r, s: g(r, s, "create", "rss_at_ready_mib"), "{:.0f}", ""),
    ("peak RSS, whole run (MiB)", lambda r, s: g(r, s, "peak_rss_mib"), "{:.0f}",
     "≤ 64 at N=5000, ≤ ½ the peer"),
    ("peak open file descriptors (mostly API-server connections)",
     lambda r, s: max((row[5] for row in g(r, s, "samples", "rows") or [] if len(row) > 5), default=None),
     "{:.0f}", ""),
    ("machine load average (1 min) at start → all Ready",
     lambda r, s: g(r, s, "create", "load_1m"), None, "2 cores, shared"),
    ("renewal wave: first → last renewal (s)", lambda r, s: g(r, s, "wave", "wave_s"), "{:.1f}", ""),
    ("renewal wave: ACS requests per identity", lambda r, s: g(r, s, "wave", "acs_per_identity"), "{:.2f}", "1"),
    ("renewal wave: API writes per object", lambda r, s: g(r, s, "wave", "api_writes_per_object"), "{:.1f}", "≤ 3"),
    ("renewal wave: API GETs per object", lambda r, s: g(r, s, "wave", "api_gets_per_object"), "{:.1f}", ""),
    ("renewal wave: CPU seconds", lambda r, s: g(r, s, "wave", "cpu_s"), "{:.1f}", ""),
    ("renewal wave: kube-apiserver CPU seconds", lambda r, s: g(r, s, "wave", "apiserver_cpu_s"), "{:.1f}", ""),
    ("delete all: seconds until gone", lambda r, s: g(r, s, "delete", "seconds"), "{:.1f}", ""),
    ("delete all: ACS requests per identity", lambda r, s: g(r, s, "delete", "acs_per_identity"), "{:.2f}", ""),
    ("delete all: API writes per object", lambda r, s: g(r, s, "delete", "api_writes_per_object"), "{:.1f}", ""),
    ("delete all: API GETs per object", lambda r, s: g(r, s, "delete", "api_gets_per_object"), "{:.1f}", ""),
    ("delete all: CPU seconds", lambda r, s: g(r, s, "delete", "cpu_s"), "{:.1f}", ""),
    ("delete all: kube-apiserver CPU seconds", lambda r, s: g(r, s, "delete", "apiserver_cpu_s"), "{:.1f}", ""),
]


def render(a):
    runs = [load(p) for p in sorted(glob.glob(os.path.join(a.data, "*.json")))]
    runs = [r for r in runs if r.get("meta")]
    scale_runs = [r for r in runs if r.get("scale")]
    runs = [r for r in runs if not r.get("scale")]
    by_n = {}
    for r in runs:
        by_n.setdefault(r["n"], []).append(r)
    out = ["# Benchmark: acs-identity-operator and external-secrets, side by side", ""]
    out += [
        "Generated by `make bench` (`hack/bench/run.sh` → `operator-bench` → `hack/bench/report.py`)",
        "from the JSON files in `bench/data/`. Each run starts a fresh local control plane",
        "(etcd, kube-apiserver, kube-controller-manager on loopback) and the ACS emulator,",
        "then measures one operator at a time so the two never share the cores:",
        "",
        "1. **raw**: the harness creates N Secrets straight through the API server, 64 requests",
        "   in flight: the ceiling for any operator's writes on this machine;",
        "2. **peer**: external-secrets with N `ExternalSecret`s (`external-secrets.io/v1`), each",
        "   `dataFrom.sourceRef.generatorRef` to one `Password` generator (800 characters, about",
        "   an ACS token's size), `refreshInterval` equal to our renewal period;",
        "3. **ours**: N `CommunicationIdentity`s (scopes chat, voip; `tokenLifetime: 1h`) with the",
        "   emulator's quota off and the service's client-side quota lifted; the emulator's",
        "   lifetime scale makes the tokens renew after the same period;",
        "4. **quota**: N more identities against an emulator that enforces ACS's published",
        "   limits (1000 creates / 30 s), with the service's default client-side quota.",
        "",
        "For each operator: a warm-up object proves it runs; then the harness creates the N",
        "objects (32 requests in flight) while the operator runs, and a watch timestamps each",
        "object's first `Ready=True`. *Time to all Ready* runs from the first create to the last",
        "Ready; *latency* is per object, from its create call returning to its Ready. Then the",
        "harness waits for every object's first renewal (ours: `status.lastTokenIssuedAt`",
        "changes; peer: `status.refreshTime` changes), and deletes them all (one",
        "deletecollection) until the watch has seen every object go.",
        "",
        "**How it is counted.** ACS requests: the emulator's `/admin/stats`, reset at each",
        "phase. API-server requests: kube-apiserver's **audit log** (policy",
        "`hack/bench/audit-policy.yaml`, Metadata level, batch backend), each operator running",
        "with its own client certificate (`CN=bench-acs-identity-operator`,",
        "`CN=bench-external-secrets`), counted by user, verb and resource within each phase's",
        "wall-clock window (watches counted when they start, everything else when it",
        "completes). *Writes* are create, update, patch, delete and deletecollection; *GETs*",
        "are `get` only (lists and watches are shown in the breakdown). CPU seconds and RSS",
        "come from `/proc/PID/stat` and `/proc/PID/status` (peak = `VmHWM`) of the operator",
        "process. Both operators log at their default level (info) to a file.",
        "",
    ]
    for n in sorted(by_n):
        rs = by_n[n]
        cols = columns_for(rs)
        if not cols:
            continue
        out += [f"## N = {n:,}", ""]
        out += ["| | " + " | ".join(c[0] for c in cols) + " | goal |",
                "|---|" + "---|" * len(cols) + "---|"]
        for title, fn, fmt, goal in ROWS:
            vals = []
            for _, r, side in cols:
                try:
                    v = fn(r, side)
                except (TypeError, ZeroDivisionError):
                    v = None
                if side == "eso" and "ACS" in title:
                    v = None
                vals.append(num(v, fmt))
            out.append(f"| {title} | " + " | ".join(vals) + f" | {goal} |")
        out.append("")
        for _, r, side in cols:
            if side != "ours":
                continue
            q = r.get("quota")
            raw = r.get("raw")
            label = g(r, "meta", "label")
            if raw:
                out.append(f"- raw Secret creates (run {label}): {raw['n']:,} in {raw['seconds']:.1f} s = "
                           f"**{raw['per_s']:.0f}/s** with {raw['connections']} in flight.")
            if q:
                out.append(
                    f"- quota-bound (ours @ {label}): {q['ready_count']:,}/{n:,} Ready after "
                    f"**{q['ready_s']:.1f} s** against a bound of {q['bound_s']:.0f} s "
                    f"(1000 creates per sliding 30 s); **{q['acs_429']} answered 429** of "
                    f"{q['acs_total']} ACS requests{' (TIMED OUT)' if q.get('timed_out') else ''}.")
        timeouts = [f"{c[0]} {ph}" for c in cols for ph in ("create", "wave", "delete")
                    if g(c[1], c[2], ph, "timed_out")]
        if timeouts:
            out.append(f"- timed out (figures are partial): {', '.join(timeouts)}.")
        out.append("")
        out += ["API-server requests per object while creating (by verb and resource):", ""]
        keys = sorted({k for _, r, s in cols for k in (g(r, s, "create", "api_requests") or {})})
        out += ["| verb resource | " + " | ".join(c[0] for c in cols) + " |",
                "|---|" + "---|" * len(cols)]
        for k in keys:
            out.append(f"| {k} | " + " | ".join(
                num((g(r, s, "create", "api_requests") or {}).get(k, 0) / n, "{:.2f}") for _, r, s in cols) + " |")
        out.append("")
        out += ["Runs:", ""]
        for r in sorted(rs, key=lambda r: g(r, "meta", "date") or ""):
            m = r["meta"]
            peer = g(r, "eso", "reused_from")
            out.append(
                f"- **{m['label']}**, {m['date']}: `{m['command']}`; {m['machine']}; Kubernetes "
                f"{m['kubernetes']}, external-secrets {m['external_secrets']}, {m['rustc']}; renewal/refresh "
                f"period {r['period_s']} s (emulator lifetime scale {r['emulator_lifetime_scale']:.4f}); "
                f"peer flags {' '.join(g(r, 'eso', 'args') or [])}"
                + (f" (peer figures reused from run {peer})" if peer else "") + policy_note(m) + ".")
        out.append("")
        out += [f"Closing lines: ", ""]
        for r in rs:
            if r.get("ours") and r.get("eso"):
                out.append(f"    {bench_line(r)}")
        out.append("")
    out += ["![Ready count over time](ready-over-time.png)", ""]
    out += render_scale(scale_runs)
    extra = os.path.join(a.out, "analysis.md")
    if os.path.exists(extra):
        with open(extra) as f:
            out += ["", f.read()]
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write("\n".join(out))
    plot(by_n, os.path.join(a.out, "ready-over-time.png"))


def plot(by_n, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted(by_n)
    if not ns:
        return
    fig, axes = plt.subplots(2, len(ns), figsize=(6.5 * len(ns), 8), squeeze=False)
    for i, n in enumerate(ns):
        ax, axm = axes[0][i], axes[1][i]
        for name, r, side in columns_for(by_n[n]):
            times = g(r, side, "create", "ready_times_s") or []
            if times:
                ax.step([0] + times, list(range(len(times) + 1)), where="post", label=name)
            rows = g(r, side, "samples", "rows") or []
            if rows:
                axm.plot([row[0] for row in rows], [row[4] for row in rows], label=name)
        ax.set_title(f"N = {n:,}: objects Ready since the first create")
        ax.set_xlabel("seconds")
        ax.set_ylabel("Ready")
        ax.grid(alpha=0.3)
        ax.legend()
        axm.set_title(f"N = {n:,}: operator RSS (create, wave, delete)")
        axm.set_xlabel("seconds since the first create")
        axm.set_ylabel("MiB")
        axm.grid(alpha=0.3)
        axm.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    an = sub.add_parser("annotate")
    an.add_argument("run")
    an.add_argument("--label", required=True)
    an.add_argument("--command", required=True)
    an.add_argument("--k8s", default="unknown")
    an.add_argument("--eso", default="unknown")
    an.add_argument("--reuse-peer")
    an.add_argument("--admission-policy", default="0")
    rn = sub.add_parser("render")
    rn.add_argument("data")
    rn.add_argument("--out", required=True)
    ln = sub.add_parser("line")
    ln.add_argument("run")
    a = p.parse_args()
    if a.cmd == "annotate":
        annotate(a)
    elif a.cmd == "render":
        render(a)
    else:
        r = load(a.run)
        print(scale_line(r) if r.get("scale") else bench_line(r))


if __name__ == "__main__":
    main()
