//! Every published api-version of the ACS Identity REST API and what each offers, as an
//! explicit table read from the published specification (azure-rest-api-specs,
//! `specification/communication/data-plane/Identity/{stable,preview}/<version>/CommunicationIdentity.json`).
//!
//! Features are never inferred from a version's date: the preview and GA versions published
//! after the first custom-id preview (2025-04-01-preview, 2025-06-30, 2026-07-22, 2026-09-23)
//! have neither `customId` nor `GET /identities/{id}`. The client and the emulator both read this table, so a test
//! against the emulator sees what the real service would do.

/// The default api-version of the official SDKs (and of the operator's services).
pub const DEFAULT_API_VERSION: &str = "2023-10-01";

/// The retired api-version of `azure-communication-administration` 1.0.0b4, with its own
/// routes (`/identities/{id}/token`, `PATCH` to revoke). Only the emulator speaks it.
pub const LEGACY_API_VERSION: &str = "2020-07-20-preview2";

/// `CommunicationIdentityTokenScope` from `2021-02-22-preview1` to `2023-08-01`.
pub const SCOPES_CHAT_VOIP: &[&str] = &["chat", "voip"];

/// `CommunicationIdentityTokenScope` from `2023-10-01` on: `chat.join`, `chat.join.limited`
/// and `voip.join` arrived with that version (the SDKs' changelogs: Python 1.4.0, .NET 1.3.0).
pub const SCOPES_WITH_JOIN: &[&str] = &[
    "chat",
    "voip",
    "chat.join",
    "chat.join.limited",
    "voip.join",
];

/// GA or preview, as the specification folder (`stable/` or `preview/`) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stability {
    Ga,
    Preview,
}

/// One published api-version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiVersionInfo {
    /// The `api-version` query value.
    pub version: &'static str,
    pub stability: Stability,
    /// `customId` on `POST /identities`: the same custom id returns the existing user, so a
    /// create can be retried without making a second user.
    pub custom_id: bool,
    /// `GET /identities/{id}`.
    pub get_identity: bool,
    /// The `Repeatability-Request-ID` / `Repeatability-First-Sent` headers on
    /// `POST /identities`: a create repeated with the same request id returns the first
    /// answer instead of making a second user, so it can be retried.
    pub repeatable_create: bool,
    /// The values of `CommunicationIdentityTokenScope`: what `scopes` (issue) and
    /// `createTokenWithScopes` (create) may hold.
    pub token_scopes: &'static [&'static str],
    /// `expiresInMinutes` on `CommunicationIdentityAccessTokenRequest` (issue).
    pub issue_expires_in_minutes: bool,
    /// `expiresInMinutes` on `CommunicationIdentityCreateRequest` (create with a token).
    pub create_expires_in_minutes: bool,
}

const fn ga(version: &'static str) -> ApiVersionInfo {
    ApiVersionInfo {
        version,
        stability: Stability::Ga,
        custom_id: false,
        get_identity: false,
        repeatable_create: false,
        token_scopes: SCOPES_CHAT_VOIP,
        issue_expires_in_minutes: false,
        create_expires_in_minutes: false,
    }
}

const fn preview(version: &'static str) -> ApiVersionInfo {
    ApiVersionInfo {
        stability: Stability::Preview,
        ..ga(version)
    }
}

/// `expiresInMinutes` (60 to 1440) on both token bodies, as from `2022-10-01` on.
const fn with_expiry(info: ApiVersionInfo) -> ApiVersionInfo {
    ApiVersionInfo {
        issue_expires_in_minutes: true,
        create_expires_in_minutes: true,
        ..info
    }
}

/// The five scopes and `expiresInMinutes`, as from `2023-10-01` on.
const fn with_join_scopes(info: ApiVersionInfo) -> ApiVersionInfo {
    ApiVersionInfo {
        token_scopes: SCOPES_WITH_JOIN,
        ..with_expiry(info)
    }
}

