//! Every per-run host resource is bounded: descriptors, log records, error
//! and content-type sizes, disk in `rw` preopens (bytes by apparent size,
//! inodes, depth, symlinks), per-call random bytes, and a slow guest never
//! stalls the API. Each attack is contained (the process survives, the
//! budget holds, the run ends with the expected outcome) and hello still
//! runs afterwards on the same runtime.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use kasbah_core::api::CreateRun;
use kasbah_core::{GuestErrorKind, Outcome, RunReport};
use kasbah_policy::{DirGrant, DirMode, Limits, Policy};
use kasbah_runtime::{DatasetMount, Request, RunOptions};
use kasbah_tests::{assert_hello_still_served, guest_path, load, run, runtime};

fn attack(name: &str, arg: impl Into<Vec<u8>>) -> Request {
    Request::new(arg).with_meta("attack", name)
}

fn rw(dir: &Path, limits: Limits) -> Policy {
    Policy {
        files: vec![DirGrant {
            host: dir.to_path_buf(),
            guest: "/work".into(),
            mode: DirMode::Rw,
        }],
        limits,
        ..Policy::default()
    }
}

/// The guest's denied message (the attack was refused), else panic.
fn denied(r: &RunReport) -> &str {
    match &r.outcome {
        Outcome::GuestError {
            code: GuestErrorKind::Denied,
            message,
        } => message,
        other => panic!("expected the attack to be refused, got {other:?}"),
    }
}

fn denial_with(r: &RunReport, needle: &str) {
    assert!(
        r.denials
            .iter()
            .any(|d| d.capability == "files" && d.detail.contains(needle)),
        "no files denial mentioning {needle:?}: {:?}",
        r.denials
    );
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

#[tokio::test]
async fn descriptor_flood_is_refused_past_the_bound_and_every_fd_is_released() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("x");
    std::fs::write(&file, b"dataset bytes").expect("write");
    let policy = Policy {
        datasets: true,
        ..Policy::default()
    };
    let options = RunOptions {
        datasets: vec![DatasetMount::new("x", &file)],
        ..RunOptions::default()
    };
    let module = load("hostile");
    // Warm up (mount cache, lazily opened host files) before counting.
    runtime()
        .run_with(&module, &policy, attack("ok", ""), &options)
        .await
        .expect("run");
    let before = open_fds();
    let started = Instant::now();
    let r = runtime()
        .run_with(
            &module,
            &policy,
            attack("fd-flood", "/datasets/x 10000"),
            &options,
        )
        .await
        .expect("run");
    let took = started.elapsed();
    let max = Limits::default().max_open_files;
    let msg = denied(&r);
    assert!(
        msg.starts_with(&format!(
            "opened {max} refused {} reopen-after-close true",
            10_000 - max
        )),
        "{msg}"
    );
    denial_with(&r, "too many open files");
    assert_eq!(r.denials.len(), 1, "one denial per kind: {:?}", r.denials);
    // Other tests share this process: allow for their descriptors, not for
    // the flood's (it would have held ~10,000).
    let mut after = open_fds();
    for _ in 0..50 {
        if after <= before + 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = open_fds();
    }
    eprintln!("fd-flood: {msg}; host fds before {before}, after {after}; run took {took:?}");
    assert!(after <= before + 8, "host fds {before} -> {after}");
    assert_hello_still_served().await;
}

#[tokio::test]
async fn empty_log_records_are_counted_and_cost_bytes() {
    let n: u64 = 200_000;
    let r = run(
        "hostile",
        &Policy::default(),
        attack("log-flood-empty", n.to_string()),
    )
    .await;
    assert!(r.outcome.is_ok(), "{:?}", r.outcome);
    let l = Limits::default();
    let kept = r.logs.records.len() as u64;
    assert!(kept <= l.max_log_records, "{kept} records kept");
    assert!(
        kept * kasbah_policy::LOG_RECORD_OVERHEAD_BYTES <= l.max_log_bytes,
        "{kept} empty records fit in max_log_bytes only at >= 64 B each"
    );
    assert_eq!(kept + r.logs.dropped, n, "dropped records are reported");
    // A tighter byte budget binds before the record count.
    let policy = Policy {
        limits: Limits {
            max_log_bytes: 640,
            ..Limits::default()
        },
        ..Policy::default()
    };
    let r = run("hostile", &policy, attack("log-flood-empty", "1000")).await;
    assert_eq!(r.logs.records.len(), 10);
    assert_eq!(r.logs.dropped, 990);
    assert_hello_still_served().await;
}

