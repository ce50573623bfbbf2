//! Warm GPU state (issue 15): dataset-backed buffers resident on the
//! adapter across a tenant's runs, the kernel cache, the budgets that bound
//! them, and the isolation between tenants sharing a pooled GPU process.
//! Also: guests built against `kasbah:gpu@0.1.0` still run unchanged.
//!
//! Each test uses its own adapter entry (one physical adapter, lavapipe on
//! CI, exposed as several entries) with one pooled GPU process, so runs of
//! a test take turns on the same process and its counters are its own.

use std::path::PathBuf;
use std::sync::OnceLock;

use kasbah_core::{Digest, GpuUsage, Outcome, RunReport};
use kasbah_policy::{GpuGrant, Policy};
use kasbah_runtime::kasbah_gpu::{AdapterConfig, AdapterStatus, GpuConfig};
use kasbah_runtime::{DatasetMount, Request, RunOptions, Runtime, RuntimeConfig};
use kasbah_tests::{assert_not_leaked, gpu_error, guest_bytes};

/// `(label, zone, adapter resident budget)`.
const ENTRIES: &[(&str, &str, u64)] = &[
    ("warm-v1", "zone-v1", 1 << 20),
    ("warm-ro", "zone-ro", 1 << 20),
    ("warm-once", "zone-once", 1 << 20),
    ("warm-iso", "zone-iso", 1 << 20),
    ("warm-tenant", "zone-tenant", 1 << 20),
    ("warm-adapter", "zone-adapter", 8192),
];

fn rt() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        Runtime::new(RuntimeConfig {
            gpu: GpuConfig {
                adapters: ENTRIES
                    .iter()
                    .map(|(label, zone, budget)| {
                        AdapterConfig::new(*label, *zone)
                            .backend("vulkan")
                            .max_resident_bytes(*budget)
                    })
                    .collect(),
                max_idle_devices: 1,
            },
            ..RuntimeConfig::default()
        })
        .expect("runtime")
    })
}

fn status(label: &str) -> AdapterStatus {
    rt().gpu()
        .status()
        .into_iter()
        .find(|s| s.label == label)
        .unwrap_or_else(|| panic!("no entry {label}"))
}

fn policy(zone: &str, resident: u64) -> Policy {
    Policy {
        datasets: true,
        gpu: Some(GpuGrant {
            max_resident_bytes: resident,
            ..GpuGrant::in_zones([zone])
        }),
        ..Policy::default()
    }
}

/// A dataset file of `words` u32s `seed * 1_000_003 + i`, owned by a test.
struct Dataset {
    _dir: tempfile::TempDir,
    path: PathBuf,
    bytes: Vec<u8>,
}

