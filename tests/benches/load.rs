//! HTTP load bench (issue 4): synchronous `POST /v1/runs` of the hello
//! pipeline on a kasbah server vs. `wasmtime serve` running the equivalent
//! wasi-http hello world (`guest-examples/http-hello`: read the body,
//! upper-case it, answer it), driven by the same client, on loopback, on the
//! same machine, in the same process run. Prints requests/s, p50 and p99 for
//! each side and the ratio kasbah / wasmtime (target >= 1.0).
//!
//!     cargo bench -p kasbah-tests --bench load
//!     cargo bench -p kasbah-tests --bench load -- --concurrency 16,64 --duration 10 --rounds 3
//!
//! The baseline needs the wasmtime CLI of the major version kasbah embeds
//! (48): `cargo install wasmtime-cli --version 48.0.8 --locked`, then either
//! have `wasmtime` on PATH or set `KASBAH_BENCH_WASMTIME=/path/to/wasmtime`.
//! Without it the baseline is skipped (with a message) and kasbah's figures
//! are still printed.
//!
//! Options (after `--`; `cargo bench` adds `--bench`, which is ignored):
//!   --concurrency 16,32,64   concurrent keep-alive connections (one request in flight each)
//!   --duration 5             measured seconds per side, per concurrency, per round
//!   --warmup 1               unmeasured seconds before each measurement
//!   --rounds 2               rounds; the side that goes first alternates each round
//!   --input "hello kasbah"   request body (kasbah: the run's `input`)
//!   --workers 8              kasbah `ServerConfig::workers` (runs executing at once)
//!   --wasmtime-flags "..."   replace the default `wasmtime serve` flags (see DEFAULT_WASMTIME_FLAGS)
//!   --only kasbah|wasmtime|fleet  measure one side (with --fleet, `--only kasbah` keeps the fleet side too)
//!   --fleet                  add a third side: kasbah as a fleet (issue 14), see below
//!   --fsync on|off           kasbah `fsync_every_commit` (on: the server's default, SQLite
//!                            `synchronous = FULL`, one fsync per group commit; off: `NORMAL`,
//!                            durable against a process crash, not a power loss)
//!
//! kasbah keeps pooled memories resident and resets them with PAGEMAP_SCAN
//! (`RuntimeConfig::memory_keep_resident`); `wasmtime serve` does not unless
//! told. For the like-for-like ratio, also run with
//!   --wasmtime-flags "-O pooling-allocator=y -O pooling-memory-keep-resident=4194304
//!     -O pooling-table-keep-resident=65536 -O pooling-async-stack-keep-resident=131072
//!     -O pooling-pagemap-scan=auto -S cli"
//! and report both ratios.
//!
//! Where kasbah's time goes beyond the baseline's: the durable record. Each
//! group commit rewrites every SQLite page it touches (the right-hand leaf of
//! `runs`, its two indexes, `runs_inflight`, the audit tables: ~14 pages
//! whatever the batch size) and waits for an fsync, so the cost per run falls
//! as more runs share a commit. A run gives its worker permit back before its
//! commit, so runs keep executing while earlier ones wait for the disk. With
//! the data dir on tmpfs (`TMPDIR=/dev/shm`) the commit costs almost nothing.
//!
//! Fairness: both servers listen on 127.0.0.1 and are hammered by the same
//! client code (hyper HTTP/1.1, one connection per concurrent client,
//! keep-alive, TCP_NODELAY, on its own single-threaded tokio runtime). kasbah
//! runs in this process on its own multi-threaded tokio runtime, exactly as
//! `kasbah serve` builds it; `wasmtime serve` is a child process with its own
//! multi-threaded tokio runtime. Both instantiate a fresh instance per request
//! from the pooling allocator. kasbah additionally authenticates the bearer
//! token, checks the module and policy, places the run (residency zones),
//! applies admission control, meters fuel, enforces an epoch deadline and a
//! memory limiter, records the run durably with its audit log entry (an
//! in-flight row at admission, then the run's final row + its entry, in
//! group commits with an fsync each by default; the caller waits for the
//! second), and answers a JSON run record instead of the bare output; the
//! baseline does none of that.
//!
//! Fleet mode (`--fleet`): the same hello runs through kasbah's fleet on a
//! `nats-server -js` the bench starts (`kasbah_fleet::testing::NatsServer`,
//! a free loopback port, a temporary store): a control plane in this process
//! (`ServerConfig::nats`, one zone `zone-a`, no GPU) and one zone worker in
//! this process too (`kasbah_fleet::worker::run`, capacity = `--workers`).
//! Each run is admitted and recorded by the control plane as in embedded
//! mode, but executed on the worker: the job goes through the jobs stream,
//! its result through the results stream. Both kasbah sides are measured in
//! the same process run, alternating which goes first each round; the fleet
//! side's CPU is this process's (control plane + worker) plus the
//! nats-server child's, printed apart. `ratio fleet/embedded` compares
//! req/s and CPU per request. The idle side's background tasks (the worker's
//! pulls and heartbeats, the control plane's live-worker refresh) are
//! charged to whichever side is measured; they cost a few ms of CPU per
//! second.
//!
//!     cargo bench -p kasbah-tests --bench load -- --only kasbah --fleet --concurrency 16,64
//!
//! Latencies are per request (send to last body byte); requests/s counts only
//! correct answers (200 with the upper-cased input in the body). 429s,
//! other statuses, wrong bodies and transport errors are counted and printed.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use kasbah_core::Outcome;
use kasbah_core::api::{CreateRun, CreateTenant, RunStatus};
use kasbah_policy::Policy;
use kasbah_server::ServerConfig;