/// Every api-version served on the current routes (`/identities`, `:issueAccessToken`,
/// `:revokeAccessTokens`), oldest first, each with what its own specification file
/// (`{stable,preview}/<version>/CommunicationIdentity.json`) defines:
///
/// - `2021-02-22-preview1`, `2021-03-31-preview1`: the first previews of these routes
///   (`createTokenWithScopes`, scopes `chat`/`voip`); ACS still lists both in its
///   `api-supported-versions` answer header.
/// - Scopes: `chat` and `voip` only up to `2023-08-01`; `2023-10-01` and every later
///   version add `chat.join`, `chat.join.limited` and `voip.join`.
/// - `2022-09-01`: `expiresInMinutes` on issue only (its create request has
///   `createTokenWithScopes` alone); `2022-10-01` added it to create too (60 to 1440,
///   default 1440). Before `2022-09-01` neither body has it.
/// - `2023-08-01`: the only version whose create takes `Repeatability-Request-ID` and
///   `Repeatability-First-Sent` (and answers `Repeatability-Result`); `2023-10-01` dropped
///   them again.
/// - `2025-03-02-preview`: `customId` on create and `GET /identities/{id}`.
/// - `2025-04-01-preview`: no `customId`. Its first published file is a copy of
///   `2023-10-01` (create takes scopes and expiry only; `/identities/{id}` has `delete`
///   only); a later example names an `externalId` field instead, which no SDK sends and
///   no schema of that version defines, so the client sends no id on this version.
/// - `2025-06-30`, `2026-07-22`, `2026-09-23`: GA after the previews, yet
///   CommunicationIdentity is `{id}` only and `/identities/{id}` has `delete` only.
///
/// Not here: `2023-08-30-preview` (a roles API in the same folder, without these routes)
/// and the retired [`LEGACY_API_VERSION`], which has routes of its own.
pub const API_VERSIONS: &[ApiVersionInfo] = &[
    preview("2021-02-22-preview1"),
    ga("2021-03-07"),
    preview("2021-03-31-preview1"),
    preview("2021-10-31-preview"),
    ga("2022-06-01"),
    ApiVersionInfo {
        issue_expires_in_minutes: true,
        ..ga("2022-09-01")
    },
    with_expiry(ga("2022-10-01")),
    ApiVersionInfo {
        repeatable_create: true,
        ..with_expiry(ga("2023-08-01"))
    },
    with_join_scopes(ga("2023-10-01")),
    ApiVersionInfo {
        custom_id: true,
        get_identity: true,
        ..with_join_scopes(preview("2025-03-02-preview"))
    },
    with_join_scopes(preview("2025-04-01-preview")),
    with_join_scopes(ga("2025-06-30")),
    with_join_scopes(ga("2026-07-22")),
    with_join_scopes(ga("2026-09-23")),
];

/// The table entry of a published api-version; `None` for anything else.
pub fn lookup(api_version: &str) -> Option<&'static ApiVersionInfo> {
    API_VERSIONS.iter().find(|v| v.version == api_version)
}

/// Whether `api_version` is published with `customId` on create. Unknown versions: no.
pub fn supports_custom_id(api_version: &str) -> bool {
    lookup(api_version).is_some_and(|v| v.custom_id)
}

/// Whether `api_version` is published with `GET /identities/{id}`.
pub fn supports_get_identity(api_version: &str) -> bool {
    lookup(api_version).is_some_and(|v| v.get_identity)
}

/// Whether `api_version` is published with the repeatability headers on create.
pub fn supports_repeatable_create(api_version: &str) -> bool {
    lookup(api_version).is_some_and(|v| v.repeatable_create)
}

