//! Per-run bounds on what a guest may consume through `wasi:filesystem`:
//! open host descriptors, bytes and inodes written into `rw` preopens, the
//! depth of the directories it creates, and no symlinks at all.
//!
//! Same pattern as `net.rs`'s `LookupFilter`: `wasi:filesystem/types` is
//! shadowed in the linker by [`Fs`], which checks each call against the
//! run's [`FsGuard`] and then delegates to wasmtime-wasi's own
//! implementation. Refusals are error codes the guest sees (never traps)
//! plus one `Denial` per kind of refusal:
//!
//! - **descriptors**: every `open-at` makes one host fd, held by the
//!   descriptor *and* by any stream made from it (a stream outlives its
//!   descriptor), so the guard keeps a weak reference to each file it
//!   opened and counts those still alive; past `limits.max_open_files`,
//!   `open-at` fails with `quota`. wasmtime-wasi caps every read at 64 KiB
//!   per call; the resource table's capacity is the backstop for every
//!   other resource (see `lib.rs`).
//! - **bytes**: apparent size, not blocks: a write costs its length plus
//!   the hole it opens past the end of the file (a stream made at an
//!   offset past the end pays for the hole when it is made), and a
//!   `set-size` that grows a file costs the growth. Past
//!   `limits.max_write_bytes` the write fails with `insufficient-space`.
//! - **inodes**: files (`open-at` with `create` of a name that did not
//!   exist), directories and hard links, up to `limits.max_files_created`
//!   (`quota`).
//! - **depth**: directories deeper than `limits.max_dir_depth` below their
//!   preopen are refused (`quota`), and so is renaming a directory to a
//!   deeper level (descriptors opened inside it would otherwise under-count
//!   their depth).
//! - **symlinks**: `symlink-at` is refused (`not-permitted`): a link made
//!   in an `rw` preopen would be followed by whatever on the host later
//!   reads that directory, and could point anywhere.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use bytes::Bytes;
use kasbah_policy::Limits;
use wasmtime::component::{HasData, Linker, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemCtxView};
use wasmtime_wasi::p2::bindings::filesystem::types::{
    self, ErrorCode, HostDescriptor, HostDirectoryEntryStream,
};
use wasmtime_wasi::p2::{
    DynInputStream, DynOutputStream, FsError, FsResult, OutputStream, Pollable, StreamError,
    StreamResult,
};

use crate::net::{Denials, record};

/// `ENOSPC`: what a write past the byte quota fails with on a stream
/// (wasmtime-wasi maps it to `insufficient-space`).
const ENOSPC: i32 = 28;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    OpenFiles,
    WriteBytes,
    FilesCreated,
    DirDepth,
    Symlink,
}

#[derive(Default)]
struct State {
    /// Every host file or directory this run opened (alive while the
    /// descriptor or a stream made from it is).
    opened: Vec<Weak<std::fs::File>>,
    written: u64,
    created: u64,
    /// Depth below its preopen of each descriptor opened with `open-at`
    /// (preopens themselves are absent: depth 0).
    depth: HashMap<u32, u64>,
    reported: Vec<Kind>,
}

/// One run's filesystem budget.
pub(crate) struct FsGuard {
    max_open: u64,
    max_write: u64,
    max_created: u64,
    max_depth: u64,
    state: Mutex<State>,
    denials: Denials,
}

