//! The ACS client against the in-process ACS emulator, over HTTP and over TLS: the whole
//! identity lifecycle as the operator drives it, and the errors it must tell apart.

mod support;

use std::time::Duration;

use acs_identity_operator::acs::{
    AccessKey, AccessToken, AcsClient, AcsClientOptions, AcsError, ConnectionString, QuotaConfig,
    RetryPolicy, Standing, TokenScope,
};
use acs_identity_operator::emulator::{self, EmulatorConfig, QuotaLimit, RunningEmulator};
use jiff::{SignedDuration, Timestamp};
use support::emulator::{AcsUser, Admin, Stats};

async fn start(tls: bool) -> RunningEmulator {
    emulator::spawn(EmulatorConfig {
        tls,
        ..EmulatorConfig::default()
    })
    .await
    .expect("emulator starts")
}

fn options(emu: &RunningEmulator, api_version: &str) -> AcsClientOptions {
    AcsClientOptions {
        api_version: api_version.into(),
        extra_ca_pem: emu.ca_pem().map(|p| p.as_bytes().to_vec()),
        request_timeout: Duration::from_secs(10),
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
            max_retry_after: Duration::from_secs(5),
        },
        allow_insecure_endpoints: true,
        ..AcsClientOptions::default()
    }
}

fn client(emu: &RunningEmulator, options: AcsClientOptions) -> AcsClient {
    let cs = ConnectionString::parse(&emu.connection_string()).expect("emulator connection string");
    AcsClient::new(&cs, options).expect("client builds")
}

async fn token_valid(emu: &RunningEmulator, t: &AccessToken) -> bool {
    Admin::of(emu).validate(t.token.expose_secret()).await.0
}

async fn admin_identity(emu: &RunningEmulator, id: &str) -> AcsUser {
    Admin::of(emu)
        .identity(id)
        .await
        .unwrap_or_else(|| panic!("{id} not in the emulator's state"))
}

fn assert_expires_in(t: &AccessToken, minutes: i64) {
    let want = Timestamp::now() + SignedDuration::from_mins(minutes);
    let off = (t.expires_on - want).get_seconds().abs();
    assert!(off < 120, "expires {} want about {want}", t.expires_on);
}

