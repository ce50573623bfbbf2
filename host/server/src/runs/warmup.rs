//! The start-up warm-up of a (re)started server, in the background: it
//! never delays or fails the start, and requests are served meanwhile
//! (`GET /readyz` says when it is done). What a first request would
//! otherwise pay for once per process (issue 15):
//!
//! 1. **modules**: the most recently used compiled modules are loaded from
//!    the artifact cache (bounded by `preload_modules` and
//!    `preload_bytes`; verified like any load, never compiled; a refused
//!    artifact is removed and that module compiles on its first run);
//! 2. **instances**: one instance of each is made and dropped on the guest
//!    threads, which maps its memory image into a pooled slot and sets up
//!    each thread's sandbox pieces — only for modules whose instantiation
//!    runs none of their code (no start function; `kasbah_runtime`'s
//!    `warm.rs`), in a store that grants nothing;
//! 3. **lookups**: the most recently used live tokens, and the current
//!    policies and module records of the tenants that ran those modules
//!    lately, are read into the stores' caches (the same caches requests
//!    fill, with the same invalidation); each reader connection looks up a
//!    run that does not exist (it prepares the statements a run's record
//!    and output are read with); the writer rehearses a run's writes (its
//!    rows and its audit entry, rolled back: `Db::rehearse`).
//!
//! No guest code runs, nothing is stored, nobody is billed.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::storage::RunStore;
use crate::registry::storage::ModuleStore;
use crate::state::AppState;
use crate::tenancy::storage::TenancyStore;

/// Newest `runs` rows read to find the recently used (tenant, module)
/// pairs, and most pairs warmed.
const RECENT_RUN_ROWS: usize = 1_000;
const MAX_PAIRS: usize = 64;
/// Most recently used tokens cached.
const MAX_TOKENS: usize = 256;
/// A run id no run has (ids are `run_` + 24 hex digits).
const WARMUP_RUN_ID: &str = super::warm_sqlite::REHEARSAL_RUN_ID;
/// How long the warm-up waits for one warm-up instance.
const INSTANCE_WAIT: Duration = Duration::from_secs(5);

/// What one warm-up did (tests and the start-up log).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Warmed {
    /// Modules loaded from the artifact cache.
    pub modules: usize,
    /// Warm-up instances made (and dropped).
    pub instances: usize,
    /// Tokens, policies and module records read into the caches.
    pub tokens: usize,
    pub policies: usize,
    pub records: usize,
    /// A run's writes were rehearsed (and rolled back) on the writer.
    pub rehearsed: bool,
}

/// Start the warm-up; returns its thread, so tests can wait for it;
/// `None` when there is nothing to do (no compiled module to preload, or
/// preloading off, or fleet mode: runs execute on the workers).
pub fn preload_recent(s: &AppState) -> Option<std::thread::JoinHandle<Warmed>> {
    // Wake the guest threads whatever else is warmed (dropped: nobody
    // waits for them).
    for _ in 0..guest_threads(s) {
        let _ = s.guests.spawn(async {});
    }
    if s.fleet.is_some() || s.config.preload_modules == 0 {
        return None;
    }
    let digests = s
        .runtime
        .recent_artifacts(s.config.preload_modules, s.config.preload_bytes);
    if digests.is_empty() {
        return None;
    }
    s.warmup.modules.store(true, Ordering::Release);
    let state = s.clone();
    let handle = tokio::runtime::Handle::current();
    let spawned = std::thread::Builder::new()
        .name("kasbah-preload".into())
        .spawn(move || {
            let s = state;
            let started = Instant::now();
            let mut warmed = Warmed::default();
            let mut loaded = Vec::new();
            for d in &digests {
                // An artifact whose module is gone (deleted data) is skipped.
                let bytes = match s.blobs.get(d) {
                    Ok(Some(b)) => b,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!("preload: reading module {d}: {e}");
                        continue;
                    }
                };
                match s.runtime.preload(&bytes) {
                    Ok(true) => loaded.push(*d),
                    Ok(false) => {}
                    Err(e) => tracing::warn!("preload: module {d}: {e}"),
                }
            }
            warmed.modules = loaded.len();
            warmed.instances = warm_instances(&s, &loaded);
            warm_lookups(&s, &handle, &mut warmed);
            tracing::info!(
                "warm-up: {} of {} recently used modules loaded, {} instances, {} tokens, {} policies, {} module records, writes rehearsed: {}, in {:?}",
                warmed.modules,
                digests.len(),
                warmed.instances,
                warmed.tokens,
                warmed.policies,
                warmed.records,
                warmed.rehearsed,
                started.elapsed()
            );
            s.warmup.modules.store(false, Ordering::Release);
            warmed
        });
    match spawned {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!("preload thread: {e}");
            s.warmup.modules.store(false, Ordering::Release);
            None
        }
    }
}

