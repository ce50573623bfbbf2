//! Content-addressed blob directory: `<root>/sha256/<2 hex>/<64 hex>`.
//! Writes go to `<root>/tmp`, are fsynced, then renamed into place, so a blob
//! path either holds the complete bytes of its digest or does not exist.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use kasbah_core::{Digest, Hasher};

pub struct Blobs {
    root: PathBuf,
}

/// A blob being written: bytes are hashed as they stream in.
pub struct BlobWriter {
    tmp: tempfile::NamedTempFile,
    hasher: Hasher,
    size: u64,
}

impl BlobWriter {
    pub fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        self.tmp.write_all(chunk)
    }
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Blobs {
    /// Open (creating, 0700) the blob dir. Partial uploads a crash left in
    /// `tmp/` are removed: nothing refers to them (a blob is renamed into
    /// place before any row names it).
    pub fn open(root: &Path) -> io::Result<Self> {
        let tmp = root.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        crate::at_rest::create_dir(&root.join("sha256"))?;
        crate::at_rest::create_dir(&tmp)?;
        crate::at_rest::create_dir(root)?;
        Ok(Blobs {
            root: root.to_path_buf(),
        })
    }

    pub fn path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.root.join("sha256").join(&hex[..2]).join(hex)
    }

    pub fn writer(&self) -> io::Result<BlobWriter> {
        Ok(BlobWriter {
            tmp: tempfile::NamedTempFile::new_in(self.root.join("tmp"))?,
            hasher: Hasher::default(),
            size: 0,
        })
    }

    /// Finish a writer: returns the digest and the temp file (still
    /// uncommitted, so the caller can validate before `commit`).
    pub fn finish(&self, w: BlobWriter) -> (Digest, u64, tempfile::NamedTempFile) {
        (w.hasher.finish(), w.size, w.tmp)
    }

    /// Make the bytes durable under their digest (idempotent).
    pub fn commit(&self, tmp: tempfile::NamedTempFile, d: &Digest) -> io::Result<()> {
        let dest = self.path(d);
        if dest.exists() {
            return Ok(());
        }
        // NamedTempFile creates 0600; set it anyway (umask-independent,
        // whatever tempfile does in a later version).
        crate::at_rest::set_mode(tmp.path(), crate::at_rest::FILE_MODE)?;
        tmp.as_file().sync_all()?;
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        crate::at_rest::create_dir(&dir)?;
        tmp.persist(&dest).map_err(|e| e.error)?;
        File::open(&dir)?.sync_all()
    }

    pub fn put(&self, bytes: &[u8]) -> io::Result<Digest> {
        let mut w = self.writer()?;
        w.write(bytes)?;
        let (d, _, tmp) = self.finish(w);
        self.commit(tmp, &d)?;
        Ok(d)
    }

    pub fn get(&self, d: &Digest) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(self.path(d)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}
