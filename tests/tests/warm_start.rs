//! Compiled modules survive restarts (issue 15, item 4): a runtime with an
//! artifact cache loads a module another process compiled instead of
//! compiling it again, and never loads an artifact it cannot prove it wrote
//! for this module and this engine configuration (tampered, truncated, from
//! another configuration, filed under another module's name). The cache
//! stays within its byte bound, least recently used out first.

use std::path::{Path, PathBuf};

use kasbah_core::Outcome;
use kasbah_policy::Policy;
use kasbah_runtime::{ArtifactCacheConfig, ArtifactStats, Request, Runtime, RuntimeConfig};
use kasbah_tests::guest_bytes;

fn runtime_with(dir: &Path, max_bytes: u64, fuel: bool) -> Runtime {
    Runtime::new(RuntimeConfig {
        max_concurrent_instances: 2,
        fuel_metering: fuel,
        artifact_cache: Some(ArtifactCacheConfig::under(dir, max_bytes)),
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

/// A new process's runtime on `dir` (1 GiB bound, fuel metering on).
fn restart(dir: &Path) -> Runtime {
    runtime_with(dir, 1 << 30, true)
}

/// `hello` loads and answers correctly on `rt`.
async fn hello_works(rt: &Runtime) {
    let m = rt.load(&guest_bytes("hello")).expect("load hello");
    let r = rt
        .run(&m, &Policy::default(), Request::new("warm start"))
        .await
        .expect("run");
    match &r.outcome {
        Outcome::Ok { output } => assert_eq!(output.body, b"WARM START"),
        other => panic!("hello failed: {other:?}"),
    }
}

fn stats(hits: u64, misses: u64, rejected: u64, written: u64) -> ArtifactStats {
    ArtifactStats {
        hits,
        misses,
        rejected,
        written,
        evicted: 0,
    }
}

#[tokio::test]
async fn a_restarted_runtime_loads_compiled_modules_from_disk() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = restart(tmp.path());
    hello_works(&rt).await;
    assert_eq!(rt.compiled(), 1);
    assert_eq!(rt.artifact_stats(), stats(0, 1, 0, 1));
    let path = rt.artifact_path(&guest_bytes("hello")).expect("path");
    assert!(path.is_file(), "artifact written at {}", path.display());
    drop(rt);

    let rt = restart(tmp.path());
    hello_works(&rt).await;
    assert_eq!(rt.compiled(), 0, "loaded from disk, not compiled");
    assert_eq!(rt.artifact_stats(), stats(1, 0, 0, 0));
    // A second load in the same process is the in-memory cache's.
    hello_works(&rt).await;
    assert_eq!(rt.artifact_stats().hits, 1);
}

/// Every way an artifact can be damaged is caught before it is mapped
/// executable; the run still succeeds on a fresh compile, and the good
/// artifact written in its place is used by the next process.
#[tokio::test]
async fn a_damaged_artifact_is_detected_recompiled_and_replaced() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = restart(tmp.path());
    hello_works(&rt).await;
    let path = rt.artifact_path(&guest_bytes("hello")).expect("path");
    drop(rt);
    let good = std::fs::read(&path).expect("artifact");
    assert!(good.len() > 4096, "a real artifact: {} bytes", good.len());

    let damages: Vec<(&str, Vec<u8>)> = vec![
        ("a flipped byte in the code", {
            let mut b = good.clone();
            let i = b.len() / 2;
            b[i] ^= 0x01;
            b
        }),
        ("a flipped byte in the MAC", {
            let mut b = good.clone();
            b[20] ^= 0x80;
            b
        }),
        ("a flipped last byte", {
            let mut b = good.clone();
            if let Some(x) = b.last_mut() {
                *x ^= 0xff;
            }
            b
        }),
        ("truncated (torn write)", good[..good.len() / 3].to_vec()),
        ("empty (power loss before data)", Vec::new()),
        ("bare wasmtime artifact, no header", good[48..].to_vec()),
        ("the same bytes with one appended", {
            let mut b = good.clone();
            b.push(0);
            b
        }),
    ];
    for (what, bytes) in damages {
        std::fs::write(&path, &bytes).expect("damage");
        let rt = restart(tmp.path());
        hello_works(&rt).await;
        assert_eq!(rt.compiled(), 1, "{what}: compiled again");
        assert_eq!(rt.artifact_stats(), stats(0, 0, 1, 1), "{what}");
        assert_eq!(
            std::fs::read(&path).expect("rewritten"),
            good,
            "{what}: the artifact is written again"
        );
        drop(rt);
        let rt = restart(tmp.path());
        hello_works(&rt).await;
        assert_eq!(rt.compiled(), 0, "{what}: the rewritten artifact is used");
    }
}

/// Another engine configuration uses other files, and a file renamed into
/// its place (from another configuration, or another module's) fails the
/// MAC, which binds the engine and the module digest.
#[tokio::test]
async fn artifacts_of_another_configuration_or_module_are_not_used() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hello = guest_bytes("hello");
    let probe = guest_bytes("residency-probe");

    let fuel = restart(tmp.path());
    hello_works(&fuel).await;
    let fuel_path = fuel.artifact_path(&hello).expect("path");
    let probe_path = fuel.artifact_path(&probe).expect("path");
    drop(fuel);

    // Fuel metering off changes the compiled code: another file.
    let no_fuel = runtime_with(tmp.path(), 1 << 30, false);
    let no_fuel_path = no_fuel.artifact_path(&hello).expect("path");
    assert_ne!(no_fuel_path, fuel_path);
    hello_works(&no_fuel).await;
    assert_eq!(no_fuel.compiled(), 1, "not loaded from the fuel artifact");
    assert_eq!(no_fuel.artifact_stats(), stats(0, 1, 0, 1));
    drop(no_fuel);

    // The fuel-metered artifact renamed into the other configuration's file.
    std::fs::copy(&fuel_path, &no_fuel_path).expect("copy");
    let no_fuel = runtime_with(tmp.path(), 1 << 30, false);
    hello_works(&no_fuel).await;
    assert_eq!(no_fuel.compiled(), 1);
    assert_eq!(no_fuel.artifact_stats(), stats(0, 0, 1, 1));
    drop(no_fuel);

    // hello's artifact filed under residency-probe's digest: refused, and
    // residency-probe is what runs under its digest.
    std::fs::copy(&fuel_path, &probe_path).expect("copy");
    let rt = restart(tmp.path());
    let m = rt.load(&probe).expect("load probe");
    assert_eq!(rt.compiled(), 1);
    assert_eq!(rt.artifact_stats(), stats(0, 0, 1, 1));
    let reference = Runtime::new(RuntimeConfig {
        max_concurrent_instances: 1,
        ..RuntimeConfig::default()
    })
    .expect("runtime")
    .load(&probe)
    .expect("load");
    assert_eq!(m.imports(), reference.imports());
    assert_ne!(
        m.imports(),
        rt.load(&hello).expect("hello").imports(),
        "the two modules are told apart by their imports"
    );
}

