//! Live logs and cancel on the fleet (issue 18): a fleet run streams
//! nothing while it runs on its worker; its followers get the record's
//! logs and stdio once the result is recorded, then `end`. Cancelling a
//! fleet run tells its zone's workers: the one running it stops the guest
//! (spinning or blocked in a host call) and sends its result, recorded as
//! `cancelled` with the usage it took (the run is billed what it ran).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kasbah_core::api::{CreateRun, RunStatus};
use kasbah_core::{LogEvent, Outcome};
use kasbah_fleet::WorkerConfig;
use kasbah_fleet::testing::NatsServer;
use kasbah_policy::Policy;
use kasbah_tests::guest_path;
use kasbah_tests::platform::Platform;
use tokio::sync::oneshot;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fleet_runs_show_their_records_logs_and_cancel_at_the_control_plane() {
    let nats = NatsServer::start().expect("nats-server (scripts/setup.sh installs it)");
    let work = tempfile::tempdir().expect("tmp");
    let url = nats.url();
    let p = Platform::start_with(move |c| {
        c.nats = Some(url);
        c.zones.node = vec!["zone-a".into()];
        c.gpu.adapters.clear();
    })
    .await;
    let mut wc = WorkerConfig {
        id: "worker-a".into(),
        nats: nats.url(),
        capacity: 2,
        work_dir: work.path().join("worker-a"),
        ..WorkerConfig::default()
    };
    wc.zones.node = vec!["zone-a".into()];
    let (stop, stopped) = oneshot::channel::<()>();
    let worker = tokio::spawn(kasbah_fleet::worker::run(wc, async move {
        let _ = stopped.await;
    }));
    let fleet = p.server.state.fleet.clone().expect("fleet mode");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !fleet.live_zones().contains("zone-a") {
        assert!(Instant::now() < deadline, "no live worker");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, dev) = p
        .tenant(
            "fleet",
            Some(Policy {
                zones: ["zone-a".to_string()].into_iter().collect(),
                datasets: true,
                ..Policy::default()
            }),
        )
        .await;
    let m = dev
        .publish(&guest_path("hostile"), "hostile", "1.0.0", |_, _| {})
        .await
        .expect("publish")
        .digest
        .to_string();
    let req = |attack: &str, arg: &str| CreateRun {
        module: m.clone(),
        input: Some(arg.into()),
        metadata: BTreeMap::from([("attack".to_string(), attack.to_string())]),
        wait: false,
        ..CreateRun::default()
    };

    let run = dev.run(&req("ticks", "3 200")).await.expect("run");
    let events: Vec<LogEvent> = dev
        .follow_logs(&run.id)
        .await
        .expect("follow")
        .map(|e| e.expect("event"))
        .collect()
        .await;
    let logs: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            LogEvent::Log { message, .. } => Some(message.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(logs, ["tick 0", "tick 1", "tick 2"], "{events:?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, LogEvent::Stdout { bytes } if bytes == b"out 0\nout 1\nout 2\n")),
        "{events:?}"
    );
    match events.last() {
        Some(LogEvent::End { status, outcome }) => {
            assert_eq!(status, "done");
            assert_eq!(outcome.as_ref().map(|o| o.kind()), Some("ok"));
        }
        other => panic!("last event {other:?}"),
    }

    // Cancel: the worker stops the guest and its result is the record:
    // `cancelled`, by that worker, with the time and fuel it took — long
    // before the guest's own end (an hour's sleep, an endless loop) or
    // its 30 s deadline.
    for attack in ["sleep", "loop"] {
        let victim = dev.run(&req(attack, "")).await.expect("run");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let asked = Instant::now();
        let r = dev.cancel_run(&victim.id).await.expect("cancel");
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "{attack}: {:?}",
            asked.elapsed()
        );
        assert_eq!(r.status, RunStatus::Done, "{attack}: {r:?}");
        assert_eq!(r.outcome, Some(Outcome::Cancelled {}), "{attack}: {r:?}");
        assert_eq!(r.worker.as_deref(), Some("worker-a"), "{attack}: {r:?}");
        let u = r.usage.clone().expect("usage");
        assert!(u.wall_time >= Duration::from_millis(300), "{attack}: {u:?}");
        assert!(u.wall_time < Duration::from_secs(10), "{attack}: {u:?}");
        if attack == "loop" {
            assert!(
                u.fuel_consumed
                    .is_some_and(|f| f > kasbah_runtime::FUEL_SLICE),
                "{u:?}"
            );
        }
        let again = dev.get_run(&victim.id).await.expect("get");
        assert_eq!(again.outcome, Some(Outcome::Cancelled {}));
    }
    // The worker is free again: both of its slots run the next runs.
    let quick = dev
        .run(&CreateRun {
            wait: true,
            ..req("echo", "hi")
        })
        .await
        .expect("run");
    assert!(
        matches!(quick.outcome, Some(Outcome::Ok { .. })),
        "{quick:?}"
    );
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), worker).await;
}
