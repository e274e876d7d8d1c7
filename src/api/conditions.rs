//! Condition types and reasons written to `status.conditions`.
//!
//! They are API: alerts, `kubectl wait --for=condition=Ready` and the CLI rely on the
//! strings, so they live next to the types rather than in the controller.

/// Condition types.
pub mod types {
    /// On every kind. `CommunicationIdentity`: `True` when the Secret holds a valid token for
    /// the current spec. `CommunicationService` / `ClusterCommunicationService`: `True` when
    /// the credentials Secret resolves and its connection string parses.
    pub const READY: &str = "Ready";

    /// `CommunicationIdentity` only. `True` while renewing the token fails but the previous
    /// token in the Secret is still valid (workloads keep working; alert on this before the
    /// token expires). `Ready` stays `True` until the old token actually expires.
    pub const RENEWAL_FAILING: &str = "RenewalFailing";

    /// `CommunicationIdentity` only. `True` when a Secret named `spec.secretName` exists but is
    /// not controlled by this identity; the operator never overwrites it, and `Ready` is
    /// `False` with reason [`super::reasons::SECRET_CONFLICT`] until the Secret is removed or
    /// `secretName` points elsewhere (on a new identity, since it is immutable).
    pub const SECRET_CONFLICT: &str = "SecretConflict";

    /// `CommunicationIdentity` only. `True` when ACS grants tokens that live shorter than
    /// the operator's minimum token interval (`--min-token-interval`), so the identity
    /// cannot be renewed as often as its tokens expire; reason
    /// [`super::reasons::TOKEN_TOO_SHORT_LIVED`].
    pub const TOKEN_TOO_SHORT_LIVED: &str = "TokenTooShortLived";

    /// `CommunicationIdentity` with `spec.rolloutRestartTargets` only. `True` (reason
    /// [`super::reasons::ROLLOUT_RESTARTED`]) when every target was restarted for the
    /// current token; `False` with [`super::reasons::ROLLOUT_TARGET_NOT_FOUND`],
    /// [`super::reasons::ROLLOUT_RESTART_FORBIDDEN`] or
    /// [`super::reasons::ROLLOUT_RESTART_FAILED`] when one could not be. Never affects
    /// `Ready`: the token path does not depend on the restarts.
    pub const ROLLOUT_RESTARTED: &str = "RolloutRestarted";

    /// kstatus, every kind: `True` when the operator cannot make progress without a person;
    /// the reason is the problem's own (e.g. `Unauthorized`, `AdoptionNotAllowed`,
    /// `SecretConflict`, `TokenTooShortLived`, `InvalidSpec`, `IdentityNotOwned`,
    /// `InsecureEndpoint`, `SecretNamespaceNotAllowed`, [`super::reasons::RECONCILE_PANICKED`]).
    /// Written once needed; `False` afterwards.
    pub const STALLED: &str = "Stalled";

    /// kstatus, every kind: `True` while the operator works toward the current spec without
    /// needing a person. `CommunicationIdentity`: the first token, a spec change
    /// (reason [`super::reasons::SPEC_CHANGED`]) or any other new token the Secret needs
    /// before the identity is Ready (reason [`super::reasons::TOKEN_NEEDED`]).
    pub const RECONCILING: &str = "Reconciling";
}

/// Condition reasons (CamelCase, as Kubernetes requires).
pub mod reasons {
    // --- CommunicationIdentity, Ready=True
    /// A token is issued and written to the Secret.
    pub const TOKEN_ISSUED: &str = "TokenIssued";

