//! The reaper: one thread that sweeps what time has ended (SPEC §8), and one beside it that flushes
//! viewer activity. They are two so that neither waits for the other: a burst of new viewers (the
//! benchmark's admission probe leaves some 200,000 to write) took seconds to flush, and expiry
//! waited behind it. Both change state only through the writer, where their jobs interleave.
//!
//! Every sweep works in bounded batches (at most [`BATCH`] rows per transaction and
//! [`MAX_BATCHES_PER_TICK`] transactions per kind per tick), so a backlog — say 100,000 sessions
//! expiring at once, or a clock jump — is worked off over several ticks without holding the write
//! lock for long. Decisions use the wall-clock times stored in rows. Every ended session and every
//! aged-out viewer batch writes audit rows with actor `system`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::db::{Reader, Writer, audit, shares, users, workspaces};
use crate::domain::time::{Millis, now_ms};
use crate::domain::workspace::TERMINATED;
use crate::domain::{Actor, AuditEntry};
use crate::error::Result;
use crate::server::App;
use crate::viewers::Viewers;

/// Rows per transaction.
pub const BATCH: usize = 500;
/// Transactions per kind of work per tick.
pub const MAX_BATCHES_PER_TICK: usize = 8;
/// Viewer activity reaches the store at least this often.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

pub struct Reaper {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

pub fn start(app: Arc<App>, reader: Reader) -> Result<Reaper> {
    let stop = Arc::new(AtomicBool::new(false));
    let sweeper = {
        let (app, stop) = (app.clone(), stop.clone());
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || sweep_until(&app, &reader, &stop))?
    };
    let flusher = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("viewer-flush".into())
            .spawn(move || flush_until(&app, &stop))
    };
    let flusher = match flusher {
        Ok(thread) => thread,
        Err(e) => {
            stop.store(true, Ordering::SeqCst);
            let _ = sweeper.join();
            return Err(e.into());
        }
    };
    Ok(Reaper {
        stop,
        threads: vec![sweeper, flusher],
    })
}

impl Reaper {
    /// Stops both threads, the flusher after a last flush of viewer activity.
    pub fn stop(self, deadline: Instant) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            if !crate::server::join_by(thread, deadline) {
                log::warn!("the reaper did not stop before the shutdown timeout");
            }
        }
    }
}

fn sweep_until(app: &App, reader: &Reader, stop: &AtomicBool) {
    let interval = Duration::from_millis(app.cfg.reap_interval as u64);
    every(interval, stop, || {
        if let Err(e) = sweep(app, reader, now_ms()) {
            log::error!("reaper sweep failed: {e}");
        }
    });
}

fn flush_until(app: &App, stop: &AtomicBool) {
    let interval = Duration::from_millis(app.cfg.reap_interval as u64);
    every(FLUSH_EVERY.min(interval), stop, || {
        flush_viewers(&app.viewers, &app.writer)
    });
    flush_viewers(&app.viewers, &app.writer);
}

/// Runs `work` every `interval` until `stop` is set (noticed within 20 ms).
fn every(interval: Duration, stop: &AtomicBool, mut work: impl FnMut()) {
    let mut last = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20).min(interval));
        if last.elapsed() >= interval {
            last = Instant::now();
            work();
        }
    }
}

/// Writes absorbed viewer activity; on failure it stays pending for the next flush.
pub fn flush_viewers(viewers: &Viewers, writer: &Writer) {
    let mut batch = viewers.take_dirty();
    if batch.is_empty() {
        return;
    }
    // In the order of the viewers' primary key: each page of the table is then read and changed
    // once per flush, not once per viewer on it in random order.
    batch.sort_unstable_by(|(a, x), (b, y)| (a, &x.viewer_id).cmp(&(b, &y.viewer_id)));
    for chunk in batch.chunks(4 * BATCH) {
        let rows = chunk.to_vec();
        if let Err(e) = writer.exec(move |tx| shares::upsert_viewers(tx, &rows)) {
            log::warn!(
                "flushing {} viewer updates failed, will retry: {e}",
                chunk.len()
            );
            viewers.restore_dirty(chunk);
        }
    }
}

/// One pass over everything time can end, each kind of work in bounded batches.
pub fn sweep(app: &App, reader: &Reader, now: Millis) -> Result<()> {
    drain(app, "share.expired", || expire_shares(app, reader, now))?;
    drain(app, "session.expired", || {
        end_due_sessions(app, reader, now)
    })?;
    drain(app, "session.idle", || end_idle_sessions(app, reader, now))?;
    drain(app, "session.lost", || end_lost_sessions(app, reader, now))?;
    drain(app, "viewer.aged_out", || age_out_viewers(app, reader, now))?;
    // The deletions below ask the reader first: a job for the writer, even an empty one, keeps it
    // from idling, and an idle writer is what copies the WAL into the database file (`db::writer`).
    drain(app, "share_token.deleted", || {
        if !reader.any_expired_token(now)? {
            return Ok(0);
        }
        app.writer
            .exec(move |tx| shares::delete_expired_tokens(tx, now, BATCH))
    })?;
    drain(app, "login_token.deleted", || {
        if !reader.any_dead_login_token(now)? {
            return Ok(0);
        }
        app.writer
            .exec(move |tx| users::delete_dead_login_tokens(tx, now, BATCH))
    })?;
    let cutoff = now - app.cfg.audit_retention;
    drain(app, "audit.pruned", || {
        if !reader.any_audit_before(cutoff)? {
            return Ok(0);
        }
        app.writer.exec(move |tx| audit::prune(tx, cutoff, BATCH))
    })
}

