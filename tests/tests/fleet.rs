//! The fleet end to end (issue 14): a real `nats-server` with JetStream, a
//! control plane (`kasbah_server` with `nats` set) and zone workers
//! (`kasbah_fleet::worker`) on loopback. Runs are placed among zones with a
//! live worker and executed by a worker of their zone; a zone without a
//! worker is `503 no_capacity` (audited), a label outside the tenant's zones
//! still `403 residency_violation`; results recorded once per run.

use std::time::{Duration, Instant};

use kasbah_audit::EntryBody;
use kasbah_client::Client;
use kasbah_core::Outcome;
use kasbah_core::api::*;
use kasbah_fleet::WorkerConfig;
use kasbah_fleet::testing::NatsServer;
use kasbah_policy::Policy;
use kasbah_tests::guest_path;
use kasbah_tests::platform::{Platform, api_err};
use tokio::sync::oneshot;

fn strings(z: &[&str]) -> Vec<String> {
    z.iter().map(|s| s.to_string()).collect()
}

/// A zone worker running in this process until its sender is dropped or
/// fired.
struct Worker {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Worker {
    fn start(nats: &NatsServer, id: &str, zones: &[&str], work: &std::path::Path) -> Worker {
        Self::start_with(nats, id, zones, work, |_| {})
    }

    fn start_with(
        nats: &NatsServer,
        id: &str,
        zones: &[&str],
        work: &std::path::Path,
        tweak: impl FnOnce(&mut WorkerConfig),
    ) -> Worker {
        let mut c = WorkerConfig {
            id: id.into(),
            nats: nats.url(),
            capacity: 4,
            work_dir: work.join(id),
            ..WorkerConfig::default()
        };
        tweak(&mut c);
        c.zones.node = strings(zones);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(kasbah_fleet::worker::run(c, async move {
            let _ = stopped.await;
        }));
        Worker {
            stop: Some(stop),
            task,
        }
    }

    /// Drain: stop pulling, finish running jobs, leave the registry.
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let r = tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("the worker drains within 30 s");
        r.expect("worker task").expect("worker ends cleanly");
    }
}

/// A zone worker as its own process (`kasbah worker`), for `kill -9`.
struct ProcWorker(std::process::Child);

