//! Controls a platform holds over one run while it executes, besides its
//! policy: a live feed of what the guest logs and prints ([`LiveSink`]),
//! and cancellation ([`Cancel`]). Neither can make the run wait: the sink
//! is called synchronously with what the per-run bounds already kept (it
//! must not block), and a cancel only sets a flag and wakes the run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kasbah_core::LogEvent;

/// Receives the log records and stdout/stderr bytes a run keeps, as the
/// guest produces them. Called on the guest's thread: must return at once
/// (the server's sink is a bounded broadcast send).
#[derive(Clone)]
pub struct LiveSink(Arc<dyn Fn(LogEvent) + Send + Sync>);

impl LiveSink {
    pub fn new(f: impl Fn(LogEvent) + Send + Sync + 'static) -> Self {
        LiveSink(Arc::new(f))
    }
    pub(crate) fn send(&self, e: LogEvent) {
        (self.0)(e)
    }
}

impl std::fmt::Debug for LiveSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveSink")
    }
}

/// A run's cancellation: [`Cancel::cancel`] ends it as `cancelled` — a
/// CPU-bound guest at its next epoch tick (an interrupt), a guest blocked
/// in a host call two epoch ticks later (its call is dropped, as at its
/// deadline).
#[derive(Debug, Default)]
pub struct Cancel {
    flag: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Cancel {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }
    /// Ask the run to stop (idempotent).
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
    /// Resolves once [`Self::cancel`] was called.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// What [`crate::Runtime::run_controlled`] takes besides the run itself.
#[derive(Debug, Clone, Default)]
pub struct RunControl {
    pub live: Option<LiveSink>,
    pub cancel: Option<Arc<Cancel>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cancelled_resolves_after_cancel_even_if_called_before() {
        let c = Cancel::new();
        c.cancel();
        c.cancelled().await;
        let c2 = Cancel::new();
        let w = c2.clone();
        let h = tokio::spawn(async move { w.cancelled().await });
        tokio::task::yield_now().await;
        assert!(!c2.is_cancelled());
        c2.cancel();
        h.await.expect("join");
    }
}
