//! The first run after a server restart vs a warm run (issue 15, item 4):
//! `hello` and `minilm-embed` (batch 1) through a real `kasbah serve`
//! process (this package's `kasbah-under-test` binary, same build).
//!
//!     cargo bench -p kasbah-tests --bench warm_start [-- ROUNDS [HELLO_WARM [MINILM_WARM]]]
//!
//! Once: a data dir with a tenant, both modules published and the MiniLM
//! weights uploaded as datasets. Then ROUNDS times, for each module, two
//! fresh server processes on that data dir:
//! - **cold**: `<data_dir>/compiled/` and the GPU ledger
//!   (`<data_dir>/gpu-warm.json`) removed first, so the first run compiles
//!   the module (publishing compiled it in an earlier process) and uploads
//!   its weights and compiles its kernels;
//! - **disk**: the artifact and the ledger the previous process wrote are
//!   there, so the first run loads the module (HMAC check + deserialize)
//!   instead of compiling it, and finds the weights resident and kernels
//!   cached (restored at start, in the background; the run waits for the
//!   restore if it is still under way);
//! - **ready**: as disk, but the first request waits until `GET /readyz`
//!   answers 200 (the start-up warm-up done: recent modules loaded, GPU warm
//!   state restored), as a load balancer would; printed: the time from the
//!   process start to ready;
//! - **disk+other**: as disk, after one run of another module (`gpu-matmul`
//!   on an 8×8 product): the first run then no longer pays for what is first
//!   in the process (connection, token and policy lookups, the first SQLite
//!   writes, the first GPU process), only for what is first about this
//!   module;
//!
//! and in each process, after its first run, WARM more runs (median = warm),
//! then up to 5 more each from a new client, i.e. on a new connection as
//! every `kasbah run` invocation makes (median = warm on a new connection:
//! the first run after a restart necessarily comes on a new connection).
//! Times are the client's, `POST /v1/runs` with `wait = true` on loopback:
//! everything a caller waits for. Printed: medians over rounds, ratios
//! first-run/warm and cold/disk, and the MiniLM guest's own timings
//! (weights read + upload, kernel compiles) for the first and a warm run,
//! which say what a warm run is made of.
//!
//! `KASBAH_BENCH_ONLY=hello` (or `minilm-embed`) measures one module;
//! `KASBAH_BENCH_SERVER_LOG=kasbah::phases=debug` makes the servers print
//! each run's phase times (admission, execution, sandbox) on stderr.
//!
//! Before that, the runtime alone (no server, no HTTP): `Runtime::load` of
//! each module compiling vs loading from the disk cache in a fresh runtime.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use kasbah_client::Client;
use kasbah_core::Outcome;
use kasbah_core::api::{CreateRun, CreateTenant};
use kasbah_runtime::{ArtifactCacheConfig, Runtime, RuntimeConfig};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_kasbah-under-test");

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(s: f64) -> String {
    format!("{:9.2} ms", s * 1e3)
}

struct Serve {
    child: Child,
    url: String,
    admin_token: Option<String>,
}

impl Serve {
    fn start(config: &Path, data: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(data)
            // `KASBAH_BENCH_SERVER_LOG=kasbah::phases=debug` shows each
            // run's phase times (the server's stderr is the bench's).
            .env(
                "RUST_LOG",
                std::env::var("KASBAH_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let banner = kasbah_tests::read_serve_banner(
            child
                .stdout
                .take()
                .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
        );
        let url = banner
            .url
            .ok_or_else(|| anyhow::anyhow!("serve did not start: {}", banner.printed))?;
        Ok(Serve {
            child,
            url,
            admin_token: banner.admin_token,
        })
    }

    /// SIGTERM, then wait: a clean shutdown, as an operator restarts it.
    fn stop(mut self) -> anyhow::Result<()> {
        let pid = libc::pid_t::try_from(self.child.id())?;
        // SAFETY: signalling our own child process by its pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        self.child.wait()?;
        Ok(())
    }
}

struct Setup {
    token: String,
    hello: String,
    other: String,
    minilm: String,
    datasets: Vec<String>,
}

fn minilm_input() -> anyhow::Result<String> {
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(
        kasbah_tests::workspace_root().join("tests/fixtures/minilm/bench-sentences.json"),
    )?)?;
    Ok(json!({ "sentences": [fixture["sentences"][0].clone()] }).to_string())
}

