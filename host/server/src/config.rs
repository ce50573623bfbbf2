//! Server configuration: TOML file (unknown keys rejected), overridden by
//! flags and environment (see `kasbah serve --help`).

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on (loopback by default).
    pub listen: SocketAddr,
    /// Where the database, blobs and keys live.
    pub data_dir: PathBuf,
    /// Runs executing at once.
    pub workers: usize,
    /// Threads of the tokio runtime guests execute on, separate from the
    /// API's (a slow synchronous host call then stalls other runs, never
    /// an HTTP request). 0: one per CPU.
    pub guest_threads: usize,
    /// Admitted runs that may wait for a worker; beyond this, 429.
    pub queue_depth: usize,
    /// How long a synchronous `POST /v1/runs` waits before answering 202.
    pub sync_wait_ms: u64,
    /// Largest JSON request body (run inputs are also bounded by policy).
    pub max_request_bytes: usize,
    /// Largest module upload, whatever a policy says.
    pub max_module_bytes: u64,
    /// Bytes of compiled modules kept on disk (`<data_dir>/compiled/`,
    /// HMAC-checked with the key `<data_dir>/compiled.key`), so the first
    /// run of a module after a restart loads it instead of compiling it.
    /// The least recently used go first. 0: no disk cache.
    pub compiled_cache_bytes: u64,
    /// At start, in the background, load (verify + deserialize + link, no
    /// compile, no instance) up to this many of the most recently used
    /// compiled modules from `<data_dir>/compiled/`, so their first run
    /// after a restart does not pay for it. 0: none.
    pub preload_modules: usize,
    /// ... and at most this many bytes of their artifact files together.
    pub preload_bytes: u64,
    /// Keep GPU-resident dataset ranges across restarts: the ledger of what
    /// each tenant had resident per adapter entry is kept in
    /// `<data_dir>/gpu-warm.json` and re-uploaded in the background at
    /// start, each range checked again against the tenant's current policy,
    /// its datasets and the budgets. In-process execution only.
    pub restore_gpu_state: bool,
    /// `fsync` every commit (SQLite `synchronous = FULL`): survives power
    /// loss, not only process crashes. Writes are group-committed, so this
    /// costs one fsync per batch, not per request. On by default: a signed
    /// checkpoint must never cover entries a power loss could take back.
    pub fsync_every_commit: bool,
    /// GPU adapter entries (label, zone, backend/name match). The default
    /// exposes whatever adapter the machine has (lavapipe on CI) as `gpu0`
    /// in zone `local`; with no adapter, GPU calls answer `unavailable`.
    pub gpu: kasbah_runtime::kasbah_gpu::GpuConfig,
    /// Residency zones: the zones this node serves (`node`, in order of
    /// preference for placement), and the zone of each network destination
    /// (`[[zones.network]]`) and storage location (`[[zones.storage]]`).
    /// See `kasbah_runtime::residency`.
    pub zones: kasbah_runtime::ZonesConfig,
    /// PEM files of CA certificates that pipelines' outgoing HTTPS also
    /// trusts, beyond the system roots (a private CA). Fleet workers take
    /// the same field in their own configuration.
    pub http_extra_ca: Vec<PathBuf>,
    /// Largest dataset upload.
    pub max_dataset_bytes: u64,
    /// The audit log's origin: the first line of its checkpoints and the
    /// name of its key. Fixed when the key is created on first start.
    pub audit_origin: String,
    /// Most entries one `GET /v1/audit/entries` examines.
    pub audit_page: u64,
    /// Serve `GET /checkpoint` and the hash tiles `GET /tile/<L>/<N>` (C2SP
    /// tlog-tiles) without a token: they reveal sizes and hashes only, what
    /// witnesses see anyway. `false`: any valid token.
    pub audit_tiles_public: bool,
    /// Serve the entry bundles `GET /tile/entries/<N>` without a token. They
    /// hold every tenant's entries (names, digests, run ids, reasons), so by
    /// default only admins read them.
    pub audit_entry_bundles_public: bool,
    /// Witnesses (C2SP tlog-witness) each new checkpoint is submitted to,
    /// with a consistency proof; their cosignatures are added to the
    /// checkpoints served.
    pub audit_witnesses: Vec<WitnessConfig>,
    /// Cosignatures a checkpoint needs before it replaces the one served
    /// (default: every configured witness). Until then the previous
    /// cosigned checkpoint stays served, so clients demanding cosignatures
    /// see a slightly older tree rather than an uncosigned one.
    pub witness_quorum: Option<usize>,
    /// How often the log looks for a new checkpoint to submit.
    pub witness_interval_ms: u64,
    /// Time limit of one submission (connect, send, answer).
    pub witness_timeout_ms: u64,
    /// Lifetime of a token created without `ttl_seconds` (and of the
    /// bootstrap admin token), in seconds.
    pub token_ttl_seconds: u64,
    /// Longest lifetime a token may be given, in seconds.
    pub token_max_ttl_seconds: u64,
    /// A request's head (request line and headers) must arrive within this
    /// long of the server starting to wait for it (see `http.rs`): this also
    /// bounds how long an idle keep-alive connection stays open.
    pub header_read_timeout_ms: u64,
    /// A request body that sends nothing for this long is cut off (408).
    pub body_timeout_ms: u64,
    /// A keep-alive connection with no request in flight and no traffic
    /// for this long is closed.
    pub keep_alive_timeout_ms: u64,
    /// Most open client connections; lowered at start to stay below the
    /// process's open-file limit (which is raised to its hard limit).
    pub max_connections: usize,
    /// On SIGTERM/SIGINT: how long in-flight requests and runs may take to
    /// finish before the server exits anyway.
    pub shutdown_grace_ms: u64,
    /// On the fleet: how long past its wall-time limit a run's result is
    /// awaited before the run is recorded `interrupted` (a job can be
    /// delivered several times, each after the workers' ack wait).
    pub fleet_result_grace_ms: u64,
    /// NATS server URL: runs execute on the fleet's zone workers (`kasbah
    /// worker`) instead of in this process; placement considers only zones
    /// with a live worker. Unset (the default): everything runs here.
    pub nats: Option<String>,
    /// The control plane's NATS user and password (`kasbah fleet
    /// nats-config` writes them to `control-plane.toml`); none by default.
    pub nats_user: Option<String>,
    pub nats_password: Option<String>,
    /// A NATS `.creds` file (JWT + nkey seed) instead of user/password.
    pub nats_creds: Option<PathBuf>,
    /// Prefix of the control plane's reply subjects; its NATS user must be
    /// allowed to subscribe to `<prefix>.>`.
    pub nats_inbox_prefix: String,
}