impl ProcWorker {
    fn start(nats: &NatsServer, id: &str, zone: &str, work: &std::path::Path) -> ProcWorker {
        let dir = work.join(id);
        std::fs::create_dir_all(&dir).expect("work dir");
        let config = dir.join("worker.toml");
        std::fs::write(
            &config,
            format!(
                "id = \"{id}\"\ncapacity = 2\nwork_dir = \"{}\"\nack_wait_ms = 1000\n\
                 [zones]\nnode = [\"{zone}\"]\n",
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
        ProcWorker(child)
    }

    /// `kill -9`: nothing acknowledged, the heartbeat stays until it expires.
    fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ProcWorker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A control plane on `nats` serving zone-a and zone-b (GPUs are the
/// workers'; the control plane runs nothing).
async fn control_plane(nats: &NatsServer) -> Platform {
    let url = nats.url();
    Platform::start_with(move |c| {
        c.nats = Some(url);
        c.zones.node = strings(&["zone-a", "zone-b"]);
        c.gpu.adapters.clear();
    })
    .await
}

/// Wait until the control plane sees exactly `zones` as live.
async fn wait_live(p: &Platform, zones: &[&str]) {
    let fleet = p.server.state.fleet.clone().expect("fleet mode");
    let want: std::collections::BTreeSet<String> = strings(zones).into_iter().collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    while fleet.live_zones() != want {
        assert!(
            Instant::now() < deadline,
            "live zones {:?}, expected {want:?}",
            fleet.live_zones()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn run_req(m: &ModuleRecord, input: &str, label: &[&str]) -> CreateRun {
    CreateRun {
        module: m.digest.to_string(),
        input: Some(input.into()),
        input_label: Some(strings(label)),
        ..CreateRun::default()
    }
}

fn output_text(r: &RunRecord) -> String {
    let out = r.output.as_ref().expect("output");
    String::from_utf8_lossy(&out.inline.as_ref().expect("inline").bytes).into_owned()
}

async fn run_entries(c: &Client) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut start = 0;
    loop {
        let (page, es) = c.audit_log_entries(start, None).await.expect("entries");
        for e in es {
            if let EntryBody::RunExecuted(r) = e.entry.body {
                out.push((r.run_id, r.zone, r.outcome));
            }
        }
        if page.end >= page.size {
            return out;
        }
        start = page.end;
    }
}

/// The `worker` of each `run_executed` entry of run `id`.
async fn entry_workers(c: &Client, id: &str) -> Vec<Option<String>> {
    let mut out = Vec::new();
    let mut start = 0;
    loop {
        let (page, es) = c.audit_log_entries(start, None).await.expect("entries");
        for e in es {
            if let EntryBody::RunExecuted(r) = e.entry.body
                && r.run_id == id
            {
                out.push(r.worker);
            }
        }
        if page.end >= page.size {
            return out;
        }
        start = page.end;
    }
}

async fn denials(c: &Client) -> Vec<String> {
    let (_, es) = c.audit_log_entries(0, None).await.expect("entries");
    es.into_iter()
        .filter_map(|e| match e.entry.body {
            EntryBody::Denial(d) => Some(d.reason),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_execute_on_a_worker_of_their_zone_and_a_zone_without_one_is_refused() {
    let nats = NatsServer::start().expect("nats-server (scripts/setup.sh installs it)");
    let work = tempfile::tempdir().expect("tmp");
    let p = control_plane(&nats).await;
    let wa = Worker::start(&nats, "worker-a", &["zone-a"], work.path());
    let wb = Worker::start(&nats, "worker-b", &["zone-b"], work.path());
    wait_live(&p, &["zone-a", "zone-b"]).await;

    let (_t, dev) = p
        .tenant(
            "fleet",
            Some(Policy {
                zones: strings(&["zone-a", "zone-b"]).into_iter().collect(),
                ..Policy::default()
            }),
        )
        .await;
    let hello = dev
        .publish(&guest_path("hello"), "hello", "1.0.0", |_, _| {})
        .await
        .expect("publish");

    // The live workers, through the API: all of them for an admin, those
    // of its zones for an operator limited to zone-a, none for a developer.
    let ws = p.admin.fleet_workers().await.expect("workers");
    let ids: Vec<&str> = ws.iter().map(|w| w.id.as_str()).collect();
    assert_eq!(ids, ["worker-a", "worker-b"]);
    for w in &ws {
        assert_eq!(
            w.zones,
            [if w.id == "worker-a" {
                "zone-a"
            } else {
                "zone-b"
            }]
        );
        assert_eq!((w.capacity, w.version.is_empty()), (4, false));
        assert!(w.heartbeat_age_ms < 10_000, "{w:?}");
    }
    let op = p
        .admin
        .create_operator(&CreateOperator {
            name: "zone-a-reseller".into(),
            max_tenants: 1,
            ceiling: None,
            zones: strings(&["zone-a"]),
        })
        .await
        .expect("operator");
    let op = Client::new(
        &p.url,
        &p.admin.operator_token(&op.id).await.expect("token").token,
    );
    let seen: Vec<String> = op
        .fleet_workers()
        .await
        .expect("operator's view")
        .into_iter()
        .map(|w| w.id)
        .collect();
    assert_eq!(seen, ["worker-a"]);
    assert_eq!(api_err(dev.fleet_workers().await).0, 403);

    // Each label lands in its zone, run by that zone's worker (the only
    // consumer of the zone's jobs), and answers like an in-process run.
    let mut ids = Vec::new();
    let worker_of = |zone: &str| {
        if zone == "zone-a" {
            "worker-a"
        } else {
            "worker-b"
        }
    };
    for (zone, input) in [("zone-a", "from a"), ("zone-b", "from b")] {
        let r = dev
            .run(&run_req(&hello, input, &[zone]))
            .await
            .unwrap_or_else(|e| panic!("run in {zone}: {e}"));
        assert_eq!(r.status, RunStatus::Done, "{r:?}");
        assert!(matches!(r.outcome, Some(Outcome::Ok { .. })), "{r:?}");
        assert_eq!(r.zone.as_deref(), Some(zone));
        assert_eq!(r.worker.as_deref(), Some(worker_of(zone)), "{r:?}");
        assert!(
            output_text(&r).to_lowercase().contains(input),
            "{}",
            output_text(&r)
        );
        ids.push((r.id.clone(), zone.to_string()));
    }
    // An async run is accepted at once and recorded when its result comes.
    let accepted = dev
        .run(&CreateRun {
            wait: false,
            ..run_req(&hello, "later", &["zone-a"])
        })
        .await
        .expect("async run");
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let r = dev.get_run(&accepted.id).await.expect("get");
        if r.status == RunStatus::Done {
            break r;
        }
        assert!(Instant::now() < deadline, "async run not done: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done.zone.as_deref(), Some("zone-a"));
    assert_eq!(done.worker.as_deref(), Some("worker-a"));
    ids.push((done.id.clone(), "zone-a".into()));

    // One `run_executed` entry per run, naming its zone and the worker of
    // that zone that ran it (entry type 8).
    let entries = run_entries(&p.admin).await;
    for (id, zone) in &ids {
        let mine: Vec<_> = entries.iter().filter(|(r, _, _)| r == id).collect();
        assert_eq!(mine.len(), 1, "one entry for {id}: {mine:?}");
        assert_eq!((&mine[0].1, mine[0].2.as_str()), (zone, "ok"));
        assert_eq!(
            entry_workers(&p.admin, id).await,
            [Some(worker_of(zone).to_string())]
        );
    }

    // Zone b's worker leaves: zone-b runs are refused for capacity, with a
    // denial entry; nothing runs elsewhere. Zone a still serves.
    wb.stop().await;
    wait_live(&p, &["zone-a"]).await;
    let before = run_entries(&p.admin).await.len();
    let refused = dev.run(&run_req(&hello, "nobody", &["zone-b"])).await;
    assert_eq!(api_err(refused), (503, "no_capacity".into()));
    assert!(
        denials(&p.admin)
            .await
            .iter()
            .any(|d| d.starts_with("no_capacity")),
        "the refusal is audited"
    );
    // A label outside the tenant's zones is still a residency violation.
    let outside = dev.run(&run_req(&hello, "x", &["zone-c"])).await;
    assert_eq!(api_err(outside), (403, "residency_violation".into()));
    let r = dev
        .run(&run_req(&hello, "still a", &["zone-a"]))
        .await
        .expect("zone a still runs");
    assert_eq!(r.zone.as_deref(), Some("zone-a"));
    assert_eq!(run_entries(&p.admin).await.len(), before + 1);

    wa.stop().await;
}

/// A result is recorded only from its own zone's results subject (the only
/// one that zone's credentials may publish on): a result for a zone-b run
/// published on zone-a's subject, claiming zone-b, is dropped, and the run
/// is recorded from zone-b's worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_result_on_another_zones_subject_is_not_recorded() {
    let nats = NatsServer::start().expect("nats-server (scripts/setup.sh installs it)");
    let work = tempfile::tempdir().expect("tmp");
    let p = control_plane(&nats).await;
    let wb = Worker::start(&nats, "worker-b", &["zone-b"], work.path());
    wait_live(&p, &["zone-b"]).await;
    let (_t, dev) = p
        .tenant(
            "forgery",
            Some(Policy {
                zones: strings(&["zone-a", "zone-b"]).into_iter().collect(),
                datasets: true,
                limits: kasbah_policy::Limits {
                    wall_time_ms: 2_000,
                    ..kasbah_policy::Limits::default()
                },
                ..Policy::default()
            }),
        )
        .await;
    let hostile = dev
        .publish(&guest_path("hostile"), "hostile", "1", |_, _| {})
        .await
        .expect("publish");
    let r = dev
        .run(&CreateRun {
            module: hostile.digest.to_string(),
            metadata: [("attack".to_string(), "sleep".to_string())].into(),
            input_label: Some(strings(&["zone-b"])),
            wait: false,
            ..CreateRun::default()
        })
        .await
        .expect("accepted");
    let forged = kasbah_fleet::JobResult {
        run_id: r.id.clone(),
        worker: "forger".into(),
        zone: "zone-b".into(),
        adapter: None,
        report: kasbah_core::RunReport {
            outcome: Outcome::Ok {
                output: kasbah_core::Output {
                    content_type: "text/plain".into(),
                    body: b"forged".to_vec(),
                },
            },
            ..kasbah_core::RunReport::denied(hostile.digest, String::new())
        },
        started_at_ms: 0,
        finished_at_ms: 0,
        output: None,
    };
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    js.publish(
        kasbah_fleet::proto::result_subject("zone-a"),
        serde_json::to_vec(&forged).expect("json").into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    let done = ended(&dev, &r.id, Duration::from_secs(30)).await;
    assert!(
        matches!(done.outcome, Some(Outcome::DeadlineExceeded { .. })),
        "{done:?}"
    );
    assert_eq!(done.worker.as_deref(), Some("worker-b"));
    assert_eq!(
        entry_workers(&p.admin, &r.id).await,
        [Some("worker-b".to_string())]
    );
    wb.stop().await;
}

/// Without `nats` the server has no fleet: its workers list is a clear
/// `409 fleet_disabled`, not an empty list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_server_has_no_fleet_workers() {
    let p = Platform::start().await;
    assert_eq!(
        api_err(p.admin.fleet_workers().await),
        (409, "fleet_disabled".into())
    );
}

/// Outputs stay in the zone they were made in: an output larger than the
/// NATS server's `max_payload` (64 KiB here) goes from the worker to its
/// zone's object store, the result carries its digest, and the control
/// plane streams it from there on download; it never reaches the control
/// plane's blob dir. An output stored as a dataset stays in its zone's
/// bucket too, and a run in another zone of its label gets it copied
/// bucket to bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outputs_over_the_message_limit_stay_in_their_zone_bucket() {
    let nats = NatsServer::start_with_config("max_payload: 65536\n")
        .expect("nats-server (scripts/setup.sh installs it)");
    let work = tempfile::tempdir().expect("tmp");
    let p = control_plane(&nats).await;
    let wa = Worker::start(&nats, "worker-a", &["zone-a"], work.path());
    let wb = Worker::start(&nats, "worker-b", &["zone-b"], work.path());
    wait_live(&p, &["zone-a", "zone-b"]).await;
    let (_t, dev) = p
        .tenant(
            "outputs",
            Some(Policy {
                zones: strings(&["zone-a", "zone-b"]).into_iter().collect(),
                // The hostile guest imports wasi:filesystem.
                datasets: true,
                ..Policy::default()
            }),
        )
        .await;
    let hostile = dev
        .publish(&guest_path("hostile"), "hostile", "1", |_, _| {})
        .await
        .expect("publish (module chunks fit max_payload)");
    let size = 300_000;
    let r = dev
        .run(&CreateRun {
            module: hostile.digest.to_string(),
            input: Some(size.to_string()),
            input_label: Some(strings(&["zone-a"])),
            metadata: [("attack".to_string(), "giant-output".to_string())].into(),
            ..CreateRun::default()
        })
        .await
        .expect("run");
    assert_eq!(r.status, RunStatus::Done, "{r:?}");
    assert!(matches!(r.outcome, Some(Outcome::Ok { .. })), "{r:?}");
    assert_eq!(r.worker.as_deref(), Some("worker-a"));
    let want = vec![b'x'; size];
    let out = r.output.clone().expect("output");
    assert_eq!(
        (out.digest, out.size),
        (kasbah_core::Digest::of(&want), size as u64)
    );
    assert!(out.inline.is_none(), "a large output is not inline");
    let got = dev.run_output(&r.id).await.expect("download");
    assert!(
        got == want,
        "downloaded {} bytes, not the output",
        got.len()
    );
    let blobs = &p.server.state.blobs;
    assert!(
        !blobs.path(&out.digest).exists(),
        "the output reached the control plane's blob dir"
    );
    // It is in zone-a's bucket, not zone-b's.
    let cp = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(cp);
    let bucket = |z: &str| kasbah_fleet::proto::zone_bucket(z);
    let in_bucket = |z: &'static str, d: kasbah_core::Digest| {
        let js = js.clone();
        async move {
            js.get_object_store(bucket(z))
                .await
                .expect("bucket")
                .info(d.hex())
                .await
                .is_ok()
        }
    };
    assert!(in_bucket("zone-a", out.digest).await);
    assert!(!in_bucket("zone-b", out.digest).await);

    // Stored as a dataset (small, so also inline): in zone-a's bucket only,
    // not in the blob dir; labelled for both zones, so a zone-b run may
    // mount it: the control plane copies it bucket to bucket.
    let hello = dev
        .publish(&guest_path("hello"), "hello", "1.0.0", |_, _| {})
        .await
        .expect("publish");
    let stored = dev
        .run(&CreateRun {
            store_output_as: Some("greeting.txt".into()),
            ..run_req(&hello, "kept", &["zone-a", "zone-b"])
        })
        .await
        .expect("run");
    assert_eq!(stored.zone.as_deref(), Some("zone-a"), "{stored:?}");
    assert!(stored.output_dataset.is_some(), "{stored:?}");
    let sd = stored.output.clone().expect("output").digest;
    assert!(output_text(&stored).to_lowercase().contains("kept"));
    assert!(
        !blobs.path(&sd).exists(),
        "the dataset reached the blob dir"
    );
    assert!(in_bucket("zone-a", sd).await);
    assert!(!in_bucket("zone-b", sd).await);
    let mounted = dev
        .run(&CreateRun {
            datasets: vec!["greeting.txt".into()],
            ..run_req(&hello, "with data", &["zone-b"])
        })
        .await
        .expect("run");
    assert_eq!(mounted.zone.as_deref(), Some("zone-b"));
    assert!(
        matches!(mounted.outcome, Some(Outcome::Ok { .. })),
        "{mounted:?}"
    );
    assert!(in_bucket("zone-b", sd).await, "copied to zone-b's bucket");
    wa.stop().await;
    wb.stop().await;
}

/// Every file under `dir` (recursively, links not followed) whose bytes
/// contain `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                let bytes = std::fs::read(e.path()).unwrap_or_default();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(e.path());
                }
            }
        }
    }
    found
}

/// A dataset uploaded to a fleet control plane lives only in the buckets of
/// its label's zones: nowhere under the control plane's data dir, in
/// zone-b's bucket (not zone-a's), mounted by a zone-b run, downloadable
/// digest-equal, refused to a zone-a run and absent from the zone-a
/// workers' work dirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploaded_datasets_live_only_in_their_zones_buckets() {
    let nats = NatsServer::start().expect("nats-server (scripts/setup.sh installs it)");
    let work = tempfile::tempdir().expect("tmp");
    let p = control_plane(&nats).await;
    let wa1 = Worker::start(&nats, "worker-a1", &["zone-a"], work.path());
    let wa2 = Worker::start(&nats, "worker-a2", &["zone-a"], work.path());
    let wb = Worker::start(&nats, "worker-b", &["zone-b"], work.path());
    wait_live(&p, &["zone-a", "zone-b"]).await;
    let (_t, dev) = p
        .tenant(
            "zoned-data",
            Some(Policy {
                zones: strings(&["zone-a", "zone-b"]).into_iter().collect(),
                datasets: true,
                ..Policy::default()
            }),
        )
        .await;
    let hostile = dev
        .publish(&guest_path("hostile"), "hostile", "1", |_, _| {})
        .await
        .expect("publish");
    let hello = dev
        .publish(&guest_path("hello"), "hello", "1.0.0", |_, _| {})
        .await
        .expect("publish");

    // Several object chunks' worth, over the inline output size.
    let marker = b"ZONE-B-ONLY-DATA-5e1f0a9c";
    let bytes: Vec<u8> = marker
        .iter()
        .copied()
        .cycle()
        .take(marker.len() * 12_000)
        .collect();
    let digest = kasbah_core::Digest::of(&bytes);
    let d = dev
        .create_dataset_bytes(bytes.clone(), "weights-b", Some(&strings(&["zone-b"])[..]))
        .await
        .expect("upload");
    assert_eq!((d.digest, d.size), (digest, bytes.len() as u64));
    assert!(d.zone_stored, "{d:?}");
    assert!(dev.dataset(&d.id).await.expect("get").zone_stored);
    // The same upload again answers the existing record.
    let again = dev
        .create_dataset_bytes(bytes.clone(), "weights-b", Some(&strings(&["zone-b"])[..]))
        .await
        .expect("same again");
    assert_eq!(again.id, d.id);

    let data_dir = p.server.state.config.data_dir.clone();
    let on_cp = files_containing(&data_dir, marker);
    assert!(
        on_cp.is_empty(),
        "dataset bytes on the control plane: {on_cp:?}"
    );
    assert!(!p.server.state.blobs.path(&digest).exists());

    // In zone-b's bucket, the right bytes; not in zone-a's.
    let cp = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(cp);
    let bucket = |z: &str| kasbah_fleet::proto::zone_bucket(z);
    let mut object = js
        .get_object_store(bucket("zone-b"))
        .await
        .expect("zone-b bucket")
        .get(digest.hex())
        .await
        .expect("in zone-b's bucket");
    let mut in_b = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut object, &mut in_b)
        .await
        .expect("read");
    assert!(in_b == bytes, "zone-b's bucket holds other bytes");
    if let Ok(a) = js.get_object_store(bucket("zone-a")).await {
        assert!(a.info(digest.hex()).await.is_err(), "in zone-a's bucket");
    }

