//! The `api-version` query parameter: which versions the emulator speaks and what each adds.

use super::error::AcsError;

/// Versions served on the current routes (`/identities/{id}/:issueAccessToken`, ...).
pub const CURRENT_VERSIONS: &[&str] = &[
    "2021-03-07",
    "2021-10-31-preview",
    "2022-06-01",
    "2022-10-01",
    "2023-08-01",
    "2023-10-01",
    "2025-03-02-preview",
    "2025-06-30",
];

/// The retired version of `azure-communication-administration` 1.0.0b4, with its own routes.
pub const LEGACY_VERSION: &str = "2020-07-20-preview2";

/// The first version that knows `customId` on create and `GET /identities/{id}`.
const CUSTOM_ID_SINCE: &str = "2025-03-02";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiVersion {
    /// `2020-07-20-preview2`: `/identities/{id}/token`, `PATCH` to revoke, 200 on create.
    Legacy,
    Current(String),
}

impl ApiVersion {
    /// Reads `api-version` from a raw query string; a missing or unknown one is a 400, as
    /// Azure data planes answer before looking at anything else.
    pub fn from_query(query: Option<&str>) -> Result<Self, AcsError> {
        let value = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(name, _)| name.eq_ignore_ascii_case("api-version"))
            .map(|(_, value)| value);
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            return Err(AcsError::bad_request(
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            ));
        };
        if value == LEGACY_VERSION {
            return Ok(Self::Legacy);
        }
        if CURRENT_VERSIONS.contains(&value) {
            return Ok(Self::Current(value.to_string()));
        }
        // The value is echoed back, so it is cut short: it came from outside.
        let shown: String = value.chars().take(40).collect();
        Err(AcsError::bad_request(
            "UnsupportedApiVersion",
            format!(
                "The HTTP resource does not support the api-version '{shown}'. Supported versions: {}, {}.",
                CURRENT_VERSIONS.join(", "),
                LEGACY_VERSION
            ),
        ))
    }

    pub fn supports_custom_id(&self) -> bool {
        match self {
            Self::Legacy => false,
            // Versions are ISO dates, so string order is time order.
            Self::Current(v) => v.as_str() >= CUSTOM_ID_SINCE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_version_among_other_parameters() {
        assert_eq!(
            ApiVersion::from_query(Some("x=1&api-version=2023-10-01")).unwrap(),
            ApiVersion::Current("2023-10-01".into())
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
        assert_eq!(
            ApiVersion::from_query(Some("api-version=1999-01-01"))
                .unwrap_err()
                .code,
            "UnsupportedApiVersion"
        );
    }

    #[test]
    fn custom_id_arrives_with_2025_03_02() {
        assert!(!ApiVersion::Current("2023-10-01".into()).supports_custom_id());
        assert!(ApiVersion::Current("2025-03-02-preview".into()).supports_custom_id());
        assert!(ApiVersion::Current("2025-06-30".into()).supports_custom_id());
        assert!(!ApiVersion::Legacy.supports_custom_id());
    }
}
