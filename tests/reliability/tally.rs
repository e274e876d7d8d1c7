//! The "nothing lost" counts every scenario adds to, and the suite's closing line.

use std::fmt::Write as _;

/// Counts across scenarios. A count is a broken promise unless its name says otherwise.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub identities: u64,
    pub kills: u64,
    /// ACS users alive with no identity that owns them (custom-id api-versions).
    pub leaked: u64,
    /// Users made twice for one identity (custom-id api-versions).
    pub duplicated: u64,
    /// Secrets of Ready identities holding an expired or revoked token while ACS was up.
    pub expired_served: u64,
    /// Secrets of live identities that lost their token (deleted or emptied).
    pub lost_tokens: u64,
    /// Distinct secrets (tokens, keys) with a 6-character piece in a log line, event,
    /// status or metric.
    pub secrets_in_logs: u64,
    pub bad_refused: u64,
    pub bad_total: u64,
    /// Reported, not required to be zero: the same figures on a GA api-version.
    pub ga_leaked: u64,
    pub ga_duplicated: u64,
    /// Identities (or renew/revoke requests) not converged in time: a broken promise
    /// that the closing line does not name.
    pub unconverged: u64,
    /// 429s seen with the client quota set to the emulator's limits (reported).
    pub throttled_at_quota: u64,
    pub fuzz_executions: u64,
    /// Fuzz targets whose property failed.
    pub fuzz_failures: u64,
    /// Operator processes that ended while a hostile tenant attacked (issue 15).
    pub restarts: u64,
    /// Good-tenant identities (and renewals) later than their idle baseline + 5 s while a
    /// hostile tenant attacked.
    pub hostile_late: u64,
    /// One line per scenario for the report.
    pub lines: Vec<String>,
}

impl Tally {
    pub fn add(&mut self, other: &Tally) {
        self.identities += other.identities;
        self.kills += other.kills;
        self.leaked += other.leaked;
        self.duplicated += other.duplicated;
        self.expired_served += other.expired_served;
        self.lost_tokens += other.lost_tokens;
        self.secrets_in_logs += other.secrets_in_logs;
        self.bad_refused += other.bad_refused;
        self.bad_total += other.bad_total;
        self.ga_leaked += other.ga_leaked;
        self.ga_duplicated += other.ga_duplicated;
        self.unconverged += other.unconverged;
        self.throttled_at_quota += other.throttled_at_quota;
        self.fuzz_executions += other.fuzz_executions;
        self.fuzz_failures += other.fuzz_failures;
        self.restarts += other.restarts;
        self.hostile_late += other.hostile_late;
        self.lines.extend(other.lines.iter().cloned());
    }

    /// Records and prints one result line of a scenario.
    pub fn note(&mut self, line: impl Into<String>) {
        let line = line.into();
        eprintln!("reliability-result: {line}");
        self.lines.push(line);
    }

    /// The closing line of `make reliability`, exactly as issue 11 spells it.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "reliability: identities={} kills={} leaked={} duplicated={} expired_served={} lost_tokens={} secrets_in_logs={} bad_inputs={}/{}",
            self.identities,
            self.kills,
            self.leaked,
            self.duplicated,
            self.expired_served,
            self.lost_tokens,
            self.secrets_in_logs,
            self.bad_refused,
            self.bad_total
        );
        s
    }

    /// Every promise kept (GA figures are reported only).
    pub fn clean(&self) -> bool {
        self.leaked == 0
            && self.duplicated == 0
            && self.expired_served == 0
            && self.lost_tokens == 0
            && self.secrets_in_logs == 0
            && self.bad_refused == self.bad_total
            && self.unconverged == 0
            && self.fuzz_failures == 0
            && self.restarts == 0
            && self.hostile_late == 0
    }
}

#[test]
fn summary_line_has_the_documented_shape() {
    let t = Tally {
        identities: 3,
        kills: 20,
        bad_refused: 4,
        bad_total: 5,
        ..Default::default()
    };
    assert_eq!(
        t.summary(),
        "reliability: identities=3 kills=20 leaked=0 duplicated=0 expired_served=0 lost_tokens=0 secrets_in_logs=0 bad_inputs=4/5"
    );
    assert!(!t.clean(), "a bad input accepted is a broken promise");
    let late = Tally {
        hostile_late: 1,
        ..Default::default()
    };
    assert!(
        !late.clean(),
        "a good tenant slowed by a bad one is a broken promise"
    );
    assert!(
        late.summary().ends_with("bad_inputs=0/0"),
        "the closing line keeps issue 11's shape"
    );
}