    // A zone-b run reads it from its mount; a zone-a run may not mount it.
    let path = "/datasets/weights-b".to_string();
    let r = dev
        .run(&CreateRun {
            module: hostile.digest.to_string(),
            input: Some(path.clone()),
            datasets: vec!["weights-b".into()],
            metadata: [("attack".to_string(), "symlink".to_string())].into(),
            ..CreateRun::default()
        })
        .await
        .expect("zone-b run");
    assert_eq!(r.status, RunStatus::Done, "{r:?}");
    assert!(matches!(r.outcome, Some(Outcome::Ok { .. })), "{r:?}");
    assert_eq!(
        (r.zone.as_deref(), r.worker.as_deref()),
        (Some("zone-b"), Some("worker-b"))
    );
    assert_eq!(r.output.as_ref().map(|o| o.digest), Some(digest));
    assert!(dev.run_output(&r.id).await.expect("output") == bytes);
    let refused = dev
        .run(&CreateRun {
            module: hostile.digest.to_string(),
            input: Some(path),
            input_label: Some(strings(&["zone-a"])),
            datasets: vec!["weights-b".into()],
            metadata: [("attack".to_string(), "symlink".to_string())].into(),
            ..CreateRun::default()
        })
        .await;
    assert_eq!(api_err(refused), (403, "residency_violation".into()));
    for i in 0..4 {
        let r = dev
            .run(&run_req(&hello, &format!("a{i}"), &["zone-a"]))
            .await
            .expect("zone-a run");
        assert_eq!(r.zone.as_deref(), Some("zone-a"));
    }

