//! A zone worker's dataset cache: `work_dir/datasets/<digest hex>`, at
//! most `max_bytes` in all, least recently used first out.
//!
//! A dataset is *pinned* while a job that mounts it is being prepared or
//! runs ([`DatasetCache::pin`]); pinned datasets are never evicted. Making
//! room for a new dataset evicts unpinned ones, oldest use first, until the
//! new one fits; if the pinned ones alone leave no room, the new one is
//! still admitted (a run is never refused for the cache's sake) and the
//! cache shrinks back as pins go. Evicting removes the file; a run that
//! already mounted it keeps its hard link (same inode) until it ends.
//! At start the files already there are taken in, oldest modification
//! first, and trimmed to the bound.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kasbah_core::Digest;

/// The cache (see the module docs).
pub struct DatasetCache {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Cached datasets: size and the tick of their last use.
    entries: HashMap<Digest, (u64, u64)>,
    /// Jobs using each dataset now.
    pins: HashMap<Digest, usize>,
    total: u64,
    tick: u64,
}

/// Keeps its datasets pinned until dropped.
pub struct Pins {
    cache: Arc<DatasetCache>,
    digests: Vec<Digest>,
}

impl Drop for Pins {
    fn drop(&mut self) {
        let mut st = self.cache.lock();
        for d in &self.digests {
            if let Some(n) = st.pins.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    st.pins.remove(d);
                }
            }
        }
        let removed = evict(&mut st, self.cache.max_bytes, 0);
        drop(st);
        self.cache.remove_files(&removed);
    }
}

impl DatasetCache {
    /// The cache in `dir` (created if missing), bounded to `max_bytes`;
    /// files already there are taken in and trimmed to the bound.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Arc<DatasetCache>> {
        std::fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        for e in std::fs::read_dir(dir)?.flatten() {
            let Some(d) = e
                .file_name()
                .to_str()
                .and_then(|n| format!("sha256:{n}").parse::<Digest>().ok())
            else {
                continue;
            };
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_file() {
                found.push((meta.modified().ok(), d, meta.len()));
            }
        }
        found.sort();
        let cache = Arc::new(DatasetCache {
            dir: dir.to_path_buf(),
            max_bytes,
            state: Mutex::default(),
        });
        let removed = {
            let mut st = cache.lock();
            for (_, d, size) in found {
                st.tick += 1;
                let tick = st.tick;
                st.entries.insert(d, (size, tick));
                st.total += size;
            }
            evict(&mut st, max_bytes, 0)
        };
        cache.remove_files(&removed);
        Ok(cache)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where dataset `d` is (or will be) kept.
    pub fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.hex())
    }

    /// Pin `digests` (a job's datasets) until the returned guard drops.
    pub fn pin(self: &Arc<Self>, digests: &[Digest]) -> Pins {
        let mut st = self.lock();
        for d in digests {
            *st.pins.entry(*d).or_default() += 1;
        }
        Pins {
            cache: self.clone(),
            digests: digests.to_vec(),
        }
    }

    /// The cached copy of `d`, marked used now; `None` if not cached.
    pub fn get(&self, d: &Digest) -> Option<PathBuf> {
        let mut st = self.lock();
        st.tick += 1;
        let tick = st.tick;
        let e = st.entries.get_mut(d)?;
        e.1 = tick;
        Some(self.path(d))
    }

    /// Make room for `d` of `size` bytes (evicting unpinned datasets, least
    /// recently used first) and count it in; call it once its file is at
    /// [`Self::path`].
    pub fn admit(&self, d: &Digest, size: u64) {
        let removed = {
            let mut st = self.lock();
            st.tick += 1;
            let tick = st.tick;
            if let Some((old, _)) = st.entries.insert(*d, (size, tick)) {
                st.total -= old;
            }
            st.total += size;
            // Never the new one itself (its job pins it as well).
            *st.pins.entry(*d).or_default() += 1;
            let removed = evict(&mut st, self.max_bytes, 0);
            if let Some(n) = st.pins.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    st.pins.remove(d);
                }
            }
            removed
        };
        self.remove_files(&removed);
    }

    /// Bytes cached now.
    pub fn total_bytes(&self) -> u64 {
        self.lock().total
    }

    fn remove_files(&self, digests: &[Digest]) {
        for d in digests {
            let p = self.path(d);
            if let Err(e) = std::fs::remove_file(&p)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!("evicting dataset {}: {e}", p.display());
            }
        }
    }
}

/// Drop unpinned entries, least recently used first, until `total + room`
/// fits in `max`. Returns the evicted digests (their files are removed by
/// the caller, outside the lock).
fn evict(st: &mut State, max: u64, room: u64) -> Vec<Digest> {
    let mut removed = Vec::new();
    if st.total.saturating_add(room) <= max {
        return removed;
    }
    let mut candidates: Vec<(u64, Digest, u64)> = st
        .entries
        .iter()
        .filter(|(d, _)| !st.pins.contains_key(*d))
        .map(|(d, (size, tick))| (*tick, *d, *size))
        .collect();
    candidates.sort();
    for (_, d, size) in candidates {
        if st.total.saturating_add(room) <= max {
            break;
        }
        st.entries.remove(&d);
        st.total -= size;
        removed.push(d);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(cache: &DatasetCache, name: &[u8], size: usize) -> Digest {
        let d = Digest::of(name);
        std::fs::write(cache.path(&d), vec![0u8; size]).expect("write");
        cache.admit(&d, size as u64);
        d
    }

    #[test]
    fn least_recently_used_unpinned_datasets_go_first() {
        let dir = tempfile::tempdir().expect("tmp");
        let cache = DatasetCache::open(dir.path(), 100).expect("open");
        let a = put(&cache, b"a", 40);
        let b = put(&cache, b"b", 40);
        assert!(cache.get(&a).is_some(), "a used again: b is now the oldest");
        let c = put(&cache, b"c", 40);
        assert!(
            cache.get(&b).is_none() && !cache.path(&b).exists(),
            "b evicted"
        );
        assert!(cache.get(&a).is_some() && cache.get(&c).is_some());
        assert_eq!(cache.total_bytes(), 80);

        // Pinned datasets stay even when the bound is exceeded; the cache
        // shrinks back once they are unpinned.
        let pins = cache.pin(&[a, c]);
        let d = put(&cache, b"d", 60);
        assert!(cache.path(&a).exists() && cache.path(&c).exists());
        assert_eq!(cache.total_bytes(), 140, "over the bound while pinned");
        assert!(cache.get(&d).is_some(), "d most recent");
        drop(pins);
        assert!(cache.total_bytes() <= 100, "{}", cache.total_bytes());
        assert!(cache.get(&d).is_some() && cache.path(&d).exists());
        assert!(!cache.path(&a).exists(), "a, the oldest, went");

        // A new process takes the files in and trims them to its bound.
        // (c and d may share a modification time: either is the oldest.)
        let small = DatasetCache::open(dir.path(), 60).expect("reopen");
        assert!(small.total_bytes() <= 60, "{}", small.total_bytes());
        let left = std::fs::read_dir(dir.path()).expect("ls").count();
        assert_eq!(left, 1, "one file left");
    }
}
