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
use kasbah_runtime::kasbah_gpu::{AdapterConfig, GpuConfig};
use kasbah_runtime::{Module, Request, Runtime, RuntimeConfig};

/// Every guest crate the tests use, by package name.
pub const GUESTS: &[&str] = &[
    "hello",
    "hostile",
    "net-probe",
    "http-probe",
    "gpu-matmul",
    "gpu-hostile",
    "minilm-embed",
    "residency-probe",
];

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

/// The GPU guest reported GPU error `kind` (`failed("<kind>: ...")`);
/// returns the message.
pub fn gpu_error<'a>(r: &'a RunReport, kind: &str) -> &'a str {
    match &r.outcome {
        Outcome::GuestError {
            code: kasbah_core::GuestErrorKind::Failed,
            message,
        } if message.starts_with(&format!("{kind}: ")) => message,
        other => panic!("expected GPU error {kind}, got {other:?}"),
    }
}

/// CPU time (user + system, in clock ticks of 10 ms) used so far by this
/// process and by each of its live child processes (GPU processes), and
/// the pids of children whose command line contains `gpu-worker`.
pub fn cpu_ticks_of_process_tree() -> (u64, Vec<u32>) {
    fn ticks(stat: &str) -> Option<(u32, u64)> {
        // pid (comm) state ppid ... utime(14) stime(15): split after ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ppid = f.get(1)?.parse().ok()?;
        let utime: u64 = f.get(11)?.parse().ok()?;
        let stime: u64 = f.get(12)?.parse().ok()?;
        Some((ppid, utime + stime))
    }
    let me = std::process::id();
    let mut total = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| ticks(&s))
        .map(|(_, t)| t)
        .unwrap_or(0);
    let mut gpu = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Some((ppid, t)) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| ticks(&s))
        else {
            continue;
        };
        if ppid != me {
            continue;
        }
        total += t;
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("gpu-worker") {
            gpu.push(pid);
        }
    }
    (total, gpu)
}

/// Zones of the test host's GPU adapter entries. All are the same physical
/// adapter (the first Vulkan one: lavapipe on CI), exposed as several
/// labelled entries, as a host config may do.
pub const GPU_ZONES: &[(&str, &str)] = &[
    ("lavapipe-a", "zone-a"),
    ("lavapipe-b", "zone-b"),
    // Used by one test each, so their device counters are predictable.
    ("lavapipe-reuse", "zone-reuse"),
    ("lavapipe-hang", "zone-hang"),
];

/// `KASBAH_TEST_GPU_NAME`: a substring of the adapter name the tests and
/// benches use (`scripts/gpu-bench.sh` sets it to pick a real GPU over
/// lavapipe); the first Vulkan adapter when unset.
pub fn test_gpu_name() -> Option<String> {
    std::env::var("KASBAH_TEST_GPU_NAME")
        .ok()
        .filter(|n| !n.is_empty())
}

/// The test host's GPU configuration (see [`GPU_ZONES`]).
pub fn gpu_config() -> GpuConfig {
    GpuConfig {
        adapters: GPU_ZONES
            .iter()
            .map(|(label, zone)| {
                let entry = AdapterConfig::new(*label, *zone).backend("vulkan");
                match test_gpu_name() {
                    Some(name) => entry.name(name),
                    None => entry,
                }
            })
            .collect(),
        max_idle_devices: 2,
    }
}

/// One runtime per test binary, as in production (one per process), with
/// the GPU adapter entries of [`gpu_config`].
pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        Runtime::new(RuntimeConfig {
            gpu: gpu_config(),
            ..RuntimeConfig::default()
        })
        .expect("create runtime")
    })
}

/// Load a guest into the shared runtime. Each guest is compiled once per
/// test binary: `Runtime::load` makes concurrent first loads of the same
/// bytes wait for one compile (a debug-build compile of a guest takes
/// seconds on two cores, and tests with tight deadlines measure from before
/// the load).
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

