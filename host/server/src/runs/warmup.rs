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
//!    fill, with the same invalidation).
//!
//! No guest code runs, nothing is written, nobody is billed.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::registry::storage::ModuleStore;
use crate::state::AppState;
use crate::tenancy::storage::TenancyStore;

/// Newest `runs` rows read to find the recently used (tenant, module)
/// pairs, and most pairs warmed.
const RECENT_RUN_ROWS: usize = 1_000;
const MAX_PAIRS: usize = 64;
/// Most recently used tokens cached.
const MAX_TOKENS: usize = 256;
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
}

/// Start the warm-up; returns its thread, so tests can wait for it;
/// `None` when there is nothing to do (no compiled module to preload, or
/// preloading off, or fleet mode: runs execute on the workers).
pub fn preload_recent(s: &AppState) -> Option<std::thread::JoinHandle<Warmed>> {
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
            warm_lookups(&s, &mut warmed);
            tracing::info!(
                "warm-up: {} of {} recently used modules loaded, {} instances, {} tokens, {} policies, {} module records, in {:?}",
                warmed.modules,
                digests.len(),
                warmed.instances,
                warmed.tokens,
                warmed.policies,
                warmed.records,
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
/// as many of the first as there are guest threads (each thread's first
/// sandbox); waits for each. Returns how many were made.
fn warm_instances(s: &AppState, loaded: &[kasbah_core::Digest]) -> usize {
    let threads = match s.config.guest_threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
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
fn warm_lookups(s: &AppState, warmed: &mut Warmed) {
    match s.tenancy.warm_callers(MAX_TOKENS) {
        Ok(n) => warmed.tokens = n,
        Err(e) => tracing::warn!("warm-up: tokens: {e}"),
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
}