fn artifact_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("compiled"))
        .expect("read_dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect();
    v.sort();
    v
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).expect("stat").len()
}

/// The bound holds; a hit makes an artifact recently used, so the one
/// evicted is the least recently *used*, not the oldest written; an
/// artifact larger than the whole bound is not kept.
#[test]
fn the_cache_stays_within_its_bound_least_recently_used_out_first() {
    let names = ["hello", "residency-probe", "net-probe"];
    let wasm: Vec<Vec<u8>> = names.iter().map(|n| guest_bytes(n)).collect();
    // Measure each artifact's size with an unbounded cache.
    let sizes: Vec<u64> = {
        let tmp = tempfile::tempdir().expect("tempdir");
        let rt = restart(tmp.path());
        wasm.iter()
            .map(|w| {
                rt.load(w).expect("load");
                size(&rt.artifact_path(w).expect("path"))
            })
            .collect()
    };
    let bound = sizes.iter().sum::<u64>() - 1;
    let tmp = tempfile::tempdir().expect("tempdir");
    let pause = || std::thread::sleep(std::time::Duration::from_millis(20));

    let rt = runtime_with(tmp.path(), bound, true);
    let paths: Vec<PathBuf> = wasm
        .iter()
        .map(|w| rt.artifact_path(w).expect("path"))
        .collect();
    rt.load(&wasm[0]).expect("hello");
    pause();
    rt.load(&wasm[1]).expect("probe");
    assert_eq!(artifact_files(tmp.path()).len(), 2);
    drop(rt);
    pause();
    // A restart uses hello (written first): now it is the most recent.
    let rt = runtime_with(tmp.path(), bound, true);
    rt.load(&wasm[0]).expect("hello");
    assert_eq!(rt.artifact_stats().hits, 1);
    pause();
    // The third does not fit with both: the least recently used goes.
    rt.load(&wasm[2]).expect("net-probe");
    assert_eq!(rt.artifact_stats().evicted, 1);
    assert!(paths[0].exists(), "hello was used last: kept");
    assert!(
        !paths[1].exists(),
        "residency-probe, least recently used: evicted"
    );
    assert!(paths[2].exists());
    let total: u64 = artifact_files(tmp.path()).iter().map(|p| size(p)).sum();
    assert!(total <= bound, "{total} > {bound}");
    drop(rt);

    // A bound smaller than one artifact: nothing is kept, runs compile.
    let tiny = tempfile::tempdir().expect("tempdir");
    let rt = runtime_with(tiny.path(), 1000, true);
    rt.load(&wasm[0]).expect("hello");
    assert_eq!(rt.compiled(), 1);
    assert_eq!(rt.artifact_stats().written, 0);
    assert!(artifact_files(tiny.path()).is_empty());
}

