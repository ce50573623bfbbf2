//! Secrets granted to a run (policy `[secrets]`), delivered as environment
//! variables and read-only files.
//!
//! The platform decrypts each granted secret and hands it here as a
//! [`SecretValue`] (its `Debug` never prints the value); the runtime
//! never stores one. Delivery:
//! - **env**: the value goes into the run's `WasiCtx` (wasmtime-wasi keeps
//!   its own copy for the run's life; it is freed, not zeroized, with the
//!   store). The value must be UTF-8 without NUL, else the run is refused
//!   (deliver such a value as a file).
//! - **file**: a per-run directory on a **memory-backed file system**
//!   (tmpfs/ramfs: `$XDG_RUNTIME_DIR` if it is one, else `/dev/shm`; checked
//!   with `statfs`, never the data dir), mode 0700, made by
//!   [`SecretFiles::create`]: one subdirectory per guest directory holding
//!   secret files, each file 0400, each subdirectory 0500 and preopened
//!   read-only at that guest directory, holding nothing but the run's
//!   secret files. When the run ends (or its future is dropped) the files
//!   are overwritten with zeros and the directory removed. No
//!   memory-backed directory → the run is refused: plaintext never goes to
//!   a disk-backed file system. A process killed mid-run leaves its
//!   directory in RAM (nothing is on disk): directories are named
//!   `kasbah-secrets-<pid>-…`, and [`sweep_stale`] (called when `kasbah
//!   serve` starts) zeroes and removes those of processes that no longer
//!   exist.
//!
//! Swap is the host's: a host that must not page secrets to disk runs
//! without swap or with encrypted swap.

use std::path::{Path, PathBuf};

use kasbah_policy::secret_dir;
use zeroize::Zeroizing;

/// One granted secret, decrypted, as the platform hands it to a run.
#[derive(Clone)]
pub struct SecretValue {
    /// The secret's name (as granted in the policy).
    pub name: String,
    /// The version the run gets (recorded in the run's record).
    pub version: u64,
    /// Delivered as this environment variable.
    pub env: Option<String>,
    /// Delivered as this read-only guest file.
    pub file: Option<String>,
    /// The plaintext, zeroized when dropped.
    pub value: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretValue")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("env", &self.env)
            .field("file", &self.file)
            .field(
                "value",
                &format_args!("<{} bytes, redacted>", self.value.len()),
            )
            .finish()
    }
}

/// Why a run's secrets could not be delivered (the run is refused). Names
/// secrets, never values.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "secret {0:?} is delivered as an environment variable but its value is not UTF-8 without NUL (grant it as a file)"
    )]
    NotEnvText(String),
    #[error(
        "secret files need a memory-backed directory (tmpfs or ramfs) and none is available: neither $XDG_RUNTIME_DIR nor /dev/shm is one{0}"
    )]
    NoMemoryDir(String),
    #[error("secret files: {0}")]
    Io(String),
}

/// The environment variables a run's secrets set (checked values).
pub(crate) fn env_vars(secrets: &[SecretValue]) -> Result<Vec<(&str, &str)>, SecretError> {
    let mut out = Vec::new();
    for s in secrets {
        if let Some(var) = &s.env {
            let text = std::str::from_utf8(&s.value)
                .ok()
                .filter(|t| !t.contains('\0'))
                .ok_or_else(|| SecretError::NotEnvText(s.name.clone()))?;
            out.push((var.as_str(), text));
        }
    }
    Ok(out)
}

/// Whether `p` is on a memory-backed file system (tmpfs, ramfs).
#[cfg(target_os = "linux")]
pub fn memory_backed(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a zeroed,
    // properly sized out-parameter for statfs(2).
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    #[allow(clippy::unnecessary_cast)]
    let ty = st.f_type as i64;
    rc == 0 && (ty == TMPFS_MAGIC || ty == RAMFS_MAGIC)
}

#[cfg(not(target_os = "linux"))]
pub fn memory_backed(_: &Path) -> bool {
    false
}

