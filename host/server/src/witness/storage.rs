//! The witness's state: per log origin, the last checkpoint it cosigned
//! (size, root, and the note with its cosignature, for monitors). One JSON
//! file, replaced atomically: written to a temporary file, fsynced, renamed
//! over the old one, directory fsynced. The caller holds the service's lock
//! across read-check-write, which is what makes "check the old size and
//! record the new one" atomic (the race in the spec).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What was last cosigned for one log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogState {
    pub size: u64,
    /// Base64 root hash.
    pub root: String,
    /// The checkpoint note as served to monitors: the log's signatures
    /// and this witness's cosignature.
    pub note: String,
}

/// The state file.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    logs: BTreeMap<String, LogState>,
}

impl StateFile {
    /// Open `path`, or start empty if it does not exist.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let logs = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("witness state {}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => anyhow::bail!("witness state {}: {e}", path.display()),
        };
        Ok(StateFile {
            path: path.to_path_buf(),
            logs,
        })
    }

    pub fn get(&self, origin: &str) -> Option<&LogState> {
        self.logs.get(origin)
    }

    /// Record `state` for `origin` durably; on error nothing changed.
    pub fn put(&mut self, origin: &str, state: LogState) -> std::io::Result<()> {
        let mut next = self.logs.clone();
        next.insert(origin.to_string(), state);
        let bytes = serde_json::to_vec_pretty(&next).map_err(std::io::Error::other)?;
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(&bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&self.path).map_err(|e| e.error)?;
        std::fs::File::open(dir)?.sync_all()?;
        self.logs = next;
        Ok(())
    }

    pub fn origins(&self) -> impl Iterator<Item = (&String, &LogState)> {
        self.logs.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("witness.json");
        let mut f = StateFile::open(&path).expect("open");
        assert!(f.get("o").is_none());
        let st = LogState {
            size: 3,
            root: "x".into(),
            note: "n".into(),
        };
        f.put("o", st.clone()).expect("put");
        let again = StateFile::open(&path).expect("reopen");
        assert_eq!(again.get("o"), Some(&st));
        std::fs::write(&path, "not json").expect("write");
        assert!(StateFile::open(&path).is_err());
    }
}
