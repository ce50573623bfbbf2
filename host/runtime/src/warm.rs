//! Warming a loaded module's sandbox before its first run, without running
//! any of its code.
//!
//! The first instance of a module in a process pays for what later ones
//! reuse: the pooling allocator maps the module's copy-on-write memory
//! image into a slot (and keeps it there for the module's next instance),
//! the fiber stack and instance slot are touched for the first time, the
//! thread's WASI context pieces (random source, clocks) are set up. A
//! restarted server's first request paid for all of it (issue 15: ~0.3 ms
//! of hello's 2.2 ms first run). [`Runtime::warm`] makes one instance of a
//! module in a throwaway store and drops it.
//!
//! It runs no guest code: only modules where instantiation itself runs
//! none are warmed — no core module and no component inside has a start
//! function ([`instantiation_runs_no_code`]; anything unparsable counts as
//! running code); data and element segments and global initialisers are
//! declarative. As a second guard the store gets almost no fuel (with
//! metering: [`WARM_FUEL`]) and an epoch deadline that traps at the next
//! tick. The store grants
//! nothing (an empty policy: no files, no network, no datasets, no GPU,
//! no HTTP destinations), is never handed to anyone, and is dropped at once: the pooled slot is
//! reset like after any run, so nothing of it reaches a later instance.

use std::sync::Arc;

use kasbah_policy::Policy;
use wasmtime::Store;
use wasmtime::component::ResourceTable;

use crate::{Module, RunState, Runtime, fs, http, limits, log, net, wasi};

/// Fuel a warm-up store gets (with fuel metering): instantiating a module
/// without start functions consumed 1 unit in our measurements (hello,
/// minilm-embed: wasmtime's own entry, no guest function), so any guest
/// code that did run would stop within a few hundred instructions.
const WARM_FUEL: u64 = 1_000;

/// Whether instantiating the component `wasm` runs none of its code: no
/// start function in any core module or component it contains.
pub(crate) fn instantiation_runs_no_code(wasm: &[u8]) -> bool {
    use wasmparser::Payload;
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload {
            Ok(Payload::StartSection { .. } | Payload::ComponentStartSection { .. }) | Err(_) => {
                return false;
            }
            Ok(_) => {}
        }
    }
    true
}

impl Runtime {
    /// Make one instance of `module` in a store that grants nothing, and
    /// drop it (see the module docs). `false` when the module is not
    /// warmed: it cannot be linked here, instantiating it would run its
    /// code, or instantiation failed (the module's first run reports why).
    pub async fn warm(&self, module: &Module) -> bool {
        let Ok(pre) = &module.pre else {
            return false;
        };
        if !module.start_free {
            return false;
        }
        let policy = Policy::default();
        let denials = net::Denials::default();
        let mounts = wasi::RunMounts {
            residency: None,
            datasets: None,
            live: None,
            secret_env: &[],
            secret_dirs: &[],
        };
        let Ok(mut parts) =
            wasi::build(&policy, net::Allowlist::default(), denials.clone(), mounts)
        else {
            return false;
        };
        let limits = &policy.limits;
        let mut store = Store::new(
            &self.inner.engine,
            RunState {
                wasi: parts.builder.build(),
                table: ResourceTable::new(),
                // The module's own initial memory may exceed a default
                // policy's; the host's maximum bounds it as for any run.
                limiter: limits::Limiter::new(
                    self.inner.config.max_memory_bytes,
                    limits.max_table_elements,
                ),
                log: log::LogCtx::new(0, 0, false),
                gpu: kasbah_gpu::GpuCtx::denied("warm-up instance"),
                lookup: parts.lookup.clone(),
                fs: Arc::new(fs::FsGuard::new(limits, denials.clone())),
                // An empty allowlist: every request would be refused.
                http: http::HttpState::new(
                    Arc::new(net::Allowlist::default()),
                    denials,
                    self.inner.tls.clone(),
                    limits,
                ),
            },
        );
        store.limiter(|s| &mut s.limiter);
        if self.inner.config.fuel_metering && store.set_fuel(WARM_FUEL).is_err() {
            return false;
        }
        store.epoch_deadline_trap();
        store.set_epoch_deadline(1);
        match pre.instantiate_async(&mut store).await {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(module = %module.digest, "warm-up instance: {e:#}");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_function_anywhere_counts_as_running_code() {
        // A core module with `(func) (start 0)`; the same without start.
        let with_start: &[u8] = &[
            0, 97, 115, 109, 1, 0, 0, 0, // magic, version
            1, 4, 1, 96, 0, 0, // type section: () -> ()
            3, 2, 1, 0, // function section: one function of type 0
            8, 1, 0, // start section: function 0
            10, 4, 1, 2, 0, 11, // code section: empty body
        ];
        let without: &[u8] = &[
            0, 97, 115, 109, 1, 0, 0, 0, 1, 4, 1, 96, 0, 0, 3, 2, 1, 0, 10, 4, 1, 2, 0, 11,
        ];
        assert!(!instantiation_runs_no_code(with_start));
        assert!(instantiation_runs_no_code(without));
        // Not WebAssembly: counts as running code.
        assert!(!instantiation_runs_no_code(b"\0asm\x01\0\0\0\xff\xff"));
        assert!(!instantiation_runs_no_code(b"hello"));
    }
}
