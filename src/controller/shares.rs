//! Fair shares of the ACS calls in flight. One process serves every tenant, and one
//! tenant's endpoint may stall every request for minutes: its identities may then occupy
//! at most their resource's and their namespace's share of `--max-concurrent-reconciles`,
//! and everyone else keeps the rest (issue 15: 16 stalled calls froze the operator).
//!
//! A reconcile that finds its share full does not wait for it: it gives its permit back
//! and is woken (triggered) when a call of its resource or namespace ends, with a
//! requeue as the fallback.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::reflector::ObjectRef;

use crate::api::CommunicationIdentity;

type Who = ObjectRef<CommunicationIdentity>;
type Wake = Box<dyn Fn(Who) + Send + Sync>;

/// If the wake-up after a full share is lost, the identity looks again after this long.
pub const FULL_SHARE_RETRY: Duration = Duration::from_secs(30);

/// How many ACS calls one resource and one namespace may have in flight, out of `total`
/// concurrent reconciles: half for a resource (a shared cluster service serves many
/// namespaces), a quarter for a namespace; at least one each.
pub fn share_sizes(total: usize) -> (usize, usize) {
    ((total / 2).max(1), (total / 4).max(1))
}

pub struct Shares {
    per_resource: usize,
    per_namespace: usize,
    state: Mutex<State>,
    wake: Wake,
}

#[derive(Default)]
struct State {
    by_resource: HashMap<String, usize>,
    by_namespace: HashMap<String, usize>,
    /// Identities turned away, oldest first, with the share they wanted.
    waiting: VecDeque<(String, String, Who)>,
    queued: HashSet<Who>,
}

/// One ACS call section in flight; its share is given back when dropped.
pub struct ShareGuard {
    shares: Arc<Shares>,
    resource: String,
    namespace: String,
}

impl Shares {
    pub fn new(total: usize, wake: impl Fn(Who) + Send + Sync + 'static) -> Arc<Self> {
        let (per_resource, per_namespace) = share_sizes(total);
        Arc::new(Shares {
            per_resource,
            per_namespace,
            state: Mutex::default(),
            wake: Box::new(wake),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for `who`'s ACS calls to `resource` (scheme, host and port) from
    /// `namespace`, or `None` when either share is full; then `who` is woken when one
    /// frees up.
    pub fn try_enter(
        self: &Arc<Self>,
        resource: &str,
        namespace: &str,
        who: &Who,
    ) -> Option<ShareGuard> {
        let mut st = self.state();
        let r = st.by_resource.get(resource).copied().unwrap_or(0);
        let n = st.by_namespace.get(namespace).copied().unwrap_or(0);
        if r >= self.per_resource || n >= self.per_namespace {
            if st.queued.insert(who.clone()) {
                st.waiting
                    .push_back((resource.to_string(), namespace.to_string(), who.clone()));
            }
            return None;
        }
        *st.by_resource.entry(resource.to_string()).or_default() += 1;
        *st.by_namespace.entry(namespace.to_string()).or_default() += 1;
        Some(ShareGuard {
            shares: self.clone(),
            resource: resource.to_string(),
            namespace: namespace.to_string(),
        })
    }

    fn leave(&self, resource: &str, namespace: &str) {
        let woken = {
            let mut guard = self.state();
            let st = &mut *guard;
            for (map, key) in [
                (&mut st.by_resource, resource),
                (&mut st.by_namespace, namespace),
            ] {
                if let Some(n) = map.get_mut(key) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        map.remove(key);
                    }
                }
            }
            // The oldest waiter that this departure may let in.
            let pos = st
                .waiting
                .iter()
                .position(|(r, n, _)| r == resource || n == namespace);
            let woken = pos.and_then(|p| st.waiting.remove(p));
            if let Some((_, _, who)) = &woken {
                st.queued.remove(who);
            }
            woken
        };
        if let Some((_, _, who)) = woken {
            (self.wake)(who);
        }
    }

    /// Calls in flight for `resource` and for `namespace` (for tests and metrics).
    pub fn in_flight(&self, resource: &str, namespace: &str) -> (usize, usize) {
        let st = self.state();
        (
            st.by_resource.get(resource).copied().unwrap_or(0),
            st.by_namespace.get(namespace).copied().unwrap_or(0),
        )
    }

    /// `who` no longer waits (deleted, or served by another path).
    pub fn forget(&self, who: &Who) {
        let mut st = self.state();
        if st.queued.remove(who) {
            st.waiting.retain(|(_, _, w)| w != who);
        }
    }
}

impl Drop for ShareGuard {
    fn drop(&mut self) {
        self.shares.leave(&self.resource, &self.namespace);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(ns: &str, name: &str) -> Who {
        ObjectRef::new(name).within(ns)
    }

    #[test]
    fn share_sizes_leave_room_for_others() {
        assert_eq!(share_sizes(16), (8, 4));
        assert_eq!(share_sizes(1), (1, 1));
        assert_eq!(share_sizes(3), (1, 1));
    }

    #[test]
    fn a_stalled_namespace_gets_its_share_and_no_more() {
        let woken = Arc::new(Mutex::new(vec![]));
        let w = woken.clone();
        let shares = Shares::new(16, move |who| w.lock().unwrap().push(who));
        let bad: Vec<ShareGuard> = (0..4)
            .map(|i| {
                shares
                    .try_enter(
                        "https://stall.example",
                        "bad",
                        &who("bad", &format!("b{i}")),
                    )
                    .expect("within the namespace share")
            })
            .collect();
        assert!(
            shares
                .try_enter("https://stall.example", "bad", &who("bad", "b4"))
                .is_none()
        );
        // Another tenant is not held back by the stalled one.
        let good = shares.try_enter("https://good.example", "good", &who("good", "g"));
        assert!(good.is_some());
        assert_eq!(shares.in_flight("https://stall.example", "bad"), (4, 4));
        // A call of the stalled namespace ends: the waiter is woken, once.
        drop(bad);
        assert_eq!(*woken.lock().unwrap(), vec![who("bad", "b4")]);
        assert_eq!(shares.in_flight("https://stall.example", "bad"), (0, 0));
    }

    #[test]
    fn a_shared_resource_is_capped_across_namespaces() {
        let shares = Shares::new(16, |_| {});
        let guards: Vec<ShareGuard> = (0..8)
            .filter_map(|i| {
                let ns = format!("ns{}", i % 4);
                shares.try_enter("https://shared.example", &ns, &who(&ns, &format!("i{i}")))
            })
            .collect();
        assert_eq!(guards.len(), 8);
        assert!(
            shares
                .try_enter("https://shared.example", "ns9", &who("ns9", "x"))
                .is_none()
        );
        assert!(
            shares
                .try_enter("https://other.example", "ns9", &who("ns9", "y"))
                .is_some()
        );
    }

    #[test]
    fn a_waiter_is_queued_once_and_can_be_forgotten() {
        let woken = Arc::new(Mutex::new(0));
        let w = woken.clone();
        let shares = Shares::new(4, move |_| *w.lock().unwrap() += 1);
        let g = shares.try_enter("r", "n", &who("n", "a")).unwrap();
        for _ in 0..3 {
            assert!(shares.try_enter("r", "n", &who("n", "b")).is_none());
        }
        shares.forget(&who("n", "b"));
        drop(g);
        assert_eq!(*woken.lock().unwrap(), 0);
    }
}
