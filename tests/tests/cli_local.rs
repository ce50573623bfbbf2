//! `kasbah run` on a local component, as a process (issue 15): a policy with
//! a `[gpu]` section gets this machine's GPU (lavapipe here) the way `kasbah
//! serve` gives it, `--json` shows the GPU usage, no `[gpu]` means denied;
//! compiled modules are kept on disk between invocations (`--compile-cache`)
//! and a damaged artifact is recompiled, never a failed run.

use std::path::Path;
use std::process::{Command, Output};

use kasbah_tests::guest_path;

const BIN: &str = env!("CARGO_BIN_EXE_kasbah-under-test");

/// `kasbah run …` in `dir` with its compile cache under `dir` and no
/// client settings from the environment.
fn kasbah_run(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .env_remove("KASBAH_URL")
        .env_remove("KASBAH_TOKEN")
        .env("KASBAH_COMPILE_CACHE", dir.join("compiled"))
        .env("XDG_RUNTIME_DIR", dir)
        .arg("run")
        .args(args)
        .output()
        .expect("spawn kasbah")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn kasbah_run_uses_this_machines_gpu_under_a_gpu_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("gpu.toml"), "[gpu]\nzones = [\"local\"]\n").expect("policy");
    std::fs::write(d.join("size.txt"), "48").expect("input");
    let wasm = guest_path("gpu-matmul");
    let wasm = wasm.to_str().expect("utf-8 path");

    let o = kasbah_run(d, &[wasm, "--policy", "gpu.toml", "-i", "size.txt"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).expect("matmul JSON");
    assert_eq!(out["zone"], "local", "{out}");
    assert_eq!(out["checked"], 48 * 48, "every element checked: {out}");
    let err = out["max_abs_err"].as_f64().expect("max_abs_err");
    assert!(err < 1e-3, "the GPU product matches the CPU's: {out}");
    let stderr = text(&o.stderr);
    assert!(
        stderr.contains("gpu      local-local in zone local: 1 dispatches"),
        "{stderr}"
    );

    // `--json`: the whole report, GPU usage included.
    let o = Command::new(BIN)
        .current_dir(d)
        .env("KASBAH_COMPILE_CACHE", d.join("compiled"))
        .env("XDG_RUNTIME_DIR", d)
        .args([
            "--json", "run", wasm, "--policy", "gpu.toml", "-i", "size.txt",
        ])
        .output()
        .expect("spawn");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("report JSON");
    assert_eq!(report["outcome"]["kind"], "ok", "{report}");
    let gpu = &report["usage"]["gpu"];
    assert_eq!(gpu["zone"], "local", "{report}");
    assert_eq!(gpu["adapter"], "local-local");
    assert_eq!(gpu["dispatches"], 1);
    assert_eq!(gpu["kernels"], 1);
    // A, B and C: 3 × 48 × 48 f32.
    assert!(
        gpu["bytes_allocated"].as_u64() >= Some(3 * 48 * 48 * 4),
        "{gpu}"
    );
    assert!(gpu["gpu_time_us"].as_u64() > Some(0), "{gpu}");
    assert_eq!(gpu["gpu_time"], gpu["gpu_time_us"], "the old name, kept");

    // No `[gpu]` section: every GPU call is denied, the run is not ok.
    let o = kasbah_run(d, &[wasm, "-i", "size.txt"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let stderr = text(&o.stderr);
    assert!(stderr.contains("denied"), "{stderr}");
    assert!(o.stdout.is_empty());
}

#[test]
fn kasbah_run_keeps_compiled_modules_between_invocations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("in.txt"), "cached").expect("input");
    let wasm = guest_path("hello");
    let wasm = wasm.to_str().expect("utf-8 path");
    let hello = |extra: &[&str]| {
        let mut args = vec![wasm, "-i", "in.txt"];
        args.extend_from_slice(extra);
        let o = kasbah_run(d, &args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        assert_eq!(text(&o.stdout).trim_end(), "CACHED");
        text(&o.stderr)
    };

    assert!(hello(&[]).contains(", compiled"), "first run compiles");
    assert!(hello(&[]).contains(", from the compile cache"));
    let artifacts: Vec<_> = std::fs::read_dir(d.join("compiled"))
        .expect("cache dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    assert!(
        d.join("compiled.key").is_file(),
        "key next to the cache dir"
    );

    // Damaged on disk: refused, compiled again, the run still correct.
    let mut bytes = std::fs::read(&artifacts[0]).expect("read");
    let i = bytes.len() / 2;
    bytes[i] ^= 0x10;
    std::fs::write(&artifacts[0], &bytes).expect("damage");
    let stderr = hello(&[]);
    assert!(stderr.contains(", compiled"), "{stderr}");
    assert!(hello(&[]).contains(", from the compile cache"), "rewritten");

    // `off`: no cache at all.
    let other = tempfile::tempdir().expect("tempdir");
    std::fs::write(other.path().join("in.txt"), "cached").expect("input");
    let o = Command::new(BIN)
        .current_dir(other.path())
        .env("XDG_CACHE_HOME", other.path().join("xdg"))
        .env("XDG_RUNTIME_DIR", other.path())
        .args(["run", wasm, "-i", "in.txt", "--compile-cache", "off"])
        .output()
        .expect("spawn");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains(", compiled"));
    assert!(!other.path().join("xdg").exists(), "nothing written");
    // The default: `$XDG_CACHE_HOME/kasbah/compiled`.
    let o = Command::new(BIN)
        .current_dir(other.path())
        .env_remove("KASBAH_COMPILE_CACHE")
        .env("XDG_CACHE_HOME", other.path().join("xdg"))
        .env("XDG_RUNTIME_DIR", other.path())
        .args(["run", wasm, "-i", "in.txt"])
        .output()
        .expect("spawn");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(other.path().join("xdg/kasbah/compiled.key").is_file());
    assert!(other.path().join("xdg/kasbah/compiled").is_dir());
}

