//! Dataset mounts: the datasets a run asked for, visible to the guest as the
//! read-only files `/datasets/<dataset-name>` (one preopen at
//! [`kasbah_policy::DATASETS_GUEST_PATH`]).
//!
//! The host builds a per-run directory of hard links to the dataset files
//! (a copy where a hard link cannot be made, e.g. across file systems), makes
//! the directory itself read-only (0555) and preopens it with read-only
//! permissions: the guest can open and read the files, and cannot write,
//! truncate, create, rename or delete anything (wasmtime-wasi checks the
//! permissions on every descriptor; the host modes are a second fence). The
//! directory is removed when no run uses it any more. Hard links share the
//! source's inode, so their mode is left alone (the platform stores dataset
//! blobs 0444); copies are made 0444.
//!
//! Making and removing a directory costs milliseconds on a busy disk, more
//! than a small run, and datasets are immutable: runs that mount the same
//! datasets (same names, same files, unchanged size and mtime) share one
//! read-only directory, kept in a small cache ([`MountCache`]).

use std::path::{Path, PathBuf};

use kasbah_policy::is_dataset_name;

/// One dataset to mount: it appears to the guest as `/datasets/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetMount {
    /// `[a-z0-9][a-z0-9._-]{0,63}`, unique within a run.
    pub name: String,
    /// The file on the host (read, never written).
    pub path: PathBuf,
    /// The dataset's digest, when the platform knows it: the key of its
    /// GPU-resident ranges (`kasbah:gpu` `buffer-from-dataset`); without
    /// it the file's identity is used.
    pub digest: Option<kasbah_core::Digest>,
}

impl DatasetMount {
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        DatasetMount {
            name: name.into(),
            path: path.into(),
            digest: None,
        }
    }

    /// The same, with the dataset's digest.
    pub fn with_digest(mut self, digest: kasbah_core::Digest) -> Self {
        self.digest = Some(digest);
        self
    }
}

/// Why a run's datasets could not be mounted (the run is refused).
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("dataset name {0:?} is not valid ([a-z0-9][a-z0-9._-]{{0,63}})")]
    BadName(String),
    #[error("dataset {0:?} is named twice")]
    Duplicate(String),
    #[error("cannot mount dataset {name:?} from {path:?}: {reason}")]
    Io {
        name: String,
        path: PathBuf,
        reason: String,
    },
}

/// A run's dataset directory; removed on drop.
pub(crate) struct Mounted {
    dir: tempfile::TempDir,
    /// How many datasets were hard-linked (the rest were copied).
    pub linked: usize,
}

impl Mounted {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // Entries of a 0555 directory cannot be unlinked: give the owner
        // write permission back so TempDir's removal succeeds.
        let _ = set_mode(self.dir.path(), 0o755);
    }
}