/// A witness the log submits its checkpoints to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// Its submission prefix: `POST <url>/add-checkpoint`.
    pub url: String,
    /// Its cosigner verifier key (`name+keyid+base64(0x04 ‖ key)`).
    pub key: String,
}

impl WitnessConfig {
    pub fn verifier(&self) -> anyhow::Result<kasbah_audit::CosignerVerifier> {
        self.key
            .parse()
            .map_err(|e| anyhow::anyhow!("witness key {:?}: {e}", self.key))
    }
}

/// The largest `token_max_ttl_seconds` accepted (100 years): keeps
/// `now + ttl` far from overflowing milliseconds in an i64.
pub const MAX_TOKEN_TTL_SECONDS: u64 = 100 * 366 * 86_400;

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7878)),
            data_dir: PathBuf::from("kasbah-data"),
            workers: 8,
            guest_threads: 0,
            queue_depth: 64,
            sync_wait_ms: 30_000,
            max_request_bytes: 64 << 20,
            max_module_bytes: 256 << 20,
            compiled_cache_bytes: 1 << 30,
            preload_modules: 16,
            preload_bytes: 256 << 20,
            restore_gpu_state: true,
            gpu: kasbah_runtime::kasbah_gpu::GpuConfig {
                adapters: vec![kasbah_runtime::kasbah_gpu::AdapterConfig::new(
                    "gpu0", "local",
                )],
                ..Default::default()
            },
            zones: kasbah_runtime::ZonesConfig::default(),
            http_extra_ca: Vec::new(),
            max_dataset_bytes: 4 << 30,
            fsync_every_commit: true,
            audit_origin: "kasbah.local/log".into(),
            audit_page: 1000,
            audit_tiles_public: true,
            audit_entry_bundles_public: false,
            audit_witnesses: Vec::new(),
            witness_quorum: None,
            witness_interval_ms: 1000,
            witness_timeout_ms: 5000,
            token_ttl_seconds: 90 * 86_400,
            token_max_ttl_seconds: 366 * 86_400,
            header_read_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            keep_alive_timeout_ms: 5_000,
            max_connections: 4096,
            shutdown_grace_ms: 30_000,
            fleet_result_grace_ms: 120_000,
            nats: None,
            nats_user: None,
            nats_password: None,
            nats_creds: None,
            nats_inbox_prefix: kasbah_fleet::connect::DEFAULT_INBOX_PREFIX.into(),
        }
    }
}

