//! Admission control and the bounded worker pool.
//!
//! A run is admitted only if (a) the tenant has fewer than its policy's
//! `max_concurrent_runs` runs queued or running and (b) the server has fewer
//! than `workers + queue_depth` runs in flight. Otherwise the API answers 429
//! with `Retry-After`: there is no unbounded queue anywhere. Admitted runs
//! wait for one of `workers` execution permits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct Scheduler {
    capacity: usize,
    state: Mutex<State>,
    workers: Arc<Semaphore>,
}

#[derive(Default)]
struct State {
    in_flight: usize,
    per_tenant: HashMap<String, u32>,
}

/// Why a run was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    TenantLimit(u32),
    ServerFull(usize),
}

/// A run's place in flight; released on drop, whatever happens to the run.
pub struct Admission {
    sched: Arc<Scheduler>,
    tenant: String,
}

impl Scheduler {
    pub fn new(workers: usize, queue_depth: usize) -> Arc<Self> {
        Arc::new(Scheduler {
            capacity: workers + queue_depth,
            state: Mutex::default(),
            workers: Arc::new(Semaphore::new(workers)),
        })
    }

    pub fn admit(self: &Arc<Self>, tenant: &str, tenant_max: u32) -> Result<Admission, Refusal> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.in_flight >= self.capacity {
            return Err(Refusal::ServerFull(self.capacity));
        }
        let n = s.per_tenant.entry(tenant.to_string()).or_insert(0);
        if *n >= tenant_max {
            return Err(Refusal::TenantLimit(tenant_max));
        }
        *n += 1;
        s.in_flight += 1;
        Ok(Admission {
            sched: self.clone(),
            tenant: tenant.to_string(),
        })
    }

    /// Wait for an execution slot (bounded: at most `capacity` waiters).
    pub async fn worker(&self) -> Option<OwnedSemaphorePermit> {
        self.workers.clone().acquire_owned().await.ok()
    }

    pub fn in_flight(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .in_flight
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut s = self
            .sched
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        s.in_flight = s.in_flight.saturating_sub(1);
        if let Some(n) = s.per_tenant.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.per_tenant.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_tenant_and_global_bounds_hold_and_release_on_drop() {
        let s = Scheduler::new(1, 1);
        let a1 = s.admit("a", 1).expect("first");
        assert_eq!(s.admit("a", 1).err(), Some(Refusal::TenantLimit(1)));
        let b1 = s.admit("b", 5).expect("b");
        assert_eq!(s.admit("c", 5).err(), Some(Refusal::ServerFull(2)));
        drop(a1);
        assert_eq!(s.in_flight(), 1);
        let _a2 = s.admit("a", 1).expect("released");
        drop(b1);
        assert_eq!(s.in_flight(), 1);
    }
}
