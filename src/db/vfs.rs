//! sessiond's VFSs: SQLite's default (unix) VFS with three changes, for readers and writers.
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
//!
//! **Readers: a read lock kept from one read transaction to the next.** A read transaction takes a
//! shared lock on one of the five read-lock slots of the `-shm` file and releases it at its end.
//! When no other connection of the process holds that slot, the default VFS takes and releases it
//! with `fcntl`: two system calls on the kernel's lock list of the file. That was half the time of a
//! primary-key lookup on one thread, and 6.7% of `GET /sessions/:id` under load. So a reader's
//! file keeps the lock when SQLite releases it, and hands it back without a system call when SQLite
//! next asks for the same slot; a request for another slot first gives the kept lock back.
//!
//! SQLite would count a kept lock as a reader at that slot's mark. So every request for an
//! exclusive lock on read slots (a checkpoint, a writer starting the WAL over, a reader moving a
//! slot's mark) first takes back the kept locks on those slots from every file of the process, and
//! the files of all three VFSs do this: [`super::open`] opens read-write connections through
//! [`WRITER_VFS_NAME`] or [`PLAIN_VFS_NAME`], never through the default VFS. Only a file between
//! transactions keeps a lock, and a kept lock is given and taken back under that file's mutex, so a
//! reader inside a transaction is never affected. Each transaction still reads the WAL index header
//! afresh, so a kept lock never makes a reader miss a commit. Another process sees a kept lock as a
//! reader of this one: its checkpoints may stop short of the end of the WAL (the writer of this one
//! finishes them), which is safe. The default VFS forgets a file's locks without releasing them when
//! its shared memory is unmapped, so the kept lock is given back first.

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

/// The VFS any other read-write connection is opened with: the default one, except that its
/// checkpoints take back the read locks readers keep (which the default VFS would count as
/// readers in this process).
pub const PLAIN_VFS_NAME: &str = "sessiond-plain";
const PLAIN_VFS_NAME_C: &CStr = c"sessiond-plain";

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
    /// The read lock this file keeps between read transactions (a reader's main database file).
    keeper: Option<Arc<Keeper>>,
    /// Device and inode of a main database file: the read locks its checkpoints take back are
    /// those kept for the same file.
    db: Option<(u64, u64)>,
}

/// Contiguous bytes to be written at `offset`.
struct Pending {
    offset: i64,
    bytes: Vec<u8>,
}

/// The default VFS, which does all the work.
static DEFAULT_VFS: AtomicPtr<ffi::sqlite3_vfs> = AtomicPtr::new(std::ptr::null_mut());

/// What a VFS of ours is for (its `pAppData` points to one of [`KINDS`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// [`VFS_NAME`]: main database files read through the shared map, read locks kept.
    Reader,
    /// [`WRITER_VFS_NAME`]: WAL writes gathered.
    GatheringWriter,
    /// [`PLAIN_VFS_NAME`]: neither.
    Plain,
}

static KINDS: [(Kind, &CStr); 3] = [
    (Kind::Reader, VFS_NAME_C),
    (Kind::GatheringWriter, WRITER_VFS_NAME_C),
    (Kind::Plain, PLAIN_VFS_NAME_C),
];