    // --- CommunicationIdentity, Ready=False
    /// First reconcile: nothing issued yet.
    pub const PENDING: &str = "Pending";
    /// `spec.serviceRef` names a service that does not exist (or no default service is set).
    pub const SERVICE_NOT_FOUND: &str = "ServiceNotFound";
    /// The referenced service exists but is not `Ready` (credentials missing or invalid).
    pub const SERVICE_NOT_READY: &str = "ServiceNotReady";
    /// A `ClusterCommunicationService` whose `namespaceSelector` does not select this
    /// identity's namespace.
    pub const SERVICE_NOT_ALLOWED: &str = "ServiceNotAllowed";
    /// The spec cannot be used (only reachable when admission validation was bypassed).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// ACS refused the credentials (401/403).
    pub const UNAUTHORIZED: &str = "Unauthorized";
    /// ACS answered 401 `IdentityNotOwned`: the user id belongs to another ACS resource
    /// than the service's endpoint and key (a service pointed elsewhere, a key of another
    /// resource, or an `existingUserId` from another resource).
    pub const IDENTITY_NOT_OWNED: &str = "IdentityNotOwned";
    /// Creating the ACS user failed.
    pub const USER_CREATE_FAILED: &str = "UserCreateFailed";
    /// `spec.existingUserId` does not exist in ACS.
    pub const USER_NOT_FOUND: &str = "UserNotFound";
    /// Issuing a token failed and no valid token is left.
    pub const TOKEN_ISSUE_FAILED: &str = "TokenIssueFailed";
    /// The token in the Secret has expired and no new one could be issued yet.
    pub const TOKEN_EXPIRED: &str = "TokenExpired";
    /// Revoking tokens (on request) failed.
    pub const REVOKE_FAILED: &str = "RevokeFailed";
    /// A Secret named `spec.secretName` exists and is not owned by this identity.
    pub const SECRET_CONFLICT: &str = "SecretConflict";
    /// The identity is being deleted (finalizer running).
    pub const DELETING: &str = "Deleting";
    /// Deletion is blocked: the ACS user cannot be deleted/revoked (e.g. credentials gone).
    pub const CLEANUP_FAILED: &str = "CleanupFailed";
    /// `spec.existingUserId` is set but the service's `spec.allowAdoption` is not true: no
    /// ACS call is made for that user.
    pub const ADOPTION_NOT_ALLOWED: &str = "AdoptionNotAllowed";
    /// The service now points at another ACS endpoint than the one the user lives on
    /// (`status.userEndpoint`); no token is requested from the new one.
    pub const SERVICE_CHANGED: &str = "ServiceChanged";

    // --- CommunicationIdentity, TokenTooShortLived
    /// ACS granted a token shorter than the minimum token interval.
    pub const TOKEN_TOO_SHORT_LIVED: &str = "TokenTooShortLived";
    /// Every token of the user was revoked on request; `Ready` is False until the new
    /// token is in the Secret.
    pub const TOKENS_REVOKED: &str = "TokensRevoked";
    /// Writing the token Secret (or the user record in it) failed.
    pub const SECRET_WRITE_FAILED: &str = "SecretWriteFailed";
    /// Reading the token Secret failed.
    pub const SECRET_READ_FAILED: &str = "SecretReadFailed";
    /// Writing the identity's status failed (the Secret may hold a valid token).
    pub const STATUS_WRITE_FAILED: &str = "StatusWriteFailed";

    // --- CommunicationIdentity, RenewalFailing
    /// Renewal failed; the message says why and until when the old token is valid.
    pub const RENEWAL_FAILED: &str = "RenewalFailed";
    /// Last renewal succeeded (RenewalFailing=False).
    pub const RENEWAL_SUCCEEDED: &str = "RenewalSucceeded";

    // --- CommunicationIdentity, SecretConflict
    /// SecretConflict=True: the Secret has no controller ownerReference to this identity.
    pub const SECRET_NOT_OWNED: &str = "SecretNotOwned";
    /// SecretConflict=False.
    pub const SECRET_OWNED: &str = "SecretOwned";

    // --- CommunicationIdentity, RolloutRestarted
    /// RolloutRestarted=True: every target's pod template carries the current token's
    /// issue time (or targets were just set: recorded without a restart).
    pub const ROLLOUT_RESTARTED: &str = "RolloutRestarted";
    /// A target does not exist in the identity's namespace; not retried for this token.
    pub const ROLLOUT_TARGET_NOT_FOUND: &str = "RolloutTargetNotFound";
    /// The operator may not patch the target (the chart's `rolloutRestart.enabled` is
    /// false); not retried for this token.
    pub const ROLLOUT_RESTART_FORBIDDEN: &str = "RolloutRestartForbidden";
    /// Patching a target failed for another reason (API server unavailable); retried.
    pub const ROLLOUT_RESTART_FAILED: &str = "RolloutRestartFailed";

