//! The writer thread: sole owner of the read-write connection, fed over a crossbeam channel.
//!
//! It takes whatever jobs are queued (up to [`MAX_BATCH`]), runs each inside its own savepoint so one
//! failure does not undo the others, commits once (one fsync for the whole batch with
//! `synchronous=FULL`), and only then answers every sender. A job's caller therefore never sees success
//! for a change that is not on disk. The batch size adapts to load by itself: an idle server commits
//! every job alone, a busy one commits many jobs per fsync.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use rusqlite::Connection;

use super::Tx;
use crate::error::{Error, Result};

thread_local! {
    /// What this thread does right before it waits for a commit (see [`on_commit_wait`]).
    static ON_COMMIT_WAIT: std::cell::RefCell<Option<Box<dyn Fn()>>> =
        const { std::cell::RefCell::new(None) };
}

/// Sets what the calling thread does each time it is about to wait for a commit in
/// [`Writer::exec`]. The HTTP workers give their turn to run to a spare worker there, so the
/// number of changes waiting for one group commit is not capped by the number of running workers.
pub fn on_commit_wait(hook: impl Fn() + 'static) {
    ON_COMMIT_WAIT.with(|h| *h.borrow_mut() = Some(Box::new(hook)));
}

/// The most jobs grouped into one transaction (keeps the write lock short and bounded).
pub const MAX_BATCH: usize = 512;

/// Counters the metrics endpoint reads.
#[derive(Default)]
pub struct WriterStats {
    pub batches: AtomicU64,
    pub jobs: AtomicU64,
    pub failed_commits: AtomicU64,
    pub commit_micros_total: AtomicU64,
    pub largest_batch: AtomicU64,
}

trait Job: Send {
    /// Runs the job inside its savepoint; `false` asks for the savepoint to be rolled back.
    fn run(&mut self, tx: &Tx) -> bool;
    /// Answers the sender once the batch's fate is known.
    fn finish(self: Box<Self>, commit: Result<()>);
}

struct TypedJob<T, F> {
    work: Option<F>,
    result: Option<Result<T>>,
    reply: Sender<Result<T>>,
}

impl<T, F> Job for TypedJob<T, F>
where
    T: Send,
    F: FnOnce(&Tx) -> Result<T> + Send,
{
    fn run(&mut self, tx: &Tx) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        let result = catch_unwind(AssertUnwindSafe(|| work(tx)))
            .unwrap_or_else(|_| Err(Error::Internal("a writer job panicked".into())));
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, commit: Result<()>) {
        let answer = match (commit, self.result) {
            (_, Some(Err(e))) => Err(e),
            (Err(e), _) => Err(e),
            (Ok(()), Some(Ok(v))) => Ok(v),
            (Ok(()), None) => Err(Error::Unavailable(
                "The store did not run the change".into(),
            )),
        };
        let _ = self.reply.send(answer);
    }
}

enum Msg {
    Job(Box<dyn Job>),
    Shutdown(Sender<()>),
}

/// A handle to the writer thread; cheap to share by reference.
pub struct Writer {
    queue: Sender<Msg>,
    alive: Arc<AtomicBool>,
    pub stats: Arc<WriterStats>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    /// Starts the writer thread on an open, migrated read-write connection.
    pub fn start(conn: Connection) -> Writer {
        let (queue, inbox) = crossbeam_channel::unbounded();
        let alive = Arc::new(AtomicBool::new(true));
        let stats = Arc::new(WriterStats::default());
        let thread = {
            let alive = alive.clone();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("writer".into())
                .spawn(move || {
                    run(conn, inbox, &stats);
                    alive.store(false, Ordering::SeqCst);
                })
                .expect("spawn the writer thread")
        };
        Writer {
            queue,
            alive,
            stats,
            thread: std::sync::Mutex::new(Some(thread)),
        }
    }