impl ServerConfig {
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        let config: Self = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("config {}: {}", path.display(), e.message()))?;
        config
            .check()
            .map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
        Ok(config)
    }

    /// Zones of the GPU adapter entries, in configuration order.
    fn gpu_zones(&self) -> impl Iterator<Item = &str> {
        self.gpu.adapters.iter().map(|a| a.zone.as_str())
    }

    /// The zones this node serves, in order of preference (see
    /// [`kasbah_runtime::ZonesConfig::node_zones`]).
    pub fn node_zones(&self) -> Vec<String> {
        self.zones.node_zones(self.gpu_zones())
    }

    /// Every problem with the residency configuration, as one error.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=self.token_max_ttl_seconds).contains(&self.token_ttl_seconds),
            "token_ttl_seconds must be between 1 and token_max_ttl_seconds ({})",
            self.token_max_ttl_seconds
        );
        anyhow::ensure!(
            self.token_max_ttl_seconds <= MAX_TOKEN_TTL_SECONDS,
            "token_max_ttl_seconds must be at most {MAX_TOKEN_TTL_SECONDS} (100 years)"
        );
        for w in &self.audit_witnesses {
            w.verifier()?;
            // Cosignatures are verified against the pinned key, so the
            // transport needs no integrity of its own; this build has no TLS.
            anyhow::ensure!(
                w.url.starts_with("http://"),
                "witness url {:?} must start with http:// (no TLS in this build)",
                w.url
            );
        }
        anyhow::ensure!(
            self.witness_quorum
                .is_none_or(|q| (1..=self.audit_witnesses.len()).contains(&q)),
            "witness_quorum must be between 1 and the number of audit_witnesses"
        );
        anyhow::ensure!(
            self.witness_interval_ms >= 10 && self.witness_timeout_ms >= 10,
            "witness_interval_ms and witness_timeout_ms must be at least 10"
        );
        let mut problems = self.zones.problems(self.gpu_zones());
        problems.extend(self.nats_auth().problems());
        anyhow::ensure!(problems.is_empty(), "{}", problems.join("; "));
        Ok(())
    }

    /// The control plane's NATS credentials (`nats_user`, `nats_password`,
    /// `nats_creds`, `nats_inbox_prefix`).
    pub fn nats_auth(&self) -> kasbah_fleet::NatsAuth {
        kasbah_fleet::NatsAuth {
            user: self.nats_user.clone(),
            password: self.nats_password.clone(),
            creds: self.nats_creds.clone(),
            inbox_prefix: self.nats_inbox_prefix.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_parse_and_are_checked() {
        let c: ServerConfig = toml::from_str(
            r#"
            [zones]
            node = ["zone-a", "zone-b"]
            [[zones.network]]
            destination = "127.0.0.1:4001"
            zone = "zone-a"
            [[zones.storage]]
            path = "/srv/b"
            zone = "zone-b"
            [gpu]
            adapters = [{ label = "a", zone = "zone-a" }, { label = "b", zone = "zone-b" }]
            "#,
        )
        .expect("parses");
        c.check().expect("valid");
        assert_eq!(c.node_zones(), ["zone-a", "zone-b"]);
        // The default config: the default adapter's zone.
        assert_eq!(ServerConfig::default().node_zones(), ["local"]);
        ServerConfig::default().check().expect("default is valid");
        let bad: ServerConfig = toml::from_str(
            "[zones]\nnode = [\"zone-a\"]\n[gpu]\nadapters = [{ label = \"b\", zone = \"zone-b\" }]",
        )
        .expect("parses");
        assert!(
            bad.check().is_err(),
            "an adapter in a zone the node does not serve"
        );
        assert!(toml::from_str::<ServerConfig>("[zones]\nnodes = []").is_err());
    }

    #[test]
    fn nats_credentials_parse_and_are_checked() {
        let c: ServerConfig = toml::from_str(
            "nats = \"nats://127.0.0.1:4222\"\nnats_user = \"control-plane\"\n\
             nats_password = \"pw\"\nnats_inbox_prefix = \"_INBOX_control-plane\"\n",
        )
        .expect("parses");
        c.check().expect("valid");
        let auth = c.nats_auth();
        assert_eq!(auth.user.as_deref(), Some("control-plane"));
        assert_eq!(auth.password.as_deref(), Some("pw"));
        assert_eq!(auth.inbox_prefix, "_INBOX_control-plane");
        assert_eq!(ServerConfig::default().nats_auth(), Default::default());
        let lone: ServerConfig = toml::from_str("nats_user = \"u\"").expect("parses");
        let e = lone.check().expect_err("a user without a password");
        assert!(e.to_string().contains("nats_password"), "{e}");
        let both: ServerConfig =
            toml::from_str("nats_user = \"u\"\nnats_password = \"p\"\nnats_creds = \"x.creds\"")
                .expect("parses");
        assert!(both.check().is_err(), "user and creds file at once");
    }
}