/// Repeats one batch of work until a batch comes back short, at most `MAX_BATCHES_PER_TICK` times,
/// and counts the rows for `/metrics`.
fn drain(app: &App, kind: &'static str, mut batch: impl FnMut() -> Result<usize>) -> Result<()> {
    for _ in 0..MAX_BATCHES_PER_TICK {
        let n = batch()?;
        app.metrics.reaped(kind, n);
        if n < BATCH {
            break;
        }
    }
    Ok(())
}

/// Closes share sessions past their expiry; returns how many were due.
fn expire_shares(app: &App, reader: &Reader, now: Millis) -> Result<usize> {
    let due = reader.shares_due(now, BATCH)?;
    let count = due.len();
    if count == 0 {
        return Ok(0);
    }
    // The viewers of an ended session stay in memory until they age out, so no activity is lost.
    app.writer.exec(move |tx| {
        for s in &due {
            if shares::end(tx, s.id, "expired", now)? {
                let entry = AuditEntry::new(
                    Some(s.account_id),
                    &Actor::system(),
                    "session.expired",
                    "share_session",
                    &s.uid,
                )
                .summary("share session expired");
                audit::record(tx, &entry, now)?;
            }
        }
        Ok(())
    })?;
    Ok(count)
}

/// Ends workspace and runtime sessions past their stored expiry (`max_session_duration`, TTL).
fn end_due_sessions(app: &App, reader: &Reader, now: Millis) -> Result<usize> {
    let due = reader.sessions_due(now, BATCH)?;
    let count = due.len();
    if count > 0 {
        app.writer
            .exec(move |tx| end_sessions(tx, &due, "expired", now))?;
    }
    Ok(count)
}

/// Ends runtime sessions whose daemon stopped reporting them `snapshot_lost_after` ago.
fn end_lost_sessions(app: &App, reader: &Reader, now: Millis) -> Result<usize> {
    let lost = reader.lost_runtime_sessions(now - app.cfg.snapshot_lost_after, BATCH)?;
    let count = lost.len();
    if count > 0 {
        app.writer.exec(move |tx| {
            for (row, uid, account) in &lost {
                if crate::db::runtime::mark_lost(tx, *row, now)? {
                    let entry = AuditEntry::new(
                        Some(*account),
                        &Actor::system(),
                        "session.lost",
                        "session",
                        uid,
                    )
                    .summary("its daemon stopped reporting the session")
                    .metadata(json!({ "end_reason": "lost" }));
                    audit::record(tx, &entry, now)?;
                }
            }
            Ok(())
        })?;
    }
    Ok(count)
}

/// Ends workspace sessions whose workspace's `idle_timeout` passed without a heartbeat.
fn end_idle_sessions(app: &App, reader: &Reader, now: Millis) -> Result<usize> {
    let idle: Vec<(i64, String, i64, String)> = reader
        .idle_workspace_sessions(now, BATCH)?
        .into_iter()
        .map(|(row, uid, account)| (row, uid, account, "workspace".to_string()))
        .collect();
    let count = idle.len();
    if count > 0 {
        app.writer
            .exec(move |tx| end_sessions(tx, &idle, "idle", now))?;
    }
    Ok(count)
}

fn end_sessions(
    tx: &crate::db::Tx,
    sessions: &[(i64, String, i64, String)],
    reason: &str,
    now: Millis,
) -> Result<()> {
    for (row, uid, account, _dialect) in sessions {
        if workspaces::end_session(tx, *row, TERMINATED, reason, now)? {
            let entry = AuditEntry::new(
                Some(*account),
                &Actor::system(),
                &format!("session.{reason}"),
                "session",
                uid,
            )
            .summary(format!("session ended by the reaper ({reason})"))
            .metadata(json!({ "end_reason": reason }));
            audit::record(tx, &entry, now)?;
        }
    }
    Ok(())
}

/// Removes viewers idle longer than `viewer_idle_timeout`, one audit row per session.
fn age_out_viewers(app: &App, reader: &Reader, now: Millis) -> Result<usize> {
    let cutoff = now - app.cfg.viewer_idle_timeout;
    app.viewers.remove_idle(cutoff);
    let idle = reader.idle_viewers(cutoff, BATCH)?;
    let count = idle.len();
    let mut by_session: BTreeMap<i64, (String, i64, Vec<String>)> = BTreeMap::new();
    for (share, viewer_id) in idle {
        // Activity absorbed since the last flush keeps a viewer.
        if app.viewers.is_active(share.id, &viewer_id, cutoff) {
            continue;
        }
        by_session
            .entry(share.id)
            .or_insert_with(|| (share.uid, share.account_id, Vec::new()))
            .2
            .push(viewer_id);
    }
    if by_session.is_empty() {
        return Ok(count);
    }
    app.writer.exec(move |tx| {
        for (id, (uid, account, viewer_ids)) in &by_session {
            shares::delete_viewers(tx, *id, viewer_ids)?;
            let entry = AuditEntry::new(
                Some(*account),
                &Actor::system(),
                "viewer.aged_out",
                "share_session",
                uid,
            )
            .summary(format!("{} idle viewer(s) aged out", viewer_ids.len()))
            .metadata(json!({ "viewerIds": viewer_ids }));
            audit::record(tx, &entry, now)?;
        }
        Ok(())
    })?;
    Ok(count)
}
