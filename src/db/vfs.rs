//! sessiond's VFS: SQLite's default (unix) VFS with two changes, each for one kind of connection.
//!
//! **Readers: one memory map of the database file, shared by every read connection of the process.**
//! SQLite's own `mmap_size` maps the file once per connection. With one read connection per worker,
//! the kernel then counts every page a reader touched once per connection in the process's RSS (16
//! workers showed 240 MiB of "file-backed" RSS for a 30 MiB database), although it is the same page
//! cache. Without a map, each of those connections keeps its own 2 MiB copy of random pages and
//! reads every miss with a `pread` (the profile of `GET /sessions/:id` showed a third of a worker's
//! time there), and a reader drops its whole cache whenever anyone has committed since its last read.
//!
//! For a main database file `xFetch` hands out pages of one process-wide read-only mapping of that
//! file (one per file, found by device and inode). SQLite only fetches pages that are in the database
//! file as of the reader's snapshot (pages in the WAL are read from the WAL), and a page is handed out
//! only when it and 256 bytes after it lie inside the file's size as last seen (so the last page is
//! read with `pread`, as SQLite's own `xFetch` does); the size is looked up again (`fstat`) when a
//! page lies beyond it. `MAP_SHARED` keeps the map coherent with the writer's checkpoints, exactly
//! like SQLite's own map.
//!
//! What this relies on, as SQLite's own `mmap_size` does: the database file never shrinks under a
//! running server (sessiond never runs `VACUUM` on it; `backup` writes another file; `restore` takes
//! the serve lock). Only connections opened with [`VFS_NAME`] and a non-zero `mmap_size` use the map:
//! the writer reads with `pread`.
//!
//! **The writer: a few large writes per commit to the WAL instead of two per page.** SQLite writes a
//! WAL frame as two calls (its 24-byte header, then the page), and a 4,120-byte frame straddles two
//! pages of the kernel's page cache: the writer's profile showed a fifth of its time in `pwrite`.
//! A WAL file opened through [`WRITER_VFS_NAME`] gathers writes that continue the previous one in
//! a buffer (up to [`WAL_BUFFER`] bytes) and hands them to the kernel ([`MAX_WRITE`] bytes at a
//! time, the most the unix VFS takes in one call) before anything
//! else touches the file: a sync, a read, a truncate, a size query, a file control, a write
//! elsewhere, or the close. This is safe only because the writer runs with `synchronous=FULL`: SQLite
//! then syncs the WAL at every commit *before* it publishes the new frames to readers (in the
//! shared-memory index), so no reader, here or in another process, can look for a frame that is
//! still in the buffer. With `synchronous=NORMAL` commits do not sync, so [`super::open`] uses the
//! plain VFS for such a writer. A write error surfaces at the sync, which fails the commit.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, Weak};

use rusqlite::ffi;

/// The VFS read connections are opened with.
pub const VFS_NAME: &str = "sessiond-shared-map";
const VFS_NAME_C: &CStr = c"sessiond-shared-map";

/// The VFS the writer's connection is opened with when it runs with `synchronous=FULL`.
pub const WRITER_VFS_NAME: &str = "sessiond-wal-writer";
const WRITER_VFS_NAME_C: &CStr = c"sessiond-wal-writer";

/// The most WAL bytes gathered before they are written (a group commit of ~60 share creates
/// writes about 1 MiB).
const WAL_BUFFER: usize = 2 << 20;

/// The most bytes the unix VFS's `xWrite` takes in one call: it masks a length with `0x1ffff`
/// (`seekAndWriteFd`), so a longer write comes out short and reports a full disk.
const MAX_WRITE: usize = 0x1ffff;

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
    /// WAL writes not yet handed to the kernel (a WAL file of the writer's VFS only).
    pending: Option<Pending>,
    /// The default VFS's methods for this file (ours wrap some of them).
    original: *const ffi::sqlite3_io_methods,
}

