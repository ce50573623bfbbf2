//! Runs in flight as clients watch and control them: the live feed of a
//! run's logs and stdio and its cancellation (the rules of
//! `GET /v1/runs/{id}/logs` and `POST /v1/runs/{id}/cancel` are in
//! `follow.rs`). No HTTP, no app state here.
//!
//! One [`LiveRun`] per run in flight in this process, from admission until
//! its record is stored (so at most the scheduler's capacity). An
//! in-process run's sink (called on the guest's thread by the runtime,
//! with only what the per-run log and stdio bounds kept) appends to a
//! bounded history and sends on a bounded broadcast channel: sending never
//! waits, so no client can slow a run down; a client that falls more than
//! [`BROADCAST_EVENTS`] behind gets a `gap` event with the number it
//! missed. A client joining late gets the history first (at most
//! [`HISTORY_EVENTS`] events and [`HISTORY_BYTES`] bytes, then a `gap` for
//! what it no longer holds). Fleet runs send nothing while they run: their
//! followers get the record's logs and stdio once the result is recorded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kasbah_core::LogEvent;
use kasbah_runtime::{Cancel, LiveSink, RunControl};
use tokio::sync::{broadcast, watch};

use crate::store::lock;

/// Events a follower may fall behind by before it gets a `gap`.
pub const BROADCAST_EVENTS: usize = 256;
/// Events of a run kept for followers who join late.
pub const HISTORY_EVENTS: usize = 4096;
/// Bytes (messages and stdio) of those.
pub const HISTORY_BYTES: usize = 1 << 20;

/// The runs in flight in this process.
#[derive(Default)]
pub struct LiveRuns {
    runs: Mutex<HashMap<String, Arc<LiveRun>>>,
}

/// A follower joining a run's feed.
pub struct Joined {
    /// The events kept so far.
    pub history: Vec<Arc<LogEvent>>,
    /// Events sent that the history no longer holds.
    pub not_kept: u64,
    /// The events to come (`None` once the run's record is stored).
    pub rx: Option<broadcast::Receiver<Arc<LogEvent>>>,
}

pub struct LiveRun {
    pub tenant: String,
    pub cancel: Arc<Cancel>,
    /// Whether the run's events come while it runs (in-process runs).
    streams: bool,
    feed: Mutex<Feed>,
    ended: watch::Sender<bool>,
}

struct Feed {
    history: Vec<Arc<LogEvent>>,
    history_bytes: usize,
    /// Events not kept in `history` (over its bounds).
    not_kept: u64,
    /// `None` once the run's record is stored: followers see the channel
    /// close after the events already sent.
    tx: Option<broadcast::Sender<Arc<LogEvent>>>,
}

fn event_bytes(e: &LogEvent) -> usize {
    match e {
        LogEvent::Log { message, .. } => message.len().max(16),
        LogEvent::Stdout { bytes } | LogEvent::Stderr { bytes } => bytes.len(),
        _ => 16,
    }
}

impl LiveRuns {
    /// Register a run at admission; `streams`: its events come while it
    /// runs (in-process execution).
    pub fn start(&self, id: &str, tenant: &str, streams: bool) -> Arc<LiveRun> {
        let (tx, _) = broadcast::channel(BROADCAST_EVENTS);
        let run = Arc::new(LiveRun {
            tenant: tenant.to_string(),
            cancel: Cancel::new(),
            streams,
            feed: Mutex::new(Feed {
                history: Vec::new(),
                history_bytes: 0,
                not_kept: 0,
                tx: Some(tx),
            }),
            ended: watch::channel(false).0,
        });
        lock(&self.runs).insert(id.to_string(), run.clone());
        run
    }

    /// The run's record is stored: close its feed and forget it.
    pub fn end(&self, id: &str) {
        if let Some(run) = lock(&self.runs).remove(id) {
            lock(&run.feed).tx = None;
            run.ended.send_replace(true);
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<LiveRun>> {
        lock(&self.runs).get(id).cloned()
    }
}

impl LiveRun {
    /// What the runtime gets for this run: the sink and the cancel.
    pub fn control(self: &Arc<Self>) -> RunControl {
        let me = self.clone();
        RunControl {
            live: Some(LiveSink::new(move |e| me.publish(e))),
            cancel: Some(self.cancel.clone()),
        }
    }

    fn publish(&self, e: LogEvent) {
        let e = Arc::new(e);
        let mut feed = lock(&self.feed);
        let size = event_bytes(&e);
        if feed.history.len() < HISTORY_EVENTS && feed.history_bytes + size <= HISTORY_BYTES {
            feed.history_bytes += size;
            feed.history.push(e.clone());
        } else {
            feed.not_kept += 1;
        }
        if let Some(tx) = &feed.tx {
            // No receiver is not an error: nobody follows.
            let _ = tx.send(e);
        }
    }

    /// What a follower joining now gets (see [`Joined`]).
    pub fn join(&self) -> Joined {
        let feed = lock(&self.feed);
        Joined {
            history: feed.history.clone(),
            not_kept: feed.not_kept,
            rx: feed.tx.as_ref().map(broadcast::Sender::subscribe),
        }
    }

    /// Whether the run's events come while it runs (in-process runs).
    pub fn streams(&self) -> bool {
        self.streams
    }

    /// Wait (at most `limit`) until the run's record is stored.
    pub async fn wait_ended(&self, limit: Duration) {
        let mut rx = self.ended.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|ended| *ended)).await;
    }
}
