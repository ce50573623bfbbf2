//! One MiniLM run through a GPU zone worker of the fleet (issue 14, "must
//! show"): a real `nats-server` with JetStream, a control plane
//! (`kasbah_server` with `nats` set, no GPU of its own) and one zone-b
//! `kasbah worker` process with a GPU adapter entry (lavapipe on CI, or
//! `KASBAH_TEST_GPU_NAME`). The tenant publishes `minilm-embed`, uploads the
//! weights and vocab as datasets labelled zone-b (they go to zone-b's bucket,
//! ~90 MB through NATS) and runs the reference batch twice: both placed in
//! zone-b on the worker's entry, recorded naming the worker, embeddings equal
//! to sentence-transformers', the second run warm (nothing uploaded, every
//! kernel cached). The same two runs in-process on the embedded runtime are
//! timed for comparison (`--nocapture` prints the figures).

use std::time::{Duration, Instant};

use kasbah_audit::EntryBody;
use kasbah_core::Outcome;
use kasbah_core::api::*;
use kasbah_fleet::testing::NatsServer;
use kasbah_runtime::{Request, RunOptions};
use kasbah_tests::minilm_reference::{check_against_reference, fixture_input};
use kasbah_tests::platform::Platform;
use kasbah_tests::{guest_path, minilm_datasets, minilm_policy, test_gpu_name};
use serde_json::Value;

/// `kasbah worker` as its own process, serving zone-b with one GPU entry.
struct GpuWorker(std::process::Child);

impl GpuWorker {
    fn start(nats: &NatsServer, id: &str, label: &str, work: &std::path::Path) -> GpuWorker {
        let dir = work.join(id);
        std::fs::create_dir_all(&dir).expect("work dir");
        let config = dir.join("worker.toml");
        let name = test_gpu_name()
            .map(|n| format!("name = {n:?}\n"))
            .unwrap_or_default();
        std::fs::write(
            &config,
            format!(
                "id = \"{id}\"\ncapacity = 1\nwork_dir = \"{}\"\n\
                 [zones]\nnode = [\"zone-b\"]\n\
                 [[gpu.adapters]]\nlabel = \"{label}\"\nzone = \"zone-b\"\nbackend = \"vulkan\"\n{name}",
                dir.join("work").display()
            ),
        )
        .expect("write worker config");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_kasbah-under-test"))
            .args(["worker", "--config"])
            .arg(&config)
            .args(["--nats", &nats.url()])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn kasbah worker");
        GpuWorker(child)
    }
}

