//! Data at rest: the data dir is readable by the kasbah user only, whatever
//! the umask. Directories 0700; the database (`kasbah.db`, `-wal`, `-shm`,
//! `-journal`), the audit key, the secrets key and the compiled-artifact key 0600; blobs and
//! compiled artifacts (`compiled/`) 0600, dataset blobs 0400
//! (immutable). The sandbox never opens these itself: the host process
//! reads them (dataset mounts are hard links made by the host, inside this
//! tree). Modes are set explicitly on creation and fixed at every start, so
//! a data dir made by an older version, or under a loose umask, is
//! tightened too.

use std::io;
use std::path::Path;

/// Directory mode.
pub const DIR_MODE: u32 = 0o700;
/// Database files, the audit key, mutable blobs.
pub const FILE_MODE: u32 = 0o600;
/// Dataset blobs (never written again).
pub const SEALED_MODE: u32 = 0o400;

/// The database file names in the data dir (SQLite makes the others next
/// to `kasbah.db` with its mode; they are fixed here too).
pub const DB_FILES: [&str; 4] = [
    "kasbah.db",
    "kasbah.db-wal",
    "kasbah.db-shm",
    "kasbah.db-journal",
];

/// Set `p`'s mode (Unix; a no-op elsewhere).
#[cfg(unix)]
pub fn set_mode(p: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
pub fn set_mode(_: &Path, _: u32) -> io::Result<()> {
    Ok(())
}

/// Create `dir` (and parents) with mode 0700 whatever the umask.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(DIR_MODE);
    }
    b.create(dir)?;
    set_mode(dir, DIR_MODE)
}

/// Create the data dir if needed and tighten what is already in it: the
/// dir itself, the database files (`kasbah.db` is created here, empty and
/// 0600, so SQLite never creates it with its default 0644), the audit and
/// artifact keys, and the blob, scratch and compiled trees.
pub fn prepare(data_dir: &Path) -> io::Result<()> {
    create_dir(data_dir)?;
    let db = data_dir.join("kasbah.db");
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        open.mode(FILE_MODE);
    }
    drop(open.open(&db)?);
    fix_db_files(data_dir)?;
    for key in [
        "audit-log.key",
        "compiled.key",
        "secrets.key",
        "gpu-warm.json",
    ] {
        let key = data_dir.join(key);
        if key.exists() {
            set_mode(&key, FILE_MODE)?;
        }
    }
    for sub in ["blobs", "scratch", "compiled"] {
        let p = data_dir.join(sub);
        if p.exists() {
            fix_tree(&p)?;
        }
    }
    Ok(())
}

/// `kasbah.db*` → 0600 (after SQLite has made its `-wal`/`-shm`).
pub fn fix_db_files(data_dir: &Path) -> io::Result<()> {
    for f in DB_FILES {
        let p = data_dir.join(f);
        match set_mode(&p, FILE_MODE) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    Ok(())
}

/// Directories → 0700; files → 0400 if they had no owner write bit (sealed
/// dataset blobs; scratch mounts' links to them), else 0600. Symlinks are
/// neither followed nor changed (the platform makes none). Scratch
/// directories are 0555 while mounted; they are removed at start anyway.
fn fix_tree(root: &Path) -> io::Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        set_mode(&dir, DIR_MODE)?;
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let ty = e.file_type()?;
            let p = e.path();
            if ty.is_dir() {
                stack.push(p);
            } else if ty.is_file() {
                let sealed = e.metadata()?.permissions().readonly();
                set_mode(&p, if sealed { SEALED_MODE } else { FILE_MODE })?;
            }
        }
    }
    Ok(())
}

/// Make a file sealed (0400): dataset blobs.
pub fn seal(p: &Path) -> io::Result<()> {
    set_mode(p, SEALED_MODE)
}