/// Contiguous bytes to be written at `offset`.
struct Pending {
    offset: i64,
    bytes: Vec<u8>,
}

/// The default VFS, which does all the work.
static DEFAULT_VFS: AtomicPtr<ffi::sqlite3_vfs> = AtomicPtr::new(std::ptr::null_mut());

/// Marks the writer's VFS (its `pAppData`); the readers' VFS has none.
static GATHER_WAL_WRITES: u8 = 1;

/// Registers both VFSs (once); connections name one when they open.
pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: sqlite3_vfs_find(NULL) returns the default VFS, which lives for the process; the
        // copies we register are leaked and so live for the process too.
        unsafe {
            let default = ffi::sqlite3_vfs_find(std::ptr::null());
            if default.is_null() {
                log::warn!("SQLite has no default VFS; connections use SQLite's own I/O");
                return;
            }
            DEFAULT_VFS.store(default, Ordering::Release);
            for (name, app_data) in [
                (VFS_NAME_C, std::ptr::null_mut()),
                (
                    WRITER_VFS_NAME_C,
                    (&raw const GATHER_WAL_WRITES).cast_mut().cast(),
                ),
            ] {
                let mut vfs = *default;
                vfs.szOsFile =
                    extra_offset(default) as c_int + std::mem::size_of::<Extra>() as c_int;
                vfs.zName = name.as_ptr();
                vfs.pNext = std::ptr::null_mut();
                vfs.pAppData = app_data;
                vfs.xOpen = Some(x_open);
                let rc = ffi::sqlite3_vfs_register(Box::into_raw(Box::new(vfs)), 0);
                if rc != ffi::SQLITE_OK {
                    log::warn!("could not register the VFS {name:?} (SQLite error {rc})");
                }
            }
        }
    });
}

/// True once [`register`] has registered the VFSs (connections fall back to the default if not).
pub fn registered() -> bool {
    register();
    !DEFAULT_VFS.load(Ordering::Acquire).is_null()
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
    vfs: *mut ffi::sqlite3_vfs,
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
        let writer = !(*vfs).pAppData.is_null();
        let map = if flags & ffi::SQLITE_OPEN_MAIN_DB != 0 && !name.is_null() && !writer {
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
        let pending = (flags & ffi::SQLITE_OPEN_WAL != 0 && writer).then(|| Pending {
            offset: 0,
            bytes: Vec::new(),
        });
        let original = (*file).pMethods;
        extra(file).write(Extra {
            map,
            pending,
            original,
        });
        (*file).pMethods = methods_for(original);
        rc
    }
}

/// Our method table for files whose default methods are `original`: the same, with our close,
/// fetch and unfetch (the map) and our write and the methods that must see the gathered WAL bytes
/// first. Made once per distinct table and kept for the process.
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
    ours.xWrite = Some(x_write);
    ours.xRead = Some(x_read);
    ours.xSync = Some(x_sync);
    ours.xTruncate = Some(x_truncate);
    ours.xFileSize = Some(x_file_size);
    ours.xFileControl = Some(x_file_control);
    let ours = Box::into_raw(Box::new(ours)) as usize;
    tables.push((original as usize, ours));
    ours as *const _
}

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: the file was opened by x_open, so Extra is initialised; it is read out exactly once.
    unsafe {
        let mut extra = extra(file).read();
        let flushed = extra.flush(file);
        if flushed != ffi::SQLITE_OK {
            log::error!("WAL bytes could not be written at close (SQLite error {flushed})");
        }
        let original = extra.original;
        drop(extra);
        match (*original).xClose {
            Some(close) => close(file),
            None => ffi::SQLITE_OK,
        }
    }
}

impl Pending {
    /// Whether a write of `len` bytes at `offset` can join the gathered bytes.
    fn takes(&self, offset: i64, len: usize) -> bool {
        (self.bytes.is_empty() || self.offset + self.bytes.len() as i64 == offset)
            && self.bytes.len() + len <= WAL_BUFFER
    }
}

