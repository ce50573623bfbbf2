//! Live run logs and cancellation through a real server on loopback:
//! `GET /v1/runs/{id}/logs[?follow=true]` (server-sent events while the
//! run executes, a gap marker for a client that falls behind, which never
//! slows the run) and `POST /v1/runs/{id}/cancel` (running and queued runs
//! end `cancelled`, audited, billed for what they took; only the owning
//! tenant's developers; 409 once finished).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kasbah_client::Client;
use kasbah_core::api::{CreateRun, RunRecord, RunStatus};
use kasbah_core::{LogEvent, Outcome};
use kasbah_policy::{Limits, Policy};
use kasbah_tests::guest_path;
use kasbah_tests::platform::{Platform, api_err};

fn policy(limits: Limits) -> Policy {
    Policy {
        // The hostile guest imports wasi:filesystem.
        datasets: true,
        limits,
        ..Policy::default()
    }
}

fn attack(module: &str, name: &str, arg: &str) -> CreateRun {
    CreateRun {
        module: module.into(),
        input: Some(arg.into()),
        metadata: BTreeMap::from([("attack".to_string(), name.to_string())]),
        wait: false,
        ..CreateRun::default()
    }
}

async fn hostile(c: &Client) -> String {
    c.publish(&guest_path("hostile"), "hostile", "1.0.0", |_, _| {})
        .await
        .expect("publish hostile")
        .digest
        .to_string()
}

