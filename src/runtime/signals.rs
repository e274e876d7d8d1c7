//! Shutdown on SIGTERM (what the kubelet sends) or SIGINT (Ctrl-C when run locally).

use std::fmt;
use std::future::Future;

use tokio::sync::watch;

/// The signal that asked the process to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Terminate,
    Interrupt,
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::Terminate => "SIGTERM",
            Signal::Interrupt => "SIGINT",
        })
    }
}

/// Resolves on the first SIGTERM or SIGINT.
///
/// The handlers are installed when this function is called, not when the future is
/// first polled, so call it early in `main`: a SIGTERM that arrives before any handler
/// is installed kills the process without a graceful shutdown (no lease release).
pub fn shutdown_signal() -> impl Future<Output = Signal> + Send + Sync + 'static {
    #[cfg(unix)]
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    async move {
        #[cfg(unix)]
        {
            match terminate {
                Ok(mut terminate) => {
                    tokio::select! {
                        _ = terminate.recv() => return Signal::Terminate,
                        _ = ctrl_c() => return Signal::Interrupt,
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT stops gracefully");
                }
            }
        }
        ctrl_c().await;
        Signal::Interrupt
    }
}

async fn ctrl_c() {
    if let Err(e) = tokio::signal::ctrl_c().await {
        tracing::error!(error = %e, "cannot listen for SIGINT");
        // Never resolve: a failed listener must not look like a shutdown request.
        std::future::pending::<()>().await;
    }
}

/// A shutdown notice shared by several tasks (admin server, leader election, controller):
/// [`Shutdown::trigger`] once, and every [`ShutdownListener`] clone resolves.
#[derive(Debug)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
}

/// Resolves (via [`ShutdownListener::wait`]) once shutdown was triggered, or when the
/// [`Shutdown`] was dropped.
#[derive(Clone, Debug)]
pub struct ShutdownListener {
    rx: watch::Receiver<bool>,
}

/// A linked trigger and listener.
pub fn shutdown_channel() -> (Shutdown, ShutdownListener) {
    let (tx, rx) = watch::channel(false);
    (Shutdown { tx }, ShutdownListener { rx })
}

impl Shutdown {
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    pub fn listener(&self) -> ShutdownListener {
        ShutdownListener {
            rx: self.tx.subscribe(),
        }
    }
}

impl ShutdownListener {
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// An owned future, as `axum::serve(..).with_graceful_shutdown` and
    /// `run_leader_election` take.
    pub fn wait(self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut rx = self.rx;
        async move {
            // An error means the trigger is gone, which can only happen on the way out.
            let _ = rx.wait_for(|triggered| *triggered).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn every_listener_resolves_after_trigger() {
        let (shutdown, listener) = shutdown_channel();
        let a = tokio::spawn(listener.clone().wait());
        let b = tokio::spawn(shutdown.listener().wait());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!a.is_finished() && !b.is_finished());
        assert!(!listener.is_triggered());
        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(1), async {
            a.await.expect("listener a");
            b.await.expect("listener b");
        })
        .await
        .expect("listeners resolve after trigger");
        assert!(listener.is_triggered());
        // A listener created late still sees the trigger.
        tokio::time::timeout(Duration::from_secs(1), shutdown.listener().wait())
            .await
            .expect("late listener resolves");
    }

    #[tokio::test]
    async fn dropping_the_trigger_releases_listeners() {
        let (shutdown, listener) = shutdown_channel();
        drop(shutdown);
        tokio::time::timeout(Duration::from_secs(1), listener.wait())
            .await
            .expect("listener resolves when the trigger is dropped");
    }
}