    /// Runs `work` in the next group commit and returns its result once the commit is durable.
    pub fn exec<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Tx) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let job = TypedJob {
            work: Some(work),
            result: None,
            reply,
        };
        self.queue
            .send(Msg::Job(Box::new(job)))
            .map_err(|_| Error::Unavailable("The store is shutting down".into()))?;
        ON_COMMIT_WAIT.with(|h| {
            if let Some(hook) = &*h.borrow() {
                hook();
            }
        });
        answer
            .recv()
            .map_err(|_| Error::Unavailable("The store is shutting down".into()))?
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Finishes queued jobs, checkpoints and truncates the WAL, and closes the connection.
    pub fn shutdown(&self, timeout: Duration) {
        let (ack, acked) = crossbeam_channel::bounded(1);
        if self.queue.send(Msg::Shutdown(ack)).is_ok() && acked.recv_timeout(timeout).is_err() {
            log::warn!("the writer did not finish within {timeout:?}");
            return;
        }
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
        let s = &self.stats;
        let (batches, jobs) = (
            s.batches.load(Ordering::Relaxed),
            s.jobs.load(Ordering::Relaxed),
        );
        log::info!(
            "writer: {jobs} changes in {batches} commits (largest batch {}, {} failed, {:.2} ms average commit)",
            s.largest_batch.load(Ordering::Relaxed),
            s.failed_commits.load(Ordering::Relaxed),
            s.commit_micros_total.load(Ordering::Relaxed) as f64 / 1000.0 / batches.max(1) as f64
        );
    }
}

fn run(conn: Connection, inbox: Receiver<Msg>, stats: &WriterStats) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    loop {
        let mut shutdown = None;
        match inbox.recv() {
            Ok(Msg::Job(job)) => batch.push(job),
            Ok(Msg::Shutdown(ack)) => shutdown = Some(ack),
            Err(_) => break,
        }
        while shutdown.is_none() && batch.len() < MAX_BATCH {
            match inbox.try_recv() {
                Ok(Msg::Job(job)) => batch.push(job),
                Ok(Msg::Shutdown(ack)) => shutdown = Some(ack),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
            }
        }
        if !batch.is_empty() {
            commit_batch(&conn, &mut batch, stats);
        }
        if let Some(ack) = shutdown {
            // Jobs that raced the shutdown message still get an answer.
            while let Ok(Msg::Job(job)) = inbox.try_recv() {
                batch.push(job);
            }
            if !batch.is_empty() {
                commit_batch(&conn, &mut batch, stats);
            }
            if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
                log::error!("final WAL checkpoint failed: {e}");
            }
            drop(conn);
            let _ = ack.send(());
            return;
        }
    }
}

fn commit_batch(conn: &Connection, batch: &mut Vec<Box<dyn Job>>, stats: &WriterStats) {
    let started = Instant::now();
    let size = batch.len() as u64;
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let e = Error::from(e);
        log::error!("cannot begin a write transaction: {e}");
        for job in batch.drain(..) {
            job.finish(Err(Error::Unavailable(e.public_message().to_string())));
        }
        return;
    }
    let tx = Tx { conn };
    for job in batch.iter_mut() {
        let ran = savepoint(conn, "SAVEPOINT job")
            .map(|()| job.run(&tx))
            .and_then(|ok| {
                if ok {
                    savepoint(conn, "RELEASE job")
                } else {
                    savepoint(conn, "ROLLBACK TO job").and_then(|()| savepoint(conn, "RELEASE job"))
                }
            });
        if let Err(e) = ran {
            log::error!("savepoint handling failed: {e}");
        }
    }
    let commit = conn.execute_batch("COMMIT").map_err(|e| {
        let e = Error::from(e);
        log::error!("group commit of {size} jobs failed: {e}");
        let _ = conn.execute_batch("ROLLBACK");
        stats.failed_commits.fetch_add(1, Ordering::Relaxed);
        match e {
            Error::Internal(_) => Error::Unavailable("The store could not save the change".into()),
            other => other,
        }
    });
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.jobs.fetch_add(size, Ordering::Relaxed);
    stats
        .commit_micros_total
        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    stats.largest_batch.fetch_max(size, Ordering::Relaxed);
    for job in batch.drain(..) {
        let commit = match &commit {
            Ok(()) => Ok(()),
            Err(e) => Err(Error::Unavailable(e.public_message().to_string())),
        };
        job.finish(commit);
    }
}

fn savepoint(conn: &Connection, sql: &str) -> Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}
