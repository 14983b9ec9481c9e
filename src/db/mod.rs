//! The store: the only module that touches rusqlite.
//!
//! [`open`] is the one place a connection is configured. The writer thread ([`writer`]) owns the single
//! read-write connection and group-commits; every request being answered holds a [`Reader`], a
//! read-only connection of its own. Query functions live next to their SQL in one file per concern.

pub mod accounts;
pub mod audit;
pub mod backup;
pub mod checkpointer;
pub mod migrate;
pub mod runtime;
pub mod shares;
pub mod users;
pub mod vfs;
pub mod workspaces;
pub mod writer;

use std::path::Path;

use rusqlite::{Connection, OpenFlags, ToSql};

pub use writer::Writer;

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    ReadOnly,
}

/// Process-wide SQLite settings; must run before the first connection is opened.
///
/// Memory statistics are off: with them on, every SQLite allocation of every connection takes one
/// global mutex, and the worker threads' read connections contend on it (the benchmark showed read
/// routes at a third of the floor until this was off).
pub fn configure_sqlite() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: sqlite3_config is called once, before any other SQLite call of this process.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_config(
                rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS,
                0 as std::ffi::c_int,
            )
        };
        if rc != rusqlite::ffi::SQLITE_OK {
            log::warn!("SQLite kept its memory statistics (sqlite3_config returned {rc})");
        }
    });
}

/// WAL pages after which they are copied into the database file (SQLite's default is 1,000): by the
/// checkpointer thread beside the server's writer (`checkpointer`), by the commit itself on any
/// other read-write connection. A checkpoint copies each page once however often the WAL holds it,
/// and a share create dirties a random leaf of the `shares.slug` index: the longer the interval,
/// the more creates share each copied leaf. At 16,000 (a WAL of 64 MiB, read back in a fraction of
/// a second by the recovery after a crash) against 4,000, three alternating pairs of the create
/// probe measured a writer CPU per create of 40/54/43 against 50/47/50 µs and creates at
/// 2.47/2.07/2.71 against 2.08/2.26/2.24 times the fsync floor. Readers look a page up in up to
/// four WAL index blocks instead of one.
pub const WAL_AUTOCHECKPOINT_PAGES: u32 = 16_000;

/// Opens and configures a connection. WAL is set (and persisted in the file) by the read-write
/// connection; readers only inherit it.
pub fn open(path: &Path, access: Access, synchronous_full: bool) -> Result<Connection> {
    configure_sqlite();
    let flags = match access {
        Access::ReadWrite => OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        Access::ReadOnly => OpenFlags::SQLITE_OPEN_READ_ONLY,
    } | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = match access {
        // The writer's VFS gathers WAL writes until the commit's sync: only sound when every
        // commit syncs (see `vfs`).
        Access::ReadWrite if synchronous_full && vfs::registered() => {
            Connection::open_with_flags_and_vfs(path, flags, vfs::WRITER_VFS_NAME)
        }
        // Through the plain VFS of ours, whose checkpoints take back the read locks our readers
        // keep (the default VFS would count them as readers).
        Access::ReadWrite if vfs::registered() => {
            Connection::open_with_flags_and_vfs(path, flags, vfs::PLAIN_VFS_NAME)
        }
        Access::ReadWrite => Connection::open_with_flags(path, flags),
        Access::ReadOnly => {
            vfs::register();
            Connection::open_with_flags_and_vfs(path, flags, vfs::VFS_NAME)
        }
    }
    .map_err(|e| Error::Internal(format!("cannot open database {}: {e}", path.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(64);
    // Query planner stability: a plan never depends on bound values. Without it SQLite 3.54 marks
    // some of our statements to be re-prepared whenever a parameter is rebound (the profile of
    // GET /sessions/:id showed a third of a worker's time in sqlite3Reprepare): every cached
    // statement was parsed and planned again on every request.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    let sync = if synchronous_full { "FULL" } else { "NORMAL" };
    let pragmas = match access {
        Access::ReadWrite => format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA foreign_keys = ON;
             PRAGMA temp_store = MEMORY; PRAGMA cache_size = -8000;
             PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES};"
        ),
        // Readers read the file through one map shared by all of them (`vfs`): a page is
        // read in place instead of copied into each reader's cache by a pread per miss. Any
        // non-zero mmap_size switches that on; the map's own reserve bounds it.
        Access::ReadOnly => {
            "PRAGMA foreign_keys = ON; PRAGMA query_only = ON; PRAGMA cache_size = -2000;
             PRAGMA temp_store = MEMORY; PRAGMA mmap_size = 1073741824;"
                .to_string()
        }
    };
    conn.execute_batch(&pragmas)?;
    if access == Access::ReadWrite {
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Internal(format!(
                "the database refused WAL mode (journal_mode = {mode})"
            )));
        }
    }
    Ok(conn)
}

