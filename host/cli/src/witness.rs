//! `kasbah witness …`: run a C2SP tlog-witness (`serve`) and make its key
//! (`key generate`). No platform server is involved: a sovereign client
//! runs its own witness and lists it in the platform's `audit_witnesses`.

use anyhow::Context;
use clap::Subcommand;
use kasbah_audit::{CosignerKey, LogVerifier};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Subcommand)]
pub enum WitnessCmd {
    /// Serve `POST /add-checkpoint` (C2SP tlog-witness) for the logs given.
    ///
    /// Keeps the last size it cosigned per log in the state file, refuses
    /// rollbacks (409 with its size) and forks or bad proofs (422), unknown
    /// logs (404) and bad signatures (403), and answers an Ed25519
    /// cosignature (tlog-cosignature/v1) otherwise.
    Serve {
        /// The witness's private key file (`kasbah witness key generate`).
        #[arg(long)]
        key: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7879")]
        listen: SocketAddr,
        /// A log to witness: `ORIGIN=VKEY` (the log's checkpoint origin and
        /// its verifier key), or just the vkey when its name is the origin
        /// (kasbah logs). Repeat for several logs or keys.
        #[arg(long = "log", required = true)]
        logs: Vec<String>,
        /// State file: the last checkpoint cosigned per log (default: next
        /// to the key, `<key>.state.json`).
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Witness keys.
    #[command(subcommand)]
    Key(KeyCmd),
}

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Create a witness key (Ed25519, cosignature type 0x04) in a new file
    /// (mode 0600) and print its verifier key, the string logs and clients
    /// pin.
    Generate {
        /// The witness's name, e.g. `witness.example.org/w1`.
        #[arg(long)]
        name: String,
        /// The private key file to create (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
}

/// Parse `ORIGIN=VKEY` or `VKEY`.
fn parse_log(arg: &str) -> anyhow::Result<(String, LogVerifier)> {
    let (origin, vkey) = match arg.split_once('=') {
        // A vkey's base64 may end in '=': only split where the left side
        // is not itself a key.
        Some((o, v)) if !o.contains('+') => (Some(o.to_string()), v),
        _ => (None, arg),
    };
    let key: LogVerifier = crate::audit::load_key(vkey)?;
    let origin = origin.unwrap_or_else(|| key.name().to_string());
    Ok((origin, key))
}

pub fn witness(c: WitnessCmd) -> anyhow::Result<ExitCode> {
    match c {
        WitnessCmd::Key(KeyCmd::Generate { name, out }) => {
            let key = CosignerKey::generate(&name).map_err(|e| anyhow::anyhow!("{e}"))?;
            key.save(&out)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("writing {}", out.display()))?;
            crate::outln!("{}", key.verifier());
            Ok(ExitCode::SUCCESS)
        }
        WitnessCmd::Serve {
            key,
            listen,
            logs,
            state,
        } => serve(key, listen, logs, state),
    }
}

fn serve(
    key_path: PathBuf,
    listen: SocketAddr,
    logs: Vec<String>,
    state: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let key = CosignerKey::load(&key_path)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("reading the witness key {}", key_path.display()))?;
    let logs = logs
        .iter()
        .map(|l| parse_log(l))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let state_path = state.unwrap_or_else(|| {
        let mut p = key_path.clone().into_os_string();
        p.push(".state.json");
        PathBuf::from(p)
    });
    let state = kasbah_server::witness::storage::StateFile::open(&state_path)?;
    let svc = Arc::new(kasbah_server::witness::service::WitnessService::new(
        key, logs, state,
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr()?;
        let fd_limit = kasbah_server::http::raise_fd_limit();
        let limits =
            kasbah_server::http::ConnLimits::new(&kasbah_server::ServerConfig::default(), fd_limit);
        let vkey = svc.verifier();
        let app = kasbah_server::routes::witness_router(svc);
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "witness key {vkey}");
        let _ = writeln!(out, "state {}", state_path.display());
        // Last: scripts wait for this line.
        let _ = writeln!(out, "listening on http://{addr}");
        let _ = out.flush();
        drop(out);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        kasbah_server::http::serve(listener, app, limits, async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            std::time::Duration::from_secs(5)
        })
        .await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