impl Drop for GpuWorker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn gpu_usage(r: &RunRecord) -> kasbah_core::GpuUsage {
    r.usage
        .as_ref()
        .and_then(|u| u.gpu.clone())
        .unwrap_or_else(|| panic!("GPU usage in the run record: {r:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn minilm_runs_on_a_gpu_zone_worker_and_its_second_run_is_warm() {
    let nats = NatsServer::start().expect("nats-server (scripts/setup.sh installs it)");
    let work = tempfile::tempdir().expect("tmp");
    let url = nats.url();
    let p = Platform::start_with(move |c| {
        c.nats = Some(url);
        c.zones.node = vec!["zone-a".into(), "zone-b".into()];
        // The GPU is the worker's; the control plane runs nothing.
        c.gpu.adapters.clear();
        c.sync_wait_ms = 300_000;
    })
    .await;
    let _worker = GpuWorker::start(&nats, "worker-gpu-b", "gpu-b", work.path());
    let fleet = p.server.state.fleet.clone().expect("fleet mode");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fleet.live_zones().contains("zone-b") {
        assert!(Instant::now() < deadline, "zone-b's worker never went live");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let live = p.admin.fleet_workers().await.expect("workers");
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].id, "worker-gpu-b");
    assert!(
        format!("{:?}", live[0].adapters).contains("gpu-b"),
        "{live:?}"
    );

    let mut policy = minilm_policy("zone-b");
    policy.zones = ["zone-b".to_string()].into_iter().collect();
    let (_t, dev) = p.tenant("minilm-fleet", Some(policy.clone())).await;
    let module = dev
        .publish(&guest_path("minilm-embed"), "minilm-embed", "1", |_, _| {})
        .await
        .expect("publish minilm-embed");

    // The weights and vocab, labelled zone-b: stored in zone-b's bucket.
    let zone_b = ["zone-b".to_string()];
    let upload = Instant::now();
    let mut names = Vec::new();
    let mut bytes = 0;
    for mount in minilm_datasets() {
        let d = dev
            .create_dataset(&mount.path, &mount.name, Some(&zone_b[..]), |_, _| {})
            .await
            .unwrap_or_else(|e| panic!("upload dataset {}: {e}", mount.name));
        assert!(d.zone_stored, "{d:?}");
        bytes += d.size;
        names.push(d.name);
    }
    let upload = upload.elapsed();
    assert!(bytes > 80 << 20, "{bytes} bytes of weights");

    let req = CreateRun {
        module: module.digest.to_string(),
        input: Some(fixture_input()),
        content_type: Some("application/json".into()),
        wait: true,
        datasets: names.clone(),
        ..CreateRun::default()
    };
    let mut walls = Vec::new();
    let mut usages = Vec::new();
    let mut ids = Vec::new();
    for i in 0..2 {
        let started = Instant::now();
        let run = dev.run(&req).await.expect("run");
        walls.push(started.elapsed());
        assert_eq!(run.status, RunStatus::Done, "{run:?}");
        match &run.outcome {
            Some(Outcome::Ok { .. }) => {}
            other => panic!("run {i}: expected ok, got {other:?} ({:?})", run.logs),
        }
        assert_eq!(
            (
                run.zone.as_deref(),
                run.adapter.as_deref(),
                run.worker.as_deref()
            ),
            (Some("zone-b"), Some("gpu-b"), Some("worker-gpu-b")),
            "run {i}"
        );
        let gpu = gpu_usage(&run);
        assert_eq!(
            (gpu.adapter.as_str(), gpu.zone.as_str()),
            ("gpu-b", "zone-b")
        );
        // The output (~100 KB of JSON) is over the inline size: it lives in
        // zone-b's bucket and streams from there.
        let body = dev.run_output(&run.id).await.expect("run output");
        let out: Value = serde_json::from_slice(&body).expect("output is JSON");
        let min_cos = check_against_reference(&out);
        eprintln!("fleet run {i}: min cosine {min_cos:.9}");
        usages.push(gpu);
        ids.push(run.id.clone());
    }
    // One `run_executed` entry per run, naming the worker (entry type 8).
    let (_, entries) = p.admin.audit_log_entries(0, None).await.expect("entries");
    for id in &ids {
        let mine: Vec<_> = entries
            .iter()
            .filter_map(|e| match &e.entry.body {
                EntryBody::RunExecuted(r) if &r.run_id == id => {
                    Some((r.zone.clone(), r.outcome.clone(), r.worker.clone()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            mine,
            [(
                "zone-b".to_string(),
                "ok".to_string(),
                Some("worker-gpu-b".to_string())
            )],
            "{id}"
        );
    }
    let (first, warm) = (&usages[0], &usages[1]);
    assert!(first.resident_bytes_uploaded > 80 << 20, "{first:?}");
    assert!(first.kernels > 0, "{first:?}");
    assert_eq!(warm.resident_bytes_uploaded, 0, "{warm:?}");
    assert_eq!(warm.resident_bytes_used, first.resident_bytes_used);
    assert_eq!(warm.kernels, 0, "every kernel from the cache: {warm:?}");
    assert!(warm.kernels_cached > 0, "{warm:?}");

    // The same two runs in-process on the embedded runtime (the test
    // binary's own runtime, entry lavapipe-b in zone-b), for comparison.
    let options = RunOptions {
        datasets: minilm_datasets(),
        tenant: Some("minilm-embedded".into()),
        ..RunOptions::default()
    };
    // Compiled before the clock starts (the worker had it compiled too).
    let module = kasbah_tests::load("minilm-embed");
    let mut local = Vec::new();
    for i in 0..2 {
        let started = Instant::now();
        let r = kasbah_tests::runtime()
            .run_with(
                &module,
                &policy,
                Request::new(fixture_input()).with_content_type("application/json"),
                &options,
            )
            .await
            .expect("host could run the module");
        local.push((started.elapsed(), r.usage.gpu.clone().expect("GPU usage")));
        let out: Value = match &r.outcome {
            Outcome::Ok { output } => serde_json::from_slice(&output.body).expect("JSON"),
            other => panic!("in-process run {i}: {other:?} ({:?})", r.logs),
        };
        check_against_reference(&out);
        let gpu = &local[i].1;
        if i == 1 {
            assert_eq!(gpu.resident_bytes_uploaded, 0, "{gpu:?}");
        }
    }

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    eprintln!(
        "fleet minilm: upload of the datasets ({:.1} MB, zone-b's bucket) {:.0} ms",
        bytes as f64 / 1e6,
        ms(upload)
    );
    eprintln!(
        "fleet minilm: first run {:.0} ms (GPU {:.0} ms, {} resident bytes uploaded, {} kernels compiled)",
        ms(walls[0]),
        ms(first.gpu_time),
        first.resident_bytes_uploaded,
        first.kernels
    );
    eprintln!(
        "fleet minilm: second run {:.0} ms (GPU {:.0} ms, warm: 0 uploaded, {} kernels cached)",
        ms(walls[1]),
        ms(warm.gpu_time),
        warm.kernels_cached
    );
    for (i, (wall, gpu)) in local.iter().enumerate() {
        eprintln!(
            "in-process minilm: {} run {:.0} ms (GPU {:.0} ms, {} resident bytes uploaded, {} kernels compiled); fleet/in-process {:.2}x",
            ["first", "second"][i],
            ms(*wall),
            ms(gpu.gpu_time),
            gpu.resident_bytes_uploaded,
            gpu.kernels,
            walls[i].as_secs_f64() / wall.as_secs_f64()
        );
    }
}