/// Where secret files go: `configured` if given, else `$XDG_RUNTIME_DIR`,
/// else `/dev/shm` — the first that is memory-backed.
pub fn memory_dir(configured: Option<&Path>) -> Result<PathBuf, SecretError> {
    if let Some(dir) = configured {
        return if memory_backed(dir) {
            Ok(dir.to_path_buf())
        } else {
            Err(SecretError::NoMemoryDir(format!(
                " (the configured {} is not either)",
                dir.display()
            )))
        };
    }
    let candidates = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("/dev/shm")]);
    for dir in candidates {
        if dir.is_absolute() && memory_backed(&dir) {
            return Ok(dir);
        }
    }
    Err(SecretError::NoMemoryDir(String::new()))
}

const PREFIX: &str = "kasbah-secrets-";

/// Zero and remove the secret directories under `base` (the memory dir)
/// left by processes that no longer exist (killed mid-run). Returns how
/// many. Directories of live processes, this one included, are left alone.
pub fn sweep_stale(base: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(base) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid <= 0 || alive(pid) || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        wipe(&e.path());
        n += 1;
    }
    n
}

#[cfg(unix)]
fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(not(unix))]
fn alive(_: i32) -> bool {
    true
}

/// Zero every file under `root`, then remove it all (symlinks are not
/// followed: the platform makes none there).
fn wipe(root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let _ = set_mode(&dir, 0o700);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => {
                    let len = e.metadata().map_or(0, |m| m.len());
                    let _ = set_mode(&p, 0o600);
                    if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&p) {
                        use std::io::Write;
                        let _ = f.write_all(&vec![0u8; usize::try_from(len).unwrap_or(0)]);
                    }
                }
                _ => {}
            }
        }
    }
    if let Err(e) = std::fs::remove_dir_all(root) {
        tracing::warn!("removing stale secret files {}: {e}", root.display());
    }
}

/// A run's secret files: removed (after zeroing) when dropped.
pub(crate) struct SecretFiles {
    root: Option<tempfile::TempDir>,
    /// (host directory, guest directory) to preopen read-only.
    pub dirs: Vec<(PathBuf, String)>,
    files: Vec<(PathBuf, usize)>,
}

impl SecretFiles {
    /// Write the file-delivered secrets under a new directory in `base`.
    pub fn create(base: &Path, secrets: &[SecretValue]) -> Result<Self, SecretError> {
        let io = |e: std::io::Error| SecretError::Io(e.to_string());
        let prefix = format!("{PREFIX}{}-", std::process::id());
        let root = tempfile::Builder::new()
            .prefix(&prefix)
            .tempdir_in(base)
            .map_err(io)?;
        let mut out = SecretFiles {
            root: None,
            dirs: Vec::new(),
            files: Vec::new(),
        };
        set_mode(root.path(), 0o700).map_err(io)?;
        let root_path = root.path().to_path_buf();
        out.root = Some(root);
        let root = root_path;
        for s in secrets {
            let Some(file) = &s.file else { continue };
            let guest_dir = secret_dir(file);
            let host_dir = match out.dirs.iter().find(|(_, g)| g == guest_dir) {
                Some((h, _)) => h.clone(),
                None => {
                    let h = root.join(format!("d{}", out.dirs.len()));
                    std::fs::create_dir(&h).map_err(io)?;
                    out.dirs.push((h.clone(), guest_dir.to_string()));
                    h
                }
            };
            // The policy's rules make this a non-empty file name; a caller
            // of the runtime that skipped them gets an error, not a panic.
            let name = file
                .get(guest_dir.len() + 1..)
                .filter(|n| !n.is_empty() && !n.contains('/'))
                .ok_or_else(|| SecretError::Io(format!("{file:?} is not a file path")))?;
            let path = host_dir.join(name);
            write_new(&path, &s.value).map_err(io)?;
            out.files.push((path, s.value.len()));
        }
        for (h, _) in &out.dirs {
            set_mode(h, 0o500).map_err(io)?;
        }
        Ok(out)
    }
}

fn write_new(path: &Path, value: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(path)?;
    f.write_all(value)?;
    drop(f);
    set_mode(path, 0o400)
}