async fn full_flow(tls: bool) {
    let emu = start(tls).await;
    assert_eq!(emu.endpoint().starts_with("https://"), tls);
    let c = client(&emu, options(&emu, "2023-10-01"));
    assert!(!c.has_worked(), "no request made yet");

    // Create without and with a token.
    let plain = c.create_user(None, None, None).await.unwrap();
    assert!(plain.created && plain.token.is_none());
    // What lets a service's quota count towards its resource's budget.
    assert!(c.has_worked(), "ACS accepted the key");
    assert!(plain.user.id.starts_with("8:acs:"), "{}", plain.user.id);
    let created = c
        .create_user(Some(&[TokenScope::Chat, TokenScope::Voip]), Some(60), None)
        .await
        .unwrap();
    let first = created.token.expect("token with scopes");
    assert_expires_in(&first, 60);
    assert!(token_valid(&emu, &first).await);
    let id = created.user.id;

    // Issue: a second token, default and explicit lifetimes.
    let second = c
        .issue_token(
            &id,
            &[TokenScope::ChatJoin, TokenScope::VoipJoin],
            Some(1440),
        )
        .await
        .unwrap();
    assert_expires_in(&second, 1440);
    let third = c.issue_token(&id, &[TokenScope::Chat], None).await.unwrap();
    assert_expires_in(&third, 1440);
    assert!(token_valid(&emu, &second).await && token_valid(&emu, &third).await);

    // Revoke kills every earlier token; one issued right after is valid.
    c.revoke_tokens(&id).await.unwrap();
    assert!(!token_valid(&emu, &first).await);
    assert!(!token_valid(&emu, &third).await);
    let after_revoke = c
        .issue_token(&id, &[TokenScope::Chat], Some(60))
        .await
        .unwrap();
    assert!(token_valid(&emu, &after_revoke).await);

    // Delete; afterwards the user is a 404 everywhere, and the operator's delete-404 is "done".
    c.delete_user(&id).await.unwrap();
    assert!(admin_identity(&emu, &id).await.deleted);
    assert!(!token_valid(&emu, &after_revoke).await);
    let e = c
        .issue_token(&id, &[TokenScope::Chat], None)
        .await
        .unwrap_err();
    assert!(e.is_not_found() && !e.is_retryable(), "{e:?}");
    let e = c.revoke_tokens(&id).await.unwrap_err();
    assert!(e.is_not_found(), "{e:?}");
    match c.delete_user(&id).await {
        Ok(()) => {}
        Err(e) => assert!(e.is_not_found(), "{e:?}"),
    }
    c.delete_user(&plain.user.id).await.unwrap();

    // 400s: unknown scope, lifetime outside 60..=1440.
    let other = c.create_user(None, None, None).await.unwrap().user.id;
    for (scopes, minutes) in [
        (vec![TokenScope::Other("chat.admin".into())], None),
        (vec![TokenScope::Chat], Some(59)),
        (vec![TokenScope::Chat], Some(1441)),
    ] {
        let e = c.issue_token(&other, &scopes, minutes).await.unwrap_err();
        assert_eq!(e.status(), Some(400), "{scopes:?} {minutes:?}: {e:?}");
        assert!(!e.is_retryable() && e.code().is_some(), "{e:?}");
    }
    let e = c
        .create_user(Some(&[TokenScope::Voip]), Some(10), None)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400), "{e:?}");

    // 401: a wrong key is refused, not retried, and the error does not carry the key.
    let wrong_key = AccessKey::from_base64("d3Jvbmcta2V5LWJ5dGVz").unwrap();
    let cs = ConnectionString::new(url::Url::parse(emu.endpoint()).unwrap(), wrong_key.clone());
    let bad = AcsClient::new(&cs, options(&emu, "2023-10-01")).unwrap();
    let e = bad
        .issue_token(&other, &[TokenScope::Chat], None)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(401), "{e:?}");
    assert!(e.is_unauthorized() && !e.is_retryable());
    assert!(!format!("{e} {e:?}").contains(&wrong_key.to_base64()));
    assert_eq!(admin_identity(&emu, &other).await.tokens_issued, 0);
    assert!(!bad.has_worked(), "a refused key never counts as working");

    emu.shutdown().await;
}

#[tokio::test]
async fn full_flow_over_http() {
    full_flow(false).await;
}

#[tokio::test]
async fn full_flow_over_tls() {
    full_flow(true).await;
}

#[tokio::test]
async fn tls_without_the_ca_is_refused() {
    let emu = start(true).await;
    let c = client(
        &emu,
        AcsClientOptions {
            extra_ca_pem: None,
            retry: RetryPolicy::no_retries(),
            ..options(&emu, "2023-10-01")
        },
    );
    let e = c.create_user(None, None, None).await.unwrap_err();
    assert!(matches!(e, AcsError::Transport { .. }), "{e:?}");
    emu.shutdown().await;
}

