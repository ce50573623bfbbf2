//! Compiled components on disk, so the first run of a module after a restart
//! loads native code instead of compiling it again (issue 15, item 4).
//!
//! An artifact is the output of `Component::serialize`: **native code** that
//! `Component::deserialize` maps executable without any validation of its
//! own beyond a version header. Loading one is `unsafe` for that reason, so
//! nothing is loaded that this cache cannot prove it wrote itself for this
//! very module and engine configuration.
//!
//! # Threat model
//!
//! The cache dir (`<data_dir>/compiled/` for `kasbah serve`, the fleet
//! worker's `<work_dir>/compiled/`, `~/.cache/kasbah/compiled/` for
//! `kasbah run`) is 0700 and its files 0600, owned by the kasbah user. What
//! can still put bytes there that must not run:
//! - **corruption**: a crash or power loss mid-write (files are written to a
//!   temp file and renamed, but not fsynced: a torn or empty file after a
//!   power loss is expected), a bad disk, a full file system;
//! - **another build or configuration**: a wasmtime upgrade, fuel metering
//!   switched off, another CPU's ISA flags (a data dir copied to another
//!   machine);
//! - **a file under the wrong name**: a restored backup, a copy from another
//!   node, or someone with write access to the cache dir (only, e.g. a cache
//!   dir put on shared storage) swapping module A's artifact in as module B's
//!   — tenant A's code would then run under tenant B's digest and policy.
//!
//! So each file is `MAGIC ‖ HMAC-SHA256(key, MAGIC ‖ engine ‖ digest ‖ artifact)
//! ‖ artifact`, where `engine` is the SHA-256 of wasmtime's
//! `Engine::precompile_compatibility_hash` (target, compiler flags, tunables,
//! features, wasmtime version) and `digest` the module's sha256. The key is
//! 32 random bytes in a 0600 file *outside* the cache dir (`compiled.key`
//! next to it), made on first use. The file name also carries both
//! (`<digest>.<engine>.cwasm`), so another configuration never even opens
//! this one's files. The bytes are read into memory, verified there, and
//! those same bytes are deserialized (no `deserialize_file`: a file mapped
//! after the check could change under it). Only regular files are opened
//! (`O_NOFOLLOW | O_NONBLOCK`, then `fstat`): a planted symlink or FIFO is
//! refused without blocking. Reads are bounded by the cache's size (the key:
//! 33 bytes).
//!
//! What it does not defend against: whoever can read the key and write the
//! cache — the kasbah user itself, or root — can run native code in the
//! kasbah process; they could equally replace the `kasbah` binary.
//!
//! Any mismatch (bad magic, short file, wrong MAC, a deserialize error, an
//! oversize file) is logged, the file removed, and the module compiled and
//! written again: never a failed run. Any I/O error writing the cache is
//! logged and ignored.
//!
//! The cache is bounded in bytes: after each write, the oldest files by
//! modification time are removed until the total fits (a hit touches its
//! file, so this is least recently used).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use kasbah_core::Digest;
use sha2::{Digest as _, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where and how much to cache (host configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactCacheConfig {
    /// The artifacts' directory (created 0700).
    pub dir: PathBuf,
    /// The integrity key's file (32 random bytes, created 0600). Keep it
    /// outside `dir`.
    pub key_file: PathBuf,
    /// Most bytes of artifacts kept; older ones are removed. An artifact
    /// larger than this is not written.
    pub max_bytes: u64,
}

impl ArtifactCacheConfig {
    /// `<parent>/compiled/` with its key `<parent>/compiled.key`.
    pub fn under(parent: &Path, max_bytes: u64) -> Self {
        ArtifactCacheConfig {
            dir: parent.join("compiled"),
            key_file: parent.join("compiled.key"),
            max_bytes,
        }
    }
}

/// What the cache did since the runtime started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArtifactStats {
    /// Artifacts verified and loaded.
    pub hits: u64,
    /// No artifact for this digest and engine.
    pub misses: u64,
    /// Artifacts found but refused (integrity or deserialize failure) and
    /// removed.
    pub rejected: u64,
    /// Artifacts written.
    pub written: u64,
    /// Artifacts removed to stay within `max_bytes`.
    pub evicted: u64,
}

const MAGIC: &[u8; 16] = b"kasbah-cwasm-v1\n";
const MAC_LEN: usize = 32;
const HEADER: usize = MAGIC.len() + MAC_LEN;
const EXT: &str = "cwasm";
const KEY_LEN: usize = 32;
/// Temp files older than this are leftovers of a crashed writer.
const STALE_TMP: Duration = Duration::from_secs(600);

pub(crate) struct ArtifactCache {
    dir: PathBuf,
    key: [u8; KEY_LEN],
    /// SHA-256 of the engine's precompile compatibility hash.
    engine: [u8; 32],
    max_bytes: u64,
    hits: AtomicU64,
    misses: AtomicU64,
    rejected: AtomicU64,
    written: AtomicU64,
    evicted: AtomicU64,
    /// One eviction pass at a time in this process.
    evicting: Mutex<()>,
}

impl ArtifactCache {
    /// Open (create) the cache dir and key for `engine`.
    pub fn open(config: &ArtifactCacheConfig, engine: &Engine) -> io::Result<Self> {
        create_private_dir(&config.dir)?;
        if let Some(parent) = config.key_file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let key = load_or_create_key(&config.key_file)?;
        let cache = ArtifactCache {
            dir: config.dir.clone(),
            key,
            engine: engine_id(engine),
            max_bytes: config.max_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            written: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            evicting: Mutex::new(()),
        };
        cache.remove_stale_temps();
        Ok(cache)
    }

    pub fn stats(&self) -> ArtifactStats {
        ArtifactStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
        }
    }

    /// The artifact's file for `digest` under this engine configuration.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!(
            "{}.{}.{EXT}",
            digest.hex(),
            Digest::from_bytes(self.engine).hex()
        ))
    }

    /// The digests of this engine's artifacts on disk, most recently used
    /// first: at most `max_count` of them, and only as many as fit in
    /// `max_bytes` of artifact files together (for preloading at start).
    /// Names that are not `<64 hex>.<this engine>.cwasm`, and anything
    /// that is not a regular file, are skipped; nothing is opened.
    pub fn recent(&self, max_count: usize, max_bytes: u64) -> Vec<Digest> {
        let suffix = format!(".{}.{EXT}", Digest::from_bytes(self.engine).hex());
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut files: Vec<(SystemTime, u64, Digest)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name();
                let hex = name.to_str()?.strip_suffix(suffix.as_str())?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                let digest: Digest = format!("sha256:{hex}").parse().ok()?;
                // `DirEntry::metadata` does not follow symlinks.
                let m = e.metadata().ok()?;
                m.is_file().then(|| {
                    (
                        m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                        m.len(),
                        digest,
                    )
                })
            })
            .collect();
        files.sort_by_key(|f| std::cmp::Reverse(f.0));
        let mut total = 0u64;
        let mut out = Vec::new();
        for (_, len, digest) in files {
            if out.len() >= max_count || total.saturating_add(len) > max_bytes {
                break;
            }
            total += len;
            out.push(digest);
        }
        out
    }

    fn mac(&self, digest: &Digest, artifact: &[u8]) -> [u8; MAC_LEN] {
        hmac_sha256(
            &self.key,
            &[MAGIC, &self.engine, digest.as_bytes(), artifact],
        )
    }

    /// The compiled component for `digest`, if a verified artifact is on
    /// disk. Anything else found there is removed (and logged).
    pub fn load(&self, engine: &Engine, digest: &Digest) -> Option<Component> {
        let path = self.path(digest);
        let bytes = match self.read(&path) {
            Ok(Some(b)) => b,
            Ok(None) => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Err(why) => return self.reject(&path, digest, &why),
        };
        let artifact = match self.verify(digest, &bytes) {
            Ok(a) => a,
            Err(why) => return self.reject(&path, digest, why),
        };
        // SAFETY: `artifact` is exactly the bytes `Component::serialize`
        // produced in a process holding this cache's key, for this digest,
        // under an engine with the same compatibility hash as `engine`: the
        // HMAC over (engine, digest, bytes) checked above proves it (see the
        // threat model in this module's docs). These bytes are in memory,
        // not a mapped file, so they cannot change after the check;
        // wasmtime copies them into its own code memory.
        match unsafe { Component::deserialize(engine, artifact) } {
            Ok(c) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                touch(&path);
                Some(c)
            }
            Err(e) => self.reject(&path, digest, &format!("deserialize: {e:#}")),
        }
    }

    /// Read `path` whole, if it exists and is no larger than the cache.
    fn read(&self, path: &Path) -> Result<Option<Vec<u8>>, String> {
        let file = match open_regular(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("open: {e}")),
        };
        let len = file.metadata().map_err(|e| format!("stat: {e}"))?.len();
        if len > self.max_bytes.saturating_add(HEADER as u64) {
            return Err(format!(
                "{len} bytes, more than the cache holds ({})",
                self.max_bytes
            ));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        // `take`: the file may have grown since the stat.
        file.take(len)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("read: {e}"))?;
        Ok(Some(bytes))
    }

    fn verify<'a>(&self, digest: &Digest, bytes: &'a [u8]) -> Result<&'a [u8], &'static str> {
        if bytes.len() < HEADER || &bytes[..MAGIC.len()] != MAGIC {
            return Err("not a kasbah artifact (short file or bad magic)");
        }
        let (mac, artifact) = bytes[MAGIC.len()..].split_at(MAC_LEN);
        if !constant_time_eq(mac, &self.mac(digest, artifact)) {
            return Err("integrity check failed (HMAC mismatch)");
        }
        Ok(artifact)
    }

    fn reject(&self, path: &Path, digest: &Digest, why: &str) -> Option<Component> {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "compiled artifact {} for {digest} refused: {why}; removing it and compiling again",
            path.display()
        );
        if let Err(e) = std::fs::remove_file(path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!("removing {}: {e}", path.display());
        }
        None
    }

    /// Write `component`'s artifact for `digest` (atomically: temp file,
    /// rename), then evict down to the bound. Errors are logged only.
    pub fn store(&self, digest: &Digest, component: &Component) {
        let artifact = match component.serialize() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("serializing {digest}: {e:#}");
                return;
            }
        };
        if artifact.len() as u64 > self.max_bytes {
            tracing::info!(
                "compiled {digest} is {} bytes, more than the artifact cache's {}: not kept",
                artifact.len(),
                self.max_bytes
            );
            return;
        }
        let mac = self.mac(digest, &artifact);
        let path = self.path(digest);
        let write = || -> io::Result<()> {
            let mut tmp = private_tempfile(&self.dir, ".tmp-")?;
            tmp.write_all(MAGIC)?;
            tmp.write_all(&mac)?;
            tmp.write_all(&artifact)?;
            // No fsync: a torn file after a power loss fails the MAC and is
            // compiled again; the cache is never the only copy of anything.
            tmp.persist(&path).map_err(|e| e.error)?;
            Ok(())
        };
        match write() {
            Ok(()) => {
                self.written.fetch_add(1, Ordering::Relaxed);
                self.evict();
            }
            Err(e) => tracing::warn!("writing compiled artifact {}: {e}", path.display()),
        }
    }

    /// Remove the least recently used artifacts until the rest fit.
    fn evict(&self) {
        let _one = self
            .evicting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(SystemTime, u64, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == EXT))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                m.is_file().then(|| {
                    (
                        m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                        m.len(),
                        e.path(),
                    )
                })
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        if total <= self.max_bytes {
            return;
        }
        files.sort();
        for (_, len, path) in files {
            if total <= self.max_bytes {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total = total.saturating_sub(len);
                self.evicted.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("evicted compiled artifact {}", path.display());
            }
        }
    }

    /// Temp files a crashed writer left (old enough not to be another
    /// process's write in progress).
    fn remove_stale_temps(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let now = SystemTime::now();
        for e in entries.filter_map(Result::ok) {
            let stale = e.file_name().to_string_lossy().starts_with(".tmp-")
                && e.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > STALE_TMP);
            if stale {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// SHA-256 of the engine's precompile compatibility hash (fed through a
/// `Hasher` that writes into SHA-256, so it is stable across Rust releases
/// as far as wasmtime's `Hash` impls are).
fn engine_id(engine: &Engine) -> [u8; 32] {
    struct ShaHasher(Sha256);
    impl std::hash::Hasher for ShaHasher {
        fn finish(&self) -> u64 {
            0 // unused: the full digest is taken below
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut h = ShaHasher(Sha256::new());
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut h);
    h.0.finalize().into()
}

/// HMAC-SHA256 (RFC 2104) of the concatenation of `parts`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        let h: [u8; 32] = Sha256::digest(key).into();
        k[..32].copy_from_slice(&h);
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    for p in parts {
        inner.update(p);
    }
    let inner: [u8; 32] = inner.finalize().into();
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A temp file in `dir`, 0600 from creation.
fn private_tempfile(dir: &Path, prefix: &str) -> io::Result<tempfile::NamedTempFile> {
    let mut b = tempfile::Builder::new();
    b.prefix(prefix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(0o600));
    }
    b.tempfile_in(dir)
}

/// `dir` (and parents) exists, and `dir` is 0700 whatever the umask.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        b.mode(0o700);
        b.create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    }
    #[cfg(not(unix))]
    b.create(dir)
}

