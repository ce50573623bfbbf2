//! Builds the console's in-browser verifier (`host/audit-wasm`) for
//! `wasm32-unknown-unknown` and leaves it at `$OUT_DIR/verifier.wasm`, which
//! `console/assets.rs` embeds with `include_bytes!`. A nested cargo with its
//! own target dir (`<target>/console-wasm`, shared by every profile) so the
//! outer build's lock is never contended. `scripts/setup.sh` installs the
//! target; without it the build fails here, with the command to run.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let root = manifest.join("../..");
    for p in [
        "host/audit/src",
        "host/audit/Cargo.toml",
        "host/audit-wasm",
        "host/core/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    // OUT_DIR = <target>/<profile>/build/<pkg>/out (or one level deeper with --target).
    let target_dir = out
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "build"))
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(|p| p.join("console-wasm"))
        .unwrap_or_else(|| out.join("console-wasm"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "-p",
            "kasbah-audit-wasm",
            "--lib",
            "--target",
            "wasm32-unknown-unknown",
            "--profile",
            "guest",
            "--locked",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET")
        .env("RUSTFLAGS", "--cfg getrandom_backend=\"unsupported\"")
        .status()
        .expect("run cargo for the console verifier");
    assert!(
        status.success(),
        "building the console verifier for wasm32-unknown-unknown failed \
         (is the target installed? `rustup target add wasm32-unknown-unknown`, or `make setup`)"
    );
    let wasm = target_dir.join("wasm32-unknown-unknown/guest/kasbah_audit_wasm.wasm");
    std::fs::copy(&wasm, out.join("verifier.wasm")).expect("copy verifier.wasm");
}
