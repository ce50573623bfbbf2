//! The platform's side of a GPU process: finding the worker program,
//! probing adapters, starting and supervising one process per device, and
//! the request path with its deadline.
//!
//! Each [`Worker`] is one GPU process plus one platform thread that owns
//! its socket and shared memory: async host calls hand that thread a job
//! and await its reply, bounded by the run's deadline. When the deadline
//! passes the process is killed (SIGKILL): on lavapipe that stops its CPU
//! threads at once, on a GPU the driver tears its context down. When the
//! process dies for any reason (killed, a crash or stack overflow inside
//! naga, wgpu or the driver), the thread reaps it, and every later call of
//! that worker answers `device-lost`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, mpsc};
use std::time::{Duration, Instant};

use crate::bindings::kasbah::gpu::compute::GpuError;
use crate::child::{SHM_FD, SOCKET_FD};
use crate::proto::{self, AdapterKey, Condition, Fault, ProbedAdapter, Reply, Request, Value};

/// Identifies the protocol and the GPU process's behaviour: a hash of the
/// sources on both sides. A worker program built from other sources (a
/// stale binary next to a fresh one) is not used.
pub const PROTOCOL: u64 = fnv1a(&[
    include_bytes!("proto.rs"),
    include_bytes!("child.rs"),
    include_bytes!("ops.rs"),
    include_bytes!("shader.rs"),
    include_bytes!("shader/lex.rs"),
]);

const fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut p = 0;
    while p < parts.len() {
        let bytes = parts[p];
        let mut i = 0;
        while i < bytes.len() {
            h ^= bytes[i] as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
            i += 1;
        }
        p += 1;
    }
    h
}

/// How long a probe may take (driver start-up included).
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// The program that runs GPU processes, invoked as `PROGRAM gpu-worker
/// probe|serve`: the `kasbah` binary itself, or `kasbah-gpu-worker`.
static PROGRAM: RwLock<Option<PathBuf>> = RwLock::new(None);

/// Use `program` for GPU processes (the `kasbah` CLI passes its own path).
pub fn set_worker_program(program: impl Into<PathBuf>) {
    *PROGRAM.write().unwrap_or_else(PoisonError::into_inner) = Some(program.into());
}

