//! WAL checkpoints beside the writer instead of inside its commits.
//!
//! A checkpoint copies the pages the WAL holds into the database file and syncs that file. SQLite's
//! automatic checkpoint runs inside the commit that crossed its threshold, on the writer's thread:
//! with a share create dirtying a random leaf of the `shares.slug` index, that meant thousands of
//! pages, each read from the WAL and written to the database file by a system call of its own,
//! every few thousand creates. Every change waiting for the next group commit waited for it too,
//! and with every connection of the create probe waiting, one of the two cores stood idle: the
//! longest create took 32 to 52 ms. Beside the writer, in six alternating pairs of the create
//! probe, the longest took 19 to 25 ms, and creates per fsync went up by 4% on average.
//!
//! So the writer's connection has no automatic checkpoint. Its WAL hook records the WAL's length
//! after every commit; once it reaches [`START_FRAMES`], the writer wakes the checkpointer thread,
//! which copies with a connection of its own (a PASSIVE checkpoint: it waits for no one and blocks
//! no one) while the writer goes on committing. The checkpointer repeats its pass, each one copying
//! what the writer committed during the previous one, until less than [`HANDOFF_FRAMES`] are left.
//! Then the writer, after its next commit, copies that remainder itself. The handoff is needed
//! because SQLite starts the WAL over from its beginning only at a write transaction that finds the
//! whole WAL in the database file; a checkpointer racing a writer that commits a thousand times a
//! second would never catch up on its own, and the WAL would grow for as long as the load lasts.
//!
//! Bounds. A round that cannot hand off (a reader on an old snapshot keeps the checkpoint from
//! copying the newest frames, or a backup holds the checkpoint lock) is tried again once the WAL
//! has grown by another [`RETRY_FRAMES`]. Should the checkpointer fall that far behind, the WAL hook
//! checkpoints inside the commit once the WAL reaches [`FORCE_FRAMES`], as SQLite's automatic
//! checkpoint would. A writer without a checkpointer (an in-memory database, or when its connection
//! could not be opened) checkpoints that way at [`START_FRAMES`].

use std::ffi::c_int;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::thread::JoinHandle;
#[cfg(test)]
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use rusqlite::Connection;

use super::writer::WriterStats;
use super::{Access, WAL_AUTOCHECKPOINT_PAGES};

/// WAL frames at which the checkpointer starts a round.
pub const START_FRAMES: i64 = WAL_AUTOCHECKPOINT_PAGES as i64;
/// Frames the checkpointer may leave for the writer to copy after a commit (a few milliseconds).
pub const HANDOFF_FRAMES: i64 = 1_000;
/// How much further the WAL grows before a round that could not hand off is tried again.
pub const RETRY_FRAMES: i64 = START_FRAMES / 4;
/// WAL frames at which the writer checkpoints inside its commit (the bound on the WAL).
pub const FORCE_FRAMES: i64 = 2 * START_FRAMES;
/// Passes in one round at most: each copies what the writer committed during the one before, a
/// small fraction of it, so a round hands off after two or three.
const MAX_PASSES: usize = 6;

/// Where a round stands: the writer starts it, the checkpointer ends its passes (handing off or
/// not), and the writer finishes a handoff.
const IDLE: u8 = 0;
const RUNNING: u8 = 1;
/// The checkpointer is done and left at most [`HANDOFF_FRAMES`] for the writer.
const HANDOFF: u8 = 2;

/// The writer's side: its WAL hook, and the checkpointer thread when there is one.
pub struct Checkpoints {
    /// IDLE, RUNNING or HANDOFF.
    state: Arc<AtomicU8>,
    /// The writer's counters, with the WAL's length after its last commit (`wal_frames`, stored by
    /// the WAL hook).
    stats: Arc<WriterStats>,
    /// Wakes the checkpointer; `None` when there is none (the WAL hook checkpoints).
    wake: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// The WAL length that starts the next round (writer thread only).
    next_at: i64,
}

