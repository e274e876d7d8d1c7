//! What an emulator is started with: listen address, credentials, quotas, faults, TLS.
//! The binary's flags and the in-process tests both end up here.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::acs::connection_string::AccessKey;

use super::faults::FaultRule;

/// The identity operations that quotas, faults and statistics are counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmulatedOperation {
    Create,
    Issue,
    Revoke,
    Delete,
    Get,
    /// The emulated Entra ID token endpoint.
    #[serde(rename = "entra-token")]
    EntraToken,
}

impl EmulatedOperation {
    pub const ALL: [EmulatedOperation; 6] = [
        Self::Create,
        Self::Issue,
        Self::Revoke,
        Self::Delete,
        Self::Get,
        Self::EntraToken,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Issue => "issue",
            Self::Revoke => "revoke",
            Self::Delete => "delete",
            Self::Get => "get",
            Self::EntraToken => "entra-token",
        }
    }
}

impl fmt::Display for EmulatedOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EmulatedOperation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|op| op.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!(
                    "unknown operation `{s}`; expected one of create, issue, revoke, delete, get, entra-token"
                )
            })
    }
}

/// At most `max` requests of one operation in any sliding `window`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuotaLimit {
    pub max: u32,
    pub window: Duration,
}

/// One `--quota OP=N/SECONDS` flag. `N = 0` lifts the limit for that operation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuotaSetting {
    pub operation: EmulatedOperation,
    pub limit: Option<QuotaLimit>,
}

impl FromStr for QuotaSetting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let shape = || format!("quota `{s}` must look like OP=N/SECONDS, e.g. create=1000/30");
        let (op, rest) = s.split_once('=').ok_or_else(shape)?;
        let (n, secs) = rest.split_once('/').ok_or_else(shape)?;
        let operation = op.parse()?;
        let max: u32 = n.trim().parse().map_err(|_| shape())?;
        let secs: f64 = secs.trim().parse().map_err(|_| shape())?;
        if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0) {
            return Err(format!(
                "quota `{s}`: the window must be between 0 and 86400 seconds"
            ));
        }
        let limit = (max > 0).then(|| QuotaLimit {
            max,
            window: Duration::from_secs_f64(secs),
        });
        Ok(Self { operation, limit })
    }
}

/// ACS's published limits (1000 creates and 1000 token issues, 500 deletes and 500
/// revokes per 30 seconds); `get` is unlimited since ACS publishes no limit for it.
pub fn default_quotas() -> BTreeMap<EmulatedOperation, QuotaLimit> {
    let per30 = |max| QuotaLimit {
        max,
        window: Duration::from_secs(30),
    };
    BTreeMap::from([
        (EmulatedOperation::Create, per30(1000)),
        (EmulatedOperation::Issue, per30(1000)),
        (EmulatedOperation::Delete, per30(500)),
        (EmulatedOperation::Revoke, per30(500)),
    ])
}

#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Port 0 picks a free one; avoid 80/443 (Python signs `host:80` but sends `Host` without it).
    pub listen: SocketAddr,
    /// Generated at start when absent.
    pub access_key: Option<AccessKey>,
    /// The resource GUID in identity ids; random (or the state file's) when absent.
    pub resource_id: Option<Uuid>,
    pub quotas: BTreeMap<EmulatedOperation, QuotaLimit>,
    /// Multiplies every token lifetime, so demos can watch renewals in seconds.
    pub token_lifetime_scale: f64,
    pub state_file: Option<PathBuf>,
    /// Faults active from the start; more come and go through `/admin/faults`.
    pub faults: Vec<FaultRule>,
    /// Lets non-loopback clients reach `/admin/`, and then required from everyone.
    pub admin_key: Option<String>,
    pub tls: bool,
    /// Where to write the PEM certificate clients should trust in TLS mode.
    pub tls_ca_out: Option<PathBuf>,
    /// Names (DNS names or IP addresses) the serving certificate is valid for, besides
    /// 127.0.0.1 and localhost: how pods on a node reach an emulator on the host.
    pub tls_sans: Vec<String>,
    /// How far a request's date may be from the emulator's clock.
    pub max_clock_skew: Duration,
    pub max_body_bytes: usize,
    /// The status of a create whose `customId` found an existing user: 201, as the live
    /// service answers (the SDKs' recorded sessions), or 200, as the 2025-03-02-preview
    /// specification says; a client must not tell a new user from a found one by it.
    pub found_custom_id_status: u16,
    /// The emulated Entra ID tenant the resource belongs to; random when absent.
    pub entra_tenant: Option<String>,
    /// Trusted issuers, applications and role assignments at start.
    pub entra: super::entra::EntraConfig,
    /// Lifetime of the Entra access tokens, before `token_lifetime_scale` (Entra's 3599 s).
    pub entra_token_lifetime: Duration,
    /// As ARM's `disableLocalAuth`: HMAC (access key) requests are refused with 401.
    pub disable_local_auth: bool,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            access_key: None,
            resource_id: None,
            quotas: default_quotas(),
            token_lifetime_scale: 1.0,
            state_file: None,
            faults: Vec::new(),
            admin_key: None,
            tls: false,
            tls_ca_out: None,
            tls_sans: Vec::new(),
            max_clock_skew: Duration::from_secs(15 * 60),
            max_body_bytes: 64 * 1024,
            found_custom_id_status: 201,
            entra_tenant: None,
            entra: Default::default(),
            entra_token_lifetime: Duration::from_secs(3599),
            disable_local_auth: false,
        }
    }
}

impl EmulatorConfig {
    pub fn apply_quota(&mut self, setting: QuotaSetting) {
        match setting.limit {
            Some(limit) => self.quotas.insert(setting.operation, limit),
            None => self.quotas.remove(&setting.operation),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_flag_parses_and_zero_lifts_the_limit() {
        let q: QuotaSetting = "issue=5/2.5".parse().unwrap();
        assert_eq!(q.operation, EmulatedOperation::Issue);
        assert_eq!(
            q.limit,
            Some(QuotaLimit {
                max: 5,
                window: Duration::from_millis(2500)
            })
        );
        let mut config = EmulatorConfig::default();
        config.apply_quota("create=0/30".parse().unwrap());
        assert!(!config.quotas.contains_key(&EmulatedOperation::Create));
        config.apply_quota(q);
        assert_eq!(config.quotas[&EmulatedOperation::Issue].max, 5);
    }

    #[test]
    fn malformed_quota_flags_are_refused() {
        for bad in [
            "issue",
            "issue=5",
            "issue=x/30",
            "nope=5/30",
            "issue=5/0",
            "issue=5/-1",
            "issue=5/nan",
        ] {
            assert!(bad.parse::<QuotaSetting>().is_err(), "{bad}");
        }
    }
}