/// A file in the cache dir larger than the bound is not read at all.
#[tokio::test]
async fn an_oversize_file_is_refused_without_reading_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = runtime_with(tmp.path(), 1 << 20, true);
    let path = rt.artifact_path(&guest_bytes("hello")).expect("path");
    drop(rt);
    let f = std::fs::File::create(&path).expect("create");
    f.set_len(8 << 30).expect("sparse 8 GiB file");
    drop(f);
    let rt = runtime_with(tmp.path(), 1 << 20, true);
    hello_works(&rt).await;
    assert_eq!(rt.artifact_stats().rejected, 1);
    assert!(size(&path) < 1 << 20, "replaced by the real artifact");
}

/// The platform: the first run after a server restart loads the module
/// from `<data_dir>/compiled/` instead of compiling it.
#[tokio::test]
async fn the_first_run_after_a_server_restart_does_not_compile() {
    use kasbah_core::api::{CreateRun, CreateTenant};
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let config = || kasbah_tests::platform::config(&dir);
    let server = kasbah_server::start(config()).await.expect("start");
    let url = format!("http://{}", server.addr);
    let admin_token = server.admin_token.clone().expect("token");
    let admin = kasbah_client::Client::new(&url, &admin_token);
    let t = admin
        .create_tenant(&CreateTenant {
            name: "acme".into(),
            operator_id: None,
            policy: None,
        })
        .await
        .expect("tenant");
    let token = admin.tenant_token(&t.id).await.expect("token").token;
    let dev = kasbah_client::Client::new(&url, &token);
    let m = dev
        .publish(&kasbah_tests::guest_path("hello"), "hello", "1", |_, _| {})
        .await
        .expect("publish");
    let run = |dev: kasbah_client::Client, module: String| async move {
        let r = dev
            .run(&CreateRun {
                module,
                input: Some("after restart".into()),
                wait: true,
                ..CreateRun::default()
            })
            .await
            .expect("run");
        assert!(matches!(r.outcome, Some(Outcome::Ok { .. })), "{r:?}");
        let out = dev.run_output(&r.id).await.expect("output");
        assert_eq!(out, b"AFTER RESTART");
    };
    run(dev, m.digest.to_string()).await;
    assert_eq!(server.state.runtime.compiled(), 1, "compiled at publish");
    server.shutdown().await.expect("shutdown");

    let server = kasbah_server::start(config()).await.expect("restart");
    let url = format!("http://{}", server.addr);
    let dev = kasbah_client::Client::new(&url, &token);
    run(dev, m.digest.to_string()).await;
    assert_eq!(server.state.runtime.compiled(), 0, "loaded from disk");
    assert_eq!(server.state.runtime.artifact_stats().hits, 1);
    // And the admin sees it on /metrics.
    let metrics = reqwest::Client::new()
        .get(format!("{url}/metrics"))
        .bearer_auth(&admin_token)
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("text");
    for line in [
        "kasbah_modules_compiled_total 0",
        "kasbah_compiled_artifacts_total{event=\"hit\"} 1",
        "kasbah_compiled_artifacts_total{event=\"rejected\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}\n{metrics}");
    }
    server.shutdown().await.expect("shutdown");
}