/// A read-only view of the store: one per request being answered (pooled), and the reaper's.
pub struct Reader {
    /// The statements of the most requested reads, once prepared ([`Reader::held`]). They borrow
    /// `conn`, and are declared first so that they are finalized before it closes.
    held: [std::cell::OnceCell<HeldStatement>; Held::COUNT],
    /// Boxed: the held statements point at it, and a reader moves (in and out of the pool).
    conn: Box<Connection>,
}

// SAFETY: a `Statement` is not `Send` only because it refers to its connection, which must not be
// used by two threads at once. The held statements refer to this reader's own connection, and
// reader, statements and connection move between threads together: one thread at a time uses all
// of them. (`Connection` itself is `Send`.)
unsafe impl Send for Reader {}

/// A statement a [`Reader`] holds, with the SQL it was prepared from.
type HeldStatement = (
    &'static str,
    std::cell::RefCell<rusqlite::Statement<'static>>,
);

/// The reads whose statements a [`Reader`] holds prepared.
#[derive(Clone, Copy)]
pub(crate) enum Held {
    ShareByUid,
    ShareBySlug,
}

impl Held {
    const COUNT: usize = 2;
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader> {
        Ok(Reader {
            held: Default::default(),
            conn: Box::new(open(path, Access::ReadOnly, true)?),
        })
    }

    /// Runs `f` with the statement `which` (its SQL `sql`), prepared on the first call. For the
    /// hottest reads, instead of `prepare_cached`: that trims, hashes and copies a statement's
    /// SQL on each call, about 1,250 instructions for a share's 400-byte select (3% of
    /// `GET /sessions/:id`). `f` is given the statement for any lifetime, so it cannot keep it.
    pub(crate) fn held<T>(
        &self,
        which: Held,
        sql: &'static str,
        f: impl FnOnce(&mut rusqlite::Statement<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let cell = &self.held[which as usize];
        let (prepared_from, stmt) = match cell.get() {
            Some(held) => held,
            None => {
                // SAFETY: the statement borrows `*self.conn`, which is boxed (it does not move
                // when the reader does) and outlives it: `held` is dropped before `conn`, and
                // nothing else can take the statement, or the connection through it, out of the
                // reader (`f` gets it for the length of the call only).
                let conn: &'static Connection = unsafe { &*(&*self.conn as *const Connection) };
                let stmt = conn.prepare(sql)?;
                cell.get_or_init(|| (sql, std::cell::RefCell::new(stmt)))
            }
        };
        debug_assert_eq!(*prepared_from, sql, "one Held, one statement");
        Ok(f(&mut stmt.borrow_mut())?)
    }

    /// True when the database answers a trivial query (for `/readyz`).
    pub fn ping(&self) -> bool {
        self.conn
            .prepare_cached("SELECT count(*) FROM sqlite_schema")
            .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
            .is_ok()
    }
}

/// What a writer job sees: the write connection, inside the job's transaction.
pub struct Tx<'a> {
    conn: &'a Connection,
    /// The writer's statements kept prepared ([`Tx::execute`]); `None` outside the writer.
    held: Option<&'a (dyn ExecuteHeld + 'a)>,
}

impl<'a> Tx<'a> {
    /// A transaction on `conn` without held statements (migrations, tests).
    pub(crate) fn new(conn: &'a Connection) -> Tx<'a> {
        Tx { conn, held: None }
    }

    /// Runs the change `sql` with `params` and returns how many rows it changed. In the writer the
    /// statement stays prepared for the life of the connection ([`HeldStatements`]); for the
    /// statements every batch, create or audit row runs.
    pub fn execute(&self, sql: &'static str, params: &[&dyn ToSql]) -> rusqlite::Result<usize> {
        match self.held {
            Some(held) => held.execute(sql, params),
            None => self.conn.prepare_cached(sql)?.execute(params),
        }
    }
}

/// Runs a statement kept prepared (the object-safe face of [`HeldStatements`], so that [`Tx`] has
/// one lifetime).
trait ExecuteHeld {
    fn execute(&self, sql: &'static str, params: &[&dyn ToSql]) -> rusqlite::Result<usize>;
}

/// Statements of the writer's connection kept prepared, found by the address and length of their
/// SQL text, which is always a `&'static str`. rusqlite's statement cache hashes and compares the
/// whole text to find a statement and hashes it again to put it back, about 1,500 instructions for
/// a 250-byte insert; a share create ran three. The same text at two addresses is merely held
/// twice; past [`HeldStatements::MAX`] statements the cache serves the rest.
pub(crate) struct HeldStatements<'c> {
    conn: &'c Connection,
    statements: std::cell::RefCell<Vec<(usize, usize, rusqlite::Statement<'c>)>>,
}

impl<'c> HeldStatements<'c> {
    const MAX: usize = 32;

