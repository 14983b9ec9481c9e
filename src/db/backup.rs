//! Backups, restores, and the lock that says a server is using a database file.
//!
//! A backup is `VACUUM INTO` a temporary file beside the destination — a consistent snapshot read
//! from one read transaction, so it works while the server writes — then fsync, an integrity check of
//! the copy, rename, and fsync of the directory. A restore refuses a database a running server holds
//! (the server keeps an exclusive `flock` on `<db>.lock` for its whole life) and removes the stale
//! `-wal`/`-shm` files of the database it replaces.

use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::{Access, integrity_check, migrate, open};
use crate::error::{Error, Result};

/// Held by `serve` for its lifetime: no second server, and no restore, on the same database.
pub struct ServeLock {
    _file: File,
}

fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes the exclusive lock of `db`, or says who has it.
pub fn lock(db: &Path) -> Result<ServeLock> {
    let path = lock_path(db);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| {
            Error::Internal(format!("cannot open the lock file {}: {e}", path.display()))
        })?;
    // SAFETY: flock on a descriptor we own; released when the file is closed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(Error::Internal(format!(
            "{} is in use by a running sessiond (lock {} is held); stop it first",
            db.display(),
            path.display()
        )));
    }
    Ok(ServeLock { _file: file })
}

/// What a finished backup reports.
pub struct Backup {
    pub bytes: u64,
    pub schema_version: i64,
}

/// Writes a consistent copy of `db` to `dest`.
pub fn backup(db: &Path, dest: &Path) -> Result<Backup> {
    if !db.exists() {
        return Err(Error::Internal(format!("no database at {}", db.display())));
    }
    // VACUUM INTO needs a connection that may write (it writes only the new file).
    let conn = open(db, Access::ReadWrite, true)?;
    let version = migrate::version(&conn)?;
    migrate::check_not_newer(version)?;
    let file_name = dest
        .file_name()
        .ok_or_else(|| Error::Internal(format!("{} is not a file path", dest.display())))?;
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let tmp_str = tmp
        .to_str()
        .ok_or_else(|| Error::Internal("the backup path is not UTF-8".into()))?;
    let result = (|| {
        conn.execute("VACUUM INTO ?1", [tmp_str])
            .map_err(|e| Error::Internal(format!("VACUUM INTO {}: {e}", tmp.display())))?;
        File::open(&tmp)?.sync_all()?;
        let copy = open(&tmp, Access::ReadOnly, true)?;
        let verdict = integrity_check(&copy)?;
        if verdict != "ok" {
            return Err(Error::Internal(format!(
                "the backup failed its integrity check: {verdict}"
            )));
        }
        drop(copy);
        let bytes = std::fs::metadata(&tmp)?.len();
        std::fs::rename(&tmp, dest)?;
        File::open(&dir)?.sync_all()?;
        Ok(Backup {
            bytes,
            schema_version: version,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Replaces `db` with the backup `src`, after checking it.
pub fn restore(src: &Path, db: &Path) -> Result<()> {
    let _lock = lock(db)?;
    {
        let conn = open(src, Access::ReadOnly, true)?;
        let version = migrate::version(&conn)?;
        migrate::check_not_newer(version)?;
        let verdict = integrity_check(&conn)?;
        if verdict != "ok" {
            return Err(Error::Internal(format!(
                "{} fails its integrity check: {verdict}",
                src.display()
            )));
        }
    }
    let dir = match db.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(".sessiond-restore-{}", std::process::id()));
    std::fs::copy(src, &tmp)?;
    File::open(&tmp)?.sync_all()?;
    for suffix in ["-wal", "-shm"] {
        let mut stale = db.as_os_str().to_owned();
        stale.push(suffix);
        match std::fs::remove_file(PathBuf::from(stale)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    std::fs::rename(&tmp, db)?;
    File::open(&dir)?.sync_all()?;
    Ok(())
}
