//! GPU containment: GPU work runs in GPU processes that the platform kills
//! when a run's deadline passes or that die alone when naga, wgpu or the
//! driver crashes; work is counted and bounded (invocations, bytes moved)
//! and billed as the time it took. Each test shows the attack contained
//! (this process survives, the budget held, the CPU is idle again within
//! 1 s of the deadline, a neighbour's run finishes) and that hello and a
//! GPU matmul still run afterwards.
//!
//! The tests of this file run one at a time (they measure CPU time and
//! signal GPU processes of this test process).

use std::time::{Duration, Instant};

use kasbah_core::Outcome;
use kasbah_policy::{GpuGrant, Limits, Policy};
use kasbah_runtime::Request;
use kasbah_tests::{assert_hello_still_served, cpu_ticks_of_process_tree, gpu_error, run};
use tokio::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

fn gpu_policy(zone: &str, wall_time_ms: u64) -> Policy {
    Policy {
        gpu: Some(GpuGrant::in_zones([zone])),
        limits: Limits {
            wall_time_ms,
            ..Limits::default()
        },
        ..Policy::default()
    }
}

fn attack(name: &str, arg: impl Into<Vec<u8>>) -> Request {
    Request::new(arg).with_meta("attack", name)
}

async fn matmul_ok(zone: &str, n: u32) -> Duration {
    let t = Instant::now();
    let r = run(
        "gpu-matmul",
        &gpu_policy(zone, 60_000),
        Request::new(n.to_string()),
    )
    .await;
    let out: serde_json::Value = match &r.outcome {
        Outcome::Ok { output } => serde_json::from_slice(&output.body).expect("json"),
        other => panic!("matmul failed: {other:?}"),
    };
    assert_eq!(out["checked"], u64::from(n * n));
    t.elapsed()
}

/// The median time of three neighbour runs (matmul 64) in a row.
async fn neighbour_median() -> Duration {
    let mut t = Vec::new();
    for _ in 0..3 {
        t.push(matmul_ok("zone-b", 64).await);
    }
    t.sort();
    t[1]
}

async fn assert_still_served() {
    assert_hello_still_served().await;
    matmul_ok("zone-a", 16).await;
}

/// CPU seconds this process and its live children use during `window`.
async fn cpu_used_during(window: Duration) -> f64 {
    let (before, _) = cpu_ticks_of_process_tree();
    tokio::time::sleep(window).await;
    let (after, _) = cpu_ticks_of_process_tree();
    after.saturating_sub(before) as f64 / 100.0
}