/// The README's local MiniLM command: `--dataset name=path` mounts the
/// weights, the policy in `tests/fixtures/minilm/policy.toml` grants the
/// datasets and the GPU, and the output is a 384-dimensional unit vector.
#[test]
fn kasbah_run_embeds_a_sentence_with_local_weights() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let model = kasbah_tests::minilm_model_dir();
    std::fs::write(
        d.join("s.json"),
        r#"{"sentences": ["A man is eating food."]}"#,
    )
    .expect("input");
    let policy = kasbah_tests::workspace_root().join("tests/fixtures/minilm/policy.toml");
    let wasm = guest_path("minilm-embed");
    let weights = format!(
        "model.safetensors={}",
        model.join("model.safetensors").display()
    );
    let vocab = format!("vocab.txt={}", model.join("vocab.txt").display());
    let o = kasbah_run(
        d,
        &[
            wasm.to_str().expect("utf-8"),
            "--policy",
            policy.to_str().expect("utf-8"),
            "--content-type",
            "application/json",
            "-i",
            "s.json",
            "-d",
            &weights,
            "-d",
            &vocab,
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(out["dim"], 384, "{out}");
    let v: Vec<f64> = out["embeddings"][0]
        .as_array()
        .expect("one embedding")
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect();
    assert_eq!(v.len(), 384);
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-3, "L2-normalised: {norm}");
    assert!(text(&o.stderr).contains("gpu      local-local in zone local"));
}

/// `kasbah gpu adapters` lists what the platform's GPU processes see (the
/// probe `kasbah serve` runs at start): lavapipe here, as a Vulkan CPU
/// device with compute; `--json` carries the same adapters.
#[test]
fn kasbah_gpu_adapters_lists_what_the_gpu_processes_see() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = Command::new(BIN)
        .env("XDG_RUNTIME_DIR", dir.path())
        .args(["gpu", "adapters", "--backend", "vulkan"])
        .output()
        .expect("spawn kasbah");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let listed = text(&o.stdout);
    let rows: Vec<Vec<&str>> = listed.lines().map(|l| l.split('\t').collect()).collect();
    assert!(!rows.is_empty(), "{listed}");
    assert!(
        rows.iter().all(|r| r.len() == 5 && r[2] == "vulkan"),
        "{listed}"
    );
    assert!(
        rows.iter()
            .any(|r| r[0].contains("llvmpipe") && r[1] == "cpu" && r[4] == "compute"),
        "lavapipe is listed as a Vulkan CPU adapter with compute: {listed}"
    );

    let o = Command::new(BIN)
        .env("XDG_RUNTIME_DIR", dir.path())
        .args(["gpu", "adapters", "--backend", "vulkan", "--json"])
        .output()
        .expect("spawn kasbah");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let names: Vec<&str> = json
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(names, rows.iter().map(|r| r[0]).collect::<Vec<_>>());

    // A backend no driver provides here: nothing listed, exit 1.
    let o = Command::new(BIN)
        .env("XDG_RUNTIME_DIR", dir.path())
        .args(["gpu", "adapters", "--backend", "dx12"])
        .output()
        .expect("spawn kasbah");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stdout).is_empty());
}