impl FsGuard {
    pub(crate) fn new(limits: &Limits, denials: Denials) -> Self {
        FsGuard {
            max_open: limits.max_open_files,
            max_write: limits.max_write_bytes,
            max_created: limits.max_files_created,
            max_depth: limits.max_dir_depth,
            state: Mutex::default(),
            denials,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Record the first refusal of each kind (a guest retrying in a loop
    /// would otherwise fill the run's denials with copies).
    fn deny(&self, kind: Kind, detail: String) {
        let mut s = self.state();
        if s.reported.contains(&kind) {
            return;
        }
        s.reported.push(kind);
        drop(s);
        record(&self.denials, "files", detail);
    }

    /// Host descriptors this run holds now.
    fn open_now(&self) -> u64 {
        let mut s = self.state();
        s.opened.retain(|w| w.strong_count() > 0);
        s.opened.len() as u64
    }

    /// Charge `n` bytes of apparent size, or refuse.
    fn charge(&self, n: u64) -> Result<(), ()> {
        let mut s = self.state();
        match s.written.checked_add(n) {
            Some(total) if total <= self.max_write => {
                s.written = total;
                Ok(())
            }
            _ => {
                let written = s.written;
                drop(s);
                self.deny(
                    Kind::WriteBytes,
                    format!(
                        "write of {n} bytes (apparent size) refused: {written} of limits.max_write_bytes = {} already written",
                        self.max_write
                    ),
                );
                Err(())
            }
        }
    }

    fn may_create(&self, what: &str) -> Result<(), FsError> {
        let created = self.state().created;
        if created >= self.max_created {
            self.deny(
                Kind::FilesCreated,
                format!(
                    "creating {what} refused: limits.max_files_created = {} reached",
                    self.max_created
                ),
            );
            return Err(ErrorCode::Quota.into());
        }
        Ok(())
    }

    fn created(&self) {
        self.state().created += 1;
    }

    fn depth_of(&self, fd: &Resource<Descriptor>) -> u64 {
        self.state().depth.get(&fd.rep()).copied().unwrap_or(0)
    }
}

/// Levels `path` goes down from the directory it is relative to (`..`
/// goes up; cap-std refuses paths that leave the preopen).
fn levels(path: &str) -> i64 {
    let mut n: i64 = 0;
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => n -= 1,
            _ => n += 1,
        }
    }
    n
}

fn depth_at(base: u64, path: &str) -> u64 {
    let d = i64::try_from(base)
        .unwrap_or(i64::MAX)
        .saturating_add(levels(path));
    u64::try_from(d).unwrap_or(0)
}

fn borrow(fd: &Resource<Descriptor>) -> Resource<Descriptor> {
    Resource::new_borrow(fd.rep())
}

/// `wasi:filesystem/types` for one call: the run's WASI filesystem and its
/// guard.
pub(crate) struct Fs<'a> {
    pub inner: WasiFilesystemCtxView<'a>,
    pub guard: Arc<FsGuard>,
}

struct HasFs;

impl HasData for HasFs {
    type Data<'a> = Fs<'a>;
}

impl Fs<'_> {
    /// The file behind `fd` if it may be written (else the delegate refuses
    /// on its own and no quota applies).
    fn writable_file(&self, fd: &Resource<Descriptor>) -> Option<Arc<std::fs::File>> {
        match self.inner.table.get(fd) {
            Ok(Descriptor::File(f)) if !f.perms.write_not_permitted() => Some(f.file.clone()),
            _ => None,
        }
    }

    fn writable_dir(&self, fd: &Resource<Descriptor>) -> bool {
        matches!(self.inner.table.get(fd), Ok(Descriptor::Dir(d)) if !d.perms.write_not_permitted())
    }

    /// Charge a write of `len` bytes at `offset` (`None`: append) to
    /// `file`: its length plus the hole it opens past the end.
    fn charge_write(&self, file: &std::fs::File, offset: Option<u64>, len: u64) -> FsResult<()> {
        let hole = match offset {
            Some(offset) => offset.saturating_sub(file.metadata().map(|m| m.len()).unwrap_or(0)),
            None => 0,
        };
        self.guard
            .charge(len.saturating_add(hole))
            .map_err(|()| ErrorCode::InsufficientSpace.into())
    }

    /// Wrap a stream the delegate made so each write is charged.
    fn wrap(&mut self, stream: Resource<DynOutputStream>) -> FsResult<Resource<DynOutputStream>> {
        let inner = self.inner.table.delete(stream)?;
        let wrapped: DynOutputStream = Box::new(QuotaStream {
            inner,
            guard: self.guard.clone(),
        });
        Ok(self.inner.table.push(wrapped)?)
    }
}

impl types::Host for Fs<'_> {
    fn convert_error_code(&mut self, err: FsError) -> wasmtime::Result<ErrorCode> {
        types::Host::convert_error_code(&mut self.inner, err)
    }

    fn filesystem_error_code(
        &mut self,
        err: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        types::Host::filesystem_error_code(&mut self.inner, err)
    }
}