/// Someone who can write the cache dir plants a FIFO (a blocking read would
/// hang the load) or a symlink (to another module's valid artifact, or to
/// anything else the kasbah user can read) under a module's name: neither is
/// opened as an artifact, the load does not block, the run is correct.
#[tokio::test]
async fn planted_fifos_and_symlinks_are_refused_without_blocking() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hello = guest_bytes("hello");
    let rt = restart(tmp.path());
    hello_works(&rt).await;
    let path = rt.artifact_path(&hello).expect("path");
    drop(rt);
    let elsewhere = tmp.path().join("hello.cwasm.saved");
    std::fs::rename(&path, &elsewhere).expect("move the good artifact away");

    // A symlink to hello's own, valid artifact: still refused (no symlinks).
    std::os::unix::fs::symlink(&elsewhere, &path).expect("symlink");
    let rt = restart(tmp.path());
    hello_works(&rt).await;
    assert_eq!(rt.artifact_stats(), stats(0, 0, 1, 1));
    assert_eq!(rt.compiled(), 1);
    assert!(elsewhere.is_file(), "the link is removed, not its target");
    drop(rt);

    std::fs::remove_file(&path).expect("remove");
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("cstr");
    // SAFETY: a NUL-terminated path; mkfifo only creates the node.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let started = std::time::Instant::now();
    let rt = restart(tmp.path());
    hello_works(&rt).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    assert_eq!(rt.artifact_stats(), stats(0, 0, 1, 1));
    assert!(std::fs::symlink_metadata(&path).expect("stat").is_file());
}

/// `Runtime::preload` loads a module only from a verified artifact, never
/// compiles, and leaves a damaged artifact refused and removed (the module
/// then compiles on its first run, as without a preload).
#[tokio::test]
async fn preload_uses_only_verified_artifacts_and_never_compiles() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hello = guest_bytes("hello");
    let digest = kasbah_core::Digest::of(&hello);

    // Nothing on disk: nothing loaded, nothing compiled.
    let rt = restart(tmp.path());
    assert!(!rt.preload(&hello).expect("preload"));
    assert_eq!(rt.compiled(), 0);
    assert!(rt.cached(&digest).is_none());
    assert!(rt.recent_artifacts(16, u64::MAX).is_empty());
    hello_works(&rt).await; // compiles and writes the artifact
    let path = rt.artifact_path(&hello).expect("path");
    drop(rt);

    // A verified artifact: loaded and linked before any run.
    let rt = restart(tmp.path());
    assert_eq!(rt.recent_artifacts(16, u64::MAX), vec![digest]);
    assert!(rt.preload(&hello).expect("preload"));
    assert!(rt.cached(&digest).is_some(), "in memory after the preload");
    assert_eq!(rt.artifact_stats(), stats(1, 0, 0, 0));
    hello_works(&rt).await;
    assert_eq!(rt.compiled(), 0);
    assert_eq!(
        rt.artifact_stats().hits,
        1,
        "the run used the preloaded module"
    );
    drop(rt);

    // A damaged one: refused, removed, not compiled by the preload.
    let mut bytes = std::fs::read(&path).expect("artifact");
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    std::fs::write(&path, &bytes).expect("damage");
    let rt = restart(tmp.path());
    assert!(!rt.preload(&hello).expect("preload"));
    assert_eq!(rt.artifact_stats(), stats(0, 0, 1, 0));
    assert_eq!(rt.compiled(), 0);
    assert!(rt.cached(&digest).is_none());
    assert!(!path.exists(), "the damaged artifact is removed");
    hello_works(&rt).await;
    assert_eq!(rt.compiled(), 1);
}