impl Extra {
    /// Writes the gathered WAL bytes, if any, through the default VFS's `xWrite` on `file` (which
    /// touches only the default VFS's part of the file structure, never `self`).
    ///
    /// # Safety
    /// `file` is the open file this `Extra` belongs to.
    unsafe fn flush(&mut self, file: *mut ffi::sqlite3_file) -> c_int {
        let Some(pending) = self.pending.as_mut() else {
            return ffi::SQLITE_OK;
        };
        // SAFETY: `original` is the default VFS's static method table.
        let Some(write) = (unsafe { *self.original }).xWrite else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        let mut rc = ffi::SQLITE_OK;
        let mut done = 0;
        while done < pending.bytes.len() && rc == ffi::SQLITE_OK {
            let at = pending.offset + done as i64;
            // Pieces end on a 4 KiB boundary of the file, so the kernel copies whole pages.
            let end = ((at as usize + MAX_WRITE) & !4095)
                .min(pending.offset as usize + pending.bytes.len());
            let piece = &pending.bytes[done..end - pending.offset as usize];
            // SAFETY: the caller's open file, and a slice of our own buffer.
            rc = unsafe { write(file, piece.as_ptr().cast(), piece.len() as c_int, at) };
            done += piece.len();
            #[cfg(test)]
            tests::WAL_WRITES.fetch_add(1, Ordering::Relaxed);
        }
        // Written or not, the bytes are SQLite's to write again: after a failed sync it rolls the
        // transaction back and never reads the frames it could not commit.
        pending.bytes.clear();
        rc
    }
}

unsafe extern "C" fn x_write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amt: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: Extra is initialised (x_open); `data` holds `amt` bytes (SQLite's contract).
    unsafe {
        let extra = &mut *extra(file);
        let gather =
            extra.pending.is_some() && usize::try_from(amt).is_ok_and(|len| len <= WAL_BUFFER);
        if gather {
            let len = amt as usize;
            if !extra.pending.as_ref().is_some_and(|p| p.takes(offset, len)) {
                let rc = extra.flush(file);
                if rc != ffi::SQLITE_OK {
                    return rc;
                }
            }
            // Empty after a flush, so it takes any write of at most WAL_BUFFER bytes.
            if let Some(pending) = extra.pending.as_mut() {
                if pending.bytes.is_empty() {
                    pending.offset = offset;
                }
                let bytes = std::slice::from_raw_parts(data.cast::<u8>(), len);
                pending.bytes.extend_from_slice(bytes);
                #[cfg(test)]
                tests::WAL_GATHERED.fetch_add(1, Ordering::Relaxed);
                return ffi::SQLITE_OK;
            }
        }
        match (*extra.original).xWrite {
            Some(write) => write(file, data, amt, offset),
            None => ffi::SQLITE_IOERR_WRITE,
        }
    }
}

/// Defines a method that writes the gathered WAL bytes first, then calls the default one.
macro_rules! flush_first {
    ($name:ident, $method:ident, ($($arg:ident: $ty:ty),*), $missing:expr) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file, $($arg: $ty),*) -> c_int {
            // SAFETY: Extra is initialised (x_open); the arguments are SQLite's, passed on.
            unsafe {
                let extra = &mut *extra(file);
                let rc = extra.flush(file);
                if rc != ffi::SQLITE_OK {
                    return rc;
                }
                match (*extra.original).$method {
                    Some(method) => method(file, $($arg),*),
                    None => $missing,
                }
            }
        }
    };
}