fn dataset(seed: u32, words: u32) -> Dataset {
    let dir = tempfile::tempdir().expect("tmp");
    let bytes: Vec<u8> = (0..words)
        .flat_map(|i| seed.wrapping_mul(1_000_003).wrapping_add(i).to_le_bytes())
        .collect();
    let path = dir.path().join("weights.bin");
    std::fs::write(&path, &bytes).expect("write");
    Dataset {
        _dir: dir,
        path,
        bytes,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn run_as(tenant: &str, policy: &Policy, ds: &Dataset, attack: &str, arg: &str) -> RunReport {
    let module = rt().load(&guest_bytes("gpu-hostile")).expect("load");
    let options = RunOptions {
        datasets: vec![
            DatasetMount::new("weights.bin", &ds.path).with_digest(Digest::of(&ds.bytes)),
        ],
        tenant: Some(tenant.to_string()),
        ..RunOptions::default()
    };
    let req = Request::new(arg).with_meta("attack", attack);
    rt().run_with(&module, policy, req, &options)
        .await
        .expect("host ran it")
}

fn ok_text(r: &RunReport) -> String {
    match &r.outcome {
        Outcome::Ok { output } => String::from_utf8_lossy(&output.body).into_owned(),
        other => panic!("expected ok, got {other:?}"),
    }
}

fn gpu(r: &RunReport) -> &GpuUsage {
    r.usage.gpu.as_ref().expect("GPU usage")
}

#[tokio::test]
async fn guests_built_against_gpu_0_1_0_run_unchanged() {
    // gpu-matmul as built before kasbah:gpu@0.2.0 existed (from the commit
    // before it), kept as bytes.
    let bytes = std::fs::read(
        kasbah_tests::workspace_root().join("tests/fixtures/gpu-matmul-gpu-0.1.0.wasm"),
    )
    .expect("fixture");
    let module = rt().load(&bytes).expect("load");
    assert!(
        module
            .imports()
            .iter()
            .any(|i| i == "kasbah:gpu/compute@0.1.0")
    );
    assert!(
        !module
            .imports()
            .iter()
            .any(|i| i.starts_with("kasbah:gpu/compute@0.2"))
    );
    assert_eq!(module.link_error(), None);
    let r = rt()
        .run(&module, &policy("zone-v1", 1 << 20), Request::new("64"))
        .await
        .expect("run");
    let out: serde_json::Value = serde_json::from_str(&ok_text(&r)).expect("json");
    assert_eq!(out["checked"], 64 * 64, "every element checked on the CPU");
    assert_eq!(out["adapter"], "warm-v1");
    assert!(gpu(&r).dispatches >= 1);
    // And the 0.2.0 build of the same source.
    let now = rt().load(&guest_bytes("gpu-matmul")).expect("load");
    assert!(
        now.imports()
            .iter()
            .any(|i| i == "kasbah:gpu/compute@0.2.0")
    );
    let r2 = rt()
        .run(&now, &policy("zone-v1", 1 << 20), Request::new("64"))
        .await
        .expect("run");
    let out2: serde_json::Value = serde_json::from_str(&ok_text(&r2)).expect("json");
    assert_eq!(out2["checked"], 64 * 64);
}

#[tokio::test]
async fn dataset_buffers_read_back_but_cannot_be_written() {
    let ds = dataset(3, 256);
    let p = policy("zone-ro", 1 << 20);
    let whole = hex(&ds.bytes);
    let r = run_as("t-ro", &p, &ds, "from-dataset", "weights.bin 0 1024").await;
    assert_eq!(ok_text(&r), whole);
    let r = run_as(
        "t-ro",
        &p,
        &ds,
        "from-dataset",
        "weights.bin 512 256 bind-ro",
    )
    .await;
    assert_eq!(ok_text(&r), hex(&ds.bytes[512..768]));
    for op in ["write", "copy-into", "bind-rw"] {
        let r = run_as(
            "t-ro",
            &p,
            &ds,
            "from-dataset",
            &format!("weights.bin 0 1024 {op}"),
        )
        .await;
        let m = gpu_error(&r, "invalid-argument");
        assert!(
            m.contains("read-only") || m.contains("read_write"),
            "{op}: {m}"
        );
    }
    // The bytes are unchanged after every attempt.
    let r = run_as("t-ro", &p, &ds, "from-dataset", "weights.bin 0 1024").await;
    assert_eq!(ok_text(&r), whole);
    for bad in [
        "other.bin 0 16",
        "weights.bin 0 2048",
        "weights.bin 1020 8",
        "weights.bin 2 16",
        "weights.bin 0 6",
        "weights.bin 0 0",
        "weights.bin 18446744073709551612 8",
    ] {
        let r = run_as("t-ro", &p, &ds, "from-dataset", bad).await;
        gpu_error(&r, "invalid-argument");
    }
}

#[tokio::test]
async fn a_tenant_uploads_once_per_adapter_and_its_kernels_are_cached() {
    let ds = dataset(5, 1024);
    let p = policy("zone-once", 1 << 20);
    let arg = "weights.bin 0 4096 bind-ro";
    let first = run_as("t-once", &p, &ds, "from-dataset", arg).await;
    assert_eq!(ok_text(&first), hex(&ds.bytes));
    let g = gpu(&first);
    assert_eq!(
        (g.resident_bytes_used, g.resident_bytes_uploaded),
        (4096, 4096)
    );
    assert_eq!((g.kernels, g.kernels_cached), (1, 0));
    let warm = run_as("t-once", &p, &ds, "from-dataset", arg).await;
    assert_eq!(ok_text(&warm), hex(&ds.bytes));
    let w = gpu(&warm);
    assert_eq!(
        (w.resident_bytes_used, w.resident_bytes_uploaded),
        (4096, 0)
    );
    assert_eq!((w.kernels, w.kernels_cached), (0, 1), "a cache lookup");
    // Only the read-back was transferred (no upload).
    assert_eq!(w.bytes_transferred, 4096);
    assert_eq!(g.bytes_transferred, 8192);
    assert_eq!(status("warm-once").resident_bytes, 4096);
    assert_eq!(status("warm-once").warm_purged, 0);
}

#[tokio::test]
async fn another_tenant_on_the_same_gpu_process_reaches_nothing_warm() {
    // Tenant A's weights (a recognisable pattern) and kernels are warm.
    let a = dataset(0xA11CE, 1024);
    let p = policy("zone-iso", 1 << 20);
    let a1 = run_as("t-a", &p, &a, "from-dataset", "weights.bin 0 4096 bind-ro").await;
    assert_eq!(ok_text(&a1), hex(&a.bytes));
    let a2 = run_as("t-a", &p, &a, "kernels", "").await;
    assert_eq!(
        gpu(&a2).kernels_cached,
        2,
        "A's cache: both compiles are lookups"
    );
    assert_eq!(status("warm-iso").resident_bytes, 4096);
    let reused = status("warm-iso").devices_reused;

    // Tenant B gets the same GPU process (one per entry, pooled) ...
    let b_ds = dataset(0xB0B, 1024);
    let b1 = run_as("t-b", &p, &b_ds, "read-fresh", "4096").await;
    assert_eq!(ok_text(&b1), "0", "a fresh buffer reads as zeros");
    let s = status("warm-iso");
    assert_eq!(s.devices_reused, reused + 1, "the same process");
    assert_eq!(s.devices_created, 1);
    // ... from which A's warm state was dropped before B's first call.
    assert_eq!(s.warm_purged, 1);
    assert_eq!(s.resident_bytes, 0);
    // B's kernels are compiled, not found in A's cache.
    let b2 = run_as("t-b", &p, &b_ds, "kernels", "").await;
    assert_eq!((gpu(&b2).kernels, gpu(&b2).kernels_cached), (1, 1));
    // Guessing handles: none of B's instance's handles but its own exist.
    for h in ["1", "2", "3", "8", "2147483649", "4294967295"] {
        let r = run_as("t-b", &p, &b_ds, "forge-handle", h).await;
        assert_eq!(r.outcome.kind(), "trap", "handle {h}: {:?}", r.outcome);
    }
    // B's first buffer-from-dataset of the very bytes A has (same digest:
    // its own copy of A's file) pays the upload: not a warm hit.
    let copy = dataset(0xA11CE, 1024);
    assert_eq!(copy.bytes, a.bytes);
    let b3 = run_as("t-b", &p, &copy, "from-dataset", "weights.bin 0 4096").await;
    assert_eq!(gpu(&b3).resident_bytes_uploaded, 4096);
    for r in [&b1, &b2] {
        assert_not_leaked(r, &hex(&a.bytes[..64]));
    }
    // And A, back on the process B used, uploads again.
    let a3 = run_as("t-a", &p, &a, "from-dataset", "weights.bin 0 4096").await;
    assert_eq!(gpu(&a3).resident_bytes_uploaded, 4096);
    assert_eq!(ok_text(&a3), hex(&a.bytes));
    assert_eq!(status("warm-iso").warm_purged, 2);
}

#[tokio::test]
async fn the_tenant_budget_bounds_what_stays_and_what_a_run_holds() {
    let ds = dataset(9, 2048);
    // Room for one 4 KiB range, not two.
    let p = policy("zone-tenant", 6000);
    let too_big = run_as("t-q", &p, &ds, "from-dataset", "weights.bin 0 8192").await;
    gpu_error(&too_big, "out-of-quota");
    let both = run_as(
        "t-q",
        &p,
        &ds,
        "hold-datasets",
        "weights.bin 0 4096; weights.bin 4096 4096",
    )
    .await;
    assert!(
        gpu_error(&both, "out-of-quota").contains("held by this run"),
        "{:?}",
        both.outcome
    );
    // One after the other: the second evicts the first (LRU).
    let x = "weights.bin 0 4096";
    let y = "weights.bin 4096 4096";
    let r = run_as("t-q", &p, &ds, "from-dataset", x).await;
    assert_eq!(ok_text(&r), hex(&ds.bytes[..4096]));
    let r = run_as("t-q", &p, &ds, "from-dataset", y).await;
    assert_eq!(gpu(&r).resident_bytes_uploaded, 4096);
    assert_eq!(ok_text(&r), hex(&ds.bytes[4096..]));
    assert!(status("warm-tenant").resident_bytes <= 6000);
    let r = run_as("t-q", &p, &ds, "from-dataset", y).await;
    assert_eq!(gpu(&r).resident_bytes_uploaded, 0, "y stayed");
    let r = run_as("t-q", &p, &ds, "from-dataset", x).await;
    assert_eq!(gpu(&r).resident_bytes_uploaded, 4096, "x was evicted");
    assert_eq!(ok_text(&r), hex(&ds.bytes[..4096]));
}

#[tokio::test]
async fn the_adapter_budget_evicts_least_recently_used() {
    let ds = dataset(11, 4096);
    // The entry keeps 8 KiB; the tenant may keep much more.
    let p = policy("zone-adapter", 1 << 20);
    let range = |i: u64| format!("weights.bin {} 4096", i * 4096);
    let all = run_as(
        "t-ad",
        &p,
        &ds,
        "hold-datasets",
        &format!("{}; {}; {}", range(0), range(1), range(2)),
    )
    .await;
    assert!(
        gpu_error(&all, "out-of-quota").contains("adapter"),
        "{:?}",
        all.outcome
    );
    assert!(status("warm-adapter").resident_bytes <= 8192);
    for i in [0, 1] {
        run_as("t-ad", &p, &ds, "from-dataset", &range(i)).await;
    }
    // Both fit: warm.
    let r = run_as("t-ad", &p, &ds, "from-dataset", &range(0)).await;
    assert_eq!(gpu(&r).resident_bytes_uploaded, 0);
    // A third evicts the least recently used (range 1).
    let r = run_as("t-ad", &p, &ds, "from-dataset", &range(2)).await;
    assert_eq!(gpu(&r).resident_bytes_uploaded, 4096);
    assert_eq!(status("warm-adapter").resident_bytes, 8192);
    let r = run_as("t-ad", &p, &ds, "from-dataset", &range(0)).await;
    assert_eq!(gpu(&r).resident_bytes_uploaded, 0, "range 0 was used last");
    let r = run_as("t-ad", &p, &ds, "from-dataset", &range(1)).await;
    assert_eq!(gpu(&r).resident_bytes_uploaded, 4096, "range 1 was evicted");
    assert_eq!(
        ok_text(&r),
        hex(&ds.bytes[4096..8192]),
        "and uploaded again intact"
    );
}