impl Checkpoints {
    /// Installs the WAL hook on the writer's connection and starts the checkpointer thread, with a
    /// connection of its own to the same file.
    pub fn start(conn: &mut Connection, stats: Arc<WriterStats>) -> Checkpoints {
        let state = Arc::new(AtomicU8::new(IDLE));
        let checkpointer = open_checkpointer(conn).and_then(|ckpt| {
            let (wake, woken) = crossbeam_channel::bounded(1);
            let (state, stats) = (state.clone(), stats.clone());
            std::thread::Builder::new()
                .name("checkpointer".into())
                .spawn(move || run(ckpt, woken, &state, &stats))
                .map(|thread| (wake, thread))
                .map_err(|e| log::warn!("cannot start the checkpointer thread: {e}"))
                .ok()
        });
        let force_at = if checkpointer.is_some() {
            FORCE_FRAMES
        } else {
            START_FRAMES
        };
        let hook_stats = stats.clone();
        let hook = move |wal: &mut rusqlite::hooks::Wal, frames: c_int| {
            let frames = i64::from(frames);
            hook_stats.wal_frames.store(frames, Ordering::Relaxed);
            if frames >= force_at {
                hook_stats
                    .forced_checkpoints
                    .fetch_add(1, Ordering::Relaxed);
                if let Err(e) = wal.checkpoint_v2(rusqlite::wal::CheckpointMode::PASSIVE) {
                    log::warn!("WAL checkpoint in the commit failed: {e}");
                }
            }
            // The commit is done whatever this returns; an error would only fail its statement.
            Ok(())
        };
        if let Err(e) = conn.wal_hook(Some(hook)) {
            // SQLite's automatic checkpoint, set by `open`, stays in place.
            log::warn!("cannot install the WAL hook: {e}");
        }
        let (wake, thread) = checkpointer.unzip();
        Checkpoints {
            state,
            stats,
            wake,
            thread,
            next_at: START_FRAMES,
        }
    }

    /// Called by the writer after each commit: finishes a round the checkpointer handed off, or
    /// starts one when the WAL has grown long enough.
    pub fn after_commit(&mut self, conn: &Connection) {
        let Some(wake) = &self.wake else { return };
        match self.state.load(Ordering::Acquire) {
            HANDOFF => {
                self.stats
                    .handoff_checkpoints
                    .fetch_add(1, Ordering::Relaxed);
                if let Err(e) = passive_checkpoint(conn) {
                    log::warn!("WAL checkpoint after a commit failed: {e}");
                }
                self.state.store(IDLE, Ordering::Release);
            }
            IDLE => {
                let frames = self.stats.wal_frames.load(Ordering::Relaxed);
                if frames < START_FRAMES {
                    // Short again: the WAL was started over.
                    self.next_at = START_FRAMES;
                } else if frames >= self.next_at {
                    self.next_at = frames.saturating_add(RETRY_FRAMES);
                    self.state.store(RUNNING, Ordering::Release);
                    if wake.try_send(()).is_err() {
                        self.state.store(IDLE, Ordering::Release);
                    }
                }
            }
            _ => {}
        }
    }

