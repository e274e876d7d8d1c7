//! What the operator holds for an identity (memory of its writes, its next look, its
//! credential watch, its metric series, its failure count) is dropped when the identity
//! leaves the cluster. Our cleanup does it as it releases the finalizer; an identity
//! that goes without it (a person removed the finalizer, or it was deleted while no
//! operator ran) is dropped here, from the watch's delete event and by a periodic sweep
//! against the cache. Without this, a tenant who deletes identities that way could grow
//! the operator's memory without bound (DESIGN.md: caches are bounded whatever tenants
//! create).

use std::collections::HashMap;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::api::CommunicationIdentity;
use crate::controller::context::Context;
use crate::controller::memory::bare;

/// How often the cache is swept for identities whose delete event never came: a watch
/// that reconnects lists again and sees no delete for what went meanwhile, and a
/// reconcile still running when its identity went may record it again after the delete.
pub const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// Everything held for the identity named by `oref`, whichever object of that name it
/// was.
pub(crate) fn forget(ctx: &Context, oref: &ObjectRef<CommunicationIdentity>) {
    ctx.resolver.credentials.forget(oref);
    ctx.memory.forget(oref);
    ctx.wakeups.forget(oref);
    ctx.reset_backoff(oref);
    ctx.metrics
        .forget_identity(oref.namespace.as_deref().unwrap_or_default(), &oref.name);
}

/// The watch saw `deleted` (with its UID) go. An identity of the same name created since
/// and already cached keeps its look and its credential watch, which are its own by then
/// or soon replaced by its reconcile; memory of the deleted UID goes, and so do the
/// metric series, which are kept by name: the deleted one's deletion time and failure
/// counts would otherwise stay on the new identity (its deletion alert firing forever).
/// The new identity is reconciled again to set its own series; healthy, that costs
/// neither an ACS request nor a write.
pub fn deleted(ctx: &Context, deleted: &ObjectRef<CommunicationIdentity>) {
    let ns = deleted.namespace.as_deref().unwrap_or_default();
    let uid = deleted.extra.uid.as_deref().unwrap_or_default();
    let key = bare(deleted);
    match ctx.stores.identity(ns, &deleted.name) {
        None => {
            forget(ctx, &key);
            look_again_if_cached(ctx, [key]);
        }
        Some(live) if live.uid().as_deref() != Some(uid) => {
            ctx.memory.forget_uid(&key, uid);
            ctx.reset_backoff(&key);
            ctx.metrics.forget_identity(ns, &key.name);
            ctx.stores.trigger(key);
        }
        Some(_) => {}
    }
}

/// An identity cached again since the cache was read for a drop (a new one of the same
/// name, reconciled meanwhile on another thread) may have lost the look its reconcile
/// had just set: it is reconciled again, which sets it anew. A reconcile only runs for
/// an identity the cache holds, so reading the cache after the drop finds every such one.
fn look_again_if_cached(
    ctx: &Context,
    dropped: impl IntoIterator<Item = ObjectRef<CommunicationIdentity>>,
) {
    for oref in dropped {
        let ns = oref.namespace.as_deref().unwrap_or_default();
        if ctx.stores.identity(ns, &oref.name).is_some() {
            ctx.stores.trigger(oref);
        }
    }
}

/// Drops what is held for every identity the cache does not hold (memory, for an
/// identity of another UID). Only once the caches have synced: before, an empty cache
/// would say every identity is gone. Returns how many memory entries went.
pub fn sweep(ctx: &Context) -> usize {
    let cached: Vec<std::sync::Arc<CommunicationIdentity>> = ctx.stores.identities().collect();
    let alive: HashMap<(&str, &str), &str> = cached
        .iter()
        .map(|i| {
            (
                (
                    i.metadata.namespace.as_deref().unwrap_or_default(),
                    i.metadata.name.as_deref().unwrap_or_default(),
                ),
                i.metadata.uid.as_deref().unwrap_or_default(),
            )
        })
        .collect();
    fn key(oref: &ObjectRef<CommunicationIdentity>) -> (&str, &str) {
        (
            oref.namespace.as_deref().unwrap_or_default(),
            oref.name.as_str(),
        )
    }
    let mut dropped = 0;
    ctx.memory.retain(|oref, uid| {
        let kept = alive.get(&key(oref)).is_some_and(|live| *live == uid);
        dropped += usize::from(!kept);
        kept
    });
    let looks_dropped = ctx
        .wakeups
        .retain(|ns, name| alive.contains_key(&(ns, name)));
    ctx.resolver
        .credentials
        .retain(|oref| alive.contains_key(&key(oref)));
    ctx.retain_backoff(|oref| alive.contains_key(&key(oref)));
    ctx.metrics.retain_identities(alive.keys().copied());
    look_again_if_cached(ctx, looks_dropped);
    dropped
}

/// Sweeps every [`SWEEP_EVERY`], once the caches have synced; runs for the life of the
/// process.
pub async fn sweep_periodically(ctx: &Context) {
    ctx.stores.synced().await;
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let dropped = sweep(ctx);
        if dropped > 0 {
            tracing::info!(
                dropped,
                "dropped what was held for identities gone without cleanup"
            );
        }
    }
}