/// Candidates for the worker program, best first: the one set with
/// [`set_worker_program`], `KASBAH_GPU_WORKER`, then `kasbah-gpu-worker`,
/// `kasbah-under-test` or `kasbah` next to the current executable or one
/// directory up (a test binary in `target/debug/deps`).
fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = PROGRAM
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
    {
        out.push(p);
    }
    if let Some(p) = std::env::var_os("KASBAH_GPU_WORKER") {
        out.push(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe() {
        let dirs: Vec<&Path> = exe
            .parent()
            .into_iter()
            .chain(exe.parent().and_then(Path::parent))
            .collect();
        for name in ["kasbah-gpu-worker", "kasbah-under-test", "kasbah"] {
            for d in &dirs {
                let p = d.join(name);
                if p.is_file() {
                    out.push(p);
                }
            }
        }
    }
    out
}

/// The worker program and the adapters it sees, found once per process.
pub(crate) struct Probe {
    pub program: PathBuf,
    pub adapters: Vec<ProbedAdapter>,
}

/// Probe for adapters with the first candidate program that speaks this
/// build's protocol. Cached per backend selection for the process.
pub(crate) fn probe(backend: Option<&str>) -> Result<Arc<Probe>, String> {
    type Cache = Mutex<Vec<(Option<String>, Result<Arc<Probe>, String>)>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
    let key = backend.map(str::to_string);
    if let Some((_, r)) = cache.iter().find(|(k, _)| *k == key) {
        return r.clone();
    }
    let mut tried = Vec::new();
    let mut found = Err(String::new());
    for program in candidates() {
        match probe_with(&program, backend) {
            Ok(adapters) => {
                found = Ok(Arc::new(Probe { program, adapters }));
                break;
            }
            Err(e) => tried.push(format!("{}: {e}", program.display())),
        }
    }
    let found = found.map_err(|_| {
        if tried.is_empty() {
            "no GPU worker program found (set KASBAH_GPU_WORKER, or install kasbah-gpu-worker next to the server)".to_string()
        } else {
            format!("no usable GPU worker program ({})", tried.join("; "))
        }
    });
    cache.push((key, found.clone()));
    found
}

fn probe_with(program: &Path, backend: Option<&str>) -> Result<Vec<ProbedAdapter>, String> {
    let (mine, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
    let mut args = vec!["gpu-worker".to_string(), "probe".to_string()];
    args.extend(backend.map(str::to_string));
    let mut child = spawn(program, &args, theirs.into(), None).map_err(|e| e.to_string())?;
    mine.set_read_timeout(Some(PROBE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let answer = proto::recv::<(u64, Vec<ProbedAdapter>)>(&mut &mine);
    let _ = child.kill();
    let _ = child.wait();
    match answer {
        Ok((PROTOCOL, adapters)) => Ok(adapters),
        Ok((other, _)) => Err(format!(
            "speaks GPU protocol {other:016x}, this build {PROTOCOL:016x} (a stale build?)"
        )),
        Err(e) => Err(format!("did not answer a probe: {e}")),
    }
}

/// Start `program args` with `socket` at fd 3 and `shm` at fd 4, stdin
/// closed, stdout sent to stderr (a driver's chatter must not reach the
/// protocol), killed if the thread that started it ends (`PR_SET_PDEATHSIG`
/// follows the spawning thread: callers spawn from a thread that lives as
/// long as the process is needed).
fn spawn(
    program: &Path,
    args: &[String],
    socket: OwnedFd,
    shm: Option<&OwnedFd>,
) -> io::Result<Child> {
    let socket_raw = socket.as_raw_fd();
    let shm_raw = shm.map(AsRawFd::as_raw_fd);
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(io::stderr().as_fd().try_clone_to_owned()?))
        .stderr(Stdio::inherit());
    // SAFETY: only async-signal-safe calls (dup2, prctl, getppid) between
    // fork and exec; the fds are open in the parent for the whole call.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(socket_raw, SOCKET_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(fd) = shm_raw
                && libc::dup2(fd, SHM_FD) < 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn();
    drop(socket);
    child
}

/// A shared memory region (memfd) mapped in the platform.
fn shared_region() -> io::Result<(OwnedFd, memmap2::MmapMut)> {
    // SAFETY: plain syscall with a valid C string; the fd is owned below.
    let fd = unsafe { libc::memfd_create(c"kasbah-gpu".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let file = std::fs::File::from(fd.try_clone()?);
    file.set_len(proto::SHM_BYTES as u64)?;
    // SAFETY: the region is shared with one GPU process, which touches it
    // only while serving a request this side sent and waits for.
    let map = unsafe { memmap2::MmapMut::map_mut(&file)? };
    Ok((fd, map))
}

/// What the platform knows about a GPU process's device.
#[derive(Default)]
pub(crate) struct Health {
    lost: AtomicBool,
    dirty: AtomicBool,
    why: Mutex<Option<String>>,
}

impl Health {
    pub(crate) fn is_healthy(&self) -> bool {
        !self.lost.load(Ordering::SeqCst) && !self.dirty.load(Ordering::SeqCst)
    }

    pub(crate) fn mark_lost(&self, why: String) {
        self.note(why);
        self.lost.store(true, Ordering::SeqCst);
    }

    pub(crate) fn mark_dirty(&self, why: String) {
        self.note(why);
        self.dirty.store(true, Ordering::SeqCst);
    }

    fn note(&self, why: String) {
        let mut w = self.why.lock().unwrap_or_else(PoisonError::into_inner);
        if w.is_none() {
            *w = Some(why);
        }
    }

    /// `Some(reason)` once the device is lost.
    pub(crate) fn lost(&self) -> Option<String> {
        if self.lost.load(Ordering::SeqCst) {
            Some(
                self.why
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
                    .unwrap_or_else(|| "device lost".into()),
            )
        } else {
            None
        }
    }
}

/// The platform thread's end of one GPU process: what a job works with.
pub(crate) struct Conn {
    /// The socket and the shared region, while the process is usable.
    link: Option<(UnixStream, memmap2::MmapMut)>,
    health: Arc<Health>,
    child: Arc<Mutex<Option<Child>>>,
    /// Why every request now fails, once the process is gone or never
    /// opened its device.
    dead: Option<GpuError>,
}

fn fault(f: Fault) -> GpuError {
    match f {
        Fault::Unavailable(m) => GpuError::Unavailable(m),
        Fault::InvalidShader(m) => GpuError::InvalidShader(m),
        Fault::OutOfQuota(m) => GpuError::OutOfQuota(m),
        Fault::InvalidArgument(m) => GpuError::InvalidArgument(m),
        Fault::DeviceLost(m) => GpuError::DeviceLost(m),
    }
}

impl Conn {
    fn gone(&self) -> GpuError {
        self.dead
            .clone()
            .unwrap_or_else(|| GpuError::DeviceLost("the GPU process is gone".into()))
    }

    /// The shared data region.
    pub(crate) fn shm(&mut self) -> Result<&mut [u8], GpuError> {
        let gone = self.gone();
        match &mut self.link {
            Some((_, shm)) if self.dead.is_none() => Ok(&mut shm[..]),
            _ => Err(gone),
        }
    }

    /// One request and its reply.
    pub(crate) fn request(&mut self, req: &Request) -> Result<Value, GpuError> {
        let gone = self.gone();
        let Some((socket, _)) = self.link.as_mut().filter(|_| self.dead.is_none()) else {
            return Err(gone);
        };
        let answered =
            proto::send(&mut *socket, req).and_then(|()| proto::recv::<Reply>(&mut *socket));
        match answered {
            Ok(Reply { result, condition }) => {
                match condition {
                    Condition::Healthy => {}
                    Condition::Dirty(why) => self.health.mark_dirty(why),
                    Condition::Lost(why) => self.health.mark_lost(why),
                }
                result.map_err(fault)
            }
            Err(_) => {
                let why = self.bury();
                Err(GpuError::DeviceLost(why))
            }
        }
    }

    /// The process stopped answering: make sure it is dead, reap it, and
    /// say why.
    fn bury(&mut self) -> String {
        let status = {
            let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
            child.take().map(|mut c| {
                let _ = c.kill();
                c.wait()
            })
        };
        let why = self.health.lost().unwrap_or_else(|| match status {
            Some(Ok(s)) => match s.signal() {
                Some(sig) => format!("the GPU process died (signal {sig})"),
                None => format!("the GPU process exited ({s})"),
            },
            _ => "the GPU process is gone".to_string(),
        });
        self.health.mark_lost(why.clone());
        self.dead = Some(GpuError::DeviceLost(why.clone()));
        self.link = None;
        why
    }
}

type Job = Box<dyn FnOnce(&mut Conn) + Send>;

/// What a worker needs to open its device.
#[derive(Clone)]
pub(crate) struct DeviceSpec {
    pub program: PathBuf,
    pub label: String,
    pub adapter: AdapterKey,
    pub limits: wgpu::Limits,
}

/// One GPU process with one device, serving one run at a time.
pub(crate) struct Worker {
    tx: mpsc::Sender<Job>,
    pub health: Arc<Health>,
    child: Arc<Mutex<Option<Child>>>,
    /// The nice value last given to the process's threads (see [`nice_for`]).
    nice: AtomicI32,
    /// The warm objects (resident buffers, cached kernels) it holds.
    pub warm: crate::warm::Warm,
}

/// The highest nice value a GPU process is given. Nice values rank a GPU
/// process against everything else on the host too, wasm runs in the
/// platform process included (nice 0): at 5 (weight 335 against 1024) a
/// GPU run that has had its share still keeps about a quarter of a core
/// next to a CPU-bound neighbour, so many small GPU calls are slowed, not
/// starved.
const MAX_NICE: i32 = 5;

/// GPU time a run may use before its GPU process loses CPU priority.
const FULL_PRIORITY_GPU_TIME_MS: f64 = 50.0;

/// The CPU priority of the GPU process of a run that has used `used` of GPU
/// time: least attained service first. Two nice levels per doubling past
/// 50 ms (2 at 100 ms, 4 at 200 ms), at most 5 (from 283 ms). On lavapipe,
/// and for naga's and wgpu's own work on any backend, GPU processes share
/// the host's cores; without contention a nice value changes nothing, under
/// contention a short run next to a long one gets most of the CPU, and two
/// long runs share it by how much each has already had.
pub(crate) fn nice_for(used: Duration) -> i32 {
    let ms = used.as_secs_f64() * 1e3;
    if ms < FULL_PRIORITY_GPU_TIME_MS {
        return 0;
    }
    let level = (2.0 * (ms / FULL_PRIORITY_GPU_TIME_MS).log2()).floor();
    (level as i32).clamp(0, MAX_NICE)
}

/// The GPU time after which a run's GPU process gets nice value `level`.
fn gpu_time_for(level: i32) -> Duration {
    Duration::from_secs_f64(FULL_PRIORITY_GPU_TIME_MS * 2f64.powf(f64::from(level) / 2.0) / 1e3)
}

/// Give every thread of process `pid` the nice value `nice` (on Linux a
/// nice value belongs to a thread; threads started later inherit it from
/// the thread that starts them).
fn renice(pid: u32, nice: i32) -> io::Result<()> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Some(tid) = task?
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<libc::id_t>().ok())
        else {
            continue;
        };
        // SAFETY: setpriority reads no memory of ours.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } != 0 {
            let e = io::Error::last_os_error();
            // The thread ended meanwhile.
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The outcome of one call and how long the GPU process worked on it.
pub(crate) struct Timed<T> {
    pub result: Result<T, GpuError>,
    pub took: Duration,
    /// The budget ran out and the process was killed.
    pub timed_out: bool,
}

impl Worker {
    /// Start a GPU process for `spec` in the background; the first call
    /// waits for its device.
    pub(crate) fn spawn(spec: DeviceSpec, totals: Arc<crate::warm::Totals>) -> Worker {
        let (tx, rx) = mpsc::channel::<Job>();
        let health = Arc::new(Health::default());
        let child: Arc<Mutex<Option<Child>>> = Arc::new(Mutex::new(None));
        let (h, c) = (Arc::clone(&health), Arc::clone(&child));
        let thread = std::thread::Builder::new()
            .name(format!("kasbah-gpu-{}", spec.label))
            .spawn(move || {
                let mut conn = start(&spec, h, c);
                while let Ok(job) = rx.recv() {
                    job(&mut conn);
                }
                // Nobody needs this device any more.
                if conn.dead.is_none() {
                    conn.bury();
                }
            });
        if let Err(e) = thread {
            health.mark_lost(format!("cannot start a GPU supervisor thread: {e}"));
        }
        Worker {
            tx,
            health,
            child,
            nice: AtomicI32::new(0),
            warm: crate::warm::Warm::new(totals),
        }
    }

    /// Run `f` on this worker's thread, waiting at most `budget`. When the
    /// budget runs out the GPU process is killed and the call answers
    /// `device-lost`; `took` is the wall time until the answer or the kill.
    /// `used` is the GPU time the run had used before: the process's CPU
    /// priority drops as the run's GPU time grows ([`nice_for`]), also
    /// while this call runs.
    pub(crate) async fn call<T, F>(
        &self,
        budget: Option<Duration>,
        used: Duration,
        f: F,
    ) -> Timed<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Conn) -> Result<T, GpuError> + Send + 'static,
    {
        let start = Instant::now();
        let (reply, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = reply.send(f(conn));
        });
        let gone = || {
            GpuError::DeviceLost(
                self.health
                    .lost()
                    .unwrap_or_else(|| "the GPU process is gone".into()),
            )
        };
        if self.tx.send(job).is_err() {
            return Timed {
                result: Err(gone()),
                took: start.elapsed(),
                timed_out: false,
            };
        }
        let mut result = result;
        let mut timed_out = false;
        let deadline = budget.map(|b| start + b);
        self.demote(nice_for(used));
        let answer = loop {
            let level = self.nice.load(Ordering::Relaxed);
            let demote_at =
                (level < MAX_NICE).then(|| start + gpu_time_for(level + 1).saturating_sub(used));
            let wake = match (deadline, demote_at) {
                (Some(d), Some(n)) => Some(d.min(n)),
                (d, n) => d.or(n),
            };
            let Some(wake) = wake else {
                break result.await.map_err(|_| gone());
            };
            match tokio::time::timeout_at(wake.into(), &mut result).await {
                Ok(r) => break r.map_err(|_| gone()),
                Err(_) if deadline.is_some_and(|d| Instant::now() >= d) => {
                    let why = "GPU work did not finish before the run's deadline; the GPU process was stopped";
                    self.kill(why);
                    timed_out = true;
                    break Err(GpuError::DeviceLost(why.into()));
                }
                Err(_) => self.demote(nice_for(used + start.elapsed()).max(level + 1)),
            }
        };
        Timed {
            result: answer.and_then(|r| r),
            took: start.elapsed(),
            timed_out,
        }
    }

    /// Lower the process's CPU priority to nice value `level` (never
    /// raises it). A failure leaves the priority as it was: the run is
    /// still bounded by its deadline.
    fn demote(&self, level: i32) {
        let level = level.min(MAX_NICE);
        if level <= self.nice.load(Ordering::Relaxed) {
            return;
        }
        // Recorded even when it fails, so a failing renice is not retried
        // in a loop.
        self.nice.store(level, Ordering::Relaxed);
        if let Some(pid) = self.pid() {
            let _ = renice(pid, level);
        }
    }

    /// Give the process back its full CPU priority before it serves
    /// another run. Raising a priority needs `CAP_SYS_NICE` (or a
    /// `RLIMIT_NICE`): without it this answers false and the process must
    /// not be reused.
    pub(crate) fn restore_priority(&self) -> bool {
        if self.nice.load(Ordering::Relaxed) == 0 {
            return true;
        }
        let restored = self.pid().is_none_or(|pid| renice(pid, 0).is_ok());
        if restored {
            self.nice.store(0, Ordering::Relaxed);
        }
        restored
    }

    fn pid(&self) -> Option<u32> {
        self.child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(Child::id)
    }

    /// A worker whose every call fails with `why`.
    pub(crate) fn unavailable(why: String) -> Worker {
        // No process and no thread: every call finds the channel closed and
        // answers with `why` (bind never hands an unusable entry to a run,
        // so this is a backstop).
        let (tx, _) = mpsc::channel::<Job>();
        let health = Arc::new(Health::default());
        health.mark_lost(why);
        Worker {
            tx,
            health,
            child: Arc::new(Mutex::new(None)),
            nice: AtomicI32::new(0),
            warm: crate::warm::Warm::new(Arc::default()),
        }
    }

    /// Whether the GPU process is still running (a pooled process may have
    /// died while idle: killed by the OOM killer or an operator). One that
    /// has not finished starting counts as alive.
    pub(crate) fn is_alive(&self) -> bool {
        if !self.health.is_healthy() {
            return false;
        }
        match self
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Drop every object the last run left in the GPU process (ordered
    /// before the next run's calls).
    pub(crate) fn reset(&self) {
        self.post(|conn| {
            let _ = conn.request(&Request::Reset);
        });
    }

    /// Send `f` without waiting for it (ordered before later calls).
    pub(crate) fn post<F>(&self, f: F)
    where
        F: FnOnce(&mut Conn) + Send + 'static,
    {
        let _ = self.tx.send(Box::new(f));
    }

    /// Stop the GPU process now (whatever it is doing) and never use it
    /// again.
    pub(crate) fn kill(&self, why: &str) {
        self.health.mark_lost(why.to_string());
        if let Some(c) = self
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            let _ = c.kill();
        }
    }
}

/// Start the process and open its device (on the worker's own thread, so
/// that `PR_SET_PDEATHSIG` lasts as long as the worker).
fn start(spec: &DeviceSpec, health: Arc<Health>, child_slot: Arc<Mutex<Option<Child>>>) -> Conn {
    let failed = |health: Arc<Health>, child: Arc<Mutex<Option<Child>>>, why: String| {
        health.mark_lost(why.clone());
        Conn {
            link: None,
            health,
            child,
            dead: Some(GpuError::Unavailable(why)),
        }
    };
    let (fd, shm) = match shared_region() {
        Ok(r) => r,
        Err(e) => {
            return failed(
                health,
                child_slot,
                format!("cannot create GPU shared memory: {e}"),
            );
        }
    };
    let (mine, theirs) = match UnixStream::pair() {
        Ok(p) => p,
        Err(e) => {
            return failed(
                health,
                child_slot,
                format!("cannot create a GPU socket: {e}"),
            );
        }
    };
    let args = ["gpu-worker".to_string(), "serve".to_string()];
    let child = match spawn(&spec.program, &args, theirs.into(), Some(&fd)) {
        Ok(c) => c,
        Err(e) => {
            return failed(
                health,
                child_slot,
                format!(
                    "cannot start the GPU process {}: {e}",
                    spec.program.display()
                ),
            );
        }
    };
    drop(fd);
    *child_slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(child);
    let mut conn = Conn {
        link: Some((mine, shm)),
        health,
        child: child_slot,
        dead: None,
    };
    let open = Request::Open {
        label: spec.label.clone(),
        adapter: spec.adapter.clone(),
        limits: Box::new(spec.limits.clone()),
    };
    match conn.request(&open) {
        Ok(_) => {}
        Err(GpuError::Unavailable(why)) => {
            conn.bury();
            conn.health.mark_lost(why.clone());
            conn.dead = Some(GpuError::Unavailable(format!(
                "cannot open the GPU device: {why}"
            )));
        }
        Err(_) => {}
    }
    conn
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice_of(pid: u32, tid: &str) -> i32 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).expect("stat");
        // Fields after the command name (which is in parentheses); nice is
        // field 19, the 17th after it.
        let rest = &stat[stat.rfind(')').expect(")") + 2..];
        rest.split(' ').nth(16).expect("nice").parse().expect("int")
    }

    #[test]
    fn priority_drops_two_levels_per_doubling_of_gpu_time() {
        let ms = Duration::from_millis;
        assert_eq!(nice_for(ms(0)), 0);
        assert_eq!(nice_for(ms(99)), 1);
        assert_eq!(nice_for(ms(100)), 2);
        assert_eq!(nice_for(ms(200)), 4);
        assert_eq!(nice_for(ms(400)), MAX_NICE);
        assert_eq!(nice_for(Duration::from_secs(3_600)), MAX_NICE);
        for level in 1..=MAX_NICE {
            let at = gpu_time_for(level);
            assert_eq!(nice_for(at + ms(1)), level, "{at:?}");
            assert!(nice_for(at - ms(1)) < level, "{at:?}");
        }
    }

    #[test]
    fn renice_reaches_every_thread_of_a_process() {
        // Every task of the process gets the value.
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
        let pid = child.id();
        renice(pid, 7).expect("renice");
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
            let tid = task.expect("task").file_name();
            assert_eq!(nice_of(pid, tid.to_str().expect("tid")), 7);
        }
        let back = renice(pid, 0);
        // Raising a priority needs CAP_SYS_NICE: as root it works, without
        // it the error is reported (and the worker is then not reused).
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            back.expect("root may raise a priority");
            assert_eq!(nice_of(pid, &pid.to_string()), 0);
        } else {
            assert!(back.is_err());
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