    /// Stops the checkpointer, after the pass it may be in; the writer's last checkpoint follows.
    pub fn stop(&mut self) {
        self.wake = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The checkpointer's connection: to the writer's file, synchronous as the writer is (a checkpoint
/// syncs the database file only when that is on). `None` for an in-memory database.
fn open_checkpointer(writer: &Connection) -> Option<Connection> {
    let path = PathBuf::from(writer.path().filter(|p| !p.is_empty())?);
    let full = writer
        .query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0))
        .map(|level| level >= 2)
        .unwrap_or(true);
    super::open(&path, Access::ReadWrite, full)
        .map_err(|e| log::warn!("the writer checkpoints itself: {e}"))
        .ok()
}

/// The checkpointer thread: a round per wake-up, until the writer hangs up.
fn run(conn: Connection, woken: Receiver<()>, state: &AtomicU8, stats: &WriterStats) {
    while woken.recv().is_ok() {
        let handed = round(&conn, stats);
        state.store(if handed { HANDOFF } else { IDLE }, Ordering::Release);
    }
}

/// Passes until at most [`HANDOFF_FRAMES`] are left to copy; false when a pass could not run or
/// made no progress.
fn round(conn: &Connection, stats: &WriterStats) -> bool {
    let mut copied_before = -1;
    for _ in 0..MAX_PASSES {
        let copied = match passive_checkpoint(conn) {
            Ok(Some(done)) => done.copied,
            // Another checkpoint holds the lock (the writer's idle one, or a backup's).
            Ok(None) => return false,
            Err(e) => {
                log::warn!("background WAL checkpoint failed: {e}");
                return false;
            }
        };
        stats.background_checkpoints.fetch_add(1, Ordering::Relaxed);
        if stats.wal_frames.load(Ordering::Relaxed) - copied <= HANDOFF_FRAMES {
            return true;
        }
        if copied <= copied_before {
            // A reader's snapshot holds the checkpoint back; try again later.
            return false;
        }
        copied_before = copied;
    }
    false
}

/// What a checkpoint left: the frames in the WAL and how many of them are in the database file
/// (both -1 when the database is not in WAL mode).
pub(super) struct Checkpointed {
    pub log: i64,
    pub copied: i64,
}

/// Runs a PASSIVE checkpoint on `conn`; `None` when another checkpoint held the lock.
pub(super) fn passive_checkpoint(conn: &Connection) -> rusqlite::Result<Option<Checkpointed>> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        let busy = r.get::<_, i32>(0)? != 0;
        let (log, copied) = (r.get(1)?, r.get(2)?);
        Ok((!busy).then_some(Checkpointed { log, copied }))
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64};
    use std::time::Instant;

    use super::*;
    use crate::db::writer::Writer;
    use crate::db::{TestDir, column, open};

    /// A writer on a fresh file with table `t`, and the file's path.
    fn writer_on(dir: &TestDir) -> (Writer, PathBuf) {
        let path = dir.join("c.db");
        let conn = open(&path, Access::ReadWrite, true).unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
            .unwrap();
        (Writer::start(conn), path)
    }

    /// Commits one row of `pages` pages (about as many WAL frames).
    fn commit(writer: &Writer, pages: usize) {
        writer
            .exec(move |tx| {
                let blob = vec![7u8; pages * 4000];
                tx.execute("INSERT INTO t (v) VALUES (?1)", &[&blob])
                    .map_err(Into::into)
            })
            .unwrap();
    }

    /// Waits until `done` holds, for at most ten seconds.
    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let started = Instant::now();
        while !done() {
            assert!(started.elapsed() < Duration::from_secs(10), "{what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The round trip, step by step: the WAL reaches START_FRAMES, the checkpointer copies it
    /// while the writer stands by, the writer's next commit finishes the checkpoint, and the
    /// commit after that starts the WAL over. Twice, and no commit checkpoints by itself.
    #[test]
    fn a_round_hands_off_and_the_wal_starts_over() {
        let dir = TestDir::new("checkpointer-round");
        let (writer, _) = writer_on(&dir);
        let s = writer.stats.clone();
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        for round in 1..=2 {
            let passes = count(&s.background_checkpoints);
            // Up to the threshold: no round yet, and the WAL is as long as what was written.
            let pages = 60;
            for _ in 0..START_FRAMES as usize / pages - 2 {
                commit(&writer, pages);
            }
            assert_eq!(count(&s.background_checkpoints), passes);
            commit(&writer, pages);
            wait_for("a background pass", || {
                count(&s.background_checkpoints) > passes
            });
            // The writer finishes the round after a commit, once it was handed off.
            let handoffs = count(&s.handoff_checkpoints);
            wait_for("a handoff", || {
                commit(&writer, 1);
                count(&s.handoff_checkpoints) > handoffs
            });
            commit(&writer, 1);
            let frames = s.wal_frames.load(Ordering::Relaxed);
            assert!(frames < 100, "round {round}: {frames} frames in the WAL");
        }
        assert_eq!(count(&s.forced_checkpoints), 0);
        writer.shutdown(Duration::from_secs(10));
    }

    /// Under a writer that commits without pause and a reader that reads without pause, nothing
    /// is lost, readers never go back in time, and the checkpointer works the whole time.
    #[test]
    fn commits_and_reads_beside_the_checkpointer_lose_nothing() {
        let dir = TestDir::new("checkpointer-load");
        let (writer, path) = writer_on(&dir);
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let reader = {
            let (path, stop, reads) = (path.clone(), stop.clone(), reads.clone());
            std::thread::spawn(move || {
                let conn = open(&path, Access::ReadOnly, true).unwrap();
                let mut last = 0;
                while !stop.load(Ordering::Relaxed) {
                    let n: i64 = conn
                        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                        .unwrap();
                    assert!(n >= last, "a reader saw {n} rows after {last}");
                    last = n;
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        // 3 × START_FRAMES written in all.
        let commits = 3 * START_FRAMES / 64;
        for _ in 0..commits {
            commit(&writer, 64);
        }
        // The checkpointer has been at work (a busy machine may make it finish after the writes).
        wait_for("a background pass", || {
            writer.stats.background_checkpoints.load(Ordering::Relaxed) > 0
        });
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap();
        assert!(reads.load(Ordering::Relaxed) > 0);

        writer.shutdown(Duration::from_secs(10));
        let wal = path.with_extension("db-wal");
        assert_eq!(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0), 0);
        let conn = open(&path, Access::ReadOnly, true).unwrap();
        assert_eq!(
            column::<i64>(&conn, "SELECT count(*) FROM t", []),
            [commits]
        );
        assert_eq!(
            column::<String>(&conn, "PRAGMA integrity_check", []),
            ["ok"]
        );
    }
}
