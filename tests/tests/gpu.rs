//! GPU compute (`kasbah:gpu`) end to end on the test host's adapter entries
//! (see `kasbah_tests::GPU_ZONES`; lavapipe on CI). Hostile GPU guests are
//! contained with the right error, and after each the same runtime still
//! serves a CPU pipeline and a GPU pipeline. Where a check could pass
//! vacuously, a positive control shows the same guest code succeeding when
//! the limit allows it.

use std::time::{Duration, Instant};

use kasbah_core::{GuestErrorKind, Outcome, RunReport};
use kasbah_policy::{GpuGrant, Limits, MIB, Policy};
use kasbah_runtime::kasbah_gpu::{AdapterConfig, AdapterStatus, GpuConfig};
use kasbah_runtime::{Request, Runtime, RuntimeConfig};
use kasbah_tests::{assert_hello_still_served, gpu_error, guest_bytes, run, runtime};

fn gpu_policy(zone: &str) -> Policy {
    Policy {
        gpu: Some(GpuGrant::in_zones([zone])),
        ..Policy::default()
    }
}

fn with_grant(grant: GpuGrant) -> Policy {
    Policy {
        gpu: Some(grant),
        ..Policy::default()
    }
}

fn attack(name: &str, arg: impl Into<Vec<u8>>) -> Request {
    Request::new(arg).with_meta("attack", name)
}

fn ok_text(r: &RunReport) -> String {
    match &r.outcome {
        Outcome::Ok { output } => String::from_utf8_lossy(&output.body).into_owned(),
        other => panic!("expected ok, got {other:?}"),
    }
}

fn guest_error(r: &RunReport, code: GuestErrorKind) -> &str {
    match &r.outcome {
        Outcome::GuestError { code: c, message } if *c == code => message,
        other => panic!("expected guest error {code:?}, got {other:?}"),
    }
}

fn status(rt: &Runtime, label: &str) -> AdapterStatus {
    rt.gpu()
        .status()
        .into_iter()
        .find(|s| s.label == label)
        .unwrap_or_else(|| panic!("no adapter entry {label}"))
}

async fn matmul(policy: &Policy, size: &str) -> RunReport {
    run("gpu-matmul", policy, Request::new(size)).await
}

fn json(r: &RunReport) -> serde_json::Value {
    serde_json::from_str(&ok_text(r)).expect("matmul output is JSON")
}

/// Every hostile GPU test ends with this: the runtime still serves the CPU
/// pipeline and a GPU pipeline.
async fn assert_still_served() {
    assert_hello_still_served().await;
    let r = matmul(&gpu_policy("zone-a"), "16").await;
    assert_eq!(json(&r)["checked"], 256, "{:?}", r.outcome);
}

#[tokio::test]
async fn the_test_host_has_a_usable_gpu_adapter() {
    let rt = runtime();
    for s in rt.gpu().status() {
        assert!(
            s.unavailable.is_none(),
            "adapter entry {} is unavailable: {:?} (CI needs mesa-vulkan-drivers)",
            s.label,
            s.unavailable
        );
        assert_eq!(s.backend.as_deref(), Some("vulkan"));
    }
}

#[tokio::test]
async fn matmul_is_correct_at_64_and_256_and_reports_gpu_usage() {
    let policy = gpu_policy("zone-a");
    for n in [64u64, 256] {
        let r = matmul(&policy, &n.to_string()).await;
        let out = json(&r);
        assert_eq!(out["n"], n);
        assert_eq!(out["checked"], n * n, "every element checked on the CPU");
        assert_eq!(out["adapter"], "lavapipe-a");
        assert_eq!(out["zone"], "zone-a");
        let gpu = r.usage.gpu.as_ref().expect("GPU usage in the run record");
        assert_eq!(gpu.adapter, "lavapipe-a");
        assert_eq!(gpu.zone, "zone-a");
        assert_eq!(gpu.dispatches, 1);
        assert_eq!(gpu.kernels, 1);
        // A, B and C (n² f32 each) and the 16-byte uniform with the sizes.
        assert_eq!(gpu.bytes_allocated, 3 * n * n * 4 + 16);
        assert_eq!(gpu.peak_bytes, gpu.bytes_allocated);
        assert!(gpu.gpu_time > Duration::ZERO);
        assert!(gpu.gpu_time <= r.usage.wall_time);
    }
}