impl HostDescriptor for Fs<'_> {
    async fn advise(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
        len: types::Filesize,
        advice: types::Advice,
    ) -> FsResult<()> {
        HostDescriptor::advise(&mut self.inner, fd, offset, len, advice).await
    }

    async fn sync_data(&mut self, fd: Resource<Descriptor>) -> FsResult<()> {
        HostDescriptor::sync_data(&mut self.inner, fd).await
    }

    async fn get_flags(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorFlags> {
        HostDescriptor::get_flags(&mut self.inner, fd).await
    }

    async fn get_type(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorType> {
        HostDescriptor::get_type(&mut self.inner, fd).await
    }

    async fn set_size(&mut self, fd: Resource<Descriptor>, size: types::Filesize) -> FsResult<()> {
        if let Some(file) = self.writable_file(&fd) {
            let now = file.metadata().map(|m| m.len()).unwrap_or(0);
            if size > now {
                self.guard
                    .charge(size - now)
                    .map_err(|()| FsError::from(ErrorCode::InsufficientSpace))?;
            }
        }
        HostDescriptor::set_size(&mut self.inner, fd, size).await
    }

    async fn set_times(
        &mut self,
        fd: Resource<Descriptor>,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        HostDescriptor::set_times(&mut self.inner, fd, atim, mtim).await
    }

    async fn read(
        &mut self,
        fd: Resource<Descriptor>,
        len: types::Filesize,
        offset: types::Filesize,
    ) -> FsResult<(Vec<u8>, bool)> {
        // wasmtime-wasi allocates at most 64 KiB per call, whatever `len`.
        HostDescriptor::read(&mut self.inner, fd, len, offset).await
    }

    async fn write(
        &mut self,
        fd: Resource<Descriptor>,
        buf: Vec<u8>,
        offset: types::Filesize,
    ) -> FsResult<types::Filesize> {
        if let Some(file) = self.writable_file(&fd) {
            self.charge_write(&file, Some(offset), buf.len() as u64)?;
        }
        HostDescriptor::write(&mut self.inner, fd, buf, offset).await
    }

    async fn read_directory(
        &mut self,
        fd: Resource<Descriptor>,
    ) -> FsResult<Resource<types::DirectoryEntryStream>> {
        // Entries are read eagerly: no descriptor stays open.
        HostDescriptor::read_directory(&mut self.inner, fd).await
    }

    async fn sync(&mut self, fd: Resource<Descriptor>) -> FsResult<()> {
        HostDescriptor::sync(&mut self.inner, fd).await
    }

    async fn create_directory_at(
        &mut self,
        fd: Resource<Descriptor>,
        path: String,
    ) -> FsResult<()> {
        if self.writable_dir(&fd) {
            let depth = depth_at(self.guard.depth_of(&fd), &path);
            if depth > self.guard.max_depth {
                self.guard.deny(
                    Kind::DirDepth,
                    format!(
                        "creating a directory {depth} levels below its preopen refused: limits.max_dir_depth = {}",
                        self.guard.max_depth
                    ),
                );
                return Err(ErrorCode::Quota.into());
            }
            self.guard.may_create("a directory")?;
        }
        HostDescriptor::create_directory_at(&mut self.inner, fd, path).await?;
        self.guard.created();
        Ok(())
    }

    async fn stat(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorStat> {
        HostDescriptor::stat(&mut self.inner, fd).await
    }

    async fn stat_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::DescriptorStat> {
        HostDescriptor::stat_at(&mut self.inner, fd, path_flags, path).await
    }

    async fn set_times_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        HostDescriptor::set_times_at(&mut self.inner, fd, path_flags, path, atim, mtim).await
    }

    async fn link_at(
        &mut self,
        fd: Resource<Descriptor>,
        old_path_flags: types::PathFlags,
        old_path: String,
        new_descriptor: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        let counted = self.writable_dir(&new_descriptor);
        if counted {
            self.guard.may_create("a hard link")?;
        }
        HostDescriptor::link_at(
            &mut self.inner,
            fd,
            old_path_flags,
            old_path,
            new_descriptor,
            new_path,
        )
        .await?;
        if counted {
            self.guard.created();
        }
        Ok(())
    }

    async fn open_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        oflags: types::OpenFlags,
        flags: types::DescriptorFlags,
    ) -> FsResult<Resource<Descriptor>> {
        let open = self.guard.open_now();
        if open >= self.guard.max_open {
            self.guard.deny(
                Kind::OpenFiles,
                format!(
                    "too many open files: opening {path:?} refused with {open} open (limits.max_open_files = {})",
                    self.guard.max_open
                ),
            );
            return Err(ErrorCode::Quota.into());
        }
        let depth = depth_at(self.guard.depth_of(&fd), &path);
        // A name counts against the quota only if it did not exist.
        let creates = oflags.contains(types::OpenFlags::CREATE)
            && self.writable_dir(&fd)
            && (oflags.contains(types::OpenFlags::EXCLUSIVE)
                || HostDescriptor::stat_at(
                    &mut self.inner,
                    borrow(&fd),
                    types::PathFlags::empty(),
                    path.clone(),
                )
                .await
                .is_err());
        if creates {
            self.guard.may_create("a file")?;
        }
        let new =
            HostDescriptor::open_at(&mut self.inner, fd, path_flags, path, oflags, flags).await?;
        if creates {
            self.guard.created();
        }
        let held = match self.inner.table.get(&new) {
            Ok(Descriptor::File(f)) => Some(Arc::downgrade(&f.file)),
            Ok(Descriptor::Dir(d)) => Some(Arc::downgrade(&d.dir)),
            Err(_) => None,
        };
        let mut s = self.guard.state();
        s.opened.extend(held);
        s.depth.insert(new.rep(), depth);
        Ok(new)
    }

    fn drop(&mut self, fd: Resource<Descriptor>) -> wasmtime::Result<()> {
        let rep = fd.rep();
        HostDescriptor::drop(&mut self.inner, fd)?;
        self.guard.state().depth.remove(&rep);
        Ok(())
    }

    async fn readlink_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<String> {
        HostDescriptor::readlink_at(&mut self.inner, fd, path).await
    }

    async fn remove_directory_at(
        &mut self,
        fd: Resource<Descriptor>,
        path: String,
    ) -> FsResult<()> {
        HostDescriptor::remove_directory_at(&mut self.inner, fd, path).await
    }

    async fn rename_at(
        &mut self,
        fd: Resource<Descriptor>,
        old_path: String,
        new_fd: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        let from = depth_at(self.guard.depth_of(&fd), &old_path);
        let to = depth_at(self.guard.depth_of(&new_fd), &new_path);
        if to > from && self.writable_dir(&new_fd) {
            let is_dir = HostDescriptor::stat_at(
                &mut self.inner,
                borrow(&fd),
                types::PathFlags::empty(),
                old_path.clone(),
            )
            .await
            .is_ok_and(|s| s.type_ == types::DescriptorType::Directory);
            if is_dir {
                self.guard.deny(
                    Kind::DirDepth,
                    format!(
                        "moving a directory deeper ({from} -> {to} levels below its preopen) refused (limits.max_dir_depth = {})",
                        self.guard.max_depth
                    ),
                );
                return Err(ErrorCode::Quota.into());
            }
        }
        HostDescriptor::rename_at(&mut self.inner, fd, old_path, new_fd, new_path).await
    }

    async fn symlink_at(
        &mut self,
        _fd: Resource<Descriptor>,
        src_path: String,
        dest_path: String,
    ) -> FsResult<()> {
        let shown = crate::net::shown(&src_path);
        self.guard.deny(
            Kind::Symlink,
            format!(
                "symlink {dest_path:?} -> {shown:?} refused: runs may not create symbolic links"
            ),
        );
        Err(ErrorCode::NotPermitted.into())
    }

    async fn unlink_file_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        HostDescriptor::unlink_file_at(&mut self.inner, fd, path).await
    }

    fn read_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynInputStream>> {
        HostDescriptor::read_via_stream(&mut self.inner, fd, offset)
    }

    fn write_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynOutputStream>> {
        let file = self.writable_file(&fd);
        if let Some(file) = &file {
            // The hole up to `offset` is paid for now; each write later.
            self.charge_write(file, Some(offset), 0)?;
        }
        let stream = HostDescriptor::write_via_stream(&mut self.inner, fd, offset)?;
        if file.is_some() {
            self.wrap(stream)
        } else {
            Ok(stream)
        }
    }

    fn append_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
    ) -> FsResult<Resource<DynOutputStream>> {
        let writable = self.writable_file(&fd).is_some();
        let stream = HostDescriptor::append_via_stream(&mut self.inner, fd)?;
        if writable {
            self.wrap(stream)
        } else {
            Ok(stream)
        }
    }

    async fn is_same_object(
        &mut self,
        a: Resource<Descriptor>,
        b: Resource<Descriptor>,
    ) -> wasmtime::Result<bool> {
        HostDescriptor::is_same_object(&mut self.inner, a, b).await
    }

    async fn metadata_hash(
        &mut self,
        fd: Resource<Descriptor>,
    ) -> FsResult<types::MetadataHashValue> {
        HostDescriptor::metadata_hash(&mut self.inner, fd).await
    }

    async fn metadata_hash_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::MetadataHashValue> {
        HostDescriptor::metadata_hash_at(&mut self.inner, fd, path_flags, path).await
    }
}

