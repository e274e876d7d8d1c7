//! Warming memory from one paged LIST after a start, a restart or a failover (issue 19).
//!
//! The Secret cache holds metadata only, so a fresh process cannot tell from it whether a
//! token Secret still holds what status describes: without this pass every identity's
//! first reconcile reads its Secret (one GET per identity, 20,000 GETs after a restart of
//! a 20,000-identity fleet). Instead, before the caches are declared synced, the owned
//! Secrets are listed in pages (with their data, [`PAGE`] at a time, dropped after the
//! check) and each one that is intact against its identity's cached status is remembered
//! as confirmed, exactly as a GET in [`super::gather`] would have remembered it. The
//! promise is unchanged: the check is the same ([`secret::intact`]), and a Secret or an
//! identity that changes after the LIST has a newer resourceVersion in the caches than the
//! one remembered here, so its reconcile reads it again.

use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use crate::api::CommunicationIdentity;
use crate::controller::context::Context;
use crate::controller::secret::{self, MANAGED_BY_LABEL, MANAGED_BY_VALUE};

use super::decide::rfc3339;

/// Secrets per LIST page: bounds the memory the pass holds at once (a token Secret is
/// about 2 KiB with its data).
pub const PAGE: u32 = 500;

/// Lists the owned Secrets of every watched scope and remembers each intact one as
/// confirmed. Returns (Secrets listed, confirmed). A failed page ends the pass for its
/// scope: the identities left are read one by one by their reconciles, as before.
pub async fn confirm_secrets(ctx: &Context) -> (usize, usize) {
    let (mut listed, mut confirmed) = (0, 0);
    for scope in &ctx.stores.scopes {
        let api: Api<Secret> = match &scope.namespace {
            Some(ns) => Api::namespaced(ctx.client.clone(), ns),
            None => Api::all(ctx.client.clone()),
        };
        let mut params = ListParams::default()
            .labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"))
            .limit(PAGE);
        loop {
            let page = match api.list(&params).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, namespace = ?scope.namespace,
                        "listing the token Secrets to warm memory failed; their identities read them one by one");
                    break;
                }
            };
            for s in &page.items {
                listed += 1;
                let Some(owner) = s
                    .owner_references()
                    .iter()
                    .find(|r| r.controller == Some(true) && r.kind == "CommunicationIdentity")
                else {
                    continue;
                };
                let ns = s.namespace().unwrap_or_default();
                let oref = ObjectRef::<CommunicationIdentity>::new(&owner.name).within(&ns);
                let Some(identity) = scope.identities.get(&oref) else {
                    continue;
                };
                let name = identity.name_any();
                if identity.uid().as_deref() != Some(owner.uid.as_str())
                    || identity.effective_secret_name().unwrap_or(&name) != s.name_any()
                {
                    continue;
                }
                let Some(status) = identity.status.as_ref() else {
                    continue;
                };
                let expires = status.token_expires_on.as_ref().map(|t| rfc3339(t.0));
                if secret::intact(s, status, expires.as_deref()) {
                    ctx.memory.secret_confirmed(
                        &oref,
                        &owner.uid,
                        s.resource_version(),
                        status,
                        identity.resource_version(),
                    );
                    confirmed += 1;
                }
            }
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => params = params.continue_token(&token),
                _ => break,
            }
        }
    }
    (listed, confirmed)
}