/// One run, waited for: the client's wall time, the server's run wall
/// time (`usage.wall_time`: the run itself, not the module load), the output.
async fn run_once(
    client: &Client,
    module: &str,
    input: &str,
    datasets: &[String],
) -> anyhow::Result<(f64, f64, Vec<u8>)> {
    let started = Instant::now();
    let r = client
        .run(&CreateRun {
            module: module.into(),
            input: Some(input.into()),
            content_type: Some("application/json".into()),
            wait: true,
            datasets: datasets.to_vec(),
            ..CreateRun::default()
        })
        .await?;
    let wall = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        matches!(r.outcome, Some(Outcome::Ok { .. })),
        "run failed: {:?} {:?}",
        r.outcome,
        r.logs
    );
    let server = r
        .usage
        .as_ref()
        .map_or(f64::NAN, |u| u.wall_time.as_secs_f64());
    let out = client.run_output(&r.id).await?;
    Ok((wall, server, out))
}

/// The guest's own timings of a MiniLM run (ms): weights, kernel compiles.
fn minilm_fixed(out: &[u8]) -> (f64, f64) {
    let v: Value = serde_json::from_slice(out).unwrap_or_default();
    let t = &v["timings"];
    let f = |k: &str| t[k].as_f64().unwrap_or(f64::NAN);
    (f("load_vocab") + f("load_weights"), f("compile_kernels"))
}

