//! Cancels of runs on a zone worker: the control plane publishes a run's id
//! on its zone's cancel subject (`proto::cancel_subject`, core NATS, only
//! the control plane may publish there); every worker of the zone hears
//! it, and the one executing that run stops it (`RunControl::cancel`:
//! within two epoch ticks) and sends its result — `cancelled`, with the
//! usage it took. A cancel for a run this worker has not started (still
//! queued, or on another worker) is remembered, bounded, so a later
//! delivery of that job here ends at once as `cancelled`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::StreamExt;
use kasbah_runtime::Cancel;

use crate::proto::{MAX_ID_LEN, cancel_subject};

/// Cancelled run ids remembered for runs not executing here.
const MAX_REMEMBERED: usize = 1024;

#[derive(Default)]
pub(crate) struct Cancels {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    running: HashMap<String, Arc<Cancel>>,
    remembered: VecDeque<String>,
}

impl Cancels {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A run starts here: its cancel (already cancelled if a cancel for it
    /// came first). Pair with [`Self::end`].
    pub(crate) fn start(&self, run_id: &str) -> Arc<Cancel> {
        let c = Cancel::new();
        let mut inner = self.lock();
        if inner.remembered.iter().any(|r| r == run_id) {
            c.cancel();
        }
        inner.running.insert(run_id.to_string(), c.clone());
        c
    }

    /// The run ended here (`cancel`: the one [`Self::start`] gave it; a
    /// second delivery of the same job running meanwhile keeps its own).
    pub(crate) fn end(&self, run_id: &str, cancel: &Arc<Cancel>) {
        let mut inner = self.lock();
        if inner
            .running
            .get(run_id)
            .is_some_and(|c| Arc::ptr_eq(c, cancel))
        {
            inner.running.remove(run_id);
        }
    }

    /// Stop `run_id` if it executes here, else remember it.
    pub(crate) fn cancel(&self, run_id: &str) {
        let mut inner = self.lock();
        if let Some(c) = inner.running.get(run_id) {
            c.cancel();
            return;
        }
        if inner.remembered.iter().any(|r| r == run_id) {
            return;
        }
        if inner.remembered.len() >= MAX_REMEMBERED {
            inner.remembered.pop_front();
        }
        inner.remembered.push_back(run_id.to_string());
    }
}

/// Ends a run's registration when dropped (every way out of a job).
pub(crate) struct Registered<'a> {
    cancels: &'a Cancels,
    run_id: &'a str,
    pub(crate) cancel: Arc<Cancel>,
}

impl<'a> Registered<'a> {
    pub(crate) fn new(cancels: &'a Cancels, run_id: &'a str) -> Self {
        Registered {
            cancels,
            run_id,
            cancel: cancels.start(run_id),
        }
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.cancels.end(self.run_id, &self.cancel);
    }
}

/// Listen for cancels of `zones`' runs until the connection closes.
/// Payloads that are not a plausible run id are ignored.
pub(crate) async fn listen(
    client: async_nats::Client,
    zones: Vec<String>,
    cancels: Arc<Cancels>,
) -> anyhow::Result<()> {
    let mut subs = Vec::new();
    for z in &zones {
        subs.push(client.subscribe(cancel_subject(z)).await?);
    }
    let mut all = futures_util::stream::select_all(subs);
    while let Some(msg) = all.next().await {
        let id = match std::str::from_utf8(&msg.payload) {
            Ok(id) if !id.is_empty() && id.len() <= MAX_ID_LEN => id,
            _ => continue,
        };
        tracing::info!(run = id, "cancel asked");
        cancels.cancel(id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_reaches_a_running_run_or_waits_for_it_bounded() {
        let c = Cancels::default();
        let running = c.start("run_a");
        assert!(!running.is_cancelled());
        c.cancel("run_a");
        assert!(running.is_cancelled());
        c.end("run_a", &running);
        // Not running here yet: remembered, cancelled when it starts.
        c.cancel("run_b");
        assert!(c.start("run_b").is_cancelled());
        assert!(!c.start("run_c").is_cancelled());
        // Bounded: the oldest remembered ids go first.
        for i in 0..MAX_REMEMBERED {
            c.cancel(&format!("run_x{i}"));
        }
        assert_eq!(c.lock().remembered.len(), MAX_REMEMBERED);
        assert!(!c.start("run_b").is_cancelled(), "forgotten");
        {
            let r = Registered::new(&c, "run_d");
            assert!(!r.cancel.is_cancelled());
            assert!(c.lock().running.contains_key("run_d"));
        }
        assert!(!c.lock().running.contains_key("run_d"));
    }
}