async fn wait_status(c: &Client, id: &str, want: RunStatus) -> RunRecord {
    let start = Instant::now();
    loop {
        let r = c.get_run(id).await.expect("get run");
        if r.status == want {
            return r;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{r:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_done(c: &Client, id: &str) -> RunRecord {
    wait_status(c, id, RunStatus::Done).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follow_streams_logs_and_stdio_while_the_run_executes() {
    let p = Platform::start().await;
    let (_, dev) = p.tenant("acme", Some(policy(Limits::default()))).await;
    let m = hostile(&dev).await;
    let run = dev.run(&attack(&m, "ticks", "5 300")).await.expect("run");
    let started = Instant::now();
    let events = dev.follow_logs(&run.id).await.expect("follow");
    let mut events = std::pin::pin!(events);
    let mut seen: Vec<(Duration, LogEvent)> = Vec::new();
    while let Some(e) = events.next().await {
        let e = e.expect("event");
        let end = matches!(e, LogEvent::End { .. });
        seen.push((started.elapsed(), e));
        if end {
            break;
        }
    }
    let logs: Vec<&str> = seen
        .iter()
        .filter_map(|(_, e)| match e {
            LogEvent::Log { message, .. } => Some(message.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(logs, ["tick 0", "tick 1", "tick 2", "tick 3", "tick 4"]);
    let stdout: Vec<u8> = seen
        .iter()
        .flat_map(|(_, e)| match e {
            LogEvent::Stdout { bytes } => bytes.clone(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(
        String::from_utf8_lossy(&stdout),
        "out 0\nout 1\nout 2\nout 3\nout 4\n"
    );
    // As they come: the first record arrived well before the end (the
    // run takes 5 × 300 ms).
    let first = seen[0].0;
    let (end_at, end) = seen.last().expect("events");
    assert!(
        *end_at >= first + Duration::from_millis(900),
        "first {first:?}, end {end_at:?}"
    );
    match end {
        LogEvent::End { status, outcome } => {
            assert_eq!(status, "done");
            assert_eq!(outcome.as_ref().map(|o| o.kind()), Some("ok"));
        }
        other => panic!("last event {other:?}"),
    }
    // Without follow: the logs as JSON, the record's.
    let l = dev.run_logs(&run.id).await.expect("logs");
    assert!(l.complete);
    assert_eq!(l.logs.records.len(), 5);
    assert_eq!(l.stdout.bytes, stdout);
    // Following a finished run: its record's events, then end.
    let again: Vec<LogEvent> = dev
        .follow_logs(&run.id)
        .await
        .expect("follow")
        .map(|e| e.expect("event"))
        .collect()
        .await;
    assert_eq!(again.len(), 5 + 1 + 1, "{again:?}");
    // Another tenant: 404, streamed or not.
    let (_, other) = p.tenant("other", Some(policy(Limits::default()))).await;
    assert_eq!(api_err(other.run_logs(&run.id).await).0, 404);
    assert_eq!(api_err(other.follow_logs(&run.id).await.map(|_| ())).0, 404);
}

/// A client that does not read: the run does not wait for it, and when it
/// reads at last it gets a `gap` with what it missed, then `end`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_follower_gets_a_gap_and_never_slows_the_run() {
    let p = Platform::start().await;
    let limits = Limits {
        max_log_bytes: 16 << 20,
        max_log_records: 1_000_000,
        ..Limits::default()
    };
    let (t, dev) = p.tenant("acme", Some(policy(limits))).await;
    let m = hostile(&dev).await;
    // 250,000 empty records: ~17 MB of events, more than loopback buffers.
    let run = dev
        .run(&CreateRun {
            wait: false,
            ..attack(&m, "log-flood-empty", "250000")
        })
        .await
        .expect("run");
    let token = p.admin.tenant_token(&t.id).await.expect("token").token;
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/runs/{}/logs?follow=true", p.url, run.id))
        .bearer_auth(token)
        .send()
        .await
        .expect("follow");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("text/event-stream")
    );
    // The run ends while this client reads nothing.
    let done = wait_done(&dev, &run.id).await;
    assert_eq!(done.outcome.as_ref().map(|o| o.kind()), Some("ok"));
    assert_eq!(done.logs.as_ref().map(|l| l.records.len()), Some(250_000));
    let mut resp = resp;
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.expect("chunk") {
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(body).expect("utf-8");
    let names: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("event: ")))
        .collect();
    let gaps: Vec<u64> = text
        .split("\n\n")
        .filter(|e| e.contains("event: gap"))
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| {
            serde_json::from_str::<serde_json::Value>(d).expect("json")["missed"]
                .as_u64()
                .expect("missed")
        })
        .collect();
    let logs = names.iter().filter(|n| **n == "log").count() as u64;
    assert!(!gaps.is_empty(), "no gap in {} events", names.len());
    assert_eq!(names.last(), Some(&"end"));
    assert_eq!(
        logs + gaps.iter().sum::<u64>(),
        250_000,
        "every record is either delivered or counted in a gap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_stops_running_and_queued_runs_audited_and_billed() {
    // One worker: a second run waits in the queue.
    let p = Platform::start_with(|c| c.workers = 1).await;
    let (t, dev) = p
        .tenant(
            "acme",
            Some(policy(Limits {
                wall_time_ms: 60_000,
                ..Limits::default()
            })),
        )
        .await;
    let (_, other) = p.tenant("other", Some(policy(Limits::default()))).await;
    let m = hostile(&dev).await;

    // A CPU-bound guest, running.
    let spin = dev.run(&attack(&m, "loop", "")).await.expect("run");
    wait_status(&dev, &spin.id, RunStatus::Running).await;
    // A queued one behind it.
    let queued = dev.run(&attack(&m, "loop", "")).await.expect("run");
    assert_eq!(
        dev.get_run(&queued.id).await.expect("get").status,
        RunStatus::Queued
    );
    // Only the owning tenant's developers: others (admins too) get 404.
    assert_eq!(api_err(other.cancel_run(&spin.id).await).0, 404);
    assert_eq!(api_err(p.admin.cancel_run(&spin.id).await).0, 404);

    let q = dev.cancel_run(&queued.id).await.expect("cancel queued");
    assert_eq!(q.outcome, Some(Outcome::Cancelled {}));
    let qu = q.usage.expect("usage");
    assert_eq!(qu.fuel_consumed, None, "a queued run never ran: {qu:?}");

    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    let r = dev.cancel_run(&spin.id).await.expect("cancel running");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(r.status, RunStatus::Done);
    assert_eq!(r.outcome, Some(Outcome::Cancelled {}));
    let u = r.usage.expect("usage");
    // Billed for what it took: it ran ≥ 300 ms, and the fuel it burnt
    // mid-loop is counted (less at most one slice).
    assert!(u.wall_time >= Duration::from_millis(300), "{u:?}");
    assert!(u.wall_time < Duration::from_secs(30), "{u:?}");
    assert!(
        u.fuel_consumed
            .is_some_and(|f| f > kasbah_runtime::FUEL_SLICE),
        "{u:?}"
    );

    // Finished: 409.
    let (status, code) = api_err(dev.cancel_run(&spin.id).await);
    assert_eq!((status, code.as_str()), (409, "run_finished"));
    assert_eq!(api_err(dev.cancel_run("run_nope").await).0, 404);

    // A guest blocked in a host call (sleeping for an hour) stops too.
    let sleeper = dev.run(&attack(&m, "sleep", "")).await.expect("run");
    wait_status(&dev, &sleeper.id, RunStatus::Running).await;
    let asked = Instant::now();
    let s = dev.cancel_run(&sleeper.id).await.expect("cancel sleeper");
    assert_eq!(s.outcome, Some(Outcome::Cancelled {}));
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );

    // Audited like every outcome: a run_executed entry with `cancelled`.
    let log = dev.audit_entries(0, None).await.expect("entries");
    for id in [&spin.id, &queued.id, &sleeper.id] {
        let e = log
            .entries
            .iter()
            .find(|e| e.entry["type"] == "run_executed" && e.entry["run_id"] == **id)
            .unwrap_or_else(|| panic!("no entry for {id}"));
        assert_eq!(e.entry["outcome"], "cancelled", "{}", e.entry);
        assert_eq!(e.entry["tenant"], t.id.as_str());
    }
    // The worker is free again: a new run finishes.
    let quick = dev
        .run(&CreateRun {
            wait: true,
            ..attack(&m, "ticks", "1 0")
        })
        .await
        .expect("run");
    assert_eq!(quick.outcome.as_ref().map(|o| o.kind()), Some("ok"));
}

/// The CLI: `kasbah run sha256:…` shows the run's logs and stdout on
/// stderr as they come (the output on stdout); `kasbah runs logs` prints
/// them after; `kasbah runs cancel` of a finished run fails (409).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_shows_logs_as_they_come_and_after() {
    let p = Platform::start().await;
    let (t, dev) = p.tenant("acme", Some(policy(Limits::default()))).await;
    let m = hostile(&dev).await;
    let token = p.admin.tenant_token(&t.id).await.expect("token").token;
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("in.txt"), "3 100").expect("input");
    let kasbah = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kasbah-under-test"))
            .current_dir(dir.path())
            .env("KASBAH_URL", &p.url)
            .env("KASBAH_TOKEN", &token)
            .args(args)
            .output()
            .expect("spawn kasbah")
    };
    let o = tokio::task::block_in_place(|| {
        kasbah(&["run", &m, "--input", "in.txt", "--meta", "attack=ticks"])
    });
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "ticked 3");
    let at = |needle: &str| {
        stderr
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in {stderr}"))
    };
    assert!(at("log      info tick 0") < at("stdout   | out 0"));
    assert!(at("stdout   | out 0") < at("log      info tick 2"));
    assert!(at("log      info tick 2") < at("outcome  ok"));
    let id = stderr
        .lines()
        .find_map(|l| l.strip_prefix("run      "))
        .and_then(|l| l.split_whitespace().next())
        .expect("run id")
        .to_string();
    let o = tokio::task::block_in_place(|| kasbah(&["runs", "logs", &id]));
    let logs = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(0), "{logs}");
    assert!(
        logs.contains("log      info tick 1") && logs.contains("stdout   | out 2"),
        "{logs}"
    );
    let o = tokio::task::block_in_place(|| kasbah(&["runs", "cancel", &id]));
    assert_ne!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stderr).contains("run_finished"));
}