    // --- Services, Ready
    /// Ready=True: the connection string resolved and parsed.
    pub const CREDENTIALS_RESOLVED: &str = "CredentialsResolved";
    /// The referenced Secret does not exist.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// The Secret exists but lacks the key.
    pub const SECRET_KEY_MISSING: &str = "SecretKeyMissing";
    /// The value is not a valid `endpoint=...;accesskey=...` connection string.
    pub const CONNECTION_STRING_INVALID: &str = "ConnectionStringInvalid";

    // --- Services and the identities using them, Ready=False
    /// A `ClusterCommunicationService` names a credential Secret outside the operator's
    /// cluster resource namespace: the Secret is not read and the service not used.
    pub const SECRET_NAMESPACE_NOT_ALLOWED: &str = "SecretNamespaceNotAllowed";
    /// The endpoint is not https (plain http only with `--allow-insecure-endpoints`),
    /// carries user info, or has more than a scheme, a host and a port (a path, a query,
    /// a fragment).
    pub const INSECURE_ENDPOINT: &str = "InsecureEndpoint";
    /// Ready=True: an Entra ID access token was obtained (the federation works).
    pub const ENTRA_TOKEN_ACQUIRED: &str = "EntraTokenAcquired";
    /// `entraId.serviceAccountRef` names a ServiceAccount outside the service's namespace
    /// (cluster services: outside the cluster resource namespace).
    pub const SERVICE_ACCOUNT_NAMESPACE_NOT_ALLOWED: &str = "ServiceAccountNamespaceNotAllowed";
    /// A namespaced service without `serviceAccountRef` would use the operator's own
    /// identity; refused unless `--namespaced-service-ambient-credentials`.
    pub const AMBIENT_CREDENTIALS_NOT_ALLOWED: &str = "AmbientCredentialsNotAllowed";
    /// The operator may not create a token for the ServiceAccount (the namespace has no
    /// Role and RoleBinding granting `create` on `serviceaccounts/token`).
    pub const SERVICE_ACCOUNT_TOKEN_FORBIDDEN: &str = "ServiceAccountTokenForbidden";
    /// The ServiceAccount does not exist.
    pub const SERVICE_ACCOUNT_NOT_FOUND: &str = "ServiceAccountNotFound";
    /// No client id or tenant id: neither the spec, the ServiceAccount's annotations nor
    /// the operator's environment give one; or the ambient token file is missing.
    pub const ENTRA_CONFIG_INCOMPLETE: &str = "EntraConfigIncomplete";
    /// Entra ID refused the exchange (an AADSTS code: no matching federated credential,
    /// unknown application, wrong tenant...).
    pub const FEDERATION_FAILED: &str = "FederationFailed";
    /// Entra ID did not answer usably (throttled, 5xx, network); retried.
    pub const ENTRA_UNAVAILABLE: &str = "EntraUnavailable";

    // --- CommunicationIdentity, Reconciling=True (and Ready=False)
    /// `spec.scopes` or `spec.tokenLifetime` changed; the Secret holds a token for the
    /// earlier spec until the new one is issued (status.observedGeneration stays behind).
    pub const SPEC_CHANGED: &str = "SpecChanged";
    /// Reconciling=True: the Secret needs a new token (missing, edited, expired, revoked)
    /// before the identity is Ready again.
    pub const TOKEN_NEEDED: &str = "TokenNeeded";

    // --- any kind, Stalled=True
    /// The reconcile of this object panicked (a bug); the operator caught it, keeps serving
    /// every other object and retries this one with backoff.
    pub const RECONCILE_PANICKED: &str = "ReconcilePanicked";
}
