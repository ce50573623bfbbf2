//! `kasbah run`: load a component, apply a policy, run it once, print the
//! output (stdout) and the outcome and usage (stderr), or the whole report as
//! JSON with `--json`.
//!
//! Like `kasbah serve`, a local run gets this machine's GPU when its policy
//! has a `[gpu]` section (one adapter entry per zone of the grant, each the
//! machine's default adapter, in a GPU process of its own), and keeps
//! compiled modules on disk between invocations (`--compile-cache`).
//!
//! Exit status: 0 when the pipeline returned a response, 1 for any other
//! outcome (guest error, trap, limit, denial), 2 when it could not run at all.

use anyhow::Context;
use clap::Args;
use kasbah_policy::Policy;
use kasbah_runtime::{DatasetMount, Request, RunOptions, Runtime, RuntimeConfig};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct RunArgs {
    /// The pipeline: a component file (`.wasm`, built for wasm32-wasip2) to
    /// run locally, or a published module to run on the server: its digest
    /// (`sha256:…`), `name@version`, or `name` (the version published last).
    /// An existing file, or a name ending in `.wasm` or holding a `/`, is local.
    pub module: String,
    /// Input file, or `-` for stdin.
    #[arg(short, long, default_value = "-")]
    pub input: String,
    /// Capability policy (TOML, or JSON if the name ends in `.json`).
    /// Without one, the deny-by-default policy with default limits applies.
    #[arg(short, long)]
    policy: Option<PathBuf>,
    /// Content type of the input.
    #[arg(long, default_value = "application/octet-stream")]
    pub content_type: String,
    /// Request metadata, `key=value` (repeatable).
    #[arg(short, long = "meta", value_parser = parse_kv)]
    pub meta: Vec<(String, String)>,
    /// Server runs: return at once with the run id instead of waiting.
    #[arg(long)]
    pub no_wait: bool,
    /// A dataset to mount read-only at `/datasets/<name>` (repeatable).
    /// Server runs: a dataset name or `sha256:` digest of the tenant's.
    /// Local runs: `name=path`, or a file path (named after the file).
    #[arg(short = 'd', long = "dataset")]
    pub datasets: Vec<String>,
    /// Server runs: residency label of the input, comma-separated zones
    /// (default: the tenant's zones).
    #[arg(long, value_delimiter = ',')]
    pub input_label: Option<Vec<String>>,
    /// Server runs: store the output as a new dataset of this name (it
    /// carries the run's output label).
    #[arg(long)]
    pub store_output_as: Option<String>,
    /// Local runs: keep compiled modules in this directory (its key in
    /// `<DIR>.key`) so the next run of the same module does not compile it
    /// again, or `off`. Default: `$XDG_CACHE_HOME/kasbah/compiled` (or
    /// `~/.cache/kasbah/compiled`), at most 256 MiB.
    #[arg(long, env = "KASBAH_COMPILE_CACHE", value_name = "DIR|off")]
    pub compile_cache: Option<String>,
    /// Local runs: a PEM file of CA certificates the pipeline's outgoing
    /// HTTPS also trusts, beyond the system roots (repeatable, or
    /// comma-separated in the environment variable). Destinations still
    /// come only from the policy's `[network] allow`.
    #[arg(
        long = "http-ca",
        env = "KASBAH_HTTP_CA",
        value_delimiter = ',',
        value_name = "PEM"
    )]
    pub http_ca: Vec<PathBuf>,
}

/// Bytes of compiled modules `kasbah run` keeps on disk.
const LOCAL_COMPILE_CACHE_BYTES: u64 = 256 << 20;

