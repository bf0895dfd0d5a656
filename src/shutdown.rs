//! Shutdown as a value passed in, so tests can trigger it and the pipeline can check it between
//! batches and during backoff sleeps.

use std::time::Duration;

use tokio::sync::watch;

/// How long requests under way may still take after SIGINT/SIGTERM before they are abandoned
/// (nothing is lost: what they would have saved is read again at the next start).
pub const GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The sending half: dropping it does not trigger shutdown, `trigger()` does.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }
}

impl Shutdown {
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger { tx }, Shutdown { rx })
    }

    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves when shutdown is requested; never if the trigger is dropped untriggered.
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        if rx.wait_for(|t| *t).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Resolves `grace` after shutdown was requested: work under way may finish within it (a
    /// bulk request already sent, a state write), but nothing waits on the network past it.
    pub async fn expired(&self, grace: Duration) {
        self.wait().await;
        tokio::time::sleep(grace).await;
    }

    /// Runs `work` to completion, or until [`Shutdown::expired`]; then `Err(Error::Shutdown)`.
    /// However long a server takes to answer (or never does), a stop takes at most `GRACE`.
    pub async fn bounded<T>(&self, work: impl std::future::Future<Output = crate::Result<T>>) -> crate::Result<T> {
        tokio::select! {
            r = work => r,
            _ = self.expired(GRACE) => Err(crate::Error::Shutdown),
        }
    }

    /// Sleeps for `d`; returns true if shutdown came first.
    pub async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.wait() => true,
            _ = tokio::time::sleep(d) => self.is_triggered(),
        }
    }
}

/// Triggers shutdown on SIGINT or SIGTERM.
pub fn on_signals(trigger: ShutdownTrigger) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    trigger.trigger();
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested, finishing the current batch");
        trigger.trigger();
    });
}