#[tokio::test]
async fn matmul_is_correct_at_512_and_for_non_square_sizes() {
    let policy = Policy {
        limits: Limits {
            wall_time_ms: 120_000,
            ..Limits::default()
        },
        ..gpu_policy("zone-b")
    };
    let r = matmul(&policy, "512").await;
    let out = json(&r);
    assert_eq!(out["checked"], 512 * 512);
    assert_eq!(out["zone"], "zone-b");
    // Sizes that are not multiples of the 16×16 tile.
    let r = matmul(&policy, "33 70 17").await;
    let out = json(&r);
    assert_eq!(
        (out["m"].clone(), out["k"].clone(), out["n"].clone()),
        (33.into(), 70.into(), 17.into())
    );
    assert_eq!(out["checked"], 33 * 17);
}

#[tokio::test]
async fn without_a_gpu_grant_every_gpu_call_is_denied_not_trapped() {
    let r = run("gpu-hostile", &Policy::default(), attack("info", "")).await;
    let msg = guest_error(&r, GuestErrorKind::Denied);
    assert!(msg.contains("no [gpu] section"), "{msg}");
    assert_eq!(r.usage.gpu, None);
    // The matmul guest's first call is refused the same way.
    let r = matmul(&Policy::default(), "16").await;
    guest_error(&r, GuestErrorKind::Denied);
    // Allocation and compilation too (not only adapter info).
    for a in ["read-fresh", "compile"] {
        let r = run("gpu-hostile", &Policy::default(), attack(a, "64")).await;
        guest_error(&r, GuestErrorKind::Denied);
    }
    // A pipeline that does not use the GPU does not even import it.
    let hello = kasbah_tests::load("hello");
    assert!(
        !hello.imports().iter().any(|i| i.starts_with("kasbah:gpu")),
        "{:?}",
        hello.imports()
    );
    assert!(
        kasbah_tests::load("gpu-matmul")
            .imports()
            .iter()
            .any(|i| i == "kasbah:gpu/compute@0.2.0")
    );
    assert_still_served().await;
}

#[tokio::test]
async fn runs_are_bound_to_an_adapter_in_a_zone_their_policy_allows() {
    let r = run("gpu-hostile", &gpu_policy("zone-b"), attack("info", "")).await;
    let info = ok_text(&r);
    assert!(info.starts_with("lavapipe-b zone-b vulkan "), "{info}");
    assert_eq!(
        r.usage.gpu.as_ref().map(|g| g.zone.as_str()),
        Some("zone-b")
    );
    let r = run("gpu-hostile", &gpu_policy("zone-a"), attack("info", "")).await;
    assert!(ok_text(&r).starts_with("lavapipe-a zone-a vulkan "));
    // The quota the guest sees is the policy's.
    let grant = GpuGrant {
        max_buffer_bytes: 3 * MIB,
        ..GpuGrant::in_zones(["zone-a"])
    };
    let r = run("gpu-hostile", &with_grant(grant), attack("info", "")).await;
    assert!(ok_text(&r).ends_with(&format!(" {}", 3 * MIB)));
    // A zone this host has no adapter in: residency wins, no fallback.
    let r = run("gpu-hostile", &gpu_policy("eu-paris-1"), attack("info", "")).await;
    let msg = guest_error(&r, GuestErrorKind::Denied);
    assert!(msg.contains("eu-paris-1"), "{msg}");
    assert_eq!(r.usage.gpu, None);
    assert_still_served().await;
}

fn small_runtime(gpu: GpuConfig) -> Runtime {
    Runtime::new(RuntimeConfig {
        max_concurrent_instances: 4,
        gpu,
        ..RuntimeConfig::default()
    })
    .expect("a host without a usable adapter still starts")
}

#[tokio::test]
async fn a_host_without_adapters_starts_and_answers_unavailable() {
    let configs = [
        GpuConfig::default(),
        GpuConfig {
            adapters: vec![AdapterConfig::new("ghost", "zone-a").name("no-such-gpu-anywhere")],
            ..GpuConfig::default()
        },
    ];
    for config in configs {
        let rt = small_runtime(config);
        let module = rt.load(&guest_bytes("gpu-hostile")).expect("load");
        let r = rt
            .run(&module, &gpu_policy("zone-a"), attack("info", ""))
            .await
            .expect("run");
        guest_error(&r, GuestErrorKind::Unavailable);
        // Still serves pipelines.
        let hello = rt.load(&guest_bytes("hello")).expect("load");
        let r = rt
            .run(&hello, &Policy::default(), Request::new("up"))
            .await
            .expect("run");
        assert!(r.outcome.is_ok(), "{:?}", r.outcome);
    }
    let rt = small_runtime(GpuConfig {
        adapters: vec![AdapterConfig::new("ghost", "zone-a").name("no-such-gpu-anywhere")],
        ..GpuConfig::default()
    });
    let s = &rt.gpu().status()[0];
    assert!(
        s.unavailable
            .as_deref()
            .is_some_and(|u| u.contains("no adapter matches")),
        "{s:?}"
    );
}

