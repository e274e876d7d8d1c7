//! Leader election settings and the default identity.

use std::time::Duration;

use super::LeaderError;

pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

/// Which Lease to hold, as whom, and how fast to react.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Unique per process: two processes with one identity would both believe they lead.
    pub identity: String,
    /// How long others wait for a silent leader before taking over. Written to the Lease
    /// in whole seconds, rounded up.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it steps down; shorter than
    /// `lease_duration`.
    pub renew_deadline: Duration,
    /// Time between renewals, and between a candidate's attempts.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Defaults: 15 s lease, 10 s renew deadline, 2 s retry period (client-go's), and
    /// [`default_identity`].
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: default_identity(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }

    pub fn validate(&self) -> Result<(), LeaderError> {
        let fail = |m: String| Err(LeaderError::Config(m));
        if self.namespace.is_empty() || self.name.is_empty() {
            return fail("the Lease namespace and name must not be empty".into());
        }
        if self.identity.is_empty() {
            return fail("the leader identity must not be empty".into());
        }
        if self.retry_period.is_zero() {
            return fail("the retry period must be positive".into());
        }
        if self.lease_duration < Duration::from_secs(1) {
            return fail("the lease duration must be at least 1s".into());
        }
        if self.lease_duration > Duration::from_secs(i32::MAX as u64) {
            return fail("the lease duration is too long".into());
        }
        if self.renew_deadline >= self.lease_duration {
            return fail(format!(
                "the renew deadline ({:?}) must be shorter than the lease duration ({:?})",
                self.renew_deadline, self.lease_duration
            ));
        }
        if self.retry_period >= self.renew_deadline {
            return fail(format!(
                "the retry period ({:?}) must be shorter than the renew deadline ({:?})",
                self.retry_period, self.renew_deadline
            ));
        }
        Ok(())
    }

    pub(super) fn lease_duration_seconds(&self) -> i32 {
        let secs =
            self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(secs).unwrap_or(i32::MAX)
    }
}

/// `$POD_NAME`, else `$HOSTNAME`, else the kernel's hostname, plus a random suffix: the
/// suffix keeps a restarted container (same pod name) from passing as its predecessor.
pub fn default_identity() -> String {
    let base = ["POD_NAME", "HOSTNAME"]
        .iter()
        .filter_map(|var| std::env::var(var).ok())
        .chain(std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "acs-identity-operator".to_string());
    format!("{base}-{:08x}", rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_validated() {
        let mut c = LeaseConfig::new("ns", "lease");
        assert!(c.validate().is_ok());
        c.renew_deadline = c.lease_duration;
        assert!(c.validate().is_err());
        let mut c = LeaseConfig::new("ns", "lease");
        c.retry_period = c.renew_deadline;
        assert!(c.validate().is_err());
        let mut c = LeaseConfig::new("ns", "lease");
        c.identity.clear();
        assert!(c.validate().is_err());
        let mut c = LeaseConfig::new("ns", "lease");
        c.lease_duration = Duration::from_millis(500);
        c.renew_deadline = Duration::from_millis(400);
        c.retry_period = Duration::from_millis(100);
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_written_duration_rounds_up() {
        let mut c = LeaseConfig::new("ns", "lease");
        c.lease_duration = Duration::from_millis(2_500);
        assert_eq!(c.lease_duration_seconds(), 3);
        c.lease_duration = Duration::from_secs(15);
        assert_eq!(c.lease_duration_seconds(), 15);
    }

    #[test]
    fn default_identities_are_unique_per_process_start() {
        let a = default_identity();
        let b = default_identity();
        assert!(!a.is_empty());
        assert_ne!(a, b);
    }
}
