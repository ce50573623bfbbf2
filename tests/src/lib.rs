//! Shared helpers for kasbah's end-to-end tests.
//!
//! Guest components are built **once per test run**: the first test that asks
//! for a guest runs one `cargo build --target wasm32-wasip2 --profile guest`
//! for every guest crate; later calls (and later test binaries, through
//! cargo's own freshness check, ~0.3 s) reuse the artifacts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use kasbah_core::{Outcome, RunReport};
use kasbah_policy::Policy;
use kasbah_runtime::{Module, Request, Runtime, RuntimeConfig};

/// Every guest crate the tests use, by package name.
pub const GUESTS: &[&str] = &["hello", "hostile", "net-probe"];

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Build all guests (once per process) and return the directory holding
/// their `.wasm` components.
pub fn guest_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root()).args([
            "build",
            "--target",
            "wasm32-wasip2",
            "--profile",
            "guest",
        ]);
        for g in GUESTS {
            cmd.args(["-p", g]);
        }
        let status = cmd.status().expect("run cargo to build guest components");
        assert!(status.success(), "building guest components failed");
        target_dir().join("wasm32-wasip2").join("guest")
    })
}

/// Path of a guest component by package name (`net-probe` → `net_probe.wasm`).
pub fn guest_path(name: &str) -> PathBuf {
    guest_dir().join(format!("{}.wasm", name.replace('-', "_")))
}

/// Build one guest crate that is *not* in [`GUESTS`] (e.g. the load bench's
/// `http-hello` baseline, which the tests never need) and return the path of
/// its component. Cheap when it is already built (cargo's freshness check).
pub fn build_extra_guest(name: &str) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "--target",
            "wasm32-wasip2",
            "--profile",
            "guest",
            "-p",
            name,
        ])
        .status()?;
    anyhow::ensure!(status.success(), "building guest {name} failed");
    Ok(target_dir()
        .join("wasm32-wasip2")
        .join("guest")
        .join(format!("{}.wasm", name.replace('-', "_"))))
}

pub fn guest_bytes(name: &str) -> Vec<u8> {
    let p = guest_path(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// One runtime per test binary, as in production (one per process).
pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| Runtime::new(RuntimeConfig::default()).expect("create runtime"))
}

pub fn load(name: &str) -> Arc<Module> {
    runtime()
        .load(&guest_bytes(name))
        .unwrap_or_else(|e| panic!("load {name}: {e}"))
}

pub async fn run(name: &str, policy: &Policy, request: Request) -> RunReport {
    let module = load(name);
    runtime()
        .run(&module, policy, request)
        .await
        .expect("host could run the module")
}

/// The liveness check every containment test ends with: the same runtime
/// still serves the hello pipeline correctly.
pub async fn assert_hello_still_served() {
    let r = run("hello", &Policy::default(), Request::new("still here")).await;
    match &r.outcome {
        Outcome::Ok { output } => assert_eq!(output.body, b"STILL HERE"),
        other => panic!("hello pipeline failed after a hostile run: {other:?}"),
    }
}

/// Assert `needle` appears nowhere in the report (output, stdio, logs,
/// messages): the secret did not leave the host.
pub fn assert_not_leaked(report: &RunReport, needle: &str) {
    let json = serde_json::to_string(report).expect("serialize report");
    assert!(
        !json.contains(needle),
        "secret {needle:?} leaked into the run report: {json}"
    );
}