impl HostDirectoryEntryStream for Fs<'_> {
    async fn read_directory_entry(
        &mut self,
        stream: Resource<types::DirectoryEntryStream>,
    ) -> FsResult<Option<types::DirectoryEntry>> {
        HostDirectoryEntryStream::read_directory_entry(&mut self.inner, stream).await
    }

    fn drop(&mut self, stream: Resource<types::DirectoryEntryStream>) -> wasmtime::Result<()> {
        HostDirectoryEntryStream::drop(&mut self.inner, stream)
    }
}

/// A file output stream whose writes are charged to the run's byte quota
/// before they reach the file.
struct QuotaStream {
    inner: DynOutputStream,
    guard: Arc<FsGuard>,
}

impl QuotaStream {
    fn charge(&self, n: usize) -> StreamResult<()> {
        self.guard.charge(n as u64).map_err(|()| {
            StreamError::LastOperationFailed(std::io::Error::from_raw_os_error(ENOSPC).into())
        })
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for QuotaStream {
    async fn ready(&mut self) {
        self.inner.ready().await
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for QuotaStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.charge(bytes.len())?;
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.inner.check_write()
    }

    async fn blocking_write_and_flush(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.charge(bytes.len())?;
        self.inner.blocking_write_and_flush(bytes).await
    }

    fn write_zeroes(&mut self, nelem: usize) -> StreamResult<()> {
        self.charge(nelem)?;
        self.inner.write_zeroes(nelem)
    }

    async fn write_ready(&mut self) -> StreamResult<usize> {
        self.inner.write_ready().await
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}

/// Replace wasmtime-wasi's `wasi:filesystem/types` in `linker` (after
/// `wasmtime_wasi::p2::add_to_linker_async`) with the guarded one.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> Fs<'_>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let added = types::add_to_linker::<T, HasFs>(linker, view);
    linker.allow_shadowing(false);
    added
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_levels() {
        assert_eq!(levels("a/b/c"), 3);
        assert_eq!(levels("./a//b/"), 2);
        assert_eq!(levels("a/../b"), 1);
        assert_eq!(levels(".."), -1);
        assert_eq!(depth_at(0, ".."), 0);
        assert_eq!(depth_at(4, "x/y"), 6);
    }

    #[test]
    fn bytes_are_charged_until_the_quota() {
        let limits = Limits {
            max_write_bytes: 100,
            ..Limits::default()
        };
        let denials = Denials::default();
        let g = FsGuard::new(&limits, denials.clone());
        assert!(g.charge(60).is_ok());
        assert!(g.charge(41).is_err());
        assert!(g.charge(40).is_ok());
        assert!(g.charge(u64::MAX).is_err());
        assert!(g.charge(1).is_err());
        // One denial per kind.
        assert_eq!(denials.lock().map(|d| d.len()).unwrap_or(0), 1);
    }
}