flush_first!(x_read, xRead, (data: *mut c_void, amt: c_int, offset: ffi::sqlite3_int64), ffi::SQLITE_IOERR_READ);
flush_first!(x_sync, xSync, (flags: c_int), ffi::SQLITE_OK);
flush_first!(x_truncate, xTruncate, (size: ffi::sqlite3_int64), ffi::SQLITE_IOERR_TRUNCATE);
flush_first!(x_file_size, xFileSize, (size: *mut ffi::sqlite3_int64), ffi::SQLITE_IOERR_FSTAT);
flush_first!(x_file_control, xFileControl, (op: c_int, arg: *mut c_void), ffi::SQLITE_NOTFOUND);

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
    /// WAL writes SQLite asked for that were gathered, and writes made of them, in this test binary.
    pub static WAL_GATHERED: AtomicU64 = AtomicU64::new(0);
    pub static WAL_WRITES: AtomicU64 = AtomicU64::new(0);

    /// The name of the VFS a connection was opened with.
    fn vfs_of(conn: &rusqlite::Connection) -> String {
        let mut vfs: *mut ffi::sqlite3_vfs = std::ptr::null_mut();
        // SAFETY: SQLITE_FCNTL_VFS_POINTER writes the connection's (live, registered) VFS.
        unsafe {
            let rc = ffi::sqlite3_file_control(
                conn.handle(),
                c"main".as_ptr(),
                ffi::SQLITE_FCNTL_VFS_POINTER,
                (&raw mut vfs).cast(),
            );
            assert_eq!(rc, ffi::SQLITE_OK);
            CStr::from_ptr((*vfs).zName).to_string_lossy().into_owned()
        }
    }

    /// A commit's WAL frames reach the kernel in a few writes, however large the commit (the unix
    /// VFS takes at most 128 KiB per call), readers see every commit at once, and the file holds
    /// it after a reopen. Only a writer that syncs every commit gathers.
    #[test]
    fn the_writer_gathers_wal_writes_and_readers_see_every_commit() {
        let dir = crate::db::TestDir::new("wal-gather");
        let path = dir.join("g.db");
        let w = crate::db::open(&path, crate::db::Access::ReadWrite, true).unwrap();
        assert_eq!(vfs_of(&w), WRITER_VFS_NAME);
        w.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
            .unwrap();
        let r = crate::db::open(&path, crate::db::Access::ReadOnly, true).unwrap();
        let sum = |c: &rusqlite::Connection| -> (i64, i64) {
            c.query_row(
                "SELECT count(*), coalesce(sum(length(v)), 0) FROM t",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap()
        };
        let (gathered, writes) = (
            WAL_GATHERED.load(Ordering::Relaxed),
            WAL_WRITES.load(Ordering::Relaxed),
        );
        // 20 commits of 100 rows of 3,000 bytes: about 75 pages, 150 frame writes, 300 KiB each.
        for round in 1..=20i64 {
            w.execute_batch("BEGIN").unwrap();
            for _ in 0..100 {
                w.execute("INSERT INTO t (v) VALUES (randomblob(3000))", [])
                    .unwrap();
            }
            w.execute_batch("COMMIT").unwrap();
            assert_eq!(sum(&r), (round * 100, round * 300_000));
        }
        let gathered = WAL_GATHERED.load(Ordering::Relaxed) - gathered;
        let writes = WAL_WRITES.load(Ordering::Relaxed) - writes;
        // About 50 gathered per write here; other tests of this binary may gather at the same
        // time (a few commits each), so the bound leaves room for them.
        assert!(gathered >= 20 * 150, "{gathered} gathered");
        assert!(
            writes * 10 < gathered,
            "{writes} writes for {gathered} gathered"
        );
        drop((w, r));
        let again = crate::db::open(&path, crate::db::Access::ReadWrite, true).unwrap();
        assert_eq!(sum(&again), (2000, 6_000_000));
        let integrity: String = again
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        assert_eq!(integrity, "ok");
        drop(again);
        let normal = crate::db::open(&path, crate::db::Access::ReadWrite, false).unwrap();
        assert_ne!(
            vfs_of(&normal),
            WRITER_VFS_NAME,
            "a writer without a sync per commit"
        );
    }

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