/// The all-MiniLM-L6-v2 model directory (`model.safetensors`, `vocab.txt`,
/// configs), fetched and verified by `scripts/fetch-minilm.sh` (pinned
/// sha256; nothing is downloaded when it is already in the cache, which
/// `make setup` fills).
pub fn minilm_model_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new(workspace_root().join("scripts/fetch-minilm.sh"))
            .output()
            .expect("run scripts/fetch-minilm.sh");
        assert!(
            out.status.success(),
            "scripts/fetch-minilm.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

/// The all-MiniLM-L6-v2 weights dataset as the runtime mounts it: the
/// files `model.safetensors` and `vocab.txt` of [`minilm_model_dir`],
/// which the guest reads as `/datasets/model.safetensors` and
/// `/datasets/vocab.txt`. On the platform, the same two files uploaded as
/// datasets of those names.
pub fn minilm_datasets() -> Vec<kasbah_runtime::DatasetMount> {
    let dir = minilm_model_dir();
    MINILM_DATASET_FILES
        .iter()
        .map(|f| kasbah_runtime::DatasetMount::new(*f, dir.join(f)))
        .collect()
}

/// The policy a tenant running `minilm-embed` needs: datasets (the weights
/// at `/datasets`, read-only), a GPU in `zone` with room for 90 MB of
/// weights plus the activations of a 32 × 256-token batch (≈ 130 MB) and for
/// many batches' dispatches, and time for a CPU rasteriser.
pub fn minilm_policy(zone: &str) -> Policy {
    use kasbah_policy::{GpuGrant, Limits, MIB};
    Policy {
        datasets: true,
        limits: Limits {
            memory_bytes: 256 * MIB,
            wall_time_ms: 300_000,
            max_output_bytes: 4 * MIB,
            ..Limits::default()
        },
        gpu: Some(GpuGrant {
            max_total_bytes: 512 * MIB,
            // ~800 dispatches per 1,000 tokens (one per 32-row block of
            // each of 24 linears): the default 10,000 covers ~12,000 tokens.
            max_dispatches: 1_000_000,
            ..GpuGrant::in_zones([zone])
        }),
        ..Policy::default()
    }
}

/// Run `minilm-embed` in the shared runtime with the weights dataset
/// mounted (or, `with_weights = false`, nothing at `/datasets`).
pub async fn run_minilm(policy: &Policy, request: Request, with_weights: bool) -> RunReport {
    let options = kasbah_runtime::RunOptions {
        datasets: if with_weights {
            minilm_datasets()
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    runtime()
        .run_with(&load("minilm-embed"), policy, request, &options)
        .await
        .expect("host could run the module")
}

/// The files of the all-MiniLM-L6-v2 weights dataset.
pub const MINILM_DATASET_FILES: [&str; 2] = ["model.safetensors", "vocab.txt"];

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

/// A real kasbah server on loopback, in this process, on a temp data dir.
pub mod webdriver;

pub mod platform {
    use kasbah_client::Client;
    use kasbah_core::api::{CreateTenant, Tenant};
    use kasbah_policy::Policy;
    use kasbah_server::{Server, ServerConfig};
    use std::path::Path;

    pub struct Platform {
        pub server: Server,
        pub url: String,
        pub admin: Client,
        pub dir: tempfile::TempDir,
    }

    pub fn config(dir: &Path) -> ServerConfig {
        ServerConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            data_dir: dir.to_path_buf(),
            ..ServerConfig::default()
        }
    }

    impl Platform {
        pub async fn start() -> Self {
            Self::start_with(|_| {}).await
        }

        pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut cfg = config(dir.path());
            tweak(&mut cfg);
            let server = kasbah_server::start(cfg).await.expect("server starts");
            let url = format!("http://{}", server.addr);
            let token = server
                .admin_token
                .clone()
                .expect("first start prints an admin token");
            Platform {
                admin: Client::new(&url, &token),
                server,
                url,
                dir,
            }
        }

        pub fn client(&self, token: &str) -> Client {
            Client::new(&self.url, token)
        }

        /// A tenant (created by the admin) and a developer client for it.
        pub async fn tenant(&self, name: &str, policy: Option<Policy>) -> (Tenant, Client) {
            let t = self
                .admin
                .create_tenant(&CreateTenant {
                    name: name.into(),
                    operator_id: None,
                    policy,
                })
                .await
                .expect("create tenant");
            let tok = self.admin.tenant_token(&t.id).await.expect("token");
            (t, self.client(&tok.token))
        }
    }

    /// The `(status, code)` of an API error, for assertions.
    pub fn api_err<T: std::fmt::Debug>(r: kasbah_client::Result<T>) -> (u16, String) {
        match r {
            Err(kasbah_client::Error::Api { status, code, .. }) => (status, code),
            other => panic!("expected an API error, got {other:?}"),
        }
    }
}

/// What a starting `kasbah serve` printed on stdout up to `listening on …`.
pub struct ServeBanner {
    /// The address it listens on; `None` if stdout closed first.
    pub url: Option<String>,
    /// The admin token, when it printed one (first start, or none live).
    pub admin_token: Option<String>,
    /// Every line it printed, for error messages.
    pub printed: String,
}

/// Read a starting `kasbah serve`'s stdout until it prints its address (or
/// closes), then keep draining it on a thread so the server never blocks on
/// a full pipe or writes into a closed one.
pub fn read_serve_banner(stdout: std::process::ChildStdout) -> ServeBanner {
    use std::io::{BufRead, BufReader};
    let mut lines = BufReader::new(stdout).lines();
    let mut banner = ServeBanner {
        url: None,
        admin_token: None,
        printed: String::new(),
    };
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        banner.printed.push_str(&line);
        banner.printed.push('\n');
        if let Some(t) = line.strip_prefix("admin token: ") {
            banner.admin_token = Some(t.to_string());
        }
        if let Some(u) = line.strip_prefix("listening on ") {
            banner.url = Some(u.to_string());
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    banner
}

/// The sentence-transformers reference for all-MiniLM-L6-v2
/// (`tests/fixtures/minilm/reference.json`, regenerated with
/// `scripts/minilm-reference.py`) and the check of a `minilm-embed` output
/// against it, shared by `minilm.rs` and `fleet_gpu.rs`.
pub mod minilm_reference {
    use super::workspace_root;
    use serde_json::{Value, json};

    pub fn fixture() -> Value {
        let path = workspace_root().join("tests/fixtures/minilm/reference.json");
        let text = std::fs::read_to_string(&path).expect("read the reference fixture");
        serde_json::from_str(&text).expect("fixture is JSON")
    }

    pub fn floats(v: &Value) -> Vec<f64> {
        v.as_array()
            .expect("array of numbers")
            .iter()
            .map(|x| x.as_f64().expect("number"))
            .collect()
    }

    pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
        dot / (na * nb)
    }

    /// The whole fixture as one request (object form, ids returned).
    pub fn fixture_input() -> String {
        let fx = fixture();
        let texts: Vec<&str> = fx["sentences"]
            .as_array()
            .expect("sentences")
            .iter()
            .map(|s| s["text"].as_str().expect("text"))
            .collect();
        json!({ "sentences": texts, "return_ids": true }).to_string()
    }

    /// Token ids identical and cosine ≥ 0.9999 for every fixture sentence;
    /// returns the smallest cosine.
    pub fn check_against_reference(out: &Value) -> f64 {
        let fx = fixture();
        let sentences = fx["sentences"].as_array().expect("sentences");
        let texts: Vec<&str> = sentences
            .iter()
            .map(|s| s["text"].as_str().expect("text"))
            .collect();
        assert_eq!(out["dim"], 384);
        let embeddings = out["embeddings"].as_array().expect("embeddings");
        let ids = out["ids"].as_array().expect("ids");
        assert_eq!(embeddings.len(), sentences.len());
        let mut min_cos = f64::INFINITY;
        let mut problems = Vec::new();
        for (i, s) in sentences.iter().enumerate() {
            let text = &texts[i];
            if ids[i] != s["ids"] {
                problems.push(format!(
                    "{text:?}: token ids\n  got  {}\n  want {}",
                    ids[i], s["ids"]
                ));
            }
            let got = floats(&embeddings[i]);
            let want = floats(&s["embedding"]);
            assert_eq!(got.len(), 384);
            let norm: f64 = got.iter().map(|x| x * x).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "{text:?}: norm {norm}");
            let c = cosine(&got, &want);
            min_cos = min_cos.min(c);
            if c.is_nan() || c < 0.9999 {
                problems.push(format!("{text:?}: cosine {c}"));
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        min_cos
    }
}
