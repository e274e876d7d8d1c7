//! The panic boundary of every reconcile. Reconciles are polled inside the controllers'
//! own task, so a panic in one (an overflow on a tenant's number, a bug) would otherwise
//! end the process, and the standby would take the Lease and die the same way: one object
//! could stop renewals for every tenant (issue 15). Caught here, a panic costs only its
//! object: reported on it, counted, and retried with backoff.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;

/// `fut`'s output, or the panic's message if it panicked.
///
/// Unwind safety: the state a reconcile shares (memory, backoff, quota, shares) sits behind
/// mutexes whose poisoning every user ignores on purpose (plain values, each update whole),
/// and guards release what they hold when the panic unwinds through them.
pub async fn catch<F: Future>(fut: F) -> Result<F::Output, String> {
    AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .map_err(|payload| message(payload.as_ref()))
}

/// The panic's message, bounded and without control characters (it goes to a log line).
pub fn message(payload: &(dyn Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string());
    crate::acs::error::endpoint_text(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn a_panicking_reconcile_is_an_error_not_the_end_of_the_process() {
        let far = Duration::from_secs(u64::MAX);
        let out = catch(async move {
            tokio::task::yield_now().await;
            // The overflow of issue 15's quota window, in a reconcile.
            Instant::now() + far
        })
        .await;
        let e = out.unwrap_err();
        assert!(e.contains("overflow"), "{e}");
        assert_eq!(catch(async { 7 }).await, Ok(7));
        let long = catch(async { panic!("{}\nforged", "x".repeat(500)) }).await;
        let e = long.unwrap_err();
        assert!(e.chars().count() <= 201 && !e.contains('\n'), "{e}");
    }
}