/// Where `kasbah run` keeps compiled modules, if anywhere.
fn compile_cache(arg: Option<&str>) -> Option<kasbah_runtime::ArtifactCacheConfig> {
    let dir = match arg {
        Some("off") => return None,
        Some(dir) => PathBuf::from(dir),
        None => std::env::var_os("XDG_CACHE_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?
            .join("kasbah")
            .join("compiled"),
    };
    let mut key_file = dir.clone().into_os_string();
    key_file.push(".key");
    Some(kasbah_runtime::ArtifactCacheConfig {
        dir,
        key_file: key_file.into(),
        max_bytes: LOCAL_COMPILE_CACHE_BYTES,
    })
}

impl RunArgs {
    pub fn is_remote(&self) -> bool {
        is_module_ref(&self.module)
    }

    /// The input bytes (`-` = stdin).
    pub fn read_input(&self) -> anyhow::Result<Vec<u8>> {
        if self.input == "-" {
            let mut b = Vec::new();
            std::io::stdin()
                .read_to_end(&mut b)
                .context("reading stdin")?;
            Ok(b)
        } else {
            std::fs::read(&self.input).with_context(|| format!("cannot read input {}", self.input))
        }
    }
}

/// Whether `kasbah run`'s argument names a published module rather than a
/// local file: a `sha256:` digest, or `name[@version]` (letters, digits,
/// `-_.+`) that is no existing path and does not end in `.wasm`.
pub fn is_module_ref(m: &str) -> bool {
    if m.starts_with("sha256:") {
        return true;
    }
    let name_like = |p: &str| kasbah_server::validate::valid_name(p).is_ok();
    let ok = match m.split_once('@') {
        Some((n, v)) => name_like(n) && name_like(v),
        None => name_like(m),
    };
    ok && !m.ends_with(".wasm") && !std::path::Path::new(m).exists()
}

/// `name=path`, or a path whose file name is the dataset name.
fn local_dataset(arg: &str) -> anyhow::Result<DatasetMount> {
    let (name, path) = match arg.split_once('=') {
        Some((n, p)) => (n.to_string(), PathBuf::from(p)),
        None => {
            let p = PathBuf::from(arg);
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .with_context(|| format!("--dataset {arg}: no file name"))?
                .to_string();
            (name, p)
        }
    };
    anyhow::ensure!(
        kasbah_policy::is_dataset_name(&name),
        "--dataset {arg}: {name:?} is not a dataset name ([a-z0-9][a-z0-9._-]{{0,63}}); use name=path"
    );
    Ok(DatasetMount::new(name, path))
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

/// The usage lines both local and server runs print (stderr).
pub fn print_usage(u: &kasbah_core::Usage) {
    eprintln!(
        "usage    wall {:.3} ms, fuel {}, peak memory {} KiB",
        u.wall_time.as_secs_f64() * 1e3,
        u.fuel_consumed.map_or("-".to_string(), |f| f.to_string()),
        u.peak_memory_bytes / 1024
    );
    if let Some(g) = &u.gpu {
        eprintln!(
            "gpu      {} in zone {}: {} dispatches, {} kernels, {} KiB allocated, gpu time {:.3} ms",
            g.adapter,
            g.zone,
            g.dispatches,
            g.kernels,
            g.bytes_allocated / 1024,
            g.gpu_time.as_secs_f64() * 1e3
        );
    }
    if let Some(h) = &u.http {
        eprintln!(
            "http     {} requests sent, {} refused, {} bytes sent, {} bytes received",
            h.requests, h.refused, h.bytes_sent, h.bytes_received
        );
    }
}

pub fn run(args: RunArgs, echo_logs: bool, json: bool) -> anyhow::Result<ExitCode> {
    let policy = match &args.policy {
        Some(p) => Policy::load(p)?,
        None => Policy::default(),
    };
    // Refused before anything is read or compiled.
    if !policy.secrets.is_empty() {
        anyhow::bail!(
            "the policy grants secrets ({}): secrets are stored by a server (`kasbah secret set`), \
             so a local run cannot have them; remove [secrets] or run on a server",
            policy
                .secrets
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if args.input_label.is_some() || args.store_output_as.is_some() {
        anyhow::bail!(
            "--input-label and --store-output-as apply to server runs (a published module: sha256:…, name or name@version)"
        );
    }
    let wasm = std::fs::read(&args.module)
        .with_context(|| format!("cannot read module {}", args.module))?;
    let body = args.read_input()?;

    // A policy with a `[gpu]` section gets this machine's first adapter in
    // each of the grant's zones (a local run is a developer's run: the
    // machine is the node).
    let gpu = kasbah_runtime::kasbah_gpu::GpuConfig {
        adapters: policy
            .gpu_grant()
            .map(|g| g.zones)
            .unwrap_or_default()
            .into_iter()
            .map(|zone| {
                kasbah_runtime::kasbah_gpu::AdapterConfig::new(format!("local-{zone}"), zone)
            })
            .collect(),
        max_idle_devices: 0,
    };
    let runtime = Runtime::new(RuntimeConfig {
        echo_guest_logs: echo_logs,
        max_concurrent_instances: 4,
        gpu,
        artifact_cache: compile_cache(args.compile_cache.as_deref()),
        http_extra_ca: args.http_ca.clone(),
        ..RuntimeConfig::default()
    })
    .map_err(|e| anyhow::anyhow!("cannot start the sandbox: {e:#}"))?;
    let load_started = std::time::Instant::now();
    let module = runtime.load(&wasm)?;
    let load_time = load_started.elapsed();
    let loaded_from = if runtime.compiled() > 0 {
        "compiled"
    } else {
        "from the compile cache"
    };

    let options = RunOptions {
        datasets: args
            .datasets
            .iter()
            .map(String::as_str)
            .map(local_dataset)
            .collect::<anyhow::Result<_>>()?,
        residency: None,
        tenant: None,
        secrets: Vec::new(),
    };
    let mut request = Request::new(body).with_content_type(args.content_type);
    request.metadata = args.meta;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    let input = json.then(|| request.body.clone());
    let started_at = kasbah_server::ids::now_ms();
    let report = rt.block_on(runtime.run_with(&module, &policy, request, &options))?;

    let mut out = std::io::stdout().lock();
    if let Some(input) = input {
        // The server's run record shape (see `kasbah_core::report`).
        let ok = report.outcome.is_ok();
        let record = kasbah_core::report::LocalRunRecord::new(
            report,
            &input,
            started_at,
            kasbah_server::ids::now_ms(),
        );
        serde_json::to_writer_pretty(&mut out, &record)?;
        writeln!(out)?;
        return Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    } else {
        if let kasbah_core::Outcome::Ok { output } = &report.outcome {
            out.write_all(&output.body)?;
            if output.content_type.starts_with("text/") && !output.body.ends_with(b"\n") {
                writeln!(out)?;
            }
        }
        let u = &report.usage;
        eprintln!("module   {}", report.module);
        eprintln!(
            "load     {:.3} ms, {loaded_from}",
            load_time.as_secs_f64() * 1e3
        );
        eprintln!("outcome  {}", report.outcome.summary());
        print_usage(u);
        for d in &report.denials {
            eprintln!("denied   {}: {}", d.capability, d.detail);
        }
        if !echo_logs {
            for l in &report.logs.records {
                eprintln!("log      {:?} {}", l.level, l.message);
            }
        }
        if report.logs.dropped > 0 {
            eprintln!(
                "log      ({} records dropped: log budget spent)",
                report.logs.dropped
            );
        }
        for (name, c) in [("stdout", &report.stdout), ("stderr", &report.stderr)] {
            if !c.bytes.is_empty() {
                eprintln!(
                    "{name}   {} bytes captured, {} dropped",
                    c.bytes.len(),
                    c.dropped_bytes
                );
                for line in c.text().lines().take(5) {
                    eprintln!("  | {line}");
                }
            }
        }
    }
    Ok(if report.outcome.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
