//! One memory map of the database file, shared by every read connection of the process.
//!
//! SQLite's own `mmap_size` maps the file once per connection. With one read connection per worker,
//! the kernel then counts every page a reader touched once per connection in the process's RSS (16
//! workers showed 240 MiB of "file-backed" RSS for a 30 MiB database), although it is the same page
//! cache. Without a map, each of those connections keeps its own 2 MiB copy of random pages and
//! reads every miss with a `pread` (the profile of `GET /sessions/:id` showed a third of a worker's
//! time there), and a reader drops its whole cache whenever anyone has committed since its last read.
//!
//! This is a thin VFS over SQLite's default (unix) VFS. It opens every file through the default VFS
//! and keeps all of its methods, except that for a main database file `xFetch` hands out pages of one
//! process-wide read-only mapping of that file (one per file, found by device and inode). SQLite only
//! fetches pages that are in the database file as of the reader's snapshot (pages in the WAL are read
//! from the WAL), and a page is handed out only when it and 256 bytes after it lie inside the file's
//! size as last seen (so the last page is read with `pread`, as SQLite's own `xFetch` does); the
//! size is looked up again (`fstat`) when a page lies beyond it. `MAP_SHARED` keeps the map coherent
//! with the writer's checkpoints, exactly like SQLite's own map.
//!
//! What this relies on, as SQLite's own `mmap_size` does: the database file never shrinks under a
//! running server (sessiond never runs `VACUUM` on it; `backup` writes another file; `restore` takes
//! the serve lock). Only connections opened with [`VFS_NAME`] and a non-zero `mmap_size` use the map:
//! the writer keeps plain I/O.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, Weak};

use rusqlite::ffi;

/// The VFS read connections are opened with.
pub const VFS_NAME: &str = "sessiond-shared-map";
const VFS_NAME_C: &CStr = c"sessiond-shared-map";

/// Address space reserved for one file's map (no memory is used until a page is touched). Pages
/// beyond it are read with `pread`, as without a map.
const RESERVE: usize = 64 << 30;

/// Bytes of the file that must follow a page handed out from the map. SQLite may read a few bytes
/// past a page's end (a record at the very end of a page, in `vdbeRecordCompareInt` for one), and
/// past the file's last page a mapping raises SIGBUS: the last page is read with `pread` instead.
/// The unix VFS's own `xFetch` keeps the same 256 bytes for the same reason.
const EOF_BUFFER: u64 = 256;

/// A read-only `MAP_SHARED` mapping of one database file.
struct SharedMap {
    file: std::fs::File,
    key: (u64, u64),
    base: *mut u8,
    /// The file's size when last looked at: pages below it may be handed out.
    valid: AtomicU64,
}

// SAFETY: the mapping is read-only and lives as long as the value; the pointer is only offset.
unsafe impl Send for SharedMap {}
unsafe impl Sync for SharedMap {}

impl SharedMap {
    /// The live map of the file at `path`, or a new one.
    fn for_path(path: &std::path::Path) -> std::io::Result<Arc<SharedMap>> {
        static MAPS: Mutex<Vec<Weak<SharedMap>>> = Mutex::new(Vec::new());
        let file = std::fs::File::open(path)?;
        let meta = file.metadata()?;
        let key = (meta.dev(), meta.ino());
        let mut maps = MAPS.lock().unwrap_or_else(|e| e.into_inner());
        maps.retain(|m| m.strong_count() > 0);
        // An inode cannot be reused while a live map holds its file open, so the key is sound.
        if let Some(map) = maps.iter().filter_map(Weak::upgrade).find(|m| m.key == key) {
            return Ok(map);
        }
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh read-only shared mapping of a file we hold open; checked for failure.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                RESERVE,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let map = Arc::new(SharedMap {
            valid: AtomicU64::new(meta.len().min(RESERVE as u64)),
            file,
            key,
            base: base.cast(),
        });
        maps.push(Arc::downgrade(&map));
        Ok(map)
    }

    /// Looks at the file's size again; pages below it may be handed out.
    fn refresh(&self) -> u64 {
        let len = self.file.metadata().map(|m| m.len()).unwrap_or(0);
        let len = len.min(RESERVE as u64);
        self.valid.store(len, Ordering::Release);
        len
    }