/// The key in `path`, or a new one written there (0600, never replacing a
/// key another process wrote first). A file of the wrong length is replaced:
/// every artifact is then recompiled once.
fn load_or_create_key(path: &Path) -> io::Result<[u8; KEY_LEN]> {
    let dir = path.parent().unwrap_or(Path::new("."));
    for _ in 0..3 {
        // At most one byte more than a key: a huge file is not read whole.
        let read = open_regular(path).and_then(|f| {
            let mut bytes = Vec::with_capacity(KEY_LEN + 1);
            f.take(KEY_LEN as u64 + 1).read_to_end(&mut bytes)?;
            Ok(bytes)
        });
        match read {
            Ok(bytes) => {
                if let Ok(key) = <[u8; KEY_LEN]>::try_from(bytes.as_slice()) {
                    #[cfg(unix)]
                    {
                        use std::os::unix::fs::PermissionsExt;
                        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
                    }
                    return Ok(key);
                }
                tracing::warn!(
                    "artifact cache key {} is not {KEY_LEN} bytes: replacing it (every \
                     compiled artifact will be rebuilt once)",
                    path.display()
                );
                let key = new_key()?;
                write_key(dir, path, &key, true)?;
                return Ok(key);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = new_key()?;
                match write_key(dir, path, &key, false) {
                    Ok(()) => return Ok(key),
                    // Another process made it first: read theirs.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "artifact cache key {}: could not read or create it",
        path.display()
    )))
}

fn new_key() -> io::Result<[u8; KEY_LEN]> {
    let mut key = [0u8; KEY_LEN];
    getrandom::fill(&mut key).map_err(|e| io::Error::other(format!("getrandom: {e}")))?;
    Ok(key)
}

fn write_key(dir: &Path, path: &Path, key: &[u8], replace: bool) -> io::Result<()> {
    let mut tmp = private_tempfile(dir, ".tmp-key-")?;
    tmp.write_all(key)?;
    tmp.as_file().sync_all()?;
    if replace {
        tmp.persist(path).map_err(|e| e.error)?;
    } else {
        tmp.persist_noclobber(path).map_err(|e| e.error)?;
    }
    Ok(())
}

/// Open `path` for reading only if it is a regular file: not through a
/// symlink (`O_NOFOLLOW`), never blocking on a FIFO or device planted in
/// its place (`O_NONBLOCK`, then `fstat` of what was opened).
fn open_regular(path: &Path) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    let f = o.open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(f)
}

/// Mark `path` recently used (its mtime orders eviction).
fn touch(path: &Path) {
    if let Ok(f) = open_regular(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2.
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            Digest::from_bytes(mac).hex(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block.
        let key = [0xaa; 131];
        let mac = hmac_sha256(
            &key,
            &[b"Test Using Larger Than Block-Size Key - Hash Key First"],
        );
        assert_eq!(
            Digest::from_bytes(mac).hex(),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn key_is_made_once_private_and_kept() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("compiled.key");
        let k1 = load_or_create_key(&p).expect("create");
        let k2 = load_or_create_key(&p).expect("load");
        assert_eq!(k1, k2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&p, b"short").expect("write");
        let k3 = load_or_create_key(&p).expect("replaced");
        assert_ne!(k3, k1);
        assert_eq!(std::fs::read(&p).expect("read"), k3);
    }
}
