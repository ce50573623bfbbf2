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
        let mut c = WorkerConfig {
            id: id.into(),
            nats: nats.url(),
            capacity: 4,
            work_dir: work.join(id),
            ..WorkerConfig::default()
        };
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
    let url = nats.url();
    let p = Platform::start_with(move |c| {
        c.nats = Some(url);
        c.zones.node = strings(&["zone-a", "zone-b"]);
        // GPUs are the workers'; the control plane runs nothing.
        c.gpu.adapters.clear();
    })
    .await;
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

    // Each label lands in its zone, run by that zone's worker (the only
    // consumer of the zone's jobs), and answers like an in-process run.
    let mut ids = Vec::new();
    for (zone, input) in [("zone-a", "from a"), ("zone-b", "from b")] {
        let r = dev
            .run(&run_req(&hello, input, &[zone]))
            .await
            .unwrap_or_else(|e| panic!("run in {zone}: {e}"));
        assert_eq!(r.status, RunStatus::Done, "{r:?}");
        assert!(matches!(r.outcome, Some(Outcome::Ok { .. })), "{r:?}");
        assert_eq!(r.zone.as_deref(), Some(zone));
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
    ids.push((done.id.clone(), "zone-a".into()));

    // One `run_executed` entry per run, naming its zone.
    let entries = run_entries(&p.admin).await;
    for (id, zone) in &ids {
        let mine: Vec<_> = entries.iter().filter(|(r, _, _)| r == id).collect();
        assert_eq!(mine.len(), 1, "one entry for {id}: {mine:?}");
        assert_eq!((&mine[0].1, mine[0].2.as_str()), (zone, "ok"));
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