/// What a restart preloads: this engine's artifacts, most recently used
/// first, bounded in count and in bytes; other names, other engines'
/// files and symlinks are skipped.
#[test]
fn recent_artifacts_are_newest_first_and_bounded() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = restart(tmp.path());
    let (a, b) = (guest_bytes("hello"), guest_bytes("hostile"));
    rt.load(&a).expect("load a");
    rt.load(&b).expect("load b");
    let (pa, pb) = (
        rt.artifact_path(&a).expect("a"),
        rt.artifact_path(&b).expect("b"),
    );
    // `a` used an hour ago, `b` now.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&pa)
        .expect("open")
        .set_modified(old)
        .expect("mtime");
    let (da, db) = (kasbah_core::Digest::of(&a), kasbah_core::Digest::of(&b));
    let dir = pa.parent().expect("dir").to_path_buf();
    // Noise: another engine's file, a bad name, a symlink under a good name.
    let engine = pa
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('.').nth(1))
        .expect("engine part")
        .to_string();
    std::fs::write(
        dir.join(format!("{}.{}.cwasm", "ab".repeat(32), "cd".repeat(32))),
        b"x",
    )
    .expect("other engine");
    std::fs::write(dir.join(format!("zz.{engine}.cwasm")), b"x").expect("bad name");
    std::os::unix::fs::symlink(&pb, dir.join(format!("{}.{engine}.cwasm", "ef".repeat(32))))
        .expect("symlink");

    assert_eq!(rt.recent_artifacts(16, u64::MAX), vec![db, da]);
    assert_eq!(rt.recent_artifacts(1, u64::MAX), vec![db]);
    assert_eq!(rt.recent_artifacts(0, u64::MAX), vec![]);
    let (sa, sb) = (size(&pa), size(&pb));
    assert_eq!(rt.recent_artifacts(16, sa + sb), vec![db, da]);
    assert_eq!(rt.recent_artifacts(16, sa + sb - 1), vec![db]);
    assert_eq!(rt.recent_artifacts(16, sb - 1), vec![]);
}

