//! `kasbah serve`: config file, then environment and flags on top.

use anyhow::Context;
use clap::Args;
use kasbah_server::ServerConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct ServeArgs {
    /// Config file (TOML; unknown keys are an error).
    #[arg(long, env = "KASBAH_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address (default 127.0.0.1:7878).
    #[arg(long, env = "KASBAH_LISTEN")]
    listen: Option<SocketAddr>,
    /// Data directory: database, blobs, keys (default ./kasbah-data).
    #[arg(long, env = "KASBAH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Runs executing at once.
    #[arg(long, env = "KASBAH_WORKERS")]
    workers: Option<usize>,
    /// Admitted runs waiting for a worker before 429.
    #[arg(long, env = "KASBAH_QUEUE_DEPTH")]
    queue_depth: Option<usize>,
    /// Audit log origin (checkpoint first line, key name), e.g.
    /// `kasbah.example.org/log`; fixed once the log key exists.
    #[arg(long, env = "KASBAH_AUDIT_ORIGIN")]
    audit_origin: Option<String>,
    /// NATS server URL: be the fleet's control plane, runs execute on zone
    /// workers (`kasbah worker`); without it, runs execute in this process.
    #[arg(long, env = "KASBAH_NATS")]
    nats: Option<String>,
}

pub fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = match &args.config {
        Some(p) => ServerConfig::load(p)?,
        None => ServerConfig::default(),
    };
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if let Some(w) = args.workers {
        config.workers = w;
    }
    if let Some(q) = args.queue_depth {
        config.queue_depth = q;
    }
    if let Some(o) = args.audit_origin {
        config.audit_origin = o;
    }
    if let Some(n) = args.nats {
        config.nats = Some(n);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    rt.block_on(async move {
        let data_dir = config.data_dir.clone();
        let server = kasbah_server::start(config).await?;
        // A server must not die because whoever started it stopped reading
        // its stdout: write the banner without panicking on a closed pipe.
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        if let Some(token) = &server.admin_token {
            // Printed once, on the first start of this data dir; only its
            // hash is stored.
            let _ = writeln!(out, "admin token: {token}");
        }
        if server.interrupted_runs > 0 {
            tracing::warn!(
                "{} runs were in flight when the previous process stopped; marked interrupted",
                server.interrupted_runs
            );
        }
        let _ = writeln!(out, "data dir {}", data_dir.display());
        let _ = writeln!(out, "audit log key {}", server.state.audit.verifier());
        // Last: scripts wait for this line.
        let _ = writeln!(out, "listening on http://{}", server.addr);
        let _ = out.flush();
        drop(out);
        // SIGTERM or SIGINT: stop accepting, let in-flight requests and
        // runs finish within `shutdown_grace_ms`, flush the writer, exit 0.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        server
            .serve_until(async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            })
            .await
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct WorkerArgs {
    /// Worker config file (TOML: id, zones, capacity, work_dir, [gpu], [zones]).
    #[arg(long, env = "KASBAH_WORKER_CONFIG")]
    config: PathBuf,
    /// NATS server URL (overrides the config's `nats`).
    #[arg(long, env = "KASBAH_NATS")]
    nats: Option<String>,
}

/// `kasbah worker`: a zone worker of the fleet, until SIGTERM/SIGINT (then
/// it stops pulling and finishes its runs).
pub fn worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let mut config = kasbah_fleet::worker::WorkerConfig::load(&args.config)?;
    if let Some(n) = args.nats {
        config.nats = n;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    rt.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        kasbah_fleet::worker::run(config, async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await
    })?;
    Ok(ExitCode::SUCCESS)
}