/// `wasmtime serve` flags of the baseline (besides `--addr 127.0.0.1:PORT`):
/// - `-O pooling-allocator=y`: instances from a pool, as in kasbah (serve
///   picks it by default only where it can reserve enough address space);
/// - `-S cli`: link all of WASI p2 besides wasi:http, as kasbah links all of
///   WASI p2; a Rust `std` guest imports `wasi:cli/environment` and does not
///   link without it.
///
/// Everything else is at wasmtime's defaults: a fresh instance per request
/// (`--max-instance-reuse-count` is 1 for WASIp2 components), at most 1000
/// concurrent requests and connections, no timeout (so no epoch
/// interruption), no fuel, no memory limit.
const DEFAULT_WASMTIME_FLAGS: &[&str] = &["-O", "pooling-allocator=y", "-S", "cli"];

struct Args {
    concurrency: Vec<usize>,
    duration: Duration,
    warmup: Duration,
    rounds: usize,
    input: String,
    workers: usize,
    wasmtime_flags: Vec<String>,
    only: Option<String>,
    fsync: bool,
    fleet: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        concurrency: vec![16, 32, 64],
        duration: Duration::from_secs(5),
        warmup: Duration::from_secs(1),
        rounds: 2,
        input: "hello kasbah".into(),
        workers: ServerConfig::default().workers,
        wasmtime_flags: DEFAULT_WASMTIME_FLAGS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        only: None,
        fsync: ServerConfig::default().fsync_every_commit,
        fleet: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--bench" {
            continue;
        }
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--concurrency" => {
                a.concurrency = value()?
                    .split(',')
                    .map(|c| c.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .context("--concurrency: comma-separated numbers")?;
            }
            "--duration" => a.duration = Duration::from_secs_f64(value()?.parse()?),
            "--warmup" => a.warmup = Duration::from_secs_f64(value()?.parse()?),
            "--rounds" => a.rounds = value()?.parse::<usize>()?.max(1),
            "--input" => a.input = value()?,
            "--workers" => a.workers = value()?.parse()?,
            "--wasmtime-flags" => {
                a.wasmtime_flags = value()?.split_whitespace().map(str::to_string).collect();
            }
            "--only" => a.only = Some(value()?),
            "--fleet" => a.fleet = true,
            "--fsync" => {
                a.fsync = match value()?.as_str() {
                    "on" => true,
                    "off" => false,
                    v => bail!("--fsync on|off, not {v:?}"),
                }
            }
            other => bail!("unknown option {other:?} (see the top of tests/benches/load.rs)"),
        }
    }
    anyhow::ensure!(
        a.concurrency.iter().all(|&c| c > 0),
        "--concurrency must be positive"
    );
    Ok(a)
}