    /// A pointer to `amt` bytes at `offset`, when they and [`EOF_BUFFER`] bytes after them lie
    /// inside the file.
    fn get(&self, offset: u64, amt: u64) -> Option<*mut u8> {
        let end = offset.checked_add(amt)?.checked_add(EOF_BUFFER)?;
        if end > self.valid.load(Ordering::Acquire) && end > self.refresh() {
            return None;
        }
        // SAFETY: end <= valid <= RESERVE, so the result points inside the mapping.
        Some(unsafe { self.base.add(offset as usize) })
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in for_path; no connection uses it any more
        // (each holds an Arc until its file is closed).
        unsafe { libc::munmap(self.base.cast(), RESERVE) };
    }
}

/// What this VFS keeps after the default VFS's own file structure.
struct Extra {
    map: Option<Arc<SharedMap>>,
    /// The default VFS's methods for this file (ours only replace three of them).
    original: *const ffi::sqlite3_io_methods,
}

/// The default VFS, which does all the work.
static DEFAULT_VFS: AtomicPtr<ffi::sqlite3_vfs> = AtomicPtr::new(std::ptr::null_mut());

/// Registers the VFS (once); read connections name it when they open.
pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: sqlite3_vfs_find(NULL) returns the default VFS, which lives for the process; the
        // copy we register is leaked and so lives for the process too.
        unsafe {
            let default = ffi::sqlite3_vfs_find(std::ptr::null());
            if default.is_null() {
                log::warn!("SQLite has no default VFS; read connections will not share a map");
                return;
            }
            DEFAULT_VFS.store(default, Ordering::Release);
            let mut vfs = *default;
            vfs.szOsFile = extra_offset(default) as c_int + std::mem::size_of::<Extra>() as c_int;
            vfs.zName = VFS_NAME_C.as_ptr();
            vfs.pNext = std::ptr::null_mut();
            vfs.xOpen = Some(x_open);
            let rc = ffi::sqlite3_vfs_register(Box::into_raw(Box::new(vfs)), 0);
            if rc != ffi::SQLITE_OK {
                log::warn!("could not register the shared-map VFS (SQLite error {rc})");
            }
        }
    });
}

/// Where [`Extra`] starts inside a file structure of our VFS.
unsafe fn extra_offset(default: *const ffi::sqlite3_vfs) -> usize {
    // SAFETY: the caller passes the live default VFS.
    let size = unsafe { (*default).szOsFile } as usize;
    size.next_multiple_of(std::mem::align_of::<Extra>())
}

unsafe fn extra(file: *mut ffi::sqlite3_file) -> *mut Extra {
    // SAFETY: SQLite allocated szOsFile bytes for this file, with Extra at the end.
    unsafe {
        file.cast::<u8>()
            .add(extra_offset(DEFAULT_VFS.load(Ordering::Acquire)))
            .cast()
    }
}

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: SQLite calls this with a buffer of our szOsFile bytes; the default VFS fills in its part
    // and we write Extra after it, then swap in methods that know about Extra.
    unsafe {
        let default = DEFAULT_VFS.load(Ordering::Acquire);
        let Some(open) = (*default).xOpen else {
            return ffi::SQLITE_ERROR;
        };
        let rc = open(default, name, file, flags, out_flags);
        if rc != ffi::SQLITE_OK || (*file).pMethods.is_null() {
            return rc;
        }
        let map = if flags & ffi::SQLITE_OPEN_MAIN_DB != 0 && !name.is_null() {
            let path = CStr::from_ptr(name as *const c_char);
            use std::os::unix::ffi::OsStrExt;
            let path = std::path::Path::new(std::ffi::OsStr::from_bytes(path.to_bytes()));
            match SharedMap::for_path(path) {
                Ok(map) => Some(map),
                Err(e) => {
                    log::warn!(
                        "could not map {}: {e}; reading it without a map",
                        path.display()
                    );
                    None
                }
            }
        } else {
            None
        };
        let original = (*file).pMethods;
        extra(file).write(Extra { map, original });
        (*file).pMethods = methods_for(original);
        rc
    }
}

/// Our method table for files whose default methods are `original`: the same, with our close,
/// fetch and unfetch. Made once per distinct table and kept for the process.
fn methods_for(original: *const ffi::sqlite3_io_methods) -> *const ffi::sqlite3_io_methods {
    static TABLES: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());
    let mut tables = TABLES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&(_, ours)) = tables.iter().find(|(o, _)| *o == original as usize) {
        return ours as *const _;
    }
    // SAFETY: `original` is the default VFS's static method table.
    let mut ours = unsafe { *original };
    ours.iVersion = ours.iVersion.max(3);
    ours.xClose = Some(x_close);
    ours.xFetch = Some(x_fetch);
    ours.xUnfetch = Some(x_unfetch);
    let ours = Box::into_raw(Box::new(ours)) as usize;
    tables.push((original as usize, ours));
    ours as *const _
}

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: the file was opened by x_open, so Extra is initialised; it is read out exactly once.
    unsafe {
        let Extra { map, original } = extra(file).read();
        drop(map);
        match (*original).xClose {
            Some(close) => close(file),
            None => ffi::SQLITE_OK,
        }
    }
}