/// Registers our VFSs (once); connections name one when they open.
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
            for (kind, name) in &KINDS {
                let mut vfs = *default;
                vfs.szOsFile =
                    extra_offset(default) as c_int + std::mem::size_of::<Extra>() as c_int;
                vfs.zName = name.as_ptr();
                vfs.pNext = std::ptr::null_mut();
                vfs.pAppData = std::ptr::from_ref(kind).cast_mut().cast();
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
        let kind = *(*vfs).pAppData.cast::<Kind>();
        let path = (flags & ffi::SQLITE_OPEN_MAIN_DB != 0 && !name.is_null()).then(|| {
            use std::os::unix::ffi::OsStrExt;
            let path = CStr::from_ptr(name as *const c_char);
            std::path::Path::new(std::ffi::OsStr::from_bytes(path.to_bytes()))
        });
        let db = path
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| (m.dev(), m.ino()));
        let map = if let Some(path) = path.filter(|_| kind == Kind::Reader) {
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
        let pending =
            (flags & ffi::SQLITE_OPEN_WAL != 0 && kind == Kind::GatheringWriter).then(|| Pending {
                offset: 0,
                bytes: Vec::new(),
            });
        let original = (*file).pMethods;
        let keeper = match (*original).xShmLock {
            Some(lock) if db.is_some() && kind == Kind::Reader => {
                let keeper = Arc::new(Keeper {
                    file: file as usize,
                    db,
                    lock,
                    kept: Mutex::new(None),
                });
                unpoisoned(&KEEPERS).push(keeper.clone());
                Some(keeper)
            }
            _ => None,
        };
        extra(file).write(Extra {
            map,
            pending,
            original,
            keeper,
            db,
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
    ours.xShmLock = Some(x_shm_lock);
    ours.xShmUnmap = Some(x_shm_unmap);
    let ours = Box::into_raw(Box::new(ours)) as usize;
    tables.push((original as usize, ours));
    ours as *const _
}

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: the file was opened by x_open, so Extra is initialised; it is read out exactly once.
    unsafe {
        let mut extra = extra(file).read();
        if let Some(keeper) = &extra.keeper {
            unpoisoned(&KEEPERS).retain(|k| !Arc::ptr_eq(k, keeper));
        }
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

/// SQLite's WAL read locks (`WAL_READ_LOCK(0)` to `WAL_READ_LOCK(4)` in its `wal.c`), as slots of
/// `xShmLock`; slots 0 to 2 are the write, checkpoint and recovery locks.
const READ_LOCKS: std::ops::Range<c_int> = 3..ffi::SQLITE_SHM_NLOCK;

/// A reader's main database file and the read lock it keeps (see the module documentation).
struct Keeper {
    /// The file structure, for `lock` (valid while the keeper is in [`KEEPERS`]).
    file: usize,
    /// The database file's device and inode ([`Extra::db`]).
    db: Option<(u64, u64)>,
    /// The default VFS's `xShmLock`.
    lock: unsafe extern "C" fn(*mut ffi::sqlite3_file, c_int, c_int, c_int) -> c_int,
    /// The read-lock slot SQLite released and the default VFS still holds for this file. `None`
    /// while SQLite holds a read lock of its own on the file: a file keeps at most one lock, and
    /// only one SQLite does not know about.
    kept: Mutex<Option<c_int>>,
}

impl Keeper {
    /// Gives the kept lock back to the default VFS if it lies in `slots`.
    ///
    /// # Safety
    /// The keeper is in [`KEEPERS`] (its file is open and its shared memory mapped), or `kept` is
    /// `None`.
    unsafe fn release(&self, slots: &std::ops::Range<c_int>) {
        let mut kept = unpoisoned(&self.kept);
        if let Some(slot) = kept.filter(|s| slots.contains(s)) {
            // SAFETY: the caller's promise; unlocking a shared lock the file holds.
            unsafe {
                (self.lock)(
                    self.file as *mut ffi::sqlite3_file,
                    slot,
                    1,
                    ffi::SQLITE_SHM_UNLOCK | ffi::SQLITE_SHM_SHARED,
                )
            };
            *kept = None;
            #[cfg(test)]
            tests::KEPT_RELEASED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Every reader file that may keep a read lock.
static KEEPERS: Mutex<Vec<Arc<Keeper>>> = Mutex::new(Vec::new());

fn unpoisoned<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

unsafe extern "C" fn x_shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    // SAFETY: Extra is initialised (x_open) and only read here; the arguments are SQLite's.
    unsafe {
        let extra = &*extra(file);
        let Some(lock) = (*extra.original).xShmLock else {
            return ffi::SQLITE_IOERR_SHMLOCK;
        };
        let shared = ffi::SQLITE_SHM_SHARED;
        if let Some(keeper) = extra
            .keeper
            .as_ref()
            .filter(|_| n == 1 && READ_LOCKS.contains(&offset) && flags & shared != 0)
        {
            let mut kept = unpoisoned(&keeper.kept);
            if flags & ffi::SQLITE_SHM_UNLOCK != 0 {
                // The end of a read transaction: keep the lock for the next one.
                *kept = Some(offset);
                return ffi::SQLITE_OK;
            }
            if *kept == Some(offset) {
                // The start of one that reads at the same mark: the lock is held already.
                *kept = None;
                #[cfg(test)]
                tests::KEPT_REUSED.fetch_add(1, Ordering::Relaxed);
                return ffi::SQLITE_OK;
            }
            drop(kept);
            // Another mark: the kept lock (if any) goes back before SQLite's own is taken.
            keeper.release(&READ_LOCKS);
            return lock(file, offset, n, flags);
        }
        let slots = offset..offset + n;
        if flags == ffi::SQLITE_SHM_LOCK | ffi::SQLITE_SHM_EXCLUSIVE
            && slots.start < READ_LOCKS.end
            && READ_LOCKS.start < slots.end
        {
            // A checkpoint or a reader moving a mark: no kept lock on the same database may
            // stand in its way, this file's own included (the default VFS would count it as
            // another holder's).
            for keeper in unpoisoned(&KEEPERS)
                .iter()
                .filter(|k| extra.db.is_none() || k.db == extra.db)
            {
                keeper.release(&slots);
            }
        }
        lock(file, offset, n, flags)
    }
}

unsafe extern "C" fn x_shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    // SAFETY: Extra is initialised (x_open) and only read here; SQLite unmaps a file's shared
    // memory holding no lock, and the default VFS's unmap drops the file's locks without
    // releasing them, so the kept one goes back first.
    unsafe {
        let extra = &*extra(file);
        if let Some(keeper) = &extra.keeper {
            keeper.release(&READ_LOCKS);
        }
        match (*extra.original).xShmUnmap {
            Some(unmap) => unmap(file, delete),
            None => ffi::SQLITE_OK,
        }
    }
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
    /// Read transactions that found their read lock kept, and kept locks given back.
    pub static KEPT_REUSED: AtomicU64 = AtomicU64::new(0);
    pub static KEPT_RELEASED: AtomicU64 = AtomicU64::new(0);

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

    /// `PRAGMA wal_checkpoint(mode)`: (busy, frames in the WAL, frames copied).
    fn checkpoint(conn: &rusqlite::Connection, mode: &str) -> (i64, i64, i64) {
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap()
    }

    /// Readers keep their read locks between transactions, yet see every commit at once. A
    /// checkpoint takes the kept locks back, so the WAL starts over while readers are between
    /// transactions, but never under a reader inside one; closed readers leave no lock behind. Both
    /// writers' VFSs (with and without `synchronous=FULL`) do this.
    #[test]
    fn readers_keep_read_locks_that_hide_no_commit_and_block_no_checkpoint() {
        use crate::db::Access::{ReadOnly, ReadWrite};
        for (full, vfs) in [(true, WRITER_VFS_NAME), (false, PLAIN_VFS_NAME)] {
            let dir = crate::db::TestDir::new("keep-read-locks");
            let path = dir.join("k.db");
            let wal = dir.join("k.db-wal");
            let w = crate::db::open(&path, ReadWrite, full).unwrap();
            assert_eq!(vfs_of(&w), vfs);
            w.busy_timeout(std::time::Duration::from_millis(100))
                .unwrap();
            w.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
                .unwrap();
            let insert = || {
                w.execute("INSERT INTO t (v) VALUES (randomblob(100))", [])
                    .unwrap()
            };
            let readers: Vec<_> = (0..3)
                .map(|_| crate::db::open(&path, ReadOnly, true).unwrap())
                .collect();
            let count = |r: &rusqlite::Connection| -> i64 {
                r.query_row("SELECT count(*) FROM t", [], |row| row.get(0))
                    .unwrap()
            };
            let reused = KEPT_REUSED.load(Ordering::Relaxed);
            for round in 1..=50 {
                insert();
                for r in &readers {
                    assert_eq!(count(r), round);
                    assert_eq!(count(r), round);
                }
            }
            // At least each round's second read of each reader found its lock kept.
            assert!(KEPT_REUSED.load(Ordering::Relaxed) - reused >= 150);

            // Every reader between transactions, keeping a lock: the WAL starts over.
            assert_eq!(checkpoint(&w, "TRUNCATE"), (0, 0, 0));
            assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
            insert();
            assert!(readers.iter().all(|r| count(r) == 51));

            // A reader inside a transaction holds the WAL, as it must.
            let mut stmt = readers[0].prepare("SELECT id FROM t").unwrap();
            let mut rows = stmt.query([]).unwrap();
            assert!(rows.next().unwrap().is_some());
            insert();
            assert_eq!(checkpoint(&w, "TRUNCATE").0, 1, "busy");
            drop(rows);
            drop(stmt);
            assert!(readers.iter().all(|r| count(r) == 52));
            assert_eq!(checkpoint(&w, "TRUNCATE"), (0, 0, 0));

            // Closed readers leave no lock behind, even for a connection of the default VFS.
            insert();
            assert!(readers.iter().all(|r| count(r) == 53));
            drop(readers);
            let plain = rusqlite::Connection::open(&path).unwrap();
            plain
                .busy_timeout(std::time::Duration::from_millis(100))
                .unwrap();
            assert_eq!(checkpoint(&plain, "TRUNCATE"), (0, 0, 0));
            assert_eq!(count(&plain), 53);
        }
    }

    /// Readers on their own threads, a writer committing and checkpointing (which takes kept locks
    /// back from the readers' files on its own thread): every read sees a whole commit, no reader
    /// goes back in time, and the file is sound at the end.
    #[test]
    fn kept_read_locks_under_concurrent_commits_and_checkpoints() {
        use crate::db::Access::{ReadOnly, ReadWrite};
        let dir = crate::db::TestDir::new("keep-concurrent");
        let path = dir.join("c.db");
        let w = crate::db::open(&path, ReadWrite, true).unwrap();
        // A TRUNCATE checkpoint waits this long for the readers inside a transaction.
        w.busy_timeout(std::time::Duration::from_millis(20))
            .unwrap();
        w.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
            .unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let (path, stop) = (path.clone(), stop.clone());
                std::thread::spawn(move || {
                    let r = crate::db::open(&path, ReadOnly, true).unwrap();
                    let (mut last, mut reads) = (0i64, 0u64);
                    while !stop.load(Ordering::Relaxed) {
                        // Each commit adds ten rows whose values sum to 45.
                        let (n, sum): (i64, i64) = r
                            .query_row("SELECT count(*), coalesce(sum(v), 0) FROM t", [], |row| {
                                Ok((row.get(0)?, row.get(1)?))
                            })
                            .unwrap();
                        assert_eq!((n % 10, sum), (0, n / 10 * 45), "a whole commit");
                        assert!(n >= last, "{n} after {last}");
                        (last, reads) = (n, reads + 1);
                    }
                    reads
                })
            })
            .collect();
        let mut commits = 0;
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_millis(1500) {
            w.execute_batch("BEGIN").unwrap();
            for v in 0..10 {
                w.execute("INSERT INTO t (v) VALUES (?1)", [v]).unwrap();
            }
            w.execute_batch("COMMIT").unwrap();
            commits += 1;
            if commits % 20 == 0 {
                checkpoint(
                    &w,
                    if commits % 40 == 0 {
                        "TRUNCATE"
                    } else {
                        "PASSIVE"
                    },
                );
            }
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
        let n: i64 = w
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, commits * 10);
        assert_eq!(crate::db::integrity_check(&w).unwrap(), "ok");
        // With every reader closed, nothing holds the WAL.
        assert_eq!(checkpoint(&w, "TRUNCATE"), (0, 0, 0));
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
        // Not the default VFS: its checkpoints would count the readers' kept locks as readers.
        let w = rusqlite::Connection::open_with_flags_and_vfs(
            &path,
            rusqlite::OpenFlags::default(),
            PLAIN_VFS_NAME,
        )
        .unwrap();
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
            assert_eq!(checkpoint(&w, "TRUNCATE"), (0, 0, 0));
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