#[tokio::test]
async fn a_giant_error_message_is_cut() {
    let n = 16 << 20;
    let r = run(
        "hostile",
        &Policy::default(),
        attack("giant-error", n.to_string()),
    )
    .await;
    match &r.outcome {
        Outcome::GuestError {
            code: GuestErrorKind::Failed,
            message,
        } => {
            assert!(message.len() <= kasbah_runtime::MAX_ERROR_MESSAGE_BYTES + 64);
            assert!(message.starts_with("EEEE"), "{message}");
            assert!(message.contains(&format!("of {n} bytes cut")), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // And within max_output_bytes when that is smaller.
    let policy = Policy {
        limits: Limits {
            max_output_bytes: 100,
            ..Limits::default()
        },
        ..Policy::default()
    };
    let r = run("hostile", &policy, attack("giant-error", "5000")).await;
    let Outcome::GuestError { message, .. } = &r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert!(message.len() <= 100 + 64, "{}", message.len());
    assert_hello_still_served().await;
}

#[tokio::test]
async fn a_giant_content_type_is_output_too_large() {
    let r = run(
        "hostile",
        &Policy::default(),
        attack("giant-content-type", (16u64 << 20).to_string()),
    )
    .await;
    assert_eq!(
        r.outcome,
        Outcome::OutputTooLarge {
            size: 16 << 20,
            limit: kasbah_runtime::MAX_CONTENT_TYPE_BYTES as u64
        }
    );
    let r = run(
        "hostile",
        &Policy::default(),
        attack("giant-content-type", "200"),
    )
    .await;
    assert!(
        r.outcome.is_ok(),
        "a 200-byte type is fine: {:?}",
        r.outcome
    );
    assert_hello_still_served().await;
}

#[tokio::test]
async fn a_sparse_terabyte_file_counts_as_a_terabyte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = run(
        "hostile",
        &rw(dir.path(), Limits::default()),
        attack("sparse-file", "/work/sparse"),
    )
    .await;
    let msg = denied(&r);
    assert!(
        msg.contains("write at 1 TiB") && msg.contains("set_len"),
        "{msg}"
    );
    denial_with(&r, "limits.max_write_bytes");
    let size = std::fs::metadata(dir.path().join("sparse"))
        .expect("file")
        .len();
    assert_eq!(size, 0, "the file did not grow");
    assert_hello_still_served().await;
}

#[tokio::test]
async fn dense_writes_stop_at_the_byte_quota() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = Limits {
        max_write_bytes: 1 << 20,
        ..Limits::default()
    };
    let r = run(
        "hostile",
        &rw(dir.path(), limits),
        attack("disk-fill", format!("/work/fill {}", 4 << 20)),
    )
    .await;
    let msg = denied(&r);
    assert!(msg.contains("wrote"), "{msg}");
    denial_with(&r, "limits.max_write_bytes");
    let size = std::fs::metadata(dir.path().join("fill"))
        .expect("file")
        .len();
    assert!(size <= 1 << 20, "{size} bytes on disk");
    // Under the quota, the same write succeeds (the attack code works).
    let r = run(
        "hostile",
        &rw(dir.path(), Limits::default()),
        attack("disk-fill", format!("/work/fill {}", 4 << 20)),
    )
    .await;
    assert!(r.outcome.is_ok(), "{:?}", r.outcome);
    assert_hello_still_served().await;
}

#[tokio::test]
async fn file_creation_stops_at_the_inode_quota() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = Limits {
        max_files_created: 50,
        ..Limits::default()
    };
    let r = run(
        "hostile",
        &rw(dir.path(), limits),
        attack("file-flood", "/work 200"),
    )
    .await;
    let msg = denied(&r);
    assert!(msg.starts_with("created 50:"), "{msg}");
    denial_with(&r, "limits.max_files_created");
    let n = std::fs::read_dir(dir.path()).expect("dir").count();
    assert_eq!(n, 50);
    assert_hello_still_served().await;
}