#[tokio::test]
async fn custom_id_makes_create_idempotent_and_get_reads_it() {
    let emu = start(false).await;
    let c = client(&emu, options(&emu, "2025-03-02-preview"));
    let first = c
        .create_user(Some(&[TokenScope::Chat]), Some(60), Some("uid-1234"))
        .await
        .unwrap();
    assert!(first.created && first.token.is_some());
    assert_eq!(first.user.custom_id.as_deref(), Some("uid-1234"));
    let again = c.create_user(None, None, Some("uid-1234")).await.unwrap();
    assert_eq!(again.user.id, first.user.id, "same custom id, same user");
    assert!(
        again.created,
        "answered 201 as the live service does: not a signal"
    );

    let got = c.get_user(&first.user.id).await.unwrap();
    assert_eq!(got.id, first.user.id);
    assert_eq!(got.custom_id.as_deref(), Some("uid-1234"));
    assert!(got.last_token_issued_at.is_some());

    c.delete_user(&first.user.id).await.unwrap();
    let e = c.get_user(&first.user.id).await.unwrap_err();
    assert!(e.is_not_found(), "{e:?}");

    // The SDKs' default version and the GA versions published after the previews have no
    // custom ids: the id is not sent, each create is new, and there is no GET.
    for version in [
        "2023-10-01",
        "2025-04-01-preview",
        "2025-06-30",
        "2026-07-22",
    ] {
        let old = client(&emu, options(&emu, version));
        assert!(!old.supports_custom_id(), "{version}");
        let a = old.create_user(None, None, Some("uid-x")).await.unwrap();
        let b = old.create_user(None, None, Some("uid-x")).await.unwrap();
        assert_ne!(a.user.id, b.user.id, "{version}");
        assert!(matches!(
            old.get_user(&a.user.id).await,
            Err(AcsError::Unsupported { .. })
        ));
    }
    emu.shutdown().await;
}

/// An emulator that admits `max` token issues per `window` and answers 429 beyond.
async fn with_issue_quota(max: u32, window: Duration) -> RunningEmulator {
    let mut config = EmulatorConfig::default();
    config.quotas.insert(
        emulator::EmulatedOperation::Issue,
        QuotaLimit { max, window },
    );
    emulator::spawn(config).await.unwrap()
}

/// An emulator whose next create meets `fault` (once).
async fn with_create_fault(fault: emulator::FaultRule) -> RunningEmulator {
    emulator::spawn(EmulatorConfig {
        faults: vec![emulator::FaultRule {
            operation: Some(emulator::EmulatedOperation::Create),
            count: Some(1),
            ..fault
        }],
        ..EmulatorConfig::default()
    })
    .await
    .unwrap()
}