#[tokio::test]
async fn allocating_past_the_quota_is_out_of_quota_and_dropping_gives_bytes_back() {
    let grant = GpuGrant {
        max_buffer_bytes: MIB,
        max_total_bytes: 4 * MIB,
        ..GpuGrant::in_zones(["zone-a"])
    };
    let policy = with_grant(grant);
    let r = run(
        "gpu-hostile",
        &policy,
        attack("alloc-past-quota", (2 * MIB).to_string()),
    )
    .await;
    let msg = gpu_error(&r, "out-of-quota");
    assert!(
        msg.contains("per buffer") && msg.contains("[after 0 buffers]"),
        "{msg}"
    );
    let r = run(
        "gpu-hostile",
        &policy,
        attack("alloc-past-quota", MIB.to_string()),
    )
    .await;
    let msg = gpu_error(&r, "out-of-quota");
    assert!(msg.contains("[after 4 buffers]"), "{msg}");
    assert_eq!(r.usage.gpu.as_ref().map(|g| g.peak_bytes), Some(4 * MIB));
    // Positive control: dropped buffers give their bytes back.
    let r = run(
        "gpu-hostile",
        &policy,
        attack("alloc-drop-realloc", MIB.to_string()),
    )
    .await;
    assert_eq!(ok_text(&r), "4 then 4");
    // Sizes the device would reject never reach it.
    let r = run("gpu-hostile", &policy, attack("alloc-past-quota", "6")).await;
    gpu_error(&r, "invalid-argument");
    assert_still_served().await;
}

#[tokio::test]
async fn dispatching_past_the_limits_is_out_of_quota() {
    let grant = GpuGrant {
        max_workgroups_per_dimension: 16,
        max_dispatches: 5,
        max_kernels: 3,
        ..GpuGrant::in_zones(["zone-a"])
    };
    let policy = with_grant(grant);
    for size in ["17 1 1", "1 17 1", "1 1 4000000000"] {
        let r = run("gpu-hostile", &policy, attack("dispatch-size", size)).await;
        let msg = gpu_error(&r, "out-of-quota");
        assert!(msg.contains("per dimension"), "{msg}");
    }
    // Positive control: at the limit it runs.
    let r = run("gpu-hostile", &policy, attack("dispatch-size", "16 16 16")).await;
    assert_eq!(ok_text(&r), "dispatched");
    // Five dispatches ran (the counter says so), the sixth was refused
    // before reaching the GPU.
    let r = run("gpu-hostile", &policy, attack("dispatch-count", "")).await;
    let msg = gpu_error(&r, "out-of-quota");
    assert!(msg.contains("[after 5 dispatches, counter 5]"), "{msg}");
    assert_eq!(r.usage.gpu.as_ref().map(|g| g.dispatches), Some(5));
    let r = run("gpu-hostile", &policy, attack("kernel-quota", "")).await;
    let msg = gpu_error(&r, "out-of-quota");
    assert!(msg.contains("[after 3 kernels]"), "{msg}");
    assert_still_served().await;
}

#[tokio::test]
async fn invalid_wgsl_comes_back_as_invalid_shader_with_the_compiler_message() {
    let policy = gpu_policy("zone-a");
    let cases = [
        ("this is not WGSL", "expected"),
        // Type error.
        (
            "@compute @workgroup_size(1) fn main() { let x: u32 = 1.5; }",
            "",
        ),
        // No entry point called `main`.
        ("@compute @workgroup_size(1) fn other() {}", "main"),
        // Workgroup larger than any device allows.
        ("@compute @workgroup_size(100000) fn main() {}", ""),
        // Workgroup memory larger than the device allows (wgpu 30 does not
        // check this; the host does).
        (
            "var<workgroup> big: array<u32, 1000000>;
             @compute @workgroup_size(1) fn main() { big[0] = 1u; }",
            "4000000 bytes of workgroup storage",
        ),
    ];
    for (source, needle) in cases {
        let r = run("gpu-hostile", &policy, attack("compile", source)).await;
        let msg = gpu_error(&r, "invalid-shader");
        assert!(msg.contains(needle), "{source:?}: {msg}");
        assert_eq!(r.usage.gpu.as_ref().map(|g| g.kernels), Some(0));
    }
    // Positive control: a valid kernel compiles.
    let r = run(
        "gpu-hostile",
        &policy,
        attack("compile", "@compute @workgroup_size(1) fn main() {}"),
    )
    .await;
    assert_eq!(ok_text(&r), "compiled");
    assert_still_served().await;
}

