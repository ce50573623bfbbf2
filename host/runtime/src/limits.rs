//! Memory/table/instance limits for one store, with the accounting the run
//! report needs: peak linear memory, and whether a limit was what stopped the
//! guest (so a failed `memory.grow` followed by an abort is reported as
//! `memory_limit`, not as an anonymous trap).

use wasmtime::ResourceLimiter;

pub(crate) struct Limiter {
    memory_limit: usize,
    table_elements: usize,
    /// Sum of the current sizes of every linear memory in the store.
    total_memory: usize,
    pub peak_memory: usize,
    pub memory_denied: bool,
    pub table_denied: bool,
}

/// Instances/tables/memories a pipeline component may create. A Rust
/// `wasm32-wasip2` component uses a handful of core instances, one memory and
/// two tables; these leave room without letting a module fan out.
const MAX_INSTANCES: usize = 32;
const MAX_TABLES: usize = 32;
const MAX_MEMORIES: usize = 4;

impl Limiter {
    pub(crate) fn new(memory_limit: u64, table_elements: u64) -> Self {
        Limiter {
            memory_limit: usize::try_from(memory_limit).unwrap_or(usize::MAX),
            table_elements: usize::try_from(table_elements).unwrap_or(usize::MAX),
            total_memory: 0,
            peak_memory: 0,
            memory_denied: false,
            table_denied: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let others = self.total_memory.saturating_sub(current);
        let new_total = others.saturating_add(desired);
        if new_total > self.memory_limit {
            self.memory_denied = true;
            return Ok(false);
        }
        self.total_memory = new_total;
        self.peak_memory = self.peak_memory.max(new_total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            self.table_denied = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }
    fn tables(&self) -> usize {
        MAX_TABLES
    }
    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_total_across_memories_and_refuses_past_the_limit() {
        let mut l = Limiter::new(100, 10);
        assert!(l.memory_growing(0, 40, None).expect("ok"));
        assert!(l.memory_growing(0, 50, None).expect("ok"));
        assert_eq!(l.peak_memory, 90);
        // Growing the first memory from 40 to 60 would make the total 110.
        assert!(!l.memory_growing(40, 60, None).expect("ok"));
        assert!(l.memory_denied);
        assert_eq!(l.peak_memory, 90);
        assert!(!l.table_growing(0, 11, None).expect("ok"));
        assert!(l.table_denied);
    }
}
