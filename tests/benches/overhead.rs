//! Run overhead: the hello pipeline through kasbah's runner vs. a minimal raw
//! wasmtime loop (pooling allocator + InstancePre, a WASI context with no
//! grants, no policy), in the same process, alternating blocks of runs so
//! machine noise hits both sides alike. Prints medians and the ratio.
//!
//!     cargo bench -p kasbah-tests --bench overhead [-- RUNS]
//!
//! Both sides use async wasmtime (`instantiate_async` + `call_async`), which
//! is how the runner executes (deadlines must cut guests blocked in host
//! calls); the raw side has no epoch deadline, fuel, limiter, bounded stdio,
//! logs or usage accounting.

use std::time::{Duration, Instant};

use kasbah_policy::Policy;
use kasbah_runtime::bindings::{self, PipelinePre};
use kasbah_runtime::{Request, Runtime, RuntimeConfig};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

struct Raw {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Raw {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::kasbah::pipeline::log::Host for Raw {
    fn log(&mut self, _: bindings::kasbah::pipeline::log::Level, _: String) {}
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn pct(v: &[Duration], p: f64) -> Duration {
    v[((v.len() as f64 - 1.0) * p) as usize]
}

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5000);
    let wasm = std::fs::read(kasbah_tests::guest_path("hello"))?;
    let input = b"hello kasbah".to_vec();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    // kasbah runner
    let runtime = Runtime::new(RuntimeConfig::default()).map_err(anyhow::Error::msg)?;
    let module = runtime.load(&wasm)?;
    let policy = Policy::default();

    // raw wasmtime, with the same pool reset settings as kasbah's runtime
    let rc = runtime.config();
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(128)
        .total_core_instances(1024)
        .total_memories(256)
        .total_tables(512)
        .total_stacks(128)
        .linear_memory_keep_resident(rc.memory_keep_resident)
        .table_keep_resident(rc.table_keep_resident)
        .async_stack_keep_resident(rc.stack_keep_resident)
        .pagemap_scan(wasmtime::Enabled::Auto);
    let mut cfg = Config::new();
    cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = Engine::new(&cfg).map_err(anyhow::Error::msg)?;
    let mut linker = Linker::<Raw>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(anyhow::Error::msg)?;
    bindings::kasbah::pipeline::log::add_to_linker::<Raw, HasSelf<Raw>>(&mut linker, |s| s)
        .map_err(anyhow::Error::msg)?;
    let component = Component::new(&engine, &wasm).map_err(anyhow::Error::msg)?;
    let pre = PipelinePre::new(
        linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::msg)?,
    )
    .map_err(anyhow::Error::msg)?;

    let kasbah_once = || async {
        let r = runtime
            .run(&module, &policy, Request::new(input.clone()))
            .await
            .expect("run");
        assert!(r.outcome.is_ok());
    };
    let raw_once = || async {
        let mut store = Store::new(
            &engine,
            Raw {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
            },
        );
        let p = pre
            .instantiate_async(&mut store)
            .await
            .expect("instantiate");
        let req = bindings::kasbah::pipeline::types::Request {
            content_type: "application/octet-stream".into(),
            metadata: vec![],
            body: input.clone(),
        };
        let out = p
            .kasbah_pipeline_handler()
            .call_run(&mut store, &req)
            .await
            .expect("call");
        assert!(out.is_ok());
    };

    let (mut ours, mut raw) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    rt.block_on(async {
        for _ in 0..200 {
            kasbah_once().await;
            raw_once().await;
        }
        let block = 100;
        while ours.len() < runs {
            for _ in 0..block {
                let t = Instant::now();
                kasbah_once().await;
                ours.push(t.elapsed());
            }
            for _ in 0..block {
                let t = Instant::now();
                raw_once().await;
                raw.push(t.elapsed());
            }
        }
    });
    let (mo, mr) = (median(&mut ours), median(&mut raw));
    println!(
        "hello pipeline, {} runs each, alternating blocks of 100",
        ours.len()
    );
    println!(
        "kasbah runner : median {:>8.1} µs   p90 {:>8.1} µs",
        mo.as_secs_f64() * 1e6,
        pct(&ours, 0.9).as_secs_f64() * 1e6
    );
    println!(
        "raw wasmtime  : median {:>8.1} µs   p90 {:>8.1} µs",
        mr.as_secs_f64() * 1e6,
        pct(&raw, 0.9).as_secs_f64() * 1e6
    );
    let ratio = mo.as_secs_f64() / mr.as_secs_f64();
    println!("ratio (kasbah / raw) = {ratio:.3}   target <= 1.15");
    Ok(())
}
