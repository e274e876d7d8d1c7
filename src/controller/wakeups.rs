//! When each identity's reconcile looks next (its renewal, at most an hour ahead), kept
//! here instead of in kube-runtime's scheduler. Every healthy identity always has one
//! such look pending, and the scheduler held it as two copies of a reconcile request (an
//! `ObjectRef` with its resourceVersion and UID, in a hash map and in a delay queue): at
//! 20,000 identities that was about 0.6 KiB per identity, the largest part of the
//! operator's memory left in a heap profile (issue 19). Here one look is one shared key,
//! a time-ordered set entry and a hash-map slot.
//!
//! The scheduler still runs the short waits (quota turns, backoff after an error), which
//! come and go. A look is replaced by the next one decided for the same identity: the
//! last reconcile decided from the newest facts. A look left behind by a failed pass only
//! brings one extra reconcile, which changes nothing.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::reflector::ObjectRef;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::api::CommunicationIdentity;

/// An identity, by namespace and name: what a look needs to name it, and no more.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Key {
    namespace: Box<str>,
    name: Box<str>,
}

impl Key {
    fn of(oref: &ObjectRef<CommunicationIdentity>) -> Self {
        Key {
            namespace: oref.namespace.as_deref().unwrap_or_default().into(),
            name: oref.name.as_str().into(),
        }
    }

    fn oref(&self) -> ObjectRef<CommunicationIdentity> {
        ObjectRef::new(&self.name).within(&self.namespace)
    }
}

#[derive(Default)]
struct Looks {
    by_time: BTreeSet<(Instant, Arc<Key>)>,
    by_key: HashMap<Arc<Key>, Instant>,
}

type Fire = Box<dyn Fn(ObjectRef<CommunicationIdentity>) + Send + Sync>;

pub struct Wakeups {
    looks: Mutex<Looks>,
    /// Told when a look earlier than every other is added, so the runner sleeps less.
    earlier: Notify,
    fire: Fire,
}