/// A dispatch that keeps lavapipe busy for ~`secs` (calibrated on a short
/// one): workgroups for the `spin` attack.
async fn hog_workgroups(zone: &str, secs: u64) -> u32 {
    let policy = gpu_policy(zone, 30_000);
    // The first run may wait for a GPU process to start: calibrate on the
    // second.
    run("gpu-hostile", &policy, attack("spin", "1 1")).await;
    let r = run("gpu-hostile", &policy, attack("spin", "50 60000")).await;
    let per_group = r.usage.gpu.as_ref().expect("gpu usage").gpu_time / 50;
    (Duration::from_secs(secs).as_nanos() / per_group.as_nanos().max(1)).clamp(200, 65_535) as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_hog_is_killed_at_its_deadline_billed_for_it_and_the_cpu_is_idle_within_a_second() {
    let _one = ONE_AT_A_TIME.lock().await;
    // A neighbour's GPU run alone, for comparison.
    matmul_ok("zone-b", 64).await;
    // Medians of three, so that one scheduling hiccup of a busy box does
    // not decide the comparison.
    let normal = neighbour_median().await;

    let groups = hog_workgroups("zone-hang", 20).await;
    let deadline = Duration::from_millis(1_500);
    let hog_policy = gpu_policy("zone-hang", deadline.as_millis() as u64);
    let hog = tokio::spawn(async move {
        let t = Instant::now();
        let r = run(
            "gpu-hostile",
            &hog_policy,
            attack("spin", format!("{groups} 60000")),
        )
        .await;
        (r, t.elapsed())
    });
    // The hog is on the GPU; a neighbour's run still finishes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, gpu_processes) = cpu_ticks_of_process_tree();
    assert!(!gpu_processes.is_empty(), "GPU work runs in GPU processes");
    let during = neighbour_median().await;

    let (r, took) = hog.await.expect("join");
    assert_eq!(
        r.outcome,
        Outcome::DeadlineExceeded {
            limit_ms: deadline.as_millis() as u64
        }
    );
    assert!(took < deadline + Duration::from_millis(500), "{took:?}");
    // Billed for the GPU time it took until it was killed, not for the
    // submission alone.
    let gpu = r.usage.gpu.as_ref().expect("gpu usage");
    assert!(
        gpu.gpu_time >= deadline - Duration::from_millis(400),
        "billed {:?}",
        gpu.gpu_time
    );
    // Within a second of the deadline the box is idle again: no GPU process
    // still burns the hog's work.
    let busy = cpu_used_during(Duration::from_secs(1)).await;
    eprintln!(
        "neighbour matmul alone {normal:?}, during the hog {during:?} ({:.2}x); CPU in the second after the deadline: {busy:.2} s; billed {:?}",
        during.as_secs_f64() / normal.as_secs_f64(),
        gpu.gpu_time
    );
    assert!(busy < 0.3, "{busy} CPU seconds used after the deadline");
    // On lavapipe the neighbour shares the CPU cores with the hog until the
    // hog's deadline; the hog's GPU process has lost CPU priority by then
    // (it has used far more GPU time), so the neighbour stays within 2× its
    // time alone (plus a little timer jitter).
    assert!(
        during <= normal * 2 + Duration::from_millis(25),
        "neighbour took {during:?} (alone {normal:?}): {:.2}x",
        during.as_secs_f64() / normal.as_secs_f64()
    );
    assert_still_served().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_process_that_crashes_fails_only_its_run_with_device_lost() {
    let _one = ONE_AT_A_TIME.lock().await;
    let groups = hog_workgroups("zone-b", 10).await;
    let policy = gpu_policy("zone-b", 20_000);
    let victim = tokio::spawn(async move {
        run(
            "gpu-hostile",
            &policy,
            attack("spin", format!("{groups} 60000")),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // What a stack overflow (Rust aborts on one) or a driver's assertion
    // does to the GPU process: SIGABRT. Only this test runs now, so the GPU
    // processes of this test process are its own.
    let (_, gpu_processes) = cpu_ticks_of_process_tree();
    assert!(!gpu_processes.is_empty());
    for pid in &gpu_processes {
        // SAFETY: plain kill(2) on our own child processes.
        unsafe { libc::kill(*pid as i32, libc::SIGABRT) };
    }
    let t = Instant::now();
    let r = victim.await.expect("join");
    let msg = gpu_error(&r, "device-lost");
    assert!(msg.contains("GPU process"), "{msg}");
    assert!(t.elapsed() < Duration::from_secs(5));
    // The platform process is alive (this test is running) and the next
    // GPU run gets a fresh process.
    assert_still_served().await;
    matmul_ok("zone-b", 64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shaders_that_would_exhaust_the_compiler_or_host_memory_are_refused_before_compiling() {
    let _one = ONE_AT_A_TIME.lock().await;
    let policy = gpu_policy("zone-a", 10_000);
    let chain = |op: &str, n: usize| {
        format!(
            "@group(0) @binding(0) var<storage, read_write> d: array<f32>;\n\
             @compute @workgroup_size(1) fn main() {{ let x = d[0]; d[0] = x{}; }}",
            op.repeat(n)
        )
    };
    let else_ifs = format!(
        "@group(0) @binding(0) var<storage, read_write> d: array<u32>;\n\
         @compute @workgroup_size(1) fn main() {{ let x = d[0]; if x == 0u {{ d[0] = 1u; }}{} }}",
        " else if x == 1u { d[0] = 2u; }".repeat(20_000)
    );
    let private = "var<private> big: array<f32, 16777216>;\n\
        @group(0) @binding(0) var<storage, read_write> d: array<f32>;\n\
        @compute @workgroup_size(1) fn main() { big[u32(d[0])] = 1.0; d[0] = big[1]; }";
    let function = "@group(0) @binding(0) var<storage, read_write> d: array<f32>;\n\
        @compute @workgroup_size(1) fn main() { var big: array<f32, 4096>; big[u32(d[0])] = 1.0; d[0] = big[1]; }";
    for (name, code) in [
        ("x+x+...", chain("+x", 100_000)),
        (
            ".x.x...",
            chain(".x", 3_000).replace("let x = d[0];", "let x = vec4<f32>(d[0]);"),
        ),
        ("else if chain", else_ifs),
        ("64 MiB private array", private.to_string()),
        ("16 KiB function array", function.to_string()),
    ] {
        let t = Instant::now();
        let r = run("gpu-hostile", &policy, attack("compile", code)).await;
        let msg = gpu_error(&r, "invalid-shader");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{name}: {:?}",
            t.elapsed()
        );
        eprintln!("{name}: {}", msg.lines().next().unwrap_or(""));
    }
    // Positive control: a function array within WGSL's 8 KiB compiles.
    let ok = function.replace("4096", "1024");
    let r = run("gpu-hostile", &policy, attack("compile", ok)).await;
    assert!(r.outcome.is_ok(), "{:?}", r.outcome);
    assert_still_served().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiling_past_the_deadline_is_stopped_at_the_deadline() {
    let _one = ONE_AT_A_TIME.lock().await;
    // ~1 MiB of straight-line code: admitted (no statement is long), but
    // naga and the driver take far longer than the run may.
    let body = "x = x * 1.0001 + 1.0;\n".repeat(45_000);
    let code = format!(
        "@group(0) @binding(0) var<storage, read_write> d: array<f32>;\n\
         @compute @workgroup_size(1) fn main() {{ var x = d[0];\n{body} d[0] = x; }}"
    );
    let deadline = Duration::from_millis(1_500);
    let policy = gpu_policy("zone-a", deadline.as_millis() as u64);
    let t = Instant::now();
    let r = run("gpu-hostile", &policy, attack("compile", code)).await;
    let took = t.elapsed();
    assert_eq!(r.outcome.kind(), "deadline_exceeded", "{:?}", r.outcome);
    assert!(took < deadline + Duration::from_millis(500), "{took:?}");
    let busy = cpu_used_during(Duration::from_secs(1)).await;
    assert!(busy < 0.3, "{busy} CPU seconds used after the deadline");
    assert_still_served().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_is_counted_and_bounded_invocations_and_bytes_moved() {
    let _one = ONE_AT_A_TIME.lock().await;
    let policy = gpu_policy("zone-a", 20_000);
    // 65535 x 65535 workgroups: refused by invocations per dispatch before
    // anything reaches the GPU.
    let r = run(
        "gpu-hostile",
        &policy,
        attack("dispatch-size", "65535 65535 1"),
    )
    .await;
    let msg = gpu_error(&r, "out-of-quota");
    assert!(msg.contains("invocations per dispatch"), "{msg}");

    // 4096 copies of 64 MiB (256 GiB): refused at the transfer quota while
    // recording, nothing submitted.
    let t = Instant::now();
    let r = run("gpu-hostile", &policy, attack("copy-flood", "4096")).await;
    let msg = gpu_error(&r, "out-of-quota");
    assert!(msg.contains("after 256 copies"), "{msg}");
    assert!(t.elapsed() < Duration::from_secs(10));

    // Within the quota the copies run and are billed.
    let r = run("gpu-hostile", &policy, attack("copy-flood", "2")).await;
    assert!(r.outcome.is_ok(), "{:?}", r.outcome);
    let gpu = r.usage.gpu.as_ref().expect("usage");
    assert_eq!(gpu.bytes_transferred, 2 * (64 << 20));

    // Invocations per run: a small per-run quota stops repeated dispatches.
    let small = Policy {
        gpu: Some(GpuGrant {
            max_invocations: 1_000,
            ..GpuGrant::in_zones(["zone-a"])
        }),
        ..Policy::default()
    };
    let r = run("gpu-hostile", &small, attack("dispatch-count", "")).await;
    let msg = gpu_error(&r, "out-of-quota");
    assert!(msg.contains("invocations per run"), "{msg}");
    assert!(msg.contains("after 1000 dispatches"), "{msg}");

    // Usage reports invocations: matmul 128 = 2x2 workgroups of 16x16.
    let r = run("gpu-matmul", &policy, Request::new("128")).await;
    let gpu = r.usage.gpu.as_ref().expect("usage");
    assert_eq!(gpu.invocations, 4 * 256, "{gpu:?}");
    assert_still_served().await;
}