/// The platform: a restarted server preloads its recently used modules in
/// the background (bounded by `preload_modules`), so they are in memory
/// before their first run; a damaged artifact met by the preload is
/// refused and removed, the server starts anyway, and that module's first
/// run compiles it and succeeds.
#[tokio::test]
async fn a_restarted_server_preloads_recent_modules_and_survives_a_damaged_one() {
    use kasbah_core::api::{CreateRun, CreateTenant};
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let config = |preload_modules: usize| kasbah_server::ServerConfig {
        preload_modules,
        ..kasbah_tests::platform::config(&dir)
    };
    let server = kasbah_server::start(config(16)).await.expect("start");
    assert!(
        server.preload.is_none(),
        "nothing to preload on a new data dir"
    );
    let url = format!("http://{}", server.addr);
    let admin_token = server.admin_token.clone().expect("token");
    let admin = kasbah_client::Client::new(&url, &admin_token);
    let t = admin
        .create_tenant(&CreateTenant {
            name: "acme".into(),
            operator_id: None,
            // GPU granted: the second module is gpu-matmul.
            policy: Some(kasbah_tests::minilm_policy("local")),
        })
        .await
        .expect("tenant");
    let created = admin.tenant_token(&t.id).await.expect("token");
    let token = created.token;
    let dev = kasbah_client::Client::new(&url, &token);
    let mut digests = Vec::new();
    for name in ["gpu-matmul", "hello"] {
        let m = dev
            .publish(&kasbah_tests::guest_path(name), name, "1", |_, _| {})
            .await
            .expect("publish");
        digests.push(m.digest);
    }
    let (matmul, hello) = (digests[0], digests[1]);
    let matmul_artifact = server
        .state
        .runtime
        .artifact_path(&guest_bytes("gpu-matmul"))
        .expect("path");
    server.shutdown().await.expect("shutdown");
    // matmul used an hour ago, hello just now.
    std::fs::File::options()
        .write(true)
        .open(&matmul_artifact)
        .expect("open")
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .expect("mtime");

    // Bounded: one module, the most recently used.
    let mut server = kasbah_server::start(config(1)).await.expect("restart");
    let warmed = server
        .preload
        .take()
        .expect("preload")
        .join()
        .expect("join");
    assert_eq!(warmed.modules, 1);
    // hello has no start function: its instance was warmed (once per
    // guest thread, at least one). Nothing has run yet: no recent runs,
    // so no policy or module record to warm, and no token used.
    assert!(warmed.instances >= 1, "{warmed:?}");
    assert_eq!((warmed.policies, warmed.records), (0, 0), "{warmed:?}");
    let rt = &server.state.runtime;
    assert!(rt.cached(&hello).is_some() && rt.cached(&matmul).is_none());
    assert_eq!(rt.compiled(), 0);
    server.shutdown().await.expect("shutdown");

    // Off.
    let server = kasbah_server::start(config(0)).await.expect("restart");
    assert!(server.preload.is_none());
    assert!(server.state.runtime.cached(&hello).is_none());
    server.shutdown().await.expect("shutdown");

    // A damaged artifact: refused and removed; the server starts and serves.
    let mut bytes = std::fs::read(&matmul_artifact).expect("artifact");
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    std::fs::write(&matmul_artifact, &bytes).expect("damage");
    let mut server = kasbah_server::start(config(16)).await.expect("restart");
    let warmed = server
        .preload
        .take()
        .expect("preload")
        .join()
        .expect("join");
    assert_eq!(warmed.modules, 1, "hello only");
    let rt = server.state.runtime.clone();
    assert_eq!(rt.artifact_stats().rejected, 1);
    assert_eq!(rt.compiled(), 0, "a preload never compiles");
    assert!(rt.cached(&matmul).is_none() && !matmul_artifact.exists());
    let url = format!("http://{}", server.addr);
    let dev = kasbah_client::Client::new(&url, &token);
    let r = dev
        .run(&CreateRun {
            module: hello.to_string(),
            input: Some("preloaded".into()),
            wait: true,
            ..CreateRun::default()
        })
        .await
        .expect("run");
    assert!(matches!(r.outcome, Some(Outcome::Ok { .. })), "{r:?}");
    assert_eq!(dev.run_output(&r.id).await.expect("output"), b"PRELOADED");
    assert_eq!(rt.compiled(), 0, "hello ran from the preload");
    // gpu-matmul's first run compiles it, and it runs correctly.
    let r = dev
        .run(&CreateRun {
            module: matmul.to_string(),
            input: Some("8".into()),
            wait: true,
            ..CreateRun::default()
        })
        .await
        .expect("run");
    assert!(matches!(r.outcome, Some(Outcome::Ok { .. })), "{r:?}");
    assert_eq!(rt.compiled(), 1);
    assert!(matmul_artifact.is_file(), "rewritten");
    server.shutdown().await.expect("shutdown");

    // After runs: the warm-up also reads the tenant's policy, the module
    // records of what it ran and its used token into the caches ...
    let mut server = kasbah_server::start(config(16)).await.expect("restart");
    let warmed = server
        .preload
        .take()
        .expect("preload")
        .join()
        .expect("join");
    assert_eq!(warmed.modules, 2, "{warmed:?}");
    assert_eq!((warmed.policies, warmed.records), (1, 2), "{warmed:?}");
    assert!(warmed.tokens >= 1 && warmed.instances >= 1, "{warmed:?}");
    // ... which change nothing a request sees: the warm token works, and
    // a revocation still holds from the next request.
    let url = format!("http://{}", server.addr);
    let dev = kasbah_client::Client::new(&url, &token);
    dev.whoami().await.expect("warm token");
    let admin = kasbah_client::Client::new(&url, &admin_token);
    admin.revoke_token(&created.id).await.expect("revoke");
    let e = dev.whoami().await.expect_err("revoked");
    assert!(e.to_string().contains("token_revoked"), "{e}");
    server.shutdown().await.expect("shutdown");
}