    pub fn new(conn: &'c Connection) -> HeldStatements<'c> {
        HeldStatements {
            conn,
            statements: std::cell::RefCell::new(Vec::new()),
        }
    }

    /// A transaction view of the connection whose changes come from these statements.
    pub fn tx(&self) -> Tx<'_> {
        Tx {
            conn: self.conn,
            held: Some(self),
        }
    }
}

impl ExecuteHeld for HeldStatements<'_> {
    fn execute(&self, sql: &'static str, params: &[&dyn ToSql]) -> rusqlite::Result<usize> {
        let key = (sql.as_ptr() as usize, sql.len());
        let mut statements = self.statements.borrow_mut();
        let found = statements
            .iter()
            .position(|(ptr, len, _)| (*ptr, *len) == key);
        let at = match found {
            Some(at) => at,
            None if statements.len() < Self::MAX => {
                statements.push((key.0, key.1, self.conn.prepare(sql)?));
                statements.len() - 1
            }
            None => return self.conn.prepare_cached(sql)?.execute(params),
        };
        statements[at].2.execute(params)
    }
}

/// `true` when `e` is a violation of a UNIQUE constraint that mentions `column`.
fn is_unique_violation(e: &rusqlite::Error, column: &str) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(f, Some(msg)) => {
            f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE && msg.contains(column)
        }
        _ => false,
    }
}

/// Runs `PRAGMA integrity_check` and returns its verdict (`"ok"` when sound).
pub fn integrity_check(conn: &Connection) -> Result<String> {
    let rows: Vec<String> = conn
        .prepare("PRAGMA integrity_check")?
        .query_map([], |r| r.get(0))?
        .collect::<std::result::Result<_, _>>()?;
    Ok(rows.join("; "))
}

/// A directory of its own for one unit test, removed when the test ends (also when it fails).
#[cfg(test)]
pub(crate) struct TestDir(std::path::PathBuf);

#[cfg(test)]
impl TestDir {
    pub(crate) fn new(name: &str) -> TestDir {
        let dir = std::env::temp_dir().join(format!("sessiond-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TestDir(dir)
    }

    pub(crate) fn join(&self, file: &str) -> std::path::PathBuf {
        self.0.join(file)
    }
}

/// The first column of every row `sql` returns (unit tests).
#[cfg(test)]
pub(crate) fn column<T: rusqlite::types::FromSql>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Vec<T> {
    conn.prepare(sql)
        .unwrap()
        .query_map(params, |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// SQLite's query plan for `sql` as one line, steps joined by "; " (unit tests).
#[cfg(test)]
pub(crate) fn query_plan(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> String {
    let steps: Vec<String> = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .unwrap()
        .query_map(params, |r| r.get(3))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    steps.join("; ")
}

#[cfg(test)]
impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A held statement is prepared once and serves every later call with that text, whatever
    /// its parameters and even after it failed; past the limit, statements still run (from the
    /// cache). What each call changed is what `prepare_cached` would have changed.
    #[test]
    fn held_statements_run_like_cached_ones() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE)")
            .unwrap();
        let held = HeldStatements::new(&conn);
        let tx = held.tx();
        const INSERT: &str = "INSERT INTO t (v) VALUES (?1)";
        for v in ["a", "b", "c"] {
            assert_eq!(tx.execute(INSERT, &[&v]).unwrap(), 1);
        }
        assert!(is_unique_violation(
            &tx.execute(INSERT, &[&"b"]).unwrap_err(),
            "v"
        ));
        assert_eq!(tx.execute(INSERT, &[&"d"]).unwrap(), 1);
        assert_eq!(
            tx.execute("UPDATE t SET v = v || '!' WHERE k > ?1", &[&2])
                .unwrap(),
            2
        );
        assert_eq!(held.statements.borrow().len(), 2);

        // More distinct texts than are held: the rest run all the same.
        let texts: Vec<&'static str> = (0..HeldStatements::MAX + 8)
            .map(|i| &*format!("UPDATE t SET v = v WHERE k = {i}").leak())
            .collect();
        for text in &texts {
            tx.execute(text, &[]).unwrap();
        }
        assert_eq!(held.statements.borrow().len(), HeldStatements::MAX);
        assert_eq!(
            column::<String>(&conn, "SELECT v FROM t ORDER BY k", []),
            ["a", "b", "c!", "d!"]
        );
    }
}