/// Poll `GET /readyz` until the start-up warm-up is done.
async fn wait_ready(url: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    for _ in 0..6000 {
        if http
            .get(format!("{url}/readyz"))
            .send()
            .await?
            .status()
            .is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    anyhow::bail!("{url} never became ready")
}

fn runtime_loads(names: &[&str]) -> anyhow::Result<()> {
    println!("Runtime::load alone (fresh runtime each time; no server):");
    for name in names {
        let wasm = kasbah_tests::guest_bytes(name);
        let dir = tempfile::tempdir()?;
        let fresh = || {
            Runtime::new(RuntimeConfig {
                max_concurrent_instances: 2,
                artifact_cache: Some(ArtifactCacheConfig::under(dir.path(), 1 << 30)),
                ..RuntimeConfig::default()
            })
            .map_err(|e| anyhow::anyhow!("runtime: {e:#}"))
        };
        let (mut compile, mut disk) = (Vec::new(), Vec::new());
        let mut artifact = 0;
        for _ in 0..3 {
            std::fs::remove_dir_all(dir.path().join("compiled")).ok();
            let rt = fresh()?;
            let t = Instant::now();
            rt.load(&wasm)?;
            compile.push(t.elapsed().as_secs_f64());
            anyhow::ensure!(rt.compiled() == 1);
            if let Some(p) = rt.artifact_path(&wasm) {
                artifact = std::fs::metadata(p)?.len();
            }
            drop(rt);
            let rt = fresh()?;
            let t = Instant::now();
            rt.load(&wasm)?;
            disk.push(t.elapsed().as_secs_f64());
            anyhow::ensure!(rt.compiled() == 0 && rt.artifact_stats().hits == 1);
        }
        let (c, d) = (median(compile), median(disk));
        println!(
            "  {name:13} {} KiB wasm, {} KiB artifact: compile {}  from disk {}  compile/disk {:6.1}×",
            wasm.len() / 1024,
            artifact / 1024,
            ms(c),
            ms(d),
            c / d
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3).max(1);
    let hello_warm: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(20)
        .max(1);
    let minilm_warm: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3).max(1);

    runtime_loads(&["hello", "minilm-embed"])?;

    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let config = tmp.path().join("kasbah.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nsync_wait_ms = 300000\n")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    // Setup, in a first process.
    let serve = Serve::start(&config, &data)?;
    let admin_token = serve
        .admin_token
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no admin token"))?;
    let setup = rt.block_on(async {
        let admin = Client::new(&serve.url, &admin_token);
        let t = admin
            .create_tenant(&CreateTenant {
                name: "bench".into(),
                operator_id: None,
                policy: Some(kasbah_tests::minilm_policy("local")),
            })
            .await?;
        let token = admin.tenant_token(&t.id).await?.token;
        let dev = Client::new(&serve.url, &token);
        let publish = |name: &'static str| {
            let dev = dev.clone();
            async move {
                dev.publish(&kasbah_tests::guest_path(name), name, "1", |_, _| {})
                    .await
                    .map(|m| m.digest.to_string())
            }
        };
        let hello = publish("hello").await?;
        let minilm = publish("minilm-embed").await?;
        let other = publish("gpu-matmul").await?;
        let mut datasets = Vec::new();
        for m in kasbah_tests::minilm_datasets() {
            datasets.push(
                dev.create_dataset(&m.path, &m.name, None, |_, _| {})
                    .await?
                    .name,
            );
        }
        anyhow::Ok(Setup {
            token,
            hello,
            other,
            minilm,
            datasets,
        })
    })?;
    serve.stop()?;

    let minilm_in = minilm_input()?;
    let cases: [(&str, &str, &str, &[String], usize); 2] = [
        ("hello", &setup.hello, "\"warm start\"", &[], hello_warm),
        (
            "minilm-embed",
            &setup.minilm,
            &minilm_in,
            &setup.datasets,
            minilm_warm,
        ),
    ];
    println!(
        "\nkasbah serve, first run after a restart vs warm: {rounds} rounds; warm = median of \
         {hello_warm} (hello) / {minilm_warm} (minilm-embed) runs after the first; client wall \
         (server-side run wall, i.e. usage.wall_time, which excludes the module load)"
    );
    // cold: no artifacts, no GPU ledger; disk: with them, the first request
    // at once; ready: with them, once `GET /readyz` says the start-up
    // warm-up is done; disk+other: with them, at once, after a run of
    // another module.
    const MODES: [&str; 4] = ["cold", "disk", "ready", "disk+other"];
    // `KASBAH_BENCH_ONLY=hello` measures one module.
    let only = std::env::var("KASBAH_BENCH_ONLY").ok();
    for (name, module, input, datasets, warm_n) in cases {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let mut first: [Vec<(f64, f64)>; 4] = Default::default();
        let mut ready_after = Vec::new();
        let mut warm = Vec::new();
        // Warm runs each from a new client (a new connection), as every
        // `kasbah run` invocation makes: the first run after a restart
        // always comes on a new connection too.
        let mut warm_fresh = Vec::new();
        let mut fixed: Vec<(&str, (f64, f64))> = Vec::new();
        for round in 0..rounds {
            for (m, mode) in MODES.iter().enumerate() {
                if *mode == "cold" {
                    std::fs::remove_dir_all(data.join("compiled")).ok();
                    std::fs::remove_file(data.join("gpu-warm.json")).ok();
                }
                let started = Instant::now();
                let serve = Serve::start(&config, &data)?;
                let client = Client::new(&serve.url, &setup.token);
                rt.block_on(async {
                    if *mode == "ready" {
                        wait_ready(&serve.url).await?;
                        ready_after.push(started.elapsed().as_secs_f64());
                    }
                    if *mode == "disk+other" {
                        run_once(&client, &setup.other, "8", &[]).await?;
                    }
                    let (t, server, out) = run_once(&client, module, input, datasets).await?;
                    first[m].push((t, server));
                    if round == 0 && name == "minilm-embed" && *mode != "disk+other" {
                        fixed.push((mode, minilm_fixed(&out)));
                    }
                    for i in 0..warm_n {
                        let (t, server, out) = run_once(&client, module, input, datasets).await?;
                        warm.push((t, server));
                        if i == 0 && round == 0 && *mode == "disk" && name == "minilm-embed" {
                            fixed.push(("warm", minilm_fixed(&out)));
                        }
                    }
                    for _ in 0..warm_n.min(5) {
                        let fresh = Client::new(&serve.url, &setup.token);
                        let (t, server, _) = run_once(&fresh, module, input, datasets).await?;
                        warm_fresh.push((t, server));
                    }
                    anyhow::Ok(())
                })?;
                serve.stop()?;
            }
        }
        let med = |v: &[(f64, f64)]| {
            (
                median(v.iter().map(|x| x.0).collect()),
                median(v.iter().map(|x| x.1).collect()),
            )
        };
        let w = med(&warm);
        println!(
            "  {name:13} warm                  {} ({})",
            ms(w.0),
            ms(w.1)
        );
        let wf = med(&warm_fresh);
        println!(
            "  {name:13} warm, new connection  {} ({})",
            ms(wf.0),
            ms(wf.1)
        );
        for (m, mode) in MODES.iter().enumerate() {
            let f = med(&first[m]);
            println!(
                "  {name:13} first run, {mode:10} {} ({})   first/warm {:6.2}× ({:5.2}×), /warm on a new connection {:6.2}×   per round {:?} ms",
                ms(f.0),
                ms(f.1),
                f.0 / w.0,
                f.1 / w.1,
                f.0 / wf.0,
                first[m]
                    .iter()
                    .map(|x| (x.0 * 1e5).round() / 100.0)
                    .collect::<Vec<_>>(),
            );
        }
        let (c, d) = (med(&first[0]).0, med(&first[1]).0);
        println!("  {name:13} cold/disk {:6.2}×", c / d);
        println!(
            "  {name:13} process start to /readyz 200 (median): {}",
            ms(median(ready_after))
        );
        for (what, (weights, kernels)) in fixed {
            println!(
                "  {name:13} {what:4} run, in the guest: weights read + upload {weights:8.1} ms, kernel compiles {kernels:7.1} ms"
            );
        }
    }
    Ok(())
}
