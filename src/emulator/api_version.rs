//! The `api-version` query parameter: which versions the emulator speaks and what each
//! offers, from the same table of published versions the client reads
//! ([`crate::acs::api_versions`]), so the emulator answers as the real service would.

use crate::acs::api_versions::{
    self, API_VERSIONS, ApiVersionInfo, LEGACY_API_VERSION, SCOPES_WITH_JOIN,
};

use super::error::ServiceError;

/// The `api-supported-versions` answer header: the retired version and every published one.
pub const SUPPORTED_VERSIONS_HEADER: &str = "2020-07-20-preview2, 2021-02-22-preview1, 2021-03-07, \
     2021-03-31-preview1, 2021-10-31-preview, 2022-06-01, 2022-09-01, 2022-10-01, 2023-08-01, \
     2023-10-01, 2025-03-02-preview, 2025-04-01-preview, 2025-06-30, 2026-07-22, 2026-09-23";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiVersion {
    /// `2020-07-20-preview2`: `/identities/{id}/token`, `PATCH` to revoke, 200 on create.
    Legacy,
    Current(&'static ApiVersionInfo),
}

impl ApiVersion {
    /// Reads `api-version` from a raw query string; a missing or unknown one is a 400, as
    /// Azure data planes answer before looking at anything else.
    pub fn from_query(query: Option<&str>) -> Result<Self, ServiceError> {
        let value = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(name, _)| name.eq_ignore_ascii_case("api-version"))
            .map(|(_, value)| value);
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            return Err(ServiceError::bad_request(
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            ));
        };
        if value == LEGACY_API_VERSION {
            return Ok(Self::Legacy);
        }
        if let Some(info) = api_versions::lookup(value) {
            return Ok(Self::Current(info));
        }
        // The value is echoed back, so it is cut short: it came from outside.
        let shown: String = value.chars().take(40).collect();
        let supported: Vec<&str> = API_VERSIONS.iter().map(|v| v.version).collect();
        Err(ServiceError::bad_request(
            "UnsupportedApiVersion",
            format!(
                "The HTTP resource does not support the api-version '{shown}'. Supported versions: {}, {}.",
                supported.join(", "),
                LEGACY_API_VERSION
            ),
        ))
    }

    /// `customId` on create (and in the identity it returns).
    pub fn supports_custom_id(&self) -> bool {
        matches!(self, Self::Current(info) if info.custom_id)
    }

    /// `GET /identities/{id}`.
    pub fn supports_get_identity(&self) -> bool {
        matches!(self, Self::Current(info) if info.get_identity)
    }

    /// `Repeatability-Request-ID` / `Repeatability-First-Sent` on create.
    pub fn supports_repeatable_create(&self) -> bool {
        matches!(self, Self::Current(info) if info.repeatable_create)
    }

    /// The scopes a token may be asked for: the version's `CommunicationIdentityTokenScope`.
    /// The retired API types `scopes` as free strings; it keeps taking today's five.
    pub fn token_scopes(&self) -> &'static [&'static str] {
        match self {
            Self::Current(info) => info.token_scopes,
            Self::Legacy => SCOPES_WITH_JOIN,
        }
    }

    /// `expiresInMinutes` on `:issueAccessToken` (from `2022-09-01`).
    pub fn issue_takes_expiry(&self) -> bool {
        matches!(self, Self::Current(info) if info.issue_expires_in_minutes)
    }

    /// `expiresInMinutes` on create with `createTokenWithScopes` (from `2022-10-01`).
    pub fn create_takes_expiry(&self) -> bool {
        matches!(self, Self::Current(info) if info.create_expires_in_minutes)
    }

    /// The `api-version` value.
    #[cfg(test)]
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Current(info) => info.version,
            Self::Legacy => LEGACY_API_VERSION,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current(v: &str) -> ApiVersion {
        ApiVersion::from_query(Some(&format!("api-version={v}"))).expect(v)
    }

    #[test]
    fn reads_the_version_among_other_parameters() {
        assert_eq!(
            ApiVersion::from_query(Some("x=1&api-version=2023-10-01")).unwrap(),
            ApiVersion::Current(api_versions::lookup("2023-10-01").unwrap())
        );
        assert_eq!(
            ApiVersion::from_query(Some("api-version=2020-07-20-preview2")).unwrap(),
            ApiVersion::Legacy
        );
    }

    #[test]
    fn missing_and_unknown_versions_are_distinct_400s() {
        for q in [
            None,
            Some(""),
            Some("api-version="),
            Some("apiversion=2023-10-01"),
        ] {
            assert_eq!(
                ApiVersion::from_query(q).unwrap_err().code,
                "MissingApiVersionParameter"
            );
        }
        for unknown in ["1999-01-01", "2025-03-02", "2027-01-01"] {
            assert_eq!(
                ApiVersion::from_query(Some(&format!("api-version={unknown}")))
                    .unwrap_err()
                    .code,
                "UnsupportedApiVersion",
                "{unknown}"
            );
        }
    }

    #[test]
    fn every_published_version_is_served_with_custom_ids_only_where_published() {
        for info in API_VERSIONS {
            let v = current(info.version);
            assert_eq!(v.supports_custom_id(), info.custom_id, "{}", info.version);
            assert_eq!(v.supports_get_identity(), info.get_identity);
        }
        assert!(current("2025-03-02-preview").supports_custom_id());
        for other in [
            "2023-10-01",
            "2025-04-01-preview",
            "2025-06-30",
            "2026-07-22",
        ] {
            assert!(!current(other).supports_custom_id(), "{other}");
            assert!(!current(other).supports_get_identity(), "{other}");
        }
        for ga in ["2023-10-01", "2025-06-30", "2026-07-22"] {
            assert!(!current(ga).supports_custom_id(), "{ga}");
            assert!(!current(ga).supports_get_identity(), "{ga}");
        }
        assert!(!ApiVersion::Legacy.supports_custom_id());
        // The first previews of these routes are published and served.
        for v in ["2021-02-22-preview1", "2021-03-31-preview1"] {
            assert!(matches!(current(v), ApiVersion::Current(_)), "{v}");
        }
        assert!(current("2023-08-01").supports_repeatable_create());
        assert!(!current("2023-10-01").supports_repeatable_create());
        assert!(!ApiVersion::Legacy.supports_repeatable_create());
        assert_eq!(current("2023-10-01").as_str(), "2023-10-01");
        assert_eq!(ApiVersion::Legacy.as_str(), LEGACY_API_VERSION);
        let listed: Vec<&str> = SUPPORTED_VERSIONS_HEADER.split(", ").collect();
        let mut want = vec![LEGACY_API_VERSION];
        want.extend(API_VERSIONS.iter().map(|v| v.version));
        assert_eq!(listed, want);
    }

    #[test]
    fn scopes_and_expiry_follow_the_table() {
        for info in API_VERSIONS {
            let v = current(info.version);
            assert_eq!(v.token_scopes(), info.token_scopes, "{}", info.version);
            assert_eq!(v.issue_takes_expiry(), info.issue_expires_in_minutes);
            assert_eq!(v.create_takes_expiry(), info.create_expires_in_minutes);
        }
        assert_eq!(current("2021-03-07").token_scopes(), ["chat", "voip"]);
        assert!(current("2023-10-01").token_scopes().contains(&"voip.join"));
        assert!(current("2022-09-01").issue_takes_expiry());
        assert!(!current("2022-09-01").create_takes_expiry());
        assert!(!current("2022-06-01").issue_takes_expiry());
        assert_eq!(ApiVersion::Legacy.token_scopes(), SCOPES_WITH_JOIN);
        assert!(!ApiVersion::Legacy.issue_takes_expiry());
    }
}