#[tokio::test]
async fn out_of_range_bindings_and_buffer_accesses_are_invalid_arguments() {
    let policy = gpu_policy("zone-a");
    for case in ["2048", "0 2048", "1024", "1020 8", "4"] {
        let r = run("gpu-hostile", &policy, attack("bind-range", case)).await;
        gpu_error(&r, "invalid-argument");
    }
    // Positive control: an aligned range inside the buffer binds.
    let r = run("gpu-hostile", &policy, attack("bind-range", "256 256")).await;
    assert_eq!(ok_text(&r), "bound");
    for case in [
        "write-past-end",
        "write-huge-offset",
        "read-past-end",
        "read-misaligned",
        "write-no-copy-dst",
        "read-no-copy-src",
        "copy-same",
        "copy-past-end",
    ] {
        let r = run("gpu-hostile", &policy, attack("buffer-range", case)).await;
        let msg = gpu_error(&r, "invalid-argument");
        assert!(!msg.is_empty(), "{case}");
    }
    assert_still_served().await;
}

#[tokio::test]
async fn kernels_cannot_read_outside_their_binding() {
    let policy = gpu_policy("zone-a");
    let read = |arg: &'static str| {
        let policy = policy.clone();
        async move {
            let r = run("gpu-hostile", &policy, attack("oob-kernel-read", arg)).await;
            let text = ok_text(&r);
            let values: Vec<String> = text.split(',').map(str::to_string).collect();
            assert_eq!(values.len(), 64, "{text}");
            for v in &values {
                assert!(
                    ["0x0", "0x1", "0x2", "0x3", "0x4"].contains(&v.as_str()),
                    "a kernel read {v} from outside its 16-byte binding: {text}"
                );
            }
            values
        }
    };
    // Positive control: indices 0..4 are inside the binding and read it.
    let values = read("1 0").await;
    assert_eq!(values[..4], ["0x1", "0x2", "0x3", "0x4"]);
    // Far past the end, and just past it (where the secret is).
    read("4099 1000000").await;
    read("1 4").await;
    read("0 4294967295").await;
    assert_still_served().await;
}

#[tokio::test]
async fn fresh_buffers_and_workgroup_memory_read_as_zeros_even_on_a_reused_device() {
    let rt = runtime();
    let policy = gpu_policy("zone-reuse");
    let size = (16 * MIB).to_string();
    let r = run("gpu-hostile", &policy, attack("fill", size.as_str())).await;
    assert_eq!(ok_text(&r), "filled; 4096 words of pattern");
    let before = status(rt, "lavapipe-reuse");
    let r = run("gpu-hostile", &policy, attack("read-fresh", size.as_str())).await;
    assert_eq!(ok_text(&r), "0", "a fresh buffer held someone's data");
    let r = run("gpu-hostile", &policy, attack("workgroup-uninit", "")).await;
    assert_eq!(ok_text(&r), "0", "workgroup memory held someone's data");
    // The later runs were served by the device the filling run used.
    let after = status(rt, "lavapipe-reuse");
    assert!(
        after.devices_reused >= before.devices_reused + 2,
        "{before:?} {after:?}"
    );
    assert_eq!(after.devices_created, 1, "{after:?}");
    // Positive control: written data does read back.
    let r = run("gpu-hostile", &policy, attack("write-read", "4096")).await;
    assert_eq!(ok_text(&r), "4096 bytes round-tripped");
    assert_still_served().await;
}