unsafe extern "C" fn x_fetch(
    file: *mut ffi::sqlite3_file,
    offset: ffi::sqlite3_int64,
    amt: c_int,
    out: *mut *mut c_void,
) -> c_int {
    // SAFETY: Extra is initialised (x_open); `out` is SQLite's out-pointer.
    unsafe {
        *out = std::ptr::null_mut();
        if let (Some(map), Ok(offset), Ok(amt)) = (
            &(*extra(file)).map,
            u64::try_from(offset),
            u64::try_from(amt),
        ) {
            if let Some(p) = map.get(offset, amt) {
                *out = p.cast();
                #[cfg(test)]
                tests::FETCHED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_unfetch(
    file: *mut ffi::sqlite3_file,
    _offset: ffi::sqlite3_int64,
    page: *mut c_void,
) -> c_int {
    // SQLite releases a page (nothing to do: the map is shared and stays), or, with no page, asks
    // for the map to be dropped because the file may have changed size: look at the size again.
    if page.is_null() {
        // SAFETY: Extra is initialised (x_open).
        if let Some(map) = unsafe { &(*extra(file)).map } {
            map.refresh();
        }
    }
    ffi::SQLITE_OK
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Pages handed out from a map, in this test binary.
    pub static FETCHED: AtomicU64 = AtomicU64::new(0);

    /// The file's last page never comes from the map: reading a few bytes past it would raise
    /// SIGBUS (`sessiond backup` died so on its copy's integrity check).
    #[test]
    fn the_last_page_is_never_handed_out() {
        let dir = crate::db::TestDir::new("map-eof");
        let path = dir.join("f");
        std::fs::write(&path, vec![7u8; 3 * 4096]).unwrap();
        let map = SharedMap::for_path(&path).unwrap();
        assert!(map.get(0, 4096).is_some());
        assert!(map.get(4096, 4096).is_some());
        assert!(map.get(2 * 4096, 4096).is_none(), "the last page");
        // Once the file grows, the page before its new last one may come from the map.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&[7u8; 4096])
            .unwrap();
        let p = map.get(2 * 4096, 4096).expect("no longer the last page");
        // SAFETY: the page lies inside the file, which holds 7s.
        assert_eq!(unsafe { *p.add(4095 + EOF_BUFFER as usize) }, 7);
    }

    #[test]
    fn readers_share_one_map_and_see_the_file_grow() {
        let dir = crate::db::TestDir::new("map");
        let path = dir.join("t.db");
        let _ = std::fs::remove_file(&path);
        register();
        let w = rusqlite::Connection::open(&path).unwrap();
        w.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB);",
        )
        .unwrap();
        let open_reader = || {
            let r = rusqlite::Connection::open_with_flags_and_vfs(
                &path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                VFS_NAME,
            )
            .unwrap();
            r.execute_batch("PRAGMA mmap_size = 1073741824; PRAGMA cache_size = 10;")
                .unwrap();
            r
        };
        let (r1, r2) = (open_reader(), open_reader());
        let count = |r: &rusqlite::Connection| -> (i64, i64) {
            r.query_row(
                "SELECT count(*), coalesce(sum(length(v)), 0) FROM t",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap()
        };
        assert_eq!(count(&r1), (0, 0));
        let fetched_before = FETCHED.load(Ordering::Relaxed);
        // Grow the file well past its first size, through the WAL and checkpoints.
        for round in 1..=5i64 {
            for _ in 0..200 {
                w.execute("INSERT INTO t (v) VALUES (randomblob(3000))", [])
                    .unwrap();
            }
            w.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
            assert_eq!(count(&r1), (round * 200, round * 200 * 3000));
            assert_eq!(count(&r2), (round * 200, round * 200 * 3000));
        }
        assert!(
            FETCHED.load(Ordering::Relaxed) > fetched_before + 1000,
            "the readers read pages from the map"
        );
        // Two readers' main files and this lookup hold the one map.
        let map = SharedMap::for_path(&path).unwrap();
        assert_eq!(Arc::strong_count(&map), 3);
        drop((map, r1, r2));
        let map = SharedMap::for_path(&path).unwrap();
        assert_eq!(
            Arc::strong_count(&map),
            1,
            "closing the readers released the map"
        );
    }
}