/// An emulator whose next `count` issues are refused with 401 (as a revoked key would be).
async fn with_issue_refusals(count: u64) -> RunningEmulator {
    emulator::spawn(EmulatorConfig {
        faults: vec![emulator::FaultRule {
            operation: Some(emulator::EmulatedOperation::Issue),
            status: Some(401),
            count: Some(count),
            ..emulator::FaultRule::default()
        }],
        ..EmulatorConfig::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn emulator_throttling_is_retried_after_retry_after() {
    let emu = with_issue_quota(2, Duration::from_secs(1)).await;
    let c = client(
        &emu,
        AcsClientOptions {
            // Only the server's quota applies, so the client meets its 429s.
            quota: QuotaConfig::unlimited(),
            ..options(&emu, "2023-10-01")
        },
    );
    let id = c.create_user(None, None, None).await.unwrap().user.id;
    let started = std::time::Instant::now();
    for _ in 0..3 {
        c.issue_token(&id, &[TokenScope::Chat], None).await.unwrap();
    }
    // The third waited for the emulator's Retry-After instead of failing.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    let no_retry = client(
        &emu,
        AcsClientOptions {
            quota: QuotaConfig::unlimited(),
            retry: RetryPolicy::no_retries(),
            ..options(&emu, "2023-10-01")
        },
    );
    let mut throttled = None;
    for _ in 0..5 {
        if let Err(e) = no_retry.issue_token(&id, &[TokenScope::Chat], None).await {
            throttled = Some(e);
            break;
        }
    }
    let e = throttled.expect("a 429 within five quick issues");
    assert_eq!(e.status(), Some(429));
    assert!(e.is_retryable() && e.retry_after().is_some(), "{e:?}");
    assert_eq!(e.metric_label(), "throttled");
    emu.shutdown().await;
}

/// Requests by operation and status, from the emulator's admin stats.
async fn stats(emu: &RunningEmulator) -> Stats {
    Admin::of(emu).stats().await
}

async fn live_users(emu: &RunningEmulator) -> usize {
    Admin::of(emu).live_users().await.len()
}

/// The answer to a create is lost after ACS made the user. Without custom ids a retry
/// would make a second, unrecorded user: the client does not retry and says the outcome
/// is unknown. With a custom id the retry returns the same user.
#[tokio::test]
async fn a_lost_create_answer_is_retried_only_with_custom_ids() {
    let lost_answer = |drop: bool| emulator::FaultRule {
        operation: None,
        status: (!drop).then_some(503),
        probability: 1.0,
        retry_after_seconds: None,
        latency_ms: None,
        count: None,
        drop,
        after_execute: true,
        ..emulator::FaultRule::default()
    };
    for version in ["2023-10-01", "2025-06-30", "2026-07-22"] {
        for drop in [true, false] {
            let emu = with_create_fault(lost_answer(drop)).await;
            let c = client(&emu, options(&emu, version));
            let e = c
                .create_user(Some(&[TokenScope::Chat]), None, Some("uid-1"))
                .await
                .unwrap_err();
            assert!(e.is_outcome_unknown(), "{version} drop={drop}: {e:?}");
            assert_eq!(
                stats(&emu).await.calls("create"),
                1,
                "{version}: one create sent, not retried"
            );
            assert_eq!(
                live_users(&emu).await,
                1,
                "{version}: the one user ACS made"
            );
            emu.shutdown().await;
        }
    }

    let emu = with_create_fault(lost_answer(true)).await;
    let c = client(&emu, options(&emu, "2025-03-02-preview"));
    let created = c
        .create_user(Some(&[TokenScope::Chat]), None, Some("uid-1"))
        .await
        .expect("retried with the same custom id");
    assert!(created.token.is_some());
    assert_eq!(
        live_users(&emu).await,
        1,
        "the retry found the user the lost answer made"
    );
    emu.shutdown().await;

    // 2023-08-01's repeatability headers make the same retry safe without custom ids: ACS
    // answers the repeated request id with the first answer.
    for drop in [true, false] {
        let emu = with_create_fault(lost_answer(drop)).await;
        let c = client(&emu, options(&emu, "2023-08-01"));
        let created = c
            .create_user(Some(&[TokenScope::Chat]), None, None)
            .await
            .unwrap_or_else(|e| panic!("drop={drop}: retried with the same request id: {e:?}"));
        assert_eq!(stats(&emu).await.calls("create"), 2, "drop={drop}");
        assert_eq!(live_users(&emu).await, 1, "drop={drop}: one user, not two");
        let token = created.token.expect("the first answer's token");
        assert!(token_valid(&emu, &token).await, "drop={drop}");
        emu.shutdown().await;
    }
}

/// 429 before ACS acted: retried even without custom ids.
#[tokio::test]
async fn a_throttled_create_is_retried_without_custom_ids() {
    let emu = with_create_fault(emulator::FaultRule {
        operation: None,
        status: Some(429),
        probability: 1.0,
        retry_after_seconds: Some(1),
        latency_ms: None,
        count: None,
        drop: false,
        after_execute: false,
        ..emulator::FaultRule::default()
    })
    .await;
    let c = client(&emu, options(&emu, "2025-06-30"));
    c.create_user(None, None, None).await.unwrap();
    assert_eq!(stats(&emu).await.requests["create"]["429"], 1);
    assert_eq!(live_users(&emu).await, 1);
    emu.shutdown().await;
}

/// One AcsClient per ACS resource is shared by every reconcile: when ACS answers 429 with
/// Retry-After, the other callers wait instead of collecting 429s of their own.
#[tokio::test]
async fn a_429_pauses_the_operation_for_every_caller_of_the_client() {
    let emu = with_issue_quota(1, Duration::from_secs(2)).await;
    let shared = client(
        &emu,
        AcsClientOptions {
            // Only the server's quota applies, and nobody retries: a second 429 would show.
            quota: QuotaConfig::unlimited(),
            retry: RetryPolicy::no_retries(),
            ..options(&emu, "2023-10-01")
        },
    );
    let id = shared.create_user(None, None, None).await.unwrap().user.id;
    shared
        .issue_token(&id, &[TokenScope::Chat], None)
        .await
        .unwrap();
    let e = shared
        .issue_token(&id, &[TokenScope::Chat], None)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(429), "{e:?}");

    // Another caller of the same client (a clone, as each reconcile holds one) waits out
    // the pause and succeeds on its first request.
    let other = shared.clone();
    let started = std::time::Instant::now();
    other
        .issue_token(&id, &[TokenScope::Chat], None)
        .await
        .expect("sent after the pause");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    let issued = stats(&emu).await.requests["issue"].clone();
    assert_eq!(issued["429"], 1, "{issued:?}");
    assert_eq!(issued["200"], 2, "{issued:?}");

    // A pause longer than the caller may wait comes back at once, with nothing sent.
    let impatient = client(
        &emu,
        AcsClientOptions {
            quota: QuotaConfig::unlimited(),
            retry: RetryPolicy {
                max_retry_after: Duration::from_millis(100),
                ..RetryPolicy::no_retries()
            },
            ..options(&emu, "2023-10-01")
        },
    );
    impatient
        .issue_token(&id, &[TokenScope::Chat], None)
        .await
        .unwrap_err();
    let before = stats(&emu).await.total;
    let e = impatient
        .issue_token(&id, &[TokenScope::Chat], None)
        .await
        .unwrap_err();
    assert!(matches!(e, AcsError::Paused { .. }), "{e:?}");
    assert!(e.is_retryable() && e.retry_after().is_some());
    assert_eq!(stats(&emu).await.total, before, "nothing sent");
    emu.shutdown().await;
}

/// A user of one ACS resource used through another resource's endpoint and key: 401
/// `IdentityNotOwned` on issue, revoke and delete, which is neither "user gone" (404) nor
/// a bad key, so nobody takes the user for deleted.
#[tokio::test]
async fn a_user_of_another_resource_is_identity_not_owned() {
    let home = start(false).await;
    let elsewhere = start(false).await;
    let user = client(&home, options(&home, "2023-10-01"))
        .create_user(None, None, None)
        .await
        .unwrap()
        .user
        .id;
    let c = client(&elsewhere, options(&elsewhere, "2023-10-01"));
    let errors = [
        c.issue_token(&user, &[TokenScope::Chat], None)
            .await
            .unwrap_err(),
        c.revoke_tokens(&user).await.unwrap_err(),
        c.delete_user(&user).await.unwrap_err(),
    ];
    for e in &errors {
        assert!(e.is_identity_not_owned(), "{e:?}");
        assert!(
            !e.is_not_found() && !e.is_unauthorized() && !e.is_retryable(),
            "{e:?}"
        );
        assert!(e.client_request_id().is_some());
    }
    assert!(
        !admin_identity(&home, &user).await.deleted,
        "untouched at home"
    );
    home.shutdown().await;
    elsewhere.shutdown().await;
}

/// Credentials count as working (which lets their service's quota lift its resource's
/// budget past ACS's limits) only until ACS refuses them: a regenerated key or a removed
/// role.
#[tokio::test]
async fn credentials_refused_after_working_no_longer_count_as_working() {
    let emu = emulator::spawn(EmulatorConfig {
        faults: vec![emulator::FaultRule {
            operation: Some(emulator::EmulatedOperation::Issue),
            status: Some(401),
            count: Some(1),
            ..emulator::FaultRule::default()
        }],
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let c = client(&emu, options(&emu, "2023-10-01"));
    let id = c.create_user(None, None, None).await.unwrap().user.id;
    assert!(c.has_worked());
    let e = c
        .issue_token(&id, &[TokenScope::Chat], None)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(401), "{e:?}");
    assert!(!c.has_worked(), "refused credentials stop counting");
    c.issue_token(&id, &[TokenScope::Chat], None).await.unwrap();
    assert!(c.has_worked(), "and count again once accepted");
    // A 401 `IdentityNotOwned` is about another resource's user, not the key.
    let e = c
        .revoke_tokens(
            "8:acs:00000000-0000-0000-0000-000000000000_00000000-0000-0000-0000-000000000000",
        )
        .await
        .unwrap_err();
    assert!(e.is_identity_not_owned(), "{e:?}");
    assert!(c.has_worked(), "another resource's user is no refused key");
    emu.shutdown().await;
}

/// Counts the attempts a client sends.
#[derive(Default)]
struct SentAttempts(std::sync::atomic::AtomicUsize);

impl acs_identity_operator::acs::RequestObserver for SentAttempts {
    fn on_attempt(&self, _: &acs_identity_operator::acs::Attempt) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl SentAttempts {
    fn get(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Credentials ACS refuses: a caller's requests are sent once per probe interval, and the
/// others get the refusal back without a request and without a turn of the resource's
/// quota (a tenant's wrong key must not spend another team's budget); the first success
/// ends it. A key that has worked is gated only by a second refusal in a row.
#[tokio::test]
async fn refused_credentials_are_asked_again_once_per_interval_not_per_request() {
    use acs_identity_operator::acs::{Operation, Rate};
    let emu = with_issue_refusals(2).await;
    let sent = std::sync::Arc::new(SentAttempts::default());
    let probe_every = Duration::from_secs(3);
    let c = client(
        &emu,
        AcsClientOptions {
            observer: Some(sent.clone()),
            refused_probe_every: probe_every,
            // Three issues an hour: what is left of them shows who took a turn.
            quota: QuotaConfig {
                issue_token: Some(Rate::new(3, Duration::from_secs(3600))),
                ..QuotaConfig::unlimited()
            },
            ..options(&emu, "2023-10-01")
        },
    );
    let user = c.create_user(None, None, None).await.unwrap().user.id;
    let caller = c.for_caller("uid-1");
    let scopes = [TokenScope::Chat];
    // The key has worked: one refusal is not enough to gate, the second in a row is.
    for n in [2, 3] {
        let refused = caller.issue_token(&user, &scopes, None).await.unwrap_err();
        assert!(refused.is_unauthorized(), "{refused:?}");
        assert_eq!(sent.get(), n);
    }

    // At once (well within the interval): the same refusal, naming the operation asked,
    // and nothing sent.
    let again = caller.issue_token(&user, &scopes, None).await.unwrap_err();
    assert!(again.is_unauthorized(), "{again:?}");
    let create = caller.create_user(None, None, None).await.unwrap_err();
    assert!(
        matches!(
            create,
            AcsError::Service {
                operation: Operation::CreateUser,
                status: 401,
                ..
            }
        ),
        "{create:?}"
    );
    assert!(create.client_request_id().is_none(), "nothing was sent");
    assert_eq!(sent.get(), 3, "refusals replayed, not sent");

    // After the interval one request asks again; ACS accepts it (the fault is spent).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match caller.issue_token(&user, &scopes, None).await {
            Ok(_) => break,
            Err(e) => assert!(e.is_unauthorized(), "{e:?}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "no probe was sent");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sent.get(), 4, "one probe, however often callers came");
    assert!(caller.has_worked());

    // Neither the replays nor the probe took a turn: the third is still free.
    caller.issue_token(&user, &scopes, None).await.unwrap();
    assert_eq!(sent.get(), 5);
    let waiting = caller.issue_token(&user, &scopes, None).await.unwrap_err();
    assert!(matches!(waiting, AcsError::QuotaWait { .. }), "{waiting:?}");
    emu.shutdown().await;
}

/// A client of `emu` with a made-up key speaking `api_version`, which three requests of
/// one caller find gated at once: one request sent, each answer `answer`.
async fn made_up_key_gated_at_once(
    emu: &RunningEmulator,
    api_version: &str,
    answer: fn(&AcsError) -> bool,
) -> (AcsClient, std::sync::Arc<SentAttempts>) {
    let sent = std::sync::Arc::new(SentAttempts::default());
    let wrong_key = AccessKey::from_base64("d3Jvbmcta2V5LWJ5dGVz").unwrap();
    let cs = ConnectionString::new(url::Url::parse(emu.endpoint()).unwrap(), wrong_key);
    let bad = AcsClient::new(
        &cs,
        AcsClientOptions {
            observer: Some(sent.clone()),
            ..options(emu, api_version)
        },
    )
    .unwrap();
    let caller = bad.for_caller("uid-1");
    for _ in 0..3 {
        let e = caller.create_user(None, None, None).await.unwrap_err();
        assert!(answer(&e), "{e:?}");
    }
    assert_eq!(sent.get(), 1, "one request, two answers replayed");
    assert_eq!(bad.standing(), Standing::Refused);
    (bad, sent)
}

/// A key that never worked is gated by its first refusal; requests made without a caller
/// (tools, not reconciles) are never gated.
#[tokio::test]
async fn a_made_up_key_is_gated_at_once_for_callers_only() {
    let emu = start(false).await;
    let (bad, sent) =
        made_up_key_gated_at_once(&emu, "2023-10-01", AcsError::is_unauthorized).await;
    let e = bad.create_user(None, None, None).await.unwrap_err();
    assert!(e.is_unauthorized(), "{e:?}");
    assert_eq!(sent.get(), 2, "a request without a caller is sent");
    emu.shutdown().await;
}

/// An api-version ACS does not serve is answered (400) before the key is checked, to every
/// request alike: a made-up key naming one is gated as a refused one is, so it cannot
/// spend its resource's budget one request per identity per retry.
#[tokio::test]
async fn an_unserved_api_version_is_gated_like_a_refused_key() {
    let emu = start(false).await;
    made_up_key_gated_at_once(&emu, "2099-01-01", AcsError::is_unsupported_api_version).await;
    emu.shutdown().await;
}

/// An answer that shows ACS checked the key (an error with ACS's code for a user it does
/// not have) ends the gate, as a success would.
#[tokio::test]
async fn an_answer_that_took_the_key_ends_the_gate() {
    let emu = with_issue_refusals(2).await;
    let sent = std::sync::Arc::new(SentAttempts::default());
    let c = client(
        &emu,
        AcsClientOptions {
            observer: Some(sent.clone()),
            refused_probe_every: Duration::from_millis(300),
            ..options(&emu, "2023-10-01")
        },
    );
    let user = c.create_user(None, None, None).await.unwrap().user.id;
    let gone = c.create_user(None, None, None).await.unwrap().user.id;
    c.delete_user(&gone).await.unwrap();
    let caller = c.for_caller("uid-1");
    let scopes = [TokenScope::Chat];
    for _ in 0..2 {
        let e = caller.issue_token(&user, &scopes, None).await.unwrap_err();
        assert!(e.is_unauthorized(), "{e:?}");
    }
    assert_eq!(caller.standing(), Standing::Refused);
    // The probe asks for the deleted user: ACS answers about the user, not the key.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let answer = loop {
        let e = caller.issue_token(&gone, &scopes, None).await.unwrap_err();
        if !e.is_unauthorized() {
            break e;
        }
        assert!(tokio::time::Instant::now() < deadline, "no probe was sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        matches!(
            answer,
            AcsError::Service {
                status: 400..=499,
                code: Some(_),
                ..
            }
        ),
        "{answer:?}"
    );
    assert_eq!(caller.standing(), Standing::Unproven, "ACS took the key");
    let before = sent.get();
    caller.issue_token(&user, &scopes, None).await.unwrap();
    assert_eq!(sent.get(), before + 1, "sent at once, not replayed");
    emu.shutdown().await;
}