/// One warm-up instance of each loaded module on the guest threads, and
/// as many of the first as there are guest threads (likely one on each:
/// the runtime does not promise where a task runs); waits for each.
/// Returns how many were made.
fn warm_instances(s: &AppState, loaded: &[kasbah_core::Digest]) -> usize {
    let threads = guest_threads(s);
    let modules: Vec<_> = loaded.iter().filter_map(|d| s.runtime.cached(d)).collect();
    let Some(first) = modules.first() else {
        return 0;
    };
    let extra = std::iter::repeat_n(first, threads.saturating_sub(1));
    let (tx, rx) = std::sync::mpsc::channel();
    let mut spawned = 0;
    for m in modules.iter().chain(extra) {
        let (rt, m, tx) = (s.runtime.clone(), m.clone(), tx.clone());
        let task = s.guests.spawn(async move {
            let _ = tx.send(rt.warm(&m).await);
        });
        if task.is_some() {
            spawned += 1;
        }
    }
    drop(tx);
    (0..spawned)
        .map_while(|_| rx.recv_timeout(INSTANCE_WAIT).ok())
        .filter(|made| *made)
        .count()
}

/// Tokens, policies and module records into the stores' caches. A
/// failed read only leaves that cache cold.
fn warm_lookups(s: &AppState, rt: &tokio::runtime::Handle, warmed: &mut Warmed) {
    match s.tenancy.warm_callers(MAX_TOKENS) {
        Ok(n) => warmed.tokens = n,
        Err(e) => tracing::warn!("warm-up: tokens: {e}"),
    }
    // Every reader connection prepares the statements a run's record and
    // output are read with (a miss reads the same pages a hit would).
    // Readers are handed out in turn: READERS calls in a row reach each
    // once (unless a request takes one meanwhile).
    for _ in 0..crate::store::READERS {
        let _ = s.runs.run(WARMUP_RUN_ID);
    }
    for _ in 0..crate::store::READERS {
        let _ = s.runs.run_output_place(WARMUP_RUN_ID);
    }
    let pairs = match s.runs.recent_modules(RECENT_RUN_ROWS, MAX_PAIRS) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("warm-up: recent runs: {e}");
            return;
        }
    };
    let mut tenants: Vec<&str> = Vec::new();
    for (tenant, digest) in &pairs {
        if !tenants.contains(&tenant.as_str()) {
            tenants.push(tenant);
            if let Ok(Some(_)) = s.tenancy.current_policy_cached(tenant) {
                warmed.policies += 1;
            }
        }
        if let Ok(Some(_)) = s.modules.module_cached(tenant, digest) {
            warmed.records += 1;
        }
    }
    // The writer: a run's writes rehearsed and rolled back.
    if let Some((tenant, digest)) = pairs.first() {
        match rt.block_on(s.runs.rehearse_run(tenant, *digest)) {
            Ok(()) => warmed.rehearsed = true,
            Err(e) => tracing::warn!("warm-up: rehearsing a run's writes: {e}"),
        }
    }
}

/// How many guest threads there are (`guest_threads`, 0 = one per CPU).
fn guest_threads(s: &AppState) -> usize {
    match s.config.guest_threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    }
}