    // Download: streamed from zone-b's bucket, digest-equal. Only the
    // tenant's developers (and auditors) download; other tenants get 404.
    let got = dev.dataset_content(&d.id).await.expect("download");
    assert_eq!(kasbah_core::Digest::of(&got), digest);
    assert!(got == bytes);
    let (_o, other) = p.tenant("other", None).await;
    assert_eq!(api_err(other.dataset_content(&d.id).await).0, 404);
    assert_eq!(api_err(p.admin.dataset_content(&d.id).await).0, 403);

    // Still nowhere on the control plane, nor on zone-a's workers.
    let on_cp = files_containing(&data_dir, marker);
    assert!(
        on_cp.is_empty(),
        "dataset bytes on the control plane: {on_cp:?}"
    );
    for w in ["worker-a1", "worker-a2"] {
        let found = files_containing(&work.path().join(w), marker);
        assert!(found.is_empty(), "dataset bytes on {w}: {found:?}");
    }
    // Control: the scan finds them where they are (zone-b's worker cache).
    assert!(
        !files_containing(&work.path().join("worker-b"), marker).is_empty(),
        "the scan does not see zone-b's copy"
    );

    // The bucket cannot serve them: 503 dataset_unavailable, not a 500.
    js.get_object_store(bucket("zone-b"))
        .await
        .expect("bucket")
        .delete(digest.hex())
        .await
        .expect("delete");
    let (status, code) = api_err(dev.dataset_content(&d.id).await);
    assert_eq!((status, code.as_str()), (503, "dataset_unavailable"));
    wa1.stop().await;
    wa2.stop().await;
    wb.stop().await;
}