impl Wakeups {
    /// `fire` asks for a reconcile of an identity whose look has come.
    pub fn new(fire: impl Fn(ObjectRef<CommunicationIdentity>) + Send + Sync + 'static) -> Self {
        Wakeups {
            looks: Mutex::new(Looks::default()),
            earlier: Notify::new(),
            fire: Box::new(fire),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Looks> {
        self.looks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The identity's next look comes `after` from now, replacing the one it had.
    pub fn look_after(&self, oref: &ObjectRef<CommunicationIdentity>, after: Duration) {
        // An absurd delay (none is decided longer than an hour) is clamped, not an overflow.
        let at = Instant::now()
            .checked_add(after)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
        let probe = Key::of(oref);
        let mut looks = self.lock();
        let key = match looks.by_key.get_key_value(&probe) {
            Some((key, previous)) => {
                let (key, previous) = (key.clone(), *previous);
                looks.by_time.remove(&(previous, key.clone()));
                key
            }
            None => Arc::new(probe),
        };
        let first = looks.by_time.first().is_none_or(|(t, _)| at < *t);
        looks.by_key.insert(key.clone(), at);
        looks.by_time.insert((at, key));
        drop(looks);
        if first {
            self.earlier.notify_one();
        }
    }

    /// The identity is gone: its look is dropped.
    pub fn forget(&self, oref: &ObjectRef<CommunicationIdentity>) {
        let mut looks = self.lock();
        if let Some((key, at)) = looks.by_key.remove_entry(&Key::of(oref)) {
            looks.by_time.remove(&(at, key));
        }
    }

    /// Keeps the looks of the identities for which `keep(namespace, name)` holds, and
    /// returns the identities whose looks were dropped.
    pub fn retain(
        &self,
        mut keep: impl FnMut(&str, &str) -> bool,
    ) -> Vec<ObjectRef<CommunicationIdentity>> {
        let mut dropped = vec![];
        let mut looks = self.lock();
        let Looks { by_time, by_key } = &mut *looks;
        by_key.retain(|key, at| {
            let kept = keep(&key.namespace, &key.name);
            if !kept {
                by_time.remove(&(*at, key.clone()));
                dropped.push(key.oref());
            }
            kept
        });
        dropped
    }

    /// Looks pending (for tests and the memory figures).
    pub fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fires each look when it comes; runs for the life of the process.
    pub async fn run(&self) {
        loop {
            let now = Instant::now();
            let (due, next) = {
                let mut looks = self.lock();
                let mut due = vec![];
                while let Some((at, key)) = looks.by_time.first().cloned() {
                    if at > now {
                        break;
                    }
                    looks.by_time.pop_first();
                    looks.by_key.remove(&key);
                    due.push(key);
                }
                (due, looks.by_time.first().map(|(t, _)| *t))
            };
            // Fired outside the lock: the trigger may take it again through a reconcile.
            for key in due {
                (self.fire)(key.oref());
            }
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = self.earlier.notified() => {}
                    }
                }
                None => self.earlier.notified().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn id(name: &str) -> ObjectRef<CommunicationIdentity> {
        ObjectRef::new(name).within("team-a")
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<ObjectRef<CommunicationIdentity>>) -> String {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a look fires")
            .expect("the runner is alive")
            .name
    }

    #[tokio::test]
    async fn looks_fire_in_time_order_and_a_new_one_replaces_the_old() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let wakeups = Arc::new(Wakeups::new(move |o| {
            let _ = tx.send(o);
        }));
        let runner = tokio::spawn({
            let w = wakeups.clone();
            async move { w.run().await }
        });
        wakeups.look_after(&id("late"), Duration::from_millis(300));
        wakeups.look_after(&id("moved"), Duration::from_secs(3600));
        wakeups.look_after(&id("early"), Duration::from_millis(100));
        // Replaced: fires between the two, not in an hour.
        wakeups.look_after(&id("moved"), Duration::from_millis(200));
        wakeups.look_after(&id("gone"), Duration::from_millis(50));
        wakeups.forget(&id("gone"));
        assert_eq!(wakeups.len(), 3, "one look per identity");
        assert_eq!(next(&mut rx).await, "early");
        assert_eq!(next(&mut rx).await, "moved");
        assert_eq!(next(&mut rx).await, "late");
        assert!(wakeups.is_empty());
        // An earlier look added while the runner sleeps on a later one wakes it.
        wakeups.look_after(&id("hour"), Duration::from_secs(3600));
        tokio::task::yield_now().await;
        wakeups.look_after(&id("now"), Duration::ZERO);
        assert_eq!(next(&mut rx).await, "now");
        assert!(
            rx.try_recv().is_err(),
            "forgotten and replaced looks never fire"
        );
        runner.abort();
    }

    #[tokio::test]
    async fn looks_of_identities_not_kept_never_fire() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let wakeups = Arc::new(Wakeups::new(move |o| {
            let _ = tx.send(o);
        }));
        wakeups.look_after(&id("gone"), Duration::ZERO);
        wakeups.look_after(&id("kept"), Duration::from_millis(50));
        wakeups.look_after(&ObjectRef::new("kept").within("team-b"), Duration::ZERO);
        let mut dropped: Vec<String> = wakeups
            .retain(|ns, name| ns == "team-a" && name == "kept")
            .into_iter()
            .map(|o| format!("{}/{}", o.namespace.unwrap_or_default(), o.name))
            .collect();
        dropped.sort();
        assert_eq!(dropped, ["team-a/gone", "team-b/kept"]);
        assert_eq!(wakeups.len(), 1);
        let runner = tokio::spawn({
            let w = wakeups.clone();
            async move { w.run().await }
        });
        assert_eq!(next(&mut rx).await, "kept");
        assert!(rx.try_recv().is_err(), "dropped looks never fire");
        assert!(wakeups.is_empty());
        runner.abort();
    }

    #[test]
    fn an_absurd_delay_is_clamped_not_an_overflow() {
        let wakeups = Wakeups::new(|_| {});
        wakeups.look_after(&id("far"), Duration::MAX);
        assert_eq!(wakeups.len(), 1);
    }
}