#[cfg(unix)]
fn set_mode(p: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(p: &Path, mode: u32) -> std::io::Result<()> {
    let mut perms = std::fs::metadata(p)?.permissions();
    perms.set_readonly(mode & 0o200 == 0);
    std::fs::set_permissions(p, perms)
}

/// One dataset as a cache key: name, file, and what would show a change.
type Key = Vec<(String, PathBuf, u64, Option<std::time::SystemTime>)>;

/// Dataset directories shared by runs that mount the same datasets.
pub(crate) struct MountCache {
    dirs: std::sync::Mutex<std::collections::HashMap<Key, std::sync::Arc<Mounted>>>,
    max: usize,
}

impl MountCache {
    pub fn new(max: usize) -> Self {
        MountCache {
            dirs: Default::default(),
            max,
        }
    }

    /// The directory for `datasets`, made under `scratch` on a miss.
    pub fn get(
        &self,
        scratch: &Path,
        datasets: &[DatasetMount],
    ) -> Result<std::sync::Arc<Mounted>, MountError> {
        let mut key = Key::with_capacity(datasets.len());
        for d in datasets {
            let meta = std::fs::metadata(&d.path).map_err(|e| MountError::Io {
                name: d.name.clone(),
                path: d.path.clone(),
                reason: e.to_string(),
            })?;
            key.push((
                d.name.clone(),
                d.path.clone(),
                meta.len(),
                meta.modified().ok(),
            ));
        }
        let lock = || {
            self.dirs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if let Some(m) = lock().get(&key) {
            return Ok(m.clone());
        }
        let m = std::sync::Arc::new(mount(scratch, datasets)?);
        let mut dirs = lock();
        if dirs.len() >= self.max
            && let Some(k) = dirs.keys().next().cloned()
        {
            // Removed from disk once the runs using it end.
            dirs.remove(&k);
        }
        Ok(dirs.entry(key).or_insert(m).clone())
    }
}

/// Build a dataset directory under `scratch`.
pub(crate) fn mount(scratch: &Path, datasets: &[DatasetMount]) -> Result<Mounted, MountError> {
    let io = |d: &DatasetMount, e: std::io::Error| MountError::Io {
        name: d.name.clone(),
        path: d.path.clone(),
        reason: e.to_string(),
    };
    let mut seen = std::collections::BTreeSet::new();
    for d in datasets {
        if !is_dataset_name(&d.name) {
            return Err(MountError::BadName(d.name.clone()));
        }
        if !seen.insert(d.name.as_str()) {
            return Err(MountError::Duplicate(d.name.clone()));
        }
    }
    let first = datasets.first();
    let make_dir = || -> std::io::Result<tempfile::TempDir> {
        std::fs::create_dir_all(scratch)?;
        tempfile::Builder::new()
            .prefix("datasets-")
            .tempdir_in(scratch)
    };
    let dir = make_dir().map_err(|e| MountError::Io {
        name: first.map(|d| d.name.clone()).unwrap_or_default(),
        path: scratch.to_path_buf(),
        reason: format!("creating the mount directory: {e}"),
    })?;
    let mut mounted = Mounted { dir, linked: 0 };
    for d in datasets {
        let meta = std::fs::metadata(&d.path).map_err(|e| io(d, e))?;
        if !meta.is_file() {
            return Err(io(d, std::io::Error::other("not a regular file")));
        }
        let dest = mounted.path().join(&d.name);
        if std::fs::hard_link(&d.path, &dest).is_ok() {
            mounted.linked += 1;
        } else {
            std::fs::copy(&d.path, &dest).map_err(|e| io(d, e))?;
            set_mode(&dest, 0o444).map_err(|e| io(d, e))?;
        }
    }
    set_mode(mounted.path(), 0o555).map_err(|e| MountError::Io {
        name: first.map(|d| d.name.clone()).unwrap_or_default(),
        path: mounted.path().to_path_buf(),
        reason: format!("making the mount directory read-only: {e}"),
    })?;
    Ok(mounted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_link_or_copy_and_clean_up() {
        let src = tempfile::tempdir().expect("tmp");
        let scratch = tempfile::tempdir().expect("tmp");
        let a = src.path().join("a.bin");
        std::fs::write(&a, b"weights").expect("write");
        let m = mount(scratch.path(), &[DatasetMount::new("w.bin", &a)]).expect("mount");
        assert_eq!(
            std::fs::read(m.path().join("w.bin")).expect("read"),
            b"weights"
        );
        assert_eq!(m.linked, 1, "same file system: a hard link");
        let cache = MountCache::new(1);
        let list = [DatasetMount::new("w.bin", &a)];
        let shared = cache.get(scratch.path(), &list).expect("mount");
        assert!(std::sync::Arc::ptr_eq(
            &shared,
            &cache.get(scratch.path(), &list).expect("hit")
        ));
        std::fs::write(&a, b"weights, v2").expect("rewrite");
        let fresh = cache
            .get(scratch.path(), &list)
            .expect("changed file: new dir");
        assert!(!std::sync::Arc::ptr_eq(&shared, &fresh));
        assert_eq!(
            std::fs::read(fresh.path().join("w.bin")).expect("read"),
            b"weights, v2"
        );
        let evicted = shared.path().to_path_buf();
        drop(shared);
        assert!(!evicted.exists(), "evicted and unused: removed");
        drop((cache, fresh));
        assert!(
            std::fs::metadata(m.path())
                .expect("stat")
                .permissions()
                .readonly(),
            "the mount directory is read-only on the host too"
        );
        let dir = m.path().to_path_buf();
        drop(m);
        assert!(!dir.exists(), "removed when the run ends");
        assert!(a.exists(), "the source stays");

        for bad in [
            vec![DatasetMount::new("../x", &a)],
            vec![DatasetMount::new("x", &a), DatasetMount::new("x", &a)],
            vec![DatasetMount::new("x", src.path().join("missing"))],
            vec![DatasetMount::new("x", src.path())],
        ] {
            assert!(mount(scratch.path(), &bad).is_err(), "{bad:?}");
        }
    }
}