#[tokio::test]
async fn directory_trees_stop_at_the_depth_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = run(
        "hostile",
        &rw(dir.path(), Limits::default()),
        attack("deep-tree", "/work"),
    )
    .await;
    let max = Limits::default().max_dir_depth;
    let msg = denied(&r);
    assert!(msg.starts_with(&format!("created {max} levels")), "{msg}");
    denial_with(&r, "limits.max_dir_depth");
    let mut p = dir.path().to_path_buf();
    let mut depth = 0;
    while p.join("d").is_dir() {
        p.push("d");
        depth += 1;
    }
    assert_eq!(depth, max);
    assert_hello_still_served().await;
}

#[tokio::test]
async fn symlinks_cannot_be_left_in_a_writable_preopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = run(
        "hostile",
        &rw(dir.path(), Limits::default()),
        attack("symlink-out", "/work"),
    )
    .await;
    denied(&r);
    denial_with(&r, "symlink");
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("dir").count(),
        0,
        "nothing was created"
    );
    assert_hello_still_served().await;
}

#[tokio::test]
async fn random_bytes_are_capped_per_call() {
    let started = Instant::now();
    let r = run(
        "hostile",
        &Policy::default(),
        attack("random-huge", (64u64 << 20).to_string()),
    )
    .await;
    let took = started.elapsed();
    match &r.outcome {
        Outcome::Trap { message } => assert!(message.contains("exceeds limit"), "{message}"),
        other => panic!("{other:?}"),
    }
    eprintln!("random-huge (64 MiB) refused in {took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    let cap = kasbah_runtime::MAX_RANDOM_BYTES_PER_CALL;
    let r = run(
        "hostile",
        &Policy::default(),
        attack("random-huge", cap.to_string()),
    )
    .await;
    let Outcome::Ok { output } = &r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert_eq!(output.body, format!("{cap} {cap}").as_bytes());
    assert_hello_still_served().await;
}

/// Three runs making slow host calls at once (and a CPU loop) while the API
/// answers `GET /openapi.json` promptly: guests run on their own threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_guests_do_not_stall_the_api() {
    use kasbah_tests::platform::Platform;
    let p = Platform::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = Policy {
        files: vec![DirGrant {
            host: dir.path().to_path_buf(),
            guest: "/data".into(),
            mode: DirMode::Ro,
        }],
        limits: Limits {
            wall_time_ms: 6_000,
            ..Limits::default()
        },
        ..Policy::default()
    };
    let (_, dev) = p.tenant("slow", Some(policy)).await;
    let m = dev
        .publish(&guest_path("hostile"), "hostile", "1", |_, _| {})
        .await
        .expect("publish");
    let req = |name: &str, arg: &str| CreateRun {
        module: m.digest.to_string(),
        input: Some(arg.into()),
        metadata: BTreeMap::from([("attack".to_string(), name.to_string())]),
        wait: true,
        ..CreateRun::default()
    };
    let mut runs = Vec::new();
    for (name, arg) in [
        ("random-loop", "100000"),
        ("random-loop", "100000"),
        ("loop", ""),
    ] {
        let dev = dev.clone();
        let r = req(name, arg);
        runs.push(tokio::spawn(async move { dev.run(&r).await }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let http = reqwest::Client::new();
    let mut worst = Duration::ZERO;
    let mut samples = 0;
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let t = Instant::now();
        let resp = http
            .get(format!("{}/openapi.json", p.url))
            .send()
            .await
            .expect("openapi");
        assert!(resp.status().is_success());
        resp.bytes().await.expect("body");
        worst = worst.max(t.elapsed());
        samples += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("GET /openapi.json under 3 slow runs: worst {worst:?} over {samples} requests");
    assert!(worst < Duration::from_millis(500), "worst {worst:?}");
    for r in runs {
        let mut rec = r.await.expect("join").expect("run");
        // The sync wait (wall limit + 5 s) also covers compiling the module
        // and waiting for an execution slot: on a loaded 2-core CI box the
        // answer may come back `queued`/`running` and the run finishes
        // detached. The outcome is the point, not the sync wait.
        let give_up = Instant::now() + Duration::from_secs(120);
        while rec.outcome.is_none() && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(200)).await;
            rec = dev.get_run(&rec.id).await.expect("get run");
        }
        eprintln!(
            "run {}: created {} started {:?} finished {:?} (ms since epoch)",
            rec.id, rec.created_at, rec.started_at, rec.finished_at
        );
        let outcome = rec.outcome.expect("finished");
        assert!(
            matches!(outcome, Outcome::DeadlineExceeded { .. }),
            "{outcome:?}"
        );
    }
}