#[tokio::test]
async fn stale_and_forged_handles_trap() {
    let policy = gpu_policy("zone-a");
    let r = run("gpu-hostile", &policy, attack("use-after-drop", "")).await;
    match &r.outcome {
        Outcome::Trap { message } => assert!(message.contains("handle"), "{message}"),
        other => panic!("expected a trap, got {other:?}"),
    }
    for h in ["1", "2", "77", "4294967295"] {
        let r = run("gpu-hostile", &policy, attack("forge-handle", h)).await;
        assert_eq!(r.outcome.kind(), "trap", "handle {h}: {:?}", r.outcome);
    }
    assert_still_served().await;
}

#[tokio::test]
async fn batches_run_dispatches_and_copies_in_order() {
    let r = run("gpu-hostile", &gpu_policy("zone-b"), attack("batch", "")).await;
    assert_eq!(ok_text(&r), "12,22,31,41");
    assert_eq!(r.usage.gpu.as_ref().map(|g| g.dispatches), Some(2));
}

#[tokio::test]
async fn a_failing_gpu_run_does_not_disturb_a_concurrent_one() {
    let policy = gpu_policy("zone-a");
    let good = tokio::spawn({
        let policy = policy.clone();
        async move { matmul(&policy, "256").await }
    });
    let bad = [
        attack("compile", "fn ??"),
        attack("bind-range", "2048"),
        attack("buffer-range", "copy-same"),
        attack("use-after-drop", ""),
    ];
    let mut handles = Vec::new();
    for req in bad {
        let policy = policy.clone();
        handles.push(tokio::spawn(async move {
            run("gpu-hostile", &policy, req).await
        }));
    }
    for h in handles {
        let r = h.await.expect("join");
        assert!(!r.outcome.is_ok(), "{:?}", r.outcome);
    }
    let r = good.await.expect("join");
    assert_eq!(json(&r)["checked"], 256 * 256);
    assert_still_served().await;
}

#[tokio::test]
async fn a_hung_device_is_discarded_and_concurrent_runs_continue() {
    let rt = runtime();
    let hang_policy = Policy {
        limits: Limits {
            wall_time_ms: 1_500,
            ..Limits::default()
        },
        ..gpu_policy("zone-hang")
    };
    // Positive control: the spinning kernel finishes when it is short. Its
    // GPU time calibrates the long one to ~40 deadlines of work on this
    // host: on a loaded box the short run's time per workgroup came out 4×
    // what the long one then took (it once finished 1,031 workgroups, meant
    // as 6 s of work, inside the 1.5 s deadline), so the margin is wide.
    let r = run("gpu-hostile", &hang_policy, attack("spin", "50 60000")).await;
    assert_eq!(ok_text(&r), "spun 50 workgroups");
    let per_group = r.usage.gpu.as_ref().expect("gpu usage").gpu_time / 50;
    let groups =
        (Duration::from_secs(60).as_nanos() / per_group.as_nanos().max(1)).clamp(1_000, 65_535);
    let before = status(rt, "lavapipe-hang");

    let hung = tokio::spawn(async move {
        // Seconds of GPU work, well past the 1.5 s deadline.
        let t = Instant::now();
        let arg = format!("{groups} 60000");
        let r = run("gpu-hostile", &hang_policy, attack("spin", arg)).await;
        (r, t.elapsed())
    });
    // Meanwhile, another tenant's run on another device completes.
    let r = matmul(&gpu_policy("zone-hang"), "64").await;
    assert_eq!(json(&r)["checked"], 64 * 64);
    let (r, took) = hung.await.expect("join");
    // Normally the platform kills the GPU process at the deadline. In 2 of
    // ~10 full test runs on this box the GPU process aborted on its own
    // (signal 6, inside lavapipe/wgpu; not understood yet) shortly before
    // it, and the run ended with `device-lost` instead: either way the run
    // ends by its deadline and the device is discarded (asserted below).
    let died_first = matches!(
        &r.outcome,
        Outcome::GuestError { message, .. } if message.contains("the GPU process died")
    );
    assert!(
        r.outcome == Outcome::DeadlineExceeded { limit_ms: 1_500 } || died_first,
        "{:?}",
        r.outcome
    );
    // The run ends at its deadline, not when the GPU work would.
    assert!(took < Duration::from_secs(6), "{took:?}");

    // The hung run's device is never handed to anyone again.
    let after = status(rt, "lavapipe-hang");
    assert!(
        after.devices_discarded > before.devices_discarded,
        "{before:?} {after:?}"
    );
    let r = matmul(&gpu_policy("zone-hang"), "64").await;
    assert_eq!(json(&r)["checked"], 64 * 64);
    assert_still_served().await;
}