// ---- the client ---------------------------------------------------------------

/// What one side is asked, and what a correct answer contains.
struct Target {
    addr: SocketAddr,
    path: &'static str,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
    expect: Vec<u8>,
}

impl Target {
    fn request(&self) -> hyper::Request<Full<Bytes>> {
        let mut req = hyper::Request::new(Full::new(self.body.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = hyper::Uri::from_static(self.path);
        let h = req.headers_mut();
        for (k, v) in &self.headers {
            h.insert(k.clone(), v.clone());
        }
        req
    }

    fn is_correct(&self, body: &[u8]) -> bool {
        body.windows(self.expect.len()).any(|w| w == self.expect)
    }
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    ok: u64,
    too_many: u64,
    other_status: u64,
    wrong_body: u64,
    transport: u64,
    first_failure: Option<String>,
    last_done: Option<Instant>,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.latencies_us.extend(o.latencies_us);
        self.ok += o.ok;
        self.too_many += o.too_many;
        self.other_status += o.other_status;
        self.wrong_body += o.wrong_body;
        self.transport += o.transport;
        if self.first_failure.is_none() {
            self.first_failure = o.first_failure;
        }
        self.last_done = self.last_done.max(o.last_done);
    }

    fn failed(&mut self, what: String) {
        if self.first_failure.is_none() {
            self.first_failure = Some(what);
        }
    }
}

async fn connect(t: &Target) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(t.addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn round_trip(
    sender: &mut SendRequest<Full<Bytes>>,
    req: hyper::Request<Full<Bytes>>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// One client: a keep-alive connection with one request in flight, until
/// `end` (reconnecting if the server closes it).
async fn client(t: Arc<Target>, end: Instant) -> Tally {
    let mut tally = Tally::default();
    while Instant::now() < end {
        let mut sender = match connect(&t).await {
            Ok(s) => s,
            Err(e) => {
                tally.transport += 1;
                tally.failed(format!("connect: {e:#}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while Instant::now() < end && !sender.is_closed() {
            let t0 = Instant::now();
            match round_trip(&mut sender, t.request()).await {
                Ok((status, body)) => {
                    let done = Instant::now();
                    tally.last_done = Some(done);
                    if status == StatusCode::OK && t.is_correct(&body) {
                        tally.ok += 1;
                        let us = (done - t0).as_micros();
                        tally
                            .latencies_us
                            .push(u32::try_from(us).unwrap_or(u32::MAX));
                    } else if status == StatusCode::TOO_MANY_REQUESTS {
                        tally.too_many += 1;
                        tally.failed(format!("429: {}", String::from_utf8_lossy(&body)));
                    } else if status == StatusCode::OK {
                        tally.wrong_body += 1;
                        tally.failed(format!("wrong body: {}", String::from_utf8_lossy(&body)));
                    } else {
                        tally.other_status += 1;
                        tally.failed(format!("{status}: {}", String::from_utf8_lossy(&body)));
                    }
                }
                Err(e) => {
                    tally.transport += 1;
                    tally.failed(format!("request: {e:#}"));
                    break;
                }
            }
        }
    }
    tally
}

/// Whose CPU time a phase charges to the server under test.
#[derive(Clone, Copy)]
enum ServerCpu {
    /// kasbah, in this process: the process's CPU time minus this (the
    /// client's) thread's.
    InProcess,
    /// `wasmtime serve`: the child's CPU time.
    Child(u32),
}

/// User + system CPU time of a `/proc/.../stat` file (Linux; `None`
/// elsewhere). Ticks are USER_HZ = 100 on Linux.
fn proc_cpu(path: &str) -> Option<Duration> {
    let s = std::fs::read_to_string(path).ok()?;
    // Fields after the command name, which ends at the last ')': state is
    // field 3, utime 14, stime 15.
    let rest: Vec<&str> = s.get(s.rfind(')')? + 1..)?.split_whitespace().collect();
    let ticks = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

impl ServerCpu {
    fn now(self) -> Option<Duration> {
        match self {
            ServerCpu::InProcess => {
                let all = proc_cpu("/proc/self/stat")?;
                let client = proc_cpu(&format!("/proc/self/task/{}/stat", std::process::id()))?;
                all.checked_sub(client)
            }
            ServerCpu::Child(pid) => proc_cpu(&format!("/proc/{pid}/stat")),
        }
    }
}

/// The pid of the `nats-server` listening on `port` (a child of this
/// process, started by `NatsServer`): found by its command line.
fn nats_server_pid(port: u16) -> Option<u32> {
    let port = port.to_string();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let is_nats = argv.first().is_some_and(|a| a.ends_with(b"nats-server"));
        let on_port = argv
            .windows(2)
            .any(|w| w[0] == b"-p" && w[1] == port.as_bytes());
        if is_nats && on_port {
            return Some(pid);
        }
    }
    None
}

/// What one phase measured: the tally, the elapsed time (start to the last
/// answer), the server's CPU time meanwhile and, for the fleet, the
/// nats-server's.
type PhaseResult = (Tally, Duration, Option<Duration>, Option<Duration>);

/// `conns` clients for `dur`.
async fn phase(
    t: &Arc<Target>,
    cpu: ServerCpu,
    nats: Option<ServerCpu>,
    conns: usize,
    dur: Duration,
) -> PhaseResult {
    let cpu0 = cpu.now();
    let nats0 = nats.and_then(|n| n.now());
    let start = Instant::now();
    let end = start + dur;
    let tasks: Vec<_> = (0..conns)
        .map(|_| tokio::spawn(client(t.clone(), end)))
        .collect();
    let mut all = Tally::default();
    for task in tasks {
        match task.await {
            Ok(tally) => all.merge(tally),
            Err(e) => {
                all.transport += 1;
                all.failed(format!("client task: {e}"));
            }
        }
    }
    let elapsed = all.last_done.map_or(dur, |d| d - start);
    let server_cpu = cpu0.zip(cpu.now()).map(|(a, b)| b.saturating_sub(a));
    let nats_cpu = nats0
        .zip(nats.and_then(|n| n.now()))
        .map(|(a, b)| b.saturating_sub(a));
    (all, elapsed, server_cpu, nats_cpu)
}

/// One request, checked, before any measurement: fail loudly on a broken
/// setup rather than print figures for errors.
async fn probe(t: &Target) -> anyhow::Result<Bytes> {
    let mut sender = connect(t).await?;
    let (status, body) = round_trip(&mut sender, t.request()).await?;
    if status != StatusCode::OK || !t.is_correct(&body) {
        bail!(
            "probe request answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(body)
}

// ---- results ----------------------------------------------------------------------

#[derive(Default)]
struct Measured {
    tally: Tally,
    elapsed: Duration,
    server_cpu: Option<Duration>,
    /// The fleet side's nats-server CPU time (not in `server_cpu`).
    nats_cpu: Option<Duration>,
    phases: usize,
}

fn sum_cpu(phases: usize, acc: Option<Duration>, new: Option<Duration>) -> Option<Duration> {
    match (phases, acc, new) {
        (0, _, c) => c,
        (_, Some(a), Some(b)) => Some(a + b),
        _ => None,
    }
}

impl Measured {
    fn add(&mut self, (tally, elapsed, cpu, nats): PhaseResult) {
        self.tally.merge(tally);
        self.elapsed += elapsed;
        self.server_cpu = sum_cpu(self.phases, self.server_cpu, cpu);
        self.nats_cpu = sum_cpu(self.phases, self.nats_cpu, nats);
        self.phases += 1;
    }

    fn per_request_us(&self, cpu: Option<Duration>) -> Option<f64> {
        let cpu = cpu?;
        (self.tally.ok > 0).then(|| cpu.as_secs_f64() * 1e6 / self.tally.ok as f64)
    }

    /// Server CPU time per correct answer, in µs (the fleet's: this
    /// process's plus nats-server's): robust to a busy machine, unlike
    /// requests/s.
    fn cpu_us_per_request(&self) -> Option<f64> {
        let own = self.per_request_us(self.server_cpu)?;
        match self.nats_cpu {
            Some(_) => Some(own + self.per_request_us(self.nats_cpu)?),
            None => Some(own),
        }
    }

    fn rps(&self) -> f64 {
        self.tally.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn percentile_ms(&mut self, p: f64) -> f64 {
        let v = &mut self.tally.latencies_us;
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_unstable();
        let rank = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len());
        f64::from(v[rank - 1]) / 1000.0
    }

    fn print(&mut self, conc: usize, side: &str) {
        let (p50, p99) = (self.percentile_ms(0.50), self.percentile_ms(0.99));
        let cpu = self
            .cpu_us_per_request()
            .map_or("n/a".to_string(), |c| format!("{c:.0}"));
        let t = &self.tally;
        println!(
            "{conc:>5}  {side:<9} {:>9.0} {:>9.2} {:>9.2} {cpu:>10} {:>9} {:>6} {:>7}",
            self.rps(),
            p50,
            p99,
            t.ok,
            t.too_many,
            t.other_status + t.wrong_body + t.transport,
        );
        if let (Some(own), Some(nats)) = (
            self.per_request_us(self.server_cpu),
            self.per_request_us(self.nats_cpu),
        ) {
            println!(
                "       {side}: cpu µs/req = {own:.0} in this process (control plane + worker) + {nats:.0} nats-server"
            );
        }
        if let Some(f) = &t.first_failure {
            let f: String = f.chars().take(300).collect();
            println!("       {side}: first failure: {f}");
        }
    }
}

// ---- kasbah -----------------------------------------------------------------------

struct Kasbah {
    target: Arc<Target>,
    _data: tempfile::TempDir,
    queue_depth: usize,
    max_concurrent_runs: u32,
    /// Fleet mode: the zone worker (stopped on drop).
    worker: Option<FleetWorker>,
}

/// The fleet side's zone: the control plane serves it, the worker runs it.
const FLEET_ZONE: &str = "zone-a";

/// The in-process zone worker of the fleet side.
struct FleetWorker {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _work: tempfile::TempDir,
}

impl FleetWorker {
    /// Drain: stop pulling, finish running jobs, leave the registry.
    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .context("the worker did not drain within 30 s")??
    }
}

/// Start the server on `server_rt` (the runtime `kasbah serve` builds,
/// cli/src/serve.rs; separate from the client's), create a tenant whose
/// policy admits every client at once, publish hello, check one run.
/// `nats`: be the fleet's control plane on that server, with one zone
/// worker (on `server_rt` too).
async fn start_kasbah(
    args: &Args,
    server_rt: &tokio::runtime::Handle,
    hello: &Path,
    nats: Option<String>,
) -> anyhow::Result<Kasbah> {
    let max_conc = args.concurrency.iter().copied().max().unwrap_or(1);
    let data = tempfile::tempdir()?;
    // Enough admitted-run slots for every client: no 429 at any concurrency.
    let queue_depth = max_conc + 16;
    let mut config = ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: data.path().to_path_buf(),
        workers: args.workers,
        queue_depth,
        fsync_every_commit: args.fsync,
        ..ServerConfig::default()
    };
    if let Some(url) = &nats {
        config.nats = Some(url.clone());
        config.zones.node = vec![FLEET_ZONE.into()];
        // The worker executes; the control plane runs nothing.
        config.gpu.adapters.clear();
    }
    let server = server_rt.spawn(kasbah_server::start(config)).await??;
    let addr = server.addr;
    let admin = server
        .admin_token
        .clone()
        .context("a fresh data dir yields an admin token")?;
    let fleet = server.state.fleet.clone();
    // Keeps serving: the accept loop is a task on `server_rt`.
    drop(server);

    let worker = match (&nats, fleet) {
        (Some(url), Some(fleet)) => {
            let work = tempfile::tempdir()?;
            let mut c = kasbah_fleet::WorkerConfig {
                id: "bench-worker".into(),
                nats: url.clone(),
                capacity: u32::try_from(args.workers).unwrap_or(u32::MAX),
                work_dir: work.path().join("worker"),
                ..kasbah_fleet::WorkerConfig::default()
            };
            c.zones.node = vec![FLEET_ZONE.into()];
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = server_rt.spawn(kasbah_fleet::worker::run(c, async move {
                let _ = stopped.await;
            }));
            let deadline = Instant::now() + Duration::from_secs(15);
            while !fleet.live_zones().contains(FLEET_ZONE) {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the fleet worker did not show up within 15 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Some(FleetWorker {
                stop: Some(stop),
                task,
                _work: work,
            })
        }
        (Some(_), None) => bail!("a server with `nats` set has no fleet"),
        _ => None,
    };

    let base = format!("http://{addr}");
    let admin = kasbah_client::Client::new(&base, &admin);
    let mut policy = Policy::default();
    if nats.is_some() {
        policy.zones = [FLEET_ZONE.to_string()].into_iter().collect();
    }
    let max_concurrent_runs = u32::try_from(max_conc + 16).unwrap_or(u32::MAX);
    policy.limits.max_concurrent_runs = max_concurrent_runs;
    let tenant = admin
        .create_tenant(&CreateTenant {
            name: "load".into(),
            operator_id: None,
            policy: Some(policy),
        })
        .await?;
    let token = admin.tenant_token(&tenant.id).await?.token;
    let dev = kasbah_client::Client::new(&base, &token);
    let module = dev.publish(hello, "hello", "1.0.0", |_, _| {}).await?;

    // One run through the typed client: the pipeline works end to end.
    let run = dev
        .run(&CreateRun {
            module: module.digest.to_string(),
            input: Some(args.input.clone()),
            input_base64: None,
            content_type: None,
            metadata: Default::default(),
            wait: true,
            ..CreateRun::default()
        })
        .await?;
    anyhow::ensure!(
        run.status == RunStatus::Done && matches!(run.outcome, Some(Outcome::Ok { .. })),
        "hello run did not succeed: {run:?}"
    );
    if nats.is_some() {
        anyhow::ensure!(
            run.zone.as_deref() == Some(FLEET_ZONE),
            "the fleet run was placed in {:?}",
            run.zone
        );
    }

    let body = serde_json::to_vec(&serde_json::json!({
        "module": module.digest.to_string(),
        "input": args.input,
    }))?;
    let target = Arc::new(Target {
        addr,
        path: "/v1/runs",
        headers: vec![
            (HOST, HeaderValue::from_str(&addr.to_string())?),
            (
                AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {token}"))?,
            ),
            (CONTENT_TYPE, HeaderValue::from_static("application/json")),
        ],
        body: Bytes::from(body),
        expect: args.input.to_uppercase().into_bytes(),
    });
    Ok(Kasbah {
        target,
        _data: data,
        queue_depth,
        max_concurrent_runs,
        worker,
    })
}

// ---- wasmtime serve ---------------------------------------------------------------

/// `KASBAH_BENCH_WASMTIME`, else `wasmtime` on PATH.
fn find_wasmtime() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KASBAH_BENCH_WASMTIME") {
        return Some(PathBuf::from(p));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("wasmtime"))
        .find(|p| p.is_file())
}

/// The child process, killed on drop.
struct Wasmtime {
    target: Arc<Target>,
    child: Child,
    version: String,
    command: String,
}

impl Drop for Wasmtime {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_loopback_port() -> anyhow::Result<SocketAddr> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?)
}

async fn start_wasmtime(
    args: &Args,
    bin: &Path,
    component: &Path,
    log: &Path,
) -> anyhow::Result<Wasmtime> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", bin.display()))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !version.starts_with("wasmtime 48.") {
        println!(
            "warning: {} is {version:?}; kasbah embeds wasmtime 48, the comparison is fairest with wasmtime-cli 48.x",
            bin.display()
        );
    }
    let addr = free_loopback_port()?;
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("--addr")
        .arg(addr.to_string())
        .args(&args.wasmtime_flags)
        .arg(component)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?);
    let command = format!(
        "{} serve --addr {addr} {} {}",
        bin.display(),
        args.wasmtime_flags.join(" "),
        component.display()
    );
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let target = Arc::new(Target {
        addr,
        path: "/",
        headers: vec![
            (HOST, HeaderValue::from_str(&addr.to_string())?),
            (
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
        ],
        body: Bytes::from(args.input.clone().into_bytes()),
        expect: args.input.to_uppercase().into_bytes(),
    });
    let mut w = Wasmtime {
        target,
        child,
        version,
        command,
    };
    // It compiles the component before listening.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = w.child.try_wait()? {
            bail!(
                "wasmtime serve exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!("wasmtime serve did not listen on {addr} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(w)
}

// ---- main -------------------------------------------------------------------------

/// One side under measurement.
struct Side<'a> {
    name: &'static str,
    target: &'a Arc<Target>,
    cpu: ServerCpu,
    nats: Option<ServerCpu>,
    measured: Measured,
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if let Some(o) = &args.only {
        anyhow::ensure!(
            o == "kasbah" || o == "wasmtime" || o == "fleet",
            "--only kasbah|wasmtime|fleet, not {o:?}"
        );
    }
    let want = |side: &str| match args.only.as_deref() {
        None => side != "fleet" || args.fleet,
        // `--only kasbah --fleet`: both kasbah modes.
        Some("kasbah") => side == "kasbah" || (side == "fleet" && args.fleet),
        Some(o) => o == side,
    };
    let hello = kasbah_tests::guest_path("hello");
    // kasbah's runtime: what `kasbah serve` builds (multi-thread, one worker
    // per CPU). The client's: one thread, separate.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let scratch = tempfile::tempdir()?;

    rt.block_on(async {
        let kasbah = if want("kasbah") {
            Some(start_kasbah(&args, server_rt.handle(), &hello, None).await?)
        } else {
            None
        };
        let nats = if want("fleet") {
            Some(
                kasbah_fleet::testing::NatsServer::start()
                    .context("starting nats-server for --fleet (scripts/setup.sh installs it)")?,
            )
        } else {
            None
        };
        let fleet = match &nats {
            Some(n) => Some(
                start_kasbah(&args, server_rt.handle(), &hello, Some(n.url()))
                    .await
                    .context("starting the fleet")?,
            ),
            None => None,
        };
        let nats_pid = match &nats {
            Some(n) => Some(
                nats_server_pid(n.port())
                    .with_context(|| format!("no nats-server process on port {}", n.port()))?,
            ),
            None => None,
        };
        let wasmtime = if !want("wasmtime") {
            None
        } else if let Some(bin) = find_wasmtime() {
            let component = kasbah_tests::build_extra_guest("http-hello")?;
            let log = scratch.path().join("wasmtime-serve.log");
            match start_wasmtime(&args, &bin, &component, &log).await {
                Ok(w) => Some(w),
                Err(e) => {
                    println!("baseline skipped: {e:#}");
                    None
                }
            }
        } else {
            println!(
                "baseline skipped: no wasmtime CLI found (set KASBAH_BENCH_WASMTIME=/path/to/wasmtime or put \
                 `wasmtime` on PATH; install with `cargo install wasmtime-cli --version 48.0.8 --locked`). \
                 kasbah's figures only."
            );
            None
        };

        let input_len = args.input.len();
        println!(
            "load bench: hello pipeline, input {:?} ({input_len} B); per concurrency level and side: \
             {} round(s) x {:.1} s measured after {:.1} s warm-up",
            args.input,
            args.rounds,
            args.duration.as_secs_f64(),
            args.warmup.as_secs_f64()
        );
        println!(
            "client: hyper HTTP/1.1, keep-alive, TCP_NODELAY, one connection per concurrent client, \
             1 tokio thread; machine: {} CPUs",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let sync = if args.fsync {
            "FULL (fsync per group commit)"
        } else {
            "NORMAL (no fsync per commit)"
        };
        if let Some(k) = &kasbah {
            let body = probe(&k.target).await.context("kasbah probe")?;
            println!(
                "kasbah  : in-process kasbah_server on http://{} (tokio multi-thread), workers={} queue_depth={} \
                 tenant max_concurrent_runs={}, SQLite WAL synchronous={sync}; POST /v1/runs answers {} B of JSON",
                k.target.addr,
                args.workers,
                k.queue_depth,
                k.max_concurrent_runs,
                body.len()
            );
        }
        if let (Some(f), Some(n)) = (&fleet, &nats) {
            let body = probe(&f.target).await.context("fleet probe")?;
            println!(
                "fleet   : in-process control plane on http://{} (same settings, nats {}, zone {FLEET_ZONE}) + \
                 one in-process zone worker (capacity {}) + nats-server pid {} ({}); POST /v1/runs answers {} B of JSON",
                f.target.addr,
                n.url(),
                args.workers,
                nats_pid.unwrap_or(0),
                kasbah_fleet::testing::nats_server_program()
                    .map_or_else(|e| e.to_string(), |p| p.display().to_string()),
                body.len()
            );
        }
        if let Some(w) = &wasmtime {
            let body = probe(&w.target).await.context("wasmtime serve probe")?;
            println!(
                "wasmtime: {} — {}; POST / answers {} B",
                w.version,
                w.command,
                body.len()
            );
        }
        println!();
        println!(
            "{:>5}  {:<9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>6} {:>7}",
            "conc", "side", "req/s", "p50 ms", "p99 ms", "cpu µs/req", "ok", "429", "errors"
        );

        let mut summary = Vec::new();
        let mut fleet_summary = Vec::new();
        for &conc in &args.concurrency {
            let mut sides = Vec::new();
            if let Some(k) = &kasbah {
                sides.push(Side {
                    name: "kasbah",
                    target: &k.target,
                    cpu: ServerCpu::InProcess,
                    nats: None,
                    measured: Measured::default(),
                });
            }
            if let Some(f) = &fleet {
                sides.push(Side {
                    name: "fleet",
                    target: &f.target,
                    cpu: ServerCpu::InProcess,
                    nats: nats_pid.map(ServerCpu::Child),
                    measured: Measured::default(),
                });
            }
            if let Some(w) = &wasmtime {
                sides.push(Side {
                    name: "wasmtime",
                    target: &w.target,
                    cpu: ServerCpu::Child(w.child.id()),
                    nats: None,
                    measured: Measured::default(),
                });
            }
            for round in 0..args.rounds {
                // The side that goes first changes every round.
                let n = sides.len();
                for i in 0..n {
                    let side = &mut sides[(i + round) % n];
                    let _ = phase(side.target, side.cpu, side.nats, conc, args.warmup).await;
                    side.measured
                        .add(phase(side.target, side.cpu, side.nats, conc, args.duration).await);
                }
            }
            for side in &mut sides {
                side.measured.print(conc, side.name);
            }
            let find = |name: &str| sides.iter().position(|s| s.name == name);
            if let (Some(k), Some(w)) = (find("kasbah"), find("wasmtime")) {
                let ratio = sides[k].measured.rps() / sides[w].measured.rps();
                println!("{conc:>5}  ratio kasbah/wasmtime req/s = {ratio:.3}   (target >= 1.0)");
                summary.push((conc, ratio));
            }
            if let (Some(k), Some(f)) = (find("kasbah"), find("fleet")) {
                let (k, f) = (&sides[k].measured, &sides[f].measured);
                let rps = f.rps() / k.rps();
                let cpu = f
                    .cpu_us_per_request()
                    .zip(k.cpu_us_per_request())
                    .map_or("n/a".into(), |(f, k)| format!("{:.3}", f / k));
                println!(
                    "{conc:>5}  ratio fleet/embedded: req/s = {rps:.3}, cpu µs/req = {cpu}"
                );
                fleet_summary.push(format!("{conc}: req/s {rps:.3}, cpu/req {cpu}"));
            }
        }
        if !summary.is_empty() {
            println!();
            let list: Vec<String> = summary
                .iter()
                .map(|(c, r)| format!("{c}: {r:.3}"))
                .collect();
            println!("ratio kasbah/wasmtime by concurrency: {}", list.join(", "));
        }
        if !fleet_summary.is_empty() {
            println!();
            println!(
                "ratio fleet/embedded by concurrency: {}",
                fleet_summary.join("; ")
            );
        }
        if let Some(w) = fleet.and_then(|mut f| f.worker.take()) {
            w.stop().await.context("stopping the fleet worker")?;
        }
        drop(nats);
        anyhow::Ok(())
    })
}