/// The api-versions with custom ids, for messages ("use one of ...").
pub fn custom_id_versions() -> impl Iterator<Item = &'static str> {
    API_VERSIONS
        .iter()
        .filter(|v| v.custom_id)
        .map(|v| v.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_ids_only_where_published() {
        let with: Vec<&str> = custom_id_versions().collect();
        assert_eq!(with, ["2025-03-02-preview"]);
        for ga in [
            "2025-04-01-preview",
            "2025-06-30",
            "2026-07-22",
            "2026-09-23",
            "2023-10-01",
        ] {
            assert!(!supports_custom_id(ga), "{ga}");
            assert!(!supports_get_identity(ga), "{ga}");
        }
        assert!(supports_get_identity("2025-03-02-preview"));
        // Never inferred from the date.
        for unknown in ["2025-03-03", "2027-01-01", "2025-03-02", "garbage", ""] {
            assert!(!supports_custom_id(unknown), "{unknown}");
            assert!(lookup(unknown).is_none(), "{unknown}");
        }
    }

    #[test]
    fn every_published_version_is_known_with_its_own_headers() {
        for v in [
            "2021-02-22-preview1",
            "2021-03-07",
            "2021-03-31-preview1",
            "2021-10-31-preview",
            "2022-06-01",
            "2022-09-01",
            "2022-10-01",
            "2023-08-01",
            "2023-10-01",
            "2025-03-02-preview",
            "2025-04-01-preview",
            "2025-06-30",
            "2026-07-22",
            "2026-09-23",
        ] {
            assert!(lookup(v).is_some(), "{v}");
        }
        let repeatable: Vec<&str> = API_VERSIONS
            .iter()
            .filter(|v| v.repeatable_create)
            .map(|v| v.version)
            .collect();
        assert_eq!(repeatable, ["2023-08-01"]);
        assert!(supports_repeatable_create("2023-08-01"));
        assert!(!supports_repeatable_create("2023-10-01"));
        assert!(lookup("2023-08-30-preview").is_none(), "a roles API");
    }

    /// Each version's `CommunicationIdentityTokenScope` and `expiresInMinutes`, as its
    /// `CommunicationIdentity.json` defines them.
    #[test]
    fn scopes_and_expiry_are_each_versions_own() {
        let expected: &[(&str, &[&str], bool, bool)] = &[
            ("2021-02-22-preview1", SCOPES_CHAT_VOIP, false, false),
            ("2021-03-07", SCOPES_CHAT_VOIP, false, false),
            ("2021-03-31-preview1", SCOPES_CHAT_VOIP, false, false),
            ("2021-10-31-preview", SCOPES_CHAT_VOIP, false, false),
            ("2022-06-01", SCOPES_CHAT_VOIP, false, false),
            ("2022-09-01", SCOPES_CHAT_VOIP, true, false),
            ("2022-10-01", SCOPES_CHAT_VOIP, true, true),
            ("2023-08-01", SCOPES_CHAT_VOIP, true, true),
            ("2023-10-01", SCOPES_WITH_JOIN, true, true),
            ("2025-03-02-preview", SCOPES_WITH_JOIN, true, true),
            ("2025-04-01-preview", SCOPES_WITH_JOIN, true, true),
            ("2025-06-30", SCOPES_WITH_JOIN, true, true),
            ("2026-07-22", SCOPES_WITH_JOIN, true, true),
            ("2026-09-23", SCOPES_WITH_JOIN, true, true),
        ];
        let got: Vec<(&str, &[&str], bool, bool)> = API_VERSIONS
            .iter()
            .map(|v| {
                (
                    v.version,
                    v.token_scopes,
                    v.issue_expires_in_minutes,
                    v.create_expires_in_minutes,
                )
            })
            .collect();
        assert_eq!(got, expected);
        // The features of the earlier patches stay where they were.
        assert!(supports_repeatable_create("2023-08-01"));
        assert!(supports_custom_id("2025-03-02-preview"));
    }

    #[test]
    fn table_is_ordered_unique_and_names_its_stability() {
        for pair in API_VERSIONS.windows(2) {
            assert!(pair[0].version < pair[1].version, "{pair:?}");
        }
        for v in API_VERSIONS {
            assert_eq!(
                v.version.contains("-preview"),
                v.stability == Stability::Preview,
                "{v:?}"
            );
            assert!(!v.custom_id || v.get_identity, "{v:?}");
        }
        assert!(lookup(DEFAULT_API_VERSION).is_some());
        assert!(lookup(LEGACY_API_VERSION).is_none(), "own routes");
    }
}