#[cfg(unix)]
fn set_mode(p: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> std::io::Result<()> {
    Ok(())
}

impl Drop for SecretFiles {
    fn drop(&mut self) {
        for (h, _) in &self.dirs {
            let _ = set_mode(h, 0o700);
        }
        for (path, len) in &self.files {
            // Overwrite before unlinking: a descriptor the guest still
            // holds (the store may outlive this) then reads zeros.
            let _ = set_mode(path, 0o600);
            if let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) {
                use std::io::Write;
                let mut f = f;
                let _ = f.write_all(&vec![0u8; *len]);
            }
        }
        if let Some(root) = self.root.take()
            && let Err(e) = root.close()
        {
            tracing::warn!("removing a run's secret files: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(name: &str, env: Option<&str>, file: Option<&str>, v: &[u8]) -> SecretValue {
        SecretValue {
            name: name.into(),
            version: 1,
            env: env.map(Into::into),
            file: file.map(Into::into),
            value: Zeroizing::new(v.to_vec()),
        }
    }

    #[test]
    fn debug_never_shows_the_value() {
        let s = secret("a", Some("A"), None, b"hunter2-marker");
        let d = format!("{s:?} {:?}", vec![s.clone()]);
        assert!(!d.contains("hunter2"), "{d}");
        assert!(d.contains("redacted"));
    }

    #[test]
    fn env_values_must_be_text() {
        let ok = [secret("a", Some("A"), None, b"v")];
        assert_eq!(env_vars(&ok).expect("ok"), vec![("A", "v")]);
        for bad in [&b"\xff"[..], b"a\0b"] {
            let e = env_vars(&[secret("b", Some("B"), None, bad)]).expect_err("refused");
            let m = e.to_string();
            assert!(m.contains("\"b\"") && !m.contains("a\0b"), "{m}");
        }
    }

    #[test]
    fn files_live_in_memory_read_only_and_go_after_the_run() {
        let Ok(base) = memory_dir(None) else {
            eprintln!("no memory-backed dir here; skipped");
            return;
        };
        assert!(memory_backed(&base));
        assert!(
            !memory_backed(Path::new(env!("CARGO_MANIFEST_DIR"))) || cfg!(not(target_os = "linux"))
        );
        let secrets = [
            secret("a", None, Some("/secrets/a"), b"alpha"),
            secret("b", None, Some("/secrets/b"), b"beta"),
            secret("c", None, Some("/run/keys/c"), b"gamma"),
        ];
        let files = SecretFiles::create(&base, &secrets).expect("create");
        assert_eq!(files.dirs.len(), 2);
        let (host, guest) = &files.dirs[0];
        assert_eq!(guest, "/secrets");
        assert_eq!(std::fs::read(host.join("a")).expect("read"), b"alpha");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode(&host.join("b")), 0o400);
            assert_eq!(mode(host), 0o500);
        }
        let root = host.parent().expect("root").to_path_buf();
        drop(files);
        assert!(!root.exists(), "removed after the run");
        // A directory left by a dead process is swept; a live one's is not.
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let dead = child.id();
        child.wait().expect("wait");
        let stale = base.join(format!("{PREFIX}{dead}-test"));
        std::fs::create_dir_all(stale.join("d0")).expect("mkdir");
        std::fs::write(stale.join("d0/s"), b"left").expect("write");
        set_mode(&stale.join("d0/s"), 0o400).expect("chmod");
        set_mode(&stale.join("d0"), 0o500).expect("chmod");
        let live = SecretFiles::create(&base, &secrets).expect("create");
        let live_root = live.dirs[0].0.parent().expect("root").to_path_buf();
        assert!(sweep_stale(&base) >= 1);
        assert!(!stale.exists(), "a dead process's secrets are swept");
        assert!(live_root.exists(), "a live process's are not");
        drop(live);
        // A disk-backed directory is refused, naming no value.
        let disk = std::env::current_dir().expect("cwd");
        if !memory_backed(&disk) {
            assert!(memory_dir(Some(&disk)).is_err());
        }
    }
}