/// A control plane that stops while its runs execute on workers loses
/// nothing: the results wait in the stream and are recorded (once, not as
/// `interrupted`) when it is back on the same data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn results_that_arrive_while_the_control_plane_is_down_are_recorded_once_after_restart() {
    let nats = NatsServer::start().expect("nats-server (scripts/setup.sh installs it)");
    let work = tempfile::tempdir().expect("tmp");
    let data = tempfile::tempdir().expect("data dir");
    let config = {
        let mut c = kasbah_tests::platform::config(data.path());
        c.nats = Some(nats.url());
        c.zones.node = strings(&["zone-a"]);
        c.gpu.adapters.clear();
        c
    };
    let server = kasbah_server::start(config.clone())
        .await
        .expect("control plane");
    let url = format!("http://{}", server.addr);
    let admin = Client::new(&url, server.admin_token.as_deref().expect("token"));
    let wa = Worker::start(&nats, "worker-a", &["zone-a"], work.path());
    let fleet = server.state.fleet.clone().expect("fleet");
    let deadline = Instant::now() + Duration::from_secs(15);
    while fleet.live_zones().is_empty() {
        assert!(Instant::now() < deadline, "worker not live");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tenant = admin
        .create_tenant(&CreateTenant {
            name: "restart".into(),
            operator_id: None,
            policy: Some(Policy {
                zones: strings(&["zone-a"]).into_iter().collect(),
                // The hostile guest imports wasi:filesystem.
                datasets: true,
                limits: kasbah_policy::Limits {
                    wall_time_ms: 2_000,
                    ..kasbah_policy::Limits::default()
                },
                ..Policy::default()
            }),
        })
        .await
        .expect("tenant");
    let token = admin.tenant_token(&tenant.id).await.expect("token").token;
    let dev = Client::new(&url, &token);
    let hostile = dev
        .publish(&guest_path("hostile"), "hostile", "1", |_, _| {})
        .await
        .expect("publish");
    // Sleeps until its 2 s deadline on the worker.
    let accepted = dev
        .run(&CreateRun {
            module: hostile.digest.to_string(),
            metadata: [("attack".to_string(), "sleep".to_string())].into(),
            wait: false,
            ..CreateRun::default()
        })
        .await
        .expect("accepted");
    assert_eq!(accepted.status, RunStatus::Queued);
    drop(fleet);
    server
        .shutdown_within(Duration::ZERO)
        .await
        .expect("shutdown");
    // The run ends on the worker while nobody records it.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let server = kasbah_server::start(config).await.expect("restart");
    assert_eq!(server.interrupted_runs, 0, "fleet runs are not interrupted");
    let dev = Client::new(&format!("http://{}", server.addr), &token);
    let deadline = Instant::now() + Duration::from_secs(30);
    let r = loop {
        let r = dev.get_run(&accepted.id).await.expect("get");
        if r.status != RunStatus::Queued && r.status != RunStatus::Running {
            break r;
        }
        assert!(Instant::now() < deadline, "never recorded: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(r.status, RunStatus::Done, "{r:?}");
    assert!(
        matches!(r.outcome, Some(Outcome::DeadlineExceeded { .. })),
        "{:?}",
        r.outcome
    );
    let entries: Vec<_> = run_entries(&dev)
        .await
        .into_iter()
        .filter(|(id, _, _)| *id == accepted.id)
        .collect();
    assert_eq!(
        entries,
        [(
            accepted.id.clone(),
            "zone-a".to_string(),
            "deadline_exceeded".to_string()
        )]
    );
    wa.stop().await;
    server.shutdown().await.expect("shutdown");
}

/// The outcomes of a run's `run_executed` entries.
async fn outcomes(c: &Client, id: &str) -> Vec<String> {
    run_entries(c)
        .await
        .into_iter()
        .filter(|(r, _, _)| r == id)
        .map(|(_, _, o)| o)
        .collect()
}

/// Poll a run until it has ended.
async fn ended(dev: &Client, id: &str, within: Duration) -> RunRecord {
    let deadline = Instant::now() + within;
    loop {
        let r = dev.get_run(id).await.expect("get run");
        if r.status != RunStatus::Queued && r.status != RunStatus::Running {
            return r;
        }
        assert!(Instant::now() < deadline, "run not ended: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A worker killed mid-run: another worker of the zone takes the job after
/// the ack wait and the run is recorded once. The zone's last worker
/// killed: past its wall time and the grace, the run is recorded
/// `interrupted` (once), and a late result for it is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_workers_cost_no_run_record_twice() {
    let nats = NatsServer::start().expect("nats-server (scripts/setup.sh installs it)");
    let work = tempfile::tempdir().expect("tmp");
    let url = nats.url();
    let p = Platform::start_with(move |c| {
        c.nats = Some(url);
        c.zones.node = strings(&["zone-a"]);
        c.gpu.adapters.clear();
        c.fleet_result_grace_ms = 2_000;
    })
    .await;
    let a1 = ProcWorker::start(&nats, "worker-a1", "zone-a", work.path());
    let a2 = ProcWorker::start(&nats, "worker-a2", "zone-a", work.path());
    let fleet = p.server.state.fleet.clone().expect("fleet");
    let deadline = Instant::now() + Duration::from_secs(15);
    while fleet.live_workers().len() < 2 {
        assert!(Instant::now() < deadline, "workers not live");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_t, dev) = p
        .tenant(
            "kills",
            Some(Policy {
                zones: strings(&["zone-a"]).into_iter().collect(),
                datasets: true,
                limits: kasbah_policy::Limits {
                    wall_time_ms: 6_000,
                    ..kasbah_policy::Limits::default()
                },
                ..Policy::default()
            }),
        )
        .await;
    let hostile = dev
        .publish(&guest_path("hostile"), "hostile", "1", |_, _| {})
        .await
        .expect("publish");
    let sleeper = CreateRun {
        module: hostile.digest.to_string(),
        metadata: [("attack".to_string(), "sleep".to_string())].into(),
        wait: false,
        ..CreateRun::default()
    };

    // Kill whichever worker runs the job (its heartbeat says so).
    let r1 = dev.run(&sleeper).await.expect("accepted");
    let deadline = Instant::now() + Duration::from_secs(10);
    let busy = loop {
        if let Some(w) = fleet.live_workers().into_iter().find(|w| w.active > 0) {
            break w.id;
        }
        assert!(Instant::now() < deadline, "no worker took the job");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (survivor, survivor_id) = if busy == "worker-a1" {
        a1.kill();
        (a2, "worker-a2")
    } else {
        a2.kill();
        (a1, "worker-a1")
    };
    let done = ended(&dev, &r1.id, Duration::from_secs(30)).await;
    assert_eq!(done.status, RunStatus::Done, "{done:?}");
    assert!(
        matches!(done.outcome, Some(Outcome::DeadlineExceeded { .. })),
        "{:?}",
        done.outcome
    );
    // Let any second result arrive, then count.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(outcomes(&p.admin, &r1.id).await, ["deadline_exceeded"]);
    // Recorded as run by the survivor, in the record and in the entry.
    assert_eq!(done.worker.as_deref(), Some(survivor_id), "{done:?}");
    assert_eq!(
        entry_workers(&p.admin, &r1.id).await,
        [Some(survivor_id.to_string())]
    );

    // The zone's last worker dies with the job: interrupted, once.
    let r2 = dev.run(&sleeper).await.expect("accepted");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fleet.live_workers().iter().any(|w| w.active > 0) {
        assert!(
            Instant::now() < deadline,
            "the survivor did not take the job"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    survivor.kill();
    let lost = ended(&dev, &r2.id, Duration::from_secs(40)).await;
    assert_eq!(lost.status, RunStatus::Interrupted, "{lost:?}");
    // A new worker gets the stale job (past its deadline): its result
    // finds the run recorded and changes nothing.
    let short = |c: &mut WorkerConfig| c.ack_wait_ms = 1_000;
    let a3 = Worker::start_with(&nats, "worker-a3", &["zone-a"], work.path(), short);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        dev.get_run(&r2.id).await.expect("get").status,
        RunStatus::Interrupted
    );
    assert_eq!(outcomes(&p.admin, &r2.id).await, ["interrupted"]);
    // No worker answered: the record and its (type 4) entry name none.
    assert_eq!(dev.get_run(&r2.id).await.expect("get").worker, None);
    assert_eq!(entry_workers(&p.admin, &r2.id).await, [None]);
    a3.stop().await;
}

/// `kasbah serve --nats …` as its own process, for `kill -9`.
struct ProcServer {
    child: std::process::Child,
    url: String,
    admin_token: Option<String>,
}

impl ProcServer {
    /// Start a control plane on `root/data` with `root/serve.toml`, on
    /// `port` (0: any).
    fn start(root: &std::path::Path, nats: &NatsServer, port: u16) -> ProcServer {
        let config = root.join("serve.toml");
        std::fs::write(
            &config,
            "fleet_result_grace_ms = 2000\nqueue_depth = 256\n\
             [zones]\nnode = [\"zone-a\"]\n[gpu]\nadapters = []\n",
        )
        .expect("write serve.toml");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join("server.log"))
            .expect("server log");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kasbah-under-test"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(root.join("data"))
            .args(["--nats", &nats.url()])
            .env_remove("KASBAH_CONFIG")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn kasbah serve");
        let banner = kasbah_tests::read_serve_banner(child.stdout.take().expect("stdout"));
        let Some(url) = banner.url else {
            let _ = child.kill();
            let log = std::fs::read_to_string(root.join("server.log")).unwrap_or_default();
            panic!("kasbah serve did not start:\n{log}");
        };
        ProcServer {
            child,
            url,
            admin_token: banner.admin_token,
        }
    }

    fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in url")
    }

    /// `kill -9`, reaped.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ProcServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `kasbah audit watch` against `url` as `token`.
fn audit_watch(url: &str, token: &str, key: &str, state: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kasbah-under-test"))
        .args(["audit", "watch", "--key", key, "--state"])
        .arg(state)
        .env("KASBAH_URL", url)
        .env("KASBAH_TOKEN", token)
        .env_remove("KASBAH_AUDIT_KEY")
        .output()
        .expect("run kasbah audit watch");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The control plane is SIGKILLed while clients keep submitting runs and
/// workers keep executing them; restarted on the same data dir, every run
/// a client got an id for is recorded exactly once (its result recorded
/// from the stream, or `interrupted` if its job never left the dead
/// process), no run has two entries, fleet runs still have receipts naming
/// their worker, and `kasbah audit watch` proves the restarted log extends
/// the one it saw before the crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_control_plane_killed_under_load_records_every_acknowledged_run_once() {
    let nats = NatsServer::start().expect("nats-server (scripts/setup.sh installs it)");
    let work = tempfile::tempdir().expect("tmp");
    let root = tempfile::tempdir().expect("root");
    let mut cp = ProcServer::start(root.path(), &nats, 0);
    let port = cp.port();
    let admin_token = cp.admin_token.clone().expect("admin token on first start");
    let admin = Client::new(&cp.url, &admin_token);
    let vkey = admin.audit_key().await.expect("audit key");
    let wa1 = Worker::start(&nats, "worker-a1", &["zone-a"], work.path());
    let wa2 = Worker::start(&nats, "worker-a2", &["zone-a"], work.path());
    let tenant = admin
        .create_tenant(&CreateTenant {
            name: "load".into(),
            operator_id: None,
            policy: Some(Policy {
                zones: strings(&["zone-a"]).into_iter().collect(),
                limits: kasbah_policy::Limits {
                    wall_time_ms: 2_000,
                    max_concurrent_runs: 256,
                    ..kasbah_policy::Limits::default()
                },
                ..Policy::default()
            }),
        })
        .await
        .expect("tenant");
    let token = admin.tenant_token(&tenant.id).await.expect("token").token;
    let dev = Client::new(&cp.url, &token);
    let hello = dev
        .publish(&guest_path("hello"), "hello", "1.0.0", |_, _| {})
        .await
        .expect("publish");
    // Wait for both workers, through the API's own view: a run succeeds.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match dev.run(&run_req(&hello, "warm", &["zone-a"])).await {
            Ok(r) if r.status == RunStatus::Done => break,
            r => assert!(Instant::now() < deadline, "no worker live: {r:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let state = root.path().join("watch.state");
    let key = vkey.to_string();
    let (ok, text) = audit_watch(&cp.url, &admin_token, &key, &state);
    assert!(ok, "{text}");

    // Load: 4 clients submit async runs as fast as they are answered.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (dev, acked, stop) = (dev.clone(), acked.clone(), stop.clone());
        let req = CreateRun {
            wait: false,
            ..run_req(&hello, &format!("client {c}"), &["zone-a"])
        };
        clients.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match dev.run(&req).await {
                    Ok(r) => acked.lock().expect("lock").push(r.id),
                    Err(kasbah_client::Error::Api { status: 429, .. }) => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    // The control plane is gone.
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let before_kill = acked.lock().expect("lock").len();
    cp.kill();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.await.expect("client task");
    }
    let acked: Vec<String> = acked.lock().expect("lock").clone();
    assert!(
        before_kill >= 10,
        "too little load before the kill: {before_kill} runs"
    );

    // Workers go on finishing jobs while the control plane is down.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cp = ProcServer::start(root.path(), &nats, port);
    let dev = Client::new(&cp.url, &token);
    let admin = Client::new(&cp.url, &admin_token);
    let mut by_worker = std::collections::BTreeMap::<String, usize>::new();
    let mut interrupted = 0;
    for id in &acked {
        let r = ended(&dev, id, Duration::from_secs(60)).await;
        match r.status {
            RunStatus::Done => {
                assert!(matches!(r.outcome, Some(Outcome::Ok { .. })), "{r:?}");
                let w = r.worker.clone().expect("a done fleet run names its worker");
                *by_worker.entry(w).or_default() += 1;
            }
            RunStatus::Interrupted => interrupted += 1,
            s => panic!("run {id} ended {s:?}"),
        }
    }
    // Exactly one `run_executed` entry per acknowledged run, and no run
    // with two anywhere in the log.
    let entries = run_entries(&admin).await;
    let mut count = std::collections::HashMap::<&str, usize>::new();
    for (id, _, _) in &entries {
        *count.entry(id.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "runs recorded twice: {twice:?}");
    for id in &acked {
        assert_eq!(count.get(id.as_str()), Some(&1), "entries of {id}");
    }
    assert!(
        by_worker
            .keys()
            .all(|w| w == "worker-a1" || w == "worker-a2"),
        "{by_worker:?}"
    );
    eprintln!(
        "{} runs acknowledged, {} recorded done {by_worker:?}, {interrupted} interrupted",
        acked.len(),
        acked.len() - interrupted
    );
    // A fleet run's receipt verifies offline and names its worker.
    let done = acked
        .iter()
        .rev()
        .find(|id| count.contains_key(id.as_str()))
        .expect("a run");
    let r = dev.get_run(done).await.expect("get");
    if r.status == RunStatus::Done {
        let receipt = dev.run_receipt(done).await.expect("receipt");
        let v = kasbah_audit::verify_receipt(&receipt, &vkey, Some(hello.digest))
            .expect("receipt verifies");
        match v.entry.body {
            EntryBody::RunExecuted(e) => assert_eq!(e.worker, r.worker),
            other => panic!("{other:?}"),
        }
    }
    // The log after the crash extends the one seen before it.
    let (ok, text) = audit_watch(&cp.url, &admin_token, &key, &state);
    assert!(ok && text.contains("grew from"), "{text}");
    wa1.stop().await;
    wa2.stop().await;
}
