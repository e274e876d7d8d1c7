#!/usr/bin/env python3
"""CycloneDX 1.5 JSON SBOM of the release binaries, from Cargo.lock metadata.

Usage: cargo metadata --format-version 1 --locked --filter-platform TRIPLE \
         | hack/release/sbom.py Cargo.lock > sbom.cdx.json

Components are the crates linked into the package's binaries: the resolve graph walked
from the root package along normal and build dependencies (dev-dependencies, which only
tests use, are left out). Each has its purl (pkg:cargo/NAME@VERSION), license expression,
source and, for crates.io crates, the SHA-256 that Cargo.lock pins. Reproducible: the
timestamp (and the serial number derived from it) is SOURCE_DATE_EPOCH when set
(`make release` sets the commit time), else now.
"""
import datetime
import json
import os
import sys
import tomllib
import uuid


def main() -> None:
    meta = json.load(sys.stdin)
    with open(sys.argv[1], "rb") as f:
        lock = tomllib.load(f)
    checksums = {(p["name"], p["version"]): p.get("checksum") for p in lock.get("package", [])}
    packages = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    root_id = meta["resolve"]["root"]
    root = packages[root_id]

    # Walk normal and build dependencies from the root.
    seen, todo, edges = set(), [root_id], {}
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        deps = []
        for d in nodes[pid]["deps"]:
            kinds = {k["kind"] for k in d["dep_kinds"]}
            if kinds & {None, "build"}:
                deps.append(d["pkg"])
                todo.append(d["pkg"])
        edges[pid] = sorted(set(deps))

    def ref(p):
        return f"pkg:cargo/{p['name']}@{p['version']}"

    def component(p):
        c = {
            "type": "library",
            "bom-ref": ref(p),
            "name": p["name"],
            "version": p["version"],
            "purl": ref(p),
        }
        if p.get("description"):
            c["description"] = p["description"].strip()
        if p.get("license"):
            c["licenses"] = [{"expression": p["license"]}]
        digest = checksums.get((p["name"], p["version"]))
        if digest:
            c["hashes"] = [{"alg": "SHA-256", "content": digest}]
        refs = []
        if p.get("repository"):
            refs.append({"type": "vcs", "url": p["repository"]})
        if p.get("source", "") and p["source"].startswith("registry+"):
            refs.append({"type": "distribution", "url": f"https://crates.io/crates/{p['name']}/{p['version']}"})
        if refs:
            c["externalReferences"] = refs
        return c

    stamp = os.environ.get("SOURCE_DATE_EPOCH")
    when = (
        datetime.datetime.fromtimestamp(int(stamp), datetime.timezone.utc)
        if stamp
        else datetime.datetime.now(datetime.timezone.utc)
    ).replace(microsecond=0)
    main_component = component(root)
    main_component["type"] = "application"
    bom = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": "urn:uuid:" + str(uuid.uuid5(uuid.NAMESPACE_URL, ref(root) + when.isoformat())),
        "version": 1,
        "metadata": {
            "timestamp": when.isoformat().replace("+00:00", "Z"),
            "tools": {"components": [{"type": "application", "name": "hack/release/sbom.py", "description": "cargo metadata + Cargo.lock to CycloneDX"}]},
            "component": main_component,
        },
        "components": [component(packages[i]) for i in sorted(seen - {root_id}, key=lambda i: (packages[i]["name"], packages[i]["version"]))],
        "dependencies": [
            {"ref": ref(packages[i]), "dependsOn": [ref(packages[d]) for d in edges[i]]}
            for i in sorted(seen, key=lambda i: (packages[i]["name"], packages[i]["version"]))
        ],
    }
    json.dump(bom, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
