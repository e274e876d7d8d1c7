//! The emulator over real HTTP on loopback: authentication, api-versions, routes,
//! validation, revocation order, the retired API, the admin view, and garbage input.

mod support;

use std::time::{Duration, SystemTime};

use acs_identity_operator::acs::connection_string::AccessKey;
use acs_identity_operator::emulator::EmulatorConfig;
use base64::Engine as _;
use reqwest::Method;
use serde_json::json;
use support::signing::{LEGACY, PREVIEW, Tweak, V, enc, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn user_lifecycle_and_admin_view() {
    let (_emu, c) = start(EmulatorConfig::default()).await;
    let id = c.create_user().await;
    assert!(id.starts_with("8:acs:"), "{id}");

    let r = c
        .issue(&id, r#"{"scopes": ["voip"], "expiresInMinutes": 60}"#)
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    let token = r.json["token"].as_str().unwrap().to_string();
    let expires_on: jiff::Timestamp = r.json["expiresOn"].as_str().unwrap().parse().unwrap();
    let lifetime = expires_on.as_second() - jiff::Timestamp::now().as_second();
    assert!((3590..=3600).contains(&lifetime), "{lifetime}");
    assert_eq!(c.validate(&token).await, (true, "valid".to_string()));

    let r = c
        .call(
            Method::POST,
            &format!("/identities?api-version={V}"),
            Some(r#"{"createTokenWithScopes":["chat","voip"]}"#),
        )
        .await;
    assert_eq!(r.status, 201);
    assert!(r.json["accessToken"]["token"].is_string() && r.json["identity"]["id"].is_string());

    let r = c
        .call(
            Method::POST,
            &format!(
                "/identities/{}/:revokeAccessTokens?api-version={V}",
                enc(&id)
            ),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(c.validate(&token).await.1, "revoked");

    let r = c
        .call(
            Method::DELETE,
            &format!("/identities/{}?api-version={V}", enc(&id)),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let r = c.issue(&id, r#"{"scopes":["chat"]}"#).await;
    assert_eq!((r.status, r.code()), (404, "IdentityNotFound"));

    let r = c.admin(Method::GET, "/admin/identities", None).await;
    let list = r.json.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let first = list.iter().find(|i| i["id"] == id.as_str()).unwrap();
    assert_eq!(first["deleted"], true);
    assert_eq!(first["tokensIssued"], 1);
    assert!(first["tokensRevokedAt"].is_string());
    assert!(first.get("customId").is_some());

    let stats = c.admin(Method::GET, "/admin/stats", None).await.json;
    assert_eq!(stats["requests"]["create"]["201"], 2);
    assert_eq!(stats["requests"]["issue"]["404"], 1);
    assert_eq!(stats["requests"]["revoke"]["204"], 1);
    assert_eq!(
        c.admin(Method::DELETE, "/admin/stats", None).await.status,
        204
    );
    assert_eq!(
        c.admin(Method::GET, "/admin/stats", None).await.json["total"],
        0
    );
}

#[tokio::test]
async fn every_signature_defect_is_a_401_with_error_json() {
    let (_emu, c) = start(EmulatorConfig::default()).await;
    let target = format!("/identities?api-version={V}");
    let hour = Duration::from_secs(3600);
    let cases = [
        (
            "no authorization",
            Tweak {
                no_auth: true,
                ..Tweak::default()
            },
        ),
        (
            "other key",
            Tweak {
                key: Some(AccessKey::from_base64("b3RoZXIta2V5").unwrap()),
                ..Tweak::default()
            },
        ),
        (
            "host without port",
            Tweak {
                signed_host: Some("127.0.0.1".into()),
                ..Tweak::default()
            },
        ),
        (
            "other path",
            Tweak {
                signed_target: Some("/identities?api-version=2022-10-01".into()),
                ..Tweak::default()
            },
        ),
        (
            "stale date",
            Tweak {
                date: Some(SystemTime::now() - hour),
                ..Tweak::default()
            },
        ),
        (
            "future date",
            Tweak {
                date: Some(SystemTime::now() + hour),
                ..Tweak::default()
            },
        ),
        (
            "hash of another body",
            Tweak {
                claimed_hash: Some("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=".into()),
                ..Tweak::default()
            },
        ),
        (
            "date header not signed",
            Tweak {
                date_header: Some("x-ms-other"),
                ..Tweak::default()
            },
        ),
    ];
    for (what, tweak) in cases {
        let r = c
            .call_tweaked(Method::POST, &target, Some("{}"), tweak)
            .await;
        assert_eq!((r.status, r.code()), (401, "Denied"), "{what}: {}", r.json);
        assert!(r.json["error"]["message"].is_string(), "{what}");
    }
    // The id is signed as sent, percent-encoded: signing the decoded form fails.
    let id = c.create_user().await;
    let encoded = format!("/identities/{}/:issueAccessToken?api-version={V}", enc(&id));
    let decoded = format!("/identities/{id}/:issueAccessToken?api-version={V}");
    let body = r#"{"scopes":["chat"]}"#;
    let tweak = Tweak {
        signed_target: Some(decoded),
        ..Tweak::default()
    };
    assert_eq!(
        c.call_tweaked(Method::POST, &encoded, Some(body), tweak)
            .await
            .status,
        401
    );
    assert_eq!(c.call(Method::POST, &encoded, Some(body)).await.status, 200);
    // The retired API signs the `Date` header instead.
    let tweak = Tweak {
        date_header: Some("date"),
        ..Tweak::default()
    };
    assert_eq!(
        c.call_tweaked(Method::POST, &target, Some("{}"), tweak)
            .await
            .status,
        201
    );
    // Nothing was created by the rejected requests.
    assert_eq!(
        c.admin(Method::GET, "/admin/identities", None)
            .await
            .json
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn api_version_and_route_errors() {
    let (_emu, c) = start(EmulatorConfig::default()).await;
    let r = c.call(Method::POST, "/identities", None).await;
    assert_eq!((r.status, r.code()), (400, "MissingApiVersionParameter"));
    let r = c
        .call(Method::POST, "/identities?api-version=2019-01-01", None)
        .await;
    assert_eq!((r.status, r.code()), (400, "UnsupportedApiVersion"));
    for (method, target) in [
        (Method::GET, format!("/?api-version={V}")),
        (Method::POST, format!("/chat/threads?api-version={V}")),
        (Method::PUT, format!("/identities?api-version={V}")),
        (
            Method::POST,
            format!("/identities/x/:explode?api-version={V}"),
        ),
        (Method::GET, format!("/identities/x?api-version={V}")),
        (Method::POST, format!("/identities/x/token?api-version={V}")),
    ] {
        let r = c.call(method.clone(), &target, None).await;
        assert_eq!(r.status, 404, "{method} {target}");
        assert!(r.json["error"]["code"].is_string(), "{target}: {}", r.json);
    }
    // Every GA version the SDKs have shipped is served.
    for version in ["2021-03-07", "2022-06-01", "2022-10-01", "2023-10-01"] {
        let r = c
            .call(
                Method::POST,
                &format!("/identities?api-version={version}"),
                None,
            )
            .await;
        assert_eq!(r.status, 201, "{version}");
    }
}

#[tokio::test]
async fn custom_id_and_get_on_the_preview_version() {
    let (_emu, c) = start(EmulatorConfig::default()).await;
    let create = format!("/identities?api-version={PREVIEW}");
    let body = r#"{"customId":"uid-1234","createTokenWithScopes":["chat"],"expiresInMinutes":60}"#;
    let first = c.call(Method::POST, &create, Some(body)).await;
    assert_eq!(first.status, 201, "{}", first.json);
    assert_eq!(first.json["identity"]["customId"], "uid-1234");
    let again = c
        .call(Method::POST, &create, Some(r#"{"customId":"uid-1234"}"#))
        .await;
    // 201 with the same identity, as the live service answers (recorded sessions).
    assert_eq!(again.status, 201);
    assert_eq!(again.json["identity"]["id"], first.json["identity"]["id"]);
    assert!(again.json["identity"]["lastTokenIssuedAt"].is_string());
    assert!(again.json.get("accessToken").is_none());

    let id = first.json["identity"]["id"].as_str().unwrap();
    let got = c
        .call(
            Method::GET,
            &format!("/identities/{}?api-version={PREVIEW}", enc(id)),
            None,
        )
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json["id"], id);
    assert_eq!(got.json["customId"], "uid-1234");

    // GA versions, the ones published after the previews included, and the second
    // preview (a copy of 2023-10-01; a later example names an `externalId`) have no
    // customId (ignored: every create is a new user) and no GET /identities/{id}.
    for version in [
        V,
        "2025-04-01-preview",
        "2025-06-30",
        "2026-07-22",
        "2026-09-23",
    ] {
        let ga = format!("/identities?api-version={version}");
        let a = c
            .call(
                Method::POST,
                &ga,
                Some(r#"{"customId":"x","externalId":"x"}"#),
            )
            .await;
        let b = c
            .call(
                Method::POST,
                &ga,
                Some(r#"{"customId":"x","externalId":"x"}"#),
            )
            .await;
        assert_eq!((a.status, b.status), (201, 201), "{version}");
        assert_ne!(
            a.json["identity"]["id"], b.json["identity"]["id"],
            "{version}"
        );
        assert!(a.json["identity"].get("customId").is_none(), "{version}");
        let get = c
            .call(
                Method::GET,
                &format!("/identities/{}?api-version={version}", enc(id)),
                None,
            )
            .await;
        assert_eq!(get.status, 404, "{version}: {}", get.json);
    }
}

#[tokio::test]
async fn bad_input_gets_400_404_or_413_with_error_json() {
    let (_emu, c) = start(EmulatorConfig::default()).await;
    let id = c.create_user().await;
    let create = format!("/identities?api-version={V}");
    for (body, why) in [
        (
            r#"{"scopes":["voip"],"expiresInMinutes":59}"#,
            "expiry below 60",
        ),
        (
            r#"{"scopes":["voip"],"expiresInMinutes":1441}"#,
            "expiry above 1440",
        ),
        (
            r#"{"scopes":["voip"],"expiresInMinutes":"60"}"#,
            "expiry as a string",
        ),
        (r#"{"scopes":["admin"]}"#, "unknown scope"),
        (r#"{"scopes":[]}"#, "no scope"),
        (r#"{"scopes":"voip"}"#, "scopes not a list"),
        (r#"{"scopes":["voip"]"#, "truncated JSON"),
        ("", "no body"),
        ("[1,2,3]", "not an object"),
    ] {
        let r = c.issue(&id, body).await;
        assert_eq!(r.status, 400, "{why}: {}", r.json);
        assert!(r.json["error"]["message"].is_string(), "{why}");
    }
    // A create with a bad token request leaves no user behind.
    let r = c
        .call(
            Method::POST,
            &create,
            Some(r#"{"createTokenWithScopes":["nope"]}"#),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = c
        .call(
            Method::POST,
            &create,
            Some(r#"{"createTokenWithScopes":["chat"],"expiresInMinutes":30}"#),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = c.call(Method::POST, &create, Some("{not json")).await;
    assert_eq!((r.status, r.code()), (400, "InvalidRequestBody"));
    assert_eq!(
        c.admin(Method::GET, "/admin/identities", None)
            .await
            .json
            .as_array()
            .unwrap()
            .len(),
        1
    );

    for bad_id in ["nobody", "8:acs:not-a-guid_x", "8%3Aacs%3A", "%FF%FE"] {
        let r = c
            .call(
                Method::POST,
                &format!("/identities/{bad_id}/:issueAccessToken?api-version={V}"),
                Some(r#"{"scopes":["chat"]}"#),
            )
            .await;
        assert_eq!(r.status, 400, "{bad_id}: {}", r.json);
    }
    // An id of this resource that was never created (another resource's id is a 401,
    // see `ids_of_another_resource_are_401_identity_not_owned`).
    let resource = id
        .strip_prefix("8:acs:")
        .and_then(|r| r.split_once('_'))
        .unwrap()
        .0;
    let unknown = format!("8:acs:{resource}_{}", uuid::Uuid::new_v4());
    let r = c
        .call(
            Method::DELETE,
            &format!("/identities/{}?api-version={V}", enc(&unknown)),
            None,
        )
        .await;
    assert_eq!(r.status, 404);

    let huge = format!(r#"{{"scopes":["chat"],"pad":"{}"}}"#, "x".repeat(200_000));
    let r = c.issue(&id, &huge).await;
    assert_eq!((r.status, r.code()), (413, "RequestEntityTooLarge"));
}

#[tokio::test]
async fn token_issued_right_after_a_revoke_is_valid() {
    let (_emu, c) = start(EmulatorConfig::default()).await;
    let id = c.create_user().await;
    let revoke = format!(
        "/identities/{}/:revokeAccessTokens?api-version={V}",
        enc(&id)
    );
    for _ in 0..5 {
        let old = c.issue(&id, r#"{"scopes":["chat"]}"#).await.json["token"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(c.call(Method::POST, &revoke, None).await.status, 204);
        let new = c.issue(&id, r#"{"scopes":["chat"]}"#).await.json["token"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(c.validate(&old).await, (false, "revoked".to_string()));
        assert_eq!(c.validate(&new).await, (true, "valid".to_string()));
    }
    let (valid, reason) = c.validate("a.b.c").await;
    assert!(!valid && !reason.is_empty());
}

#[tokio::test]
async fn token_lifetime_scale_shortens_tokens_and_payload_reads_like_python() {
    let config = EmulatorConfig {
        token_lifetime_scale: 0.01,
        ..EmulatorConfig::default()
    };
    let (_emu, c) = start(config).await;
    let id = c.create_user().await;
    let r = c
        .issue(
            &id,
            r#"{"scopes":["voip","chat.join.limited"],"expiresInMinutes":60}"#,
        )
        .await;
    let token = r.json["token"].as_str().unwrap();
    let payload = token.split('.').nth(1).unwrap();
    assert!(!payload.contains(['-', '_']));
    let padded = format!("{payload}{}", "=".repeat((4 - payload.len() % 4) % 4));
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(padded)
            .unwrap(),
    )
    .unwrap();
    let expires_on: jiff::Timestamp = r.json["expiresOn"].as_str().unwrap().parse().unwrap();
    assert_eq!(claims["exp"].as_i64().unwrap(), expires_on.as_second());
    assert_eq!(
        claims["skypeid"]
            .as_str()
            .map(|s| format!("8:{s}"))
            .unwrap(),
        id
    );
    assert_eq!(claims["acsScope"], "voip,chat.join.limited");
    let lifetime = expires_on.as_second() - claims["iat"].as_i64().unwrap();
    assert_eq!(lifetime, 36);
}

#[tokio::test]
async fn retired_api_of_the_original_quickstart() {
    let (_emu, c) = start(EmulatorConfig::default()).await;
    let date = Tweak {
        date_header: Some("date"),
        ..Tweak::default()
    };
    let r = c
        .call_tweaked(
            Method::POST,
            &format!("/identities?api-version={LEGACY}"),
            None,
            date.clone(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    let id = r.json["id"].as_str().unwrap().to_string();
    let r = c
        .call_tweaked(
            Method::POST,
            &format!("/identities/{}/token?api-version={LEGACY}", enc(&id)),
            Some(r#"{"scopes": ["voip"]}"#),
            date.clone(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["id"], id.as_str());
    let token = r.json["token"].as_str().unwrap().to_string();
    let expires_on: jiff::Timestamp = r.json["expiresOn"].as_str().unwrap().parse().unwrap();
    assert!(expires_on.as_second() - jiff::Timestamp::now().as_second() > 24 * 3600 - 10);
    let r = c
        .call_tweaked(
            Method::PATCH,
            &format!("/identities/{}?api-version={LEGACY}", enc(&id)),
            Some("{}"),
            date.clone(),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.json);
    assert_eq!(c.validate(&token).await.1, "revoked");
    let r = c
        .call_tweaked(
            Method::DELETE,
            &format!("/identities/{}?api-version={LEGACY}", enc(&id)),
            None,
            date,
        )
        .await;
    assert_eq!(r.status, 204);
}

#[tokio::test]
async fn admin_key_is_required_when_configured() {
    let config = EmulatorConfig {
        admin_key: Some("s3cret".into()),
        ..EmulatorConfig::default()
    };
    let (_emu, c) = start(config).await;
    let r = c.admin(Method::GET, "/admin/stats", None).await;
    assert_eq!((r.status, r.code()), (401, "Denied"));
    let r = c
        .http
        .get(format!("{}/admin/stats", c.endpoint))
        .header("x-admin-key", "s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c.admin(Method::GET, "/admin/nothing-here", None).await;
    assert_eq!(r.status, 401, "the key is checked before the route");
}

#[tokio::test]
async fn garbage_on_the_wire_never_takes_the_server_down() {
    let (emu, c) = start(EmulatorConfig::default()).await;
    let junk: [&[u8]; 5] = [
        b"\x00\x01\x02\xff\xfe garbage\r\n\r\n",
        b"GET /identities/%ZZ%?api-version=2023-10-01 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /identities?api-version=2023-10-01 HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n",
        b"POST /identities?api-version=2023-10-01 HTTP/1.1\r\nHost: x\r\nAuthorization: HMAC-SHA256 &&&==\r\nx-ms-date: yesterday\r\nContent-Length: 3\r\n\r\n{{{",
        b"DELETE /admin/faults HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ];
    for bytes in junk {
        let mut stream = tokio::net::TcpStream::connect(emu.addr()).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut buf)).await;
    }
    for auth in [
        "",
        "HMAC-SHA256",
        "HMAC-SHA256 SignedHeaders=&Signature=",
        "Bearer x.y.z",
        "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature=!!",
    ] {
        let r = c
            .http
            .post(format!("{}/identities?api-version={V}", c.endpoint))
            .header("authorization", auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
    }
    let r = c
        .admin(
            Method::POST,
            "/admin/tokens:validate",
            Some(json!({"nope": 1})),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = c
        .admin(
            Method::POST,
            "/admin/faults",
            Some(json!({"status": 503, "probability": 7})),
        )
        .await;
    assert_eq!(r.status, 400);
    // Still serving.
    c.create_user().await;
}

/// The spec's 200 for a found custom id stays available for tests of clients that must not
/// tell the two answers apart.
#[tokio::test]
async fn found_custom_id_status_can_be_the_specs_200() {
    let (_emu, c) = start(EmulatorConfig {
        found_custom_id_status: 200,
        ..EmulatorConfig::default()
    })
    .await;
    let create = format!("/identities?api-version={PREVIEW}");
    let first = c
        .call(Method::POST, &create, Some(r#"{"customId":"a"}"#))
        .await;
    let again = c
        .call(Method::POST, &create, Some(r#"{"customId":"a"}"#))
        .await;
    assert_eq!((first.status, again.status), (201, 200));
    assert_eq!(again.json["identity"]["id"], first.json["identity"]["id"]);
}

/// Ids embed their resource (`8:acs:<resource>_<user>`): a well-formed id of another
/// resource is 401 `IdentityNotOwned` on issue, revoke, delete and get, as the live service
/// answers; an unknown id of this resource stays 404.
#[tokio::test]
async fn ids_of_another_resource_are_401_identity_not_owned() {
    let (emu, c) = start(EmulatorConfig::default()).await;
    let other = format!("8:acs:{}_{}", uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let unknown = format!("8:acs:{}_{}", emu.resource_id(), uuid::Uuid::new_v4());
    for (method, target, body) in [
        (
            Method::POST,
            "/:issueAccessToken",
            Some(r#"{"scopes":["chat"]}"#),
        ),
        (Method::POST, "/:revokeAccessTokens", None),
        (Method::DELETE, "", None),
    ] {
        let r = c
            .call(
                method.clone(),
                &format!("/identities/{}{target}?api-version={V}", enc(&other)),
                body,
            )
            .await;
        assert_eq!(
            (r.status, r.code()),
            (401, "IdentityNotOwned"),
            "{method} {target}"
        );
        assert_eq!(
            r.json["error"]["message"],
            "Provided identity doesn't belong to the resource."
        );
        let r = c
            .call(
                method.clone(),
                &format!("/identities/{}{target}?api-version={V}", enc(&unknown)),
                body,
            )
            .await;
        assert_eq!(
            (r.status, r.code()),
            (404, "IdentityNotFound"),
            "{method} {target}"
        );
    }
    let r = c
        .call(
            Method::GET,
            &format!("/identities/{}?api-version={PREVIEW}", enc(&other)),
            None,
        )
        .await;
    assert_eq!((r.status, r.code()), (401, "IdentityNotOwned"));
}

/// Validation errors name their field in `error.target`, with the live service's code and
/// message (recorded: `ExpiresInMinutes value 59 is invalid. ...`).
#[tokio::test]
async fn validation_errors_carry_their_target() {
    let (_emu, c) = start(EmulatorConfig::default()).await;
    let r = c
        .call(
            Method::POST,
            &format!("/identities?api-version={V}"),
            Some(r#"{"createTokenWithScopes":["chat"],"expiresInMinutes":59}"#),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json["error"],
        json!({
            "code": "ValidationError",
            "message": "ExpiresInMinutes value 59 is invalid. Value must be within the [60, 1440] interval.",
            "target": "ExpiresInMinutes"
        })
    );
    let id = c.create_user().await;
    let r = c
        .issue(&id, r#"{"scopes":["chat"],"expiresInMinutes":1441}"#)
        .await;
    assert_eq!(r.json["error"]["target"], "ExpiresInMinutes");
    let r = c.issue(&id, r#"{"scopes":["nope"]}"#).await;
    assert_eq!((r.status, r.code()), (400, "ValidationError"));
    assert_eq!(r.json["error"]["target"], "Scopes");
}

/// Every answer, success or error, carries an `MS-CV` correlation vector and echoes the
/// caller's `x-ms-client-request-id`; `expiresOn` is written as the service writes it.
#[tokio::test]
async fn answers_carry_ms_cv_and_the_client_request_id() {
    let (_emu, c) = start(EmulatorConfig::default()).await;
    let with_id = |id: &str| Tweak {
        headers: vec![("x-ms-client-request-id", id.to_string())],
        ..Tweak::default()
    };
    let cv = regex_lite_cv;
    for (method, target, body, status) in [
        (
            Method::POST,
            format!("/identities?api-version={V}"),
            Some(r#"{"createTokenWithScopes":["voip"]}"#),
            201,
        ),
        (
            Method::POST,
            "/identities?api-version=1999-01-01".to_string(),
            None,
            400,
        ),
        (Method::POST, format!("/nowhere?api-version={V}"), None, 404),
    ] {
        let r = c
            .call_tweaked(
                method,
                &target,
                body,
                with_id("3f7a1c2e-0000-4000-8000-000000000001"),
            )
            .await;
        assert_eq!(r.status, status, "{target}: {}", r.json);
        let header = |n: &str| r.headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
        assert!(cv(header("ms-cv")), "{target}: MS-CV {:?}", header("ms-cv"));
        assert_eq!(
            header("x-ms-client-request-id"),
            "3f7a1c2e-0000-4000-8000-000000000001",
            "{target}"
        );
        assert!(header("api-supported-versions").contains("2023-10-01"));
        if status == 201 {
            let expires_on = r.json["accessToken"]["expiresOn"].as_str().unwrap();
            assert!(expires_on_shape(expires_on), "{expires_on}");
        }
    }
    let bad_signature = Tweak {
        no_auth: true,
        ..with_id("x")
    };
    let r = c
        .call_tweaked(
            Method::POST,
            &format!("/identities?api-version={V}"),
            None,
            bad_signature,
        )
        .await;
    assert_eq!(r.status, 401);
    assert!(r.headers.contains_key("ms-cv"));
    assert_eq!(r.headers["x-ms-client-request-id"], "x");
}

/// `<22 base64 chars>.0`, as the live service's first hop sends it.
fn regex_lite_cv(v: &str) -> bool {
    let Some((head, tail)) = v.split_once('.') else {
        return false;
    };
    head.len() == 22
        && head
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        && tail == "0"
}

/// `YYYY-MM-DDTHH:MM:SS[.f{1,7}]+00:00`.
fn expires_on_shape(v: &str) -> bool {
    let Some(rest) = v.strip_suffix("+00:00") else {
        return false;
    };
    let (whole, fraction) = rest.split_once('.').unwrap_or((rest, ""));
    jiff::civil::DateTime::strptime("%Y-%m-%dT%H:%M:%S", whole).is_ok()
        && fraction.len() <= 7
        && fraction.bytes().all(|b| b.is_ascii_digit())
        && !fraction.ends_with('0')
}

#[tokio::test]
async fn expires_on_has_the_services_precision() {
    let (_emu, c) = start(EmulatorConfig::default()).await;
    let id = c.create_user().await;
    // Sub-second precision is there nearly always (1 in 10^7 a fraction of zero).
    let mut with_fraction = 0;
    for _ in 0..3 {
        let r = c.issue(&id, r#"{"scopes":["chat"]}"#).await;
        let v = r.json["expiresOn"].as_str().unwrap().to_string();
        assert!(expires_on_shape(&v), "{v}");
        with_fraction += usize::from(v.contains('.'));
        let t: jiff::Timestamp = v.parse().unwrap();
        // The JWT's exp is the same instant's whole second.
        let token = r.json["token"].as_str().unwrap();
        let payload = token.split('.').nth(1).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::STANDARD
                .decode(format!(
                    "{payload}{}",
                    "=".repeat((4 - payload.len() % 4) % 4)
                ))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["exp"].as_i64().unwrap(), t.as_second(), "{v}");
    }
    assert!(with_fraction >= 2);
}

/// 2023-08-01 takes `Repeatability-Request-ID` / `Repeatability-First-Sent` on create: the
/// same request id within the window gets the first answer again (status and body, same
/// user and token) and makes nothing; other versions ignore the headers.
#[tokio::test]
async fn repeatable_creates_on_2023_08_01() {
    let (_emu, c) = start(EmulatorConfig::default()).await;
    let repeat = |id: &str, first_sent: SystemTime| Tweak {
        headers: vec![
            ("repeatability-request-id", id.to_string()),
            (
                "repeatability-first-sent",
                httpdate::fmt_http_date(first_sent),
            ),
        ],
        ..Tweak::default()
    };
    let create = "/identities?api-version=2023-08-01";
    let body = Some(r#"{"createTokenWithScopes":["chat"]}"#);
    let id = uuid::Uuid::new_v4().to_string();
    let sent = SystemTime::now();
    let a = c
        .call_tweaked(Method::POST, create, body, repeat(&id, sent))
        .await;
    let b = c
        .call_tweaked(Method::POST, create, body, repeat(&id, sent))
        .await;
    assert_eq!((a.status, b.status), (201, 201), "{}", b.json);
    assert_eq!(a.json, b.json, "the first answer, token included");
    for r in [&a, &b] {
        assert_eq!(r.headers["repeatability-result"], "accepted");
    }
    let users = |r: &support::signing::Reply| r.json.as_array().map_or(0, Vec::len);
    assert_eq!(
        users(&c.admin(Method::GET, "/admin/identities", None).await),
        1
    );
    // Another request id is another create.
    let other = c
        .call_tweaked(
            Method::POST,
            create,
            body,
            repeat(&uuid::Uuid::new_v4().to_string(), sent),
        )
        .await;
    assert_eq!(other.status, 201);
    assert_ne!(other.json["identity"]["id"], a.json["identity"]["id"]);
    // A request id needs a first-sent date in the window, and must be a UUID.
    let missing = Tweak {
        headers: vec![("repeatability-request-id", uuid::Uuid::new_v4().to_string())],
        ..Tweak::default()
    };
    let stale = sent - Duration::from_secs(3600);
    for tweak in [
        missing,
        repeat(&uuid::Uuid::new_v4().to_string(), stale),
        repeat("not-a-uuid", sent),
    ] {
        let r = c.call_tweaked(Method::POST, create, body, tweak).await;
        assert_eq!((r.status, r.code()), (400, "ValidationError"), "{}", r.json);
        assert_eq!(r.headers["repeatability-result"], "rejected");
    }
    assert_eq!(
        users(&c.admin(Method::GET, "/admin/identities", None).await),
        2
    );
    // 2023-10-01 has no such headers: each request is a create.
    let later = format!("/identities?api-version={V}");
    let x = c
        .call_tweaked(Method::POST, &later, body, repeat(&id, sent))
        .await;
    let y = c
        .call_tweaked(Method::POST, &later, body, repeat(&id, sent))
        .await;
    assert_ne!(x.json["identity"]["id"], y.json["identity"]["id"]);
    assert!(!x.headers.contains_key("repeatability-result"));
}

/// The first previews of the current routes are published (and listed by the live
/// service's `api-supported-versions`): served, not refused.
#[tokio::test]
async fn the_first_previews_are_served() {
    let (_emu, c) = start(EmulatorConfig::default()).await;
    for version in ["2021-02-22-preview1", "2021-03-31-preview1"] {
        let r = c
            .call(
                Method::POST,
                &format!("/identities?api-version={version}"),
                Some(r#"{"createTokenWithScopes":["chat"]}"#),
            )
            .await;
        assert_eq!(r.status, 201, "{version}: {}", r.json);
        assert!(r.json["accessToken"]["token"].is_string());
    }
}

/// Each served api-version's `CommunicationIdentityTokenScope` and whether its issue and
/// create bodies have `expiresInMinutes`, read from its own
/// `{stable,preview}/<version>/CommunicationIdentity.json` (azure-rest-api-specs,
/// `specification/communication/data-plane/Identity/`).
const CHAT_VOIP: &[&str] = &["chat", "voip"];
const WITH_JOIN: &[&str] = &[
    "chat",
    "voip",
    "chat.join",
    "chat.join.limited",
    "voip.join",
];
const PUBLISHED: &[(&str, &[&str], bool, bool)] = &[
    // (version, scopes, expiresInMinutes on issue, on create)
    ("2021-02-22-preview1", CHAT_VOIP, false, false),
    ("2021-03-07", CHAT_VOIP, false, false),
    ("2021-03-31-preview1", CHAT_VOIP, false, false),
    ("2021-10-31-preview", CHAT_VOIP, false, false),
    ("2022-06-01", CHAT_VOIP, false, false),
    ("2022-09-01", CHAT_VOIP, true, false),
    ("2022-10-01", CHAT_VOIP, true, true),
    ("2023-08-01", CHAT_VOIP, true, true),
    ("2023-10-01", WITH_JOIN, true, true),
    ("2025-03-02-preview", WITH_JOIN, true, true),
    ("2025-04-01-preview", WITH_JOIN, true, true),
    ("2025-06-30", WITH_JOIN, true, true),
    ("2026-07-22", WITH_JOIN, true, true),
    ("2026-09-23", WITH_JOIN, true, true),
];

fn issue_target(id: &str, version: &str) -> String {
    format!(
        "/identities/{}/:issueAccessToken?api-version={version}",
        enc(id)
    )
}

/// A field the version lacks is refused as the service refuses an invalid field: 400
/// `ValidationError` with `error.target`, and a message.
fn assert_refused(r: &support::signing::Reply, target: &str, what: &str) {
    assert_eq!(r.status, 400, "{what}: {}", r.json);
    assert_eq!(r.code(), "ValidationError", "{what}: {}", r.json);
    assert_eq!(r.json["error"]["target"], target, "{what}: {}", r.json);
    assert!(r.json["error"]["message"].is_string(), "{what}: {}", r.json);
}

/// Every served version issues tokens (and creates users with one) for exactly the
/// scopes its specification lists: `chat.join`, `chat.join.limited` and `voip.join` only
/// from `2023-10-01` on; a refused create makes no user.
#[tokio::test]
async fn each_version_takes_exactly_its_own_scopes() {
    let (_emu, c) = start(EmulatorConfig::default()).await;
    let id = c.create_user().await;
    let mut users = 1;
    for &(version, scopes, _, _) in PUBLISHED {
        for scope in WITH_JOIN {
            let what = format!("{version} {scope}");
            let has = scopes.contains(scope);
            let body = format!(r#"{{"scopes":["{scope}"]}}"#);
            let r = c
                .call(Method::POST, &issue_target(&id, version), Some(&body))
                .await;
            if has {
                assert_eq!(r.status, 200, "issue {what}: {}", r.json);
                assert!(r.json["token"].is_string(), "{what}");
            } else {
                assert_refused(&r, "Scopes", &format!("issue {what}"));
                let listed = r.json["error"]["message"].as_str().unwrap();
                assert!(listed.contains(scope), "{what}: {listed}");
            }
            let body = format!(r#"{{"createTokenWithScopes":["chat","{scope}"]}}"#);
            let r = c
                .call(
                    Method::POST,
                    &format!("/identities?api-version={version}"),
                    Some(&body),
                )
                .await;
            if has {
                assert_eq!(r.status, 201, "create {what}: {}", r.json);
                assert!(r.json["accessToken"]["token"].is_string(), "{what}");
                users += 1;
            } else {
                assert_refused(&r, "Scopes", &format!("create {what}"));
            }
        }
    }
    let listed = c.admin(Method::GET, "/admin/identities", None).await.json;
    assert_eq!(
        listed.as_array().unwrap().len(),
        users,
        "refused creates made users"
    );
}

/// `expiresInMinutes` is taken (60 to 1440, the token living that long) where the
/// version's body has it, and refused with `error.target` where it has not: on neither
/// body before `2022-09-01`, on issue only in `2022-09-01`. Without it every version
/// issues the default 24 h token.
#[tokio::test]
async fn each_version_reads_expires_in_minutes_only_where_published() {
    let (_emu, c) = start(EmulatorConfig::default()).await;
    let id = c.create_user().await;
    let lifetime = |token: &serde_json::Value| {
        let on: jiff::Timestamp = token["expiresOn"].as_str().unwrap().parse().unwrap();
        on.as_second() - jiff::Timestamp::now().as_second()
    };
    for &(version, _, on_issue, on_create) in PUBLISHED {
        let create = format!("/identities?api-version={version}");
        // Issue.
        let r = c
            .call(
                Method::POST,
                &issue_target(&id, version),
                Some(r#"{"scopes":["chat"],"expiresInMinutes":60}"#),
            )
            .await;
        if on_issue {
            assert_eq!(r.status, 200, "issue {version}: {}", r.json);
            let left = lifetime(&r.json);
            assert!((3590..=3600).contains(&left), "{version}: {left}");
            let r = c
                .call(
                    Method::POST,
                    &issue_target(&id, version),
                    Some(r#"{"scopes":["chat"],"expiresInMinutes":59}"#),
                )
                .await;
            assert_refused(&r, "ExpiresInMinutes", &format!("issue 59 {version}"));
        } else {
            // A property the version does not define is ignored: the default 24 h.
            assert_eq!(r.status, 200, "issue {version}: {}", r.json);
            let left = lifetime(&r.json);
            assert!((86_390..=86_400).contains(&left), "{version}: {left}");
        }
        let r = c
            .call(
                Method::POST,
                &issue_target(&id, version),
                Some(r#"{"scopes":["voip"]}"#),
            )
            .await;
        assert_eq!(r.status, 200, "issue {version} without expiry: {}", r.json);
        let left = lifetime(&r.json);
        assert!((86_390..=86_400).contains(&left), "{version}: {left}");
        // Create with a token.
        let r = c
            .call(
                Method::POST,
                &create,
                Some(r#"{"createTokenWithScopes":["voip"],"expiresInMinutes":120}"#),
            )
            .await;
        if on_create {
            assert_eq!(r.status, 201, "create {version}: {}", r.json);
            let left = lifetime(&r.json["accessToken"]);
            assert!((7190..=7200).contains(&left), "{version}: {left}");
        } else {
            assert_eq!(r.status, 201, "create {version}: {}", r.json);
            let left = lifetime(&r.json["accessToken"]);
            assert!((86_390..=86_400).contains(&left), "{version}: {left}");
        }
        let r = c
            .call(
                Method::POST,
                &create,
                Some(r#"{"createTokenWithScopes":["voip"]}"#),
            )
            .await;
        assert_eq!(r.status, 201, "create {version} without expiry: {}", r.json);
        let left = lifetime(&r.json["accessToken"]);
        assert!((86_390..=86_400).contains(&left), "{version}: {left}");
    }
}
