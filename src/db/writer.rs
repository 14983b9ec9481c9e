//! The writer thread: sole owner of the read-write connection, fed over a crossbeam channel.
//!
//! It takes whatever jobs are queued (up to [`MAX_BATCH`]), runs them in one transaction, commits once
//! (one fsync for the whole batch with `synchronous=FULL`), and only then answers every sender. A job's
//! caller therefore never sees success for a change that is not on disk. The batch size adapts to load
//! by itself: an idle server commits every job alone, a busy one commits many jobs per fsync.
//!
//! One job's failure must not undo the others, nor leave half of itself behind. Almost every failing
//! job fails before it writes (a 404 or 409 found by a read, or a statement SQLite already undid on
//! its own), so jobs run without a savepoint each: a savepoint copies every page a job touches into a
//! sub-journal, which cost about 15% of the writer's time. A job that fails after it changed rows
//! (seen in `total_changes`) makes the writer roll the whole batch back and run it again, this time
//! with a savepoint around every job ([`Mode::Savepoints`]). That is why a job must be safe to run
//! twice: its closure is `FnMut`, and it keeps its effects inside the transaction.
//!
//! A job's sender either waits for its answer ([`Writer::exec`]) or hands over what to do with it
//! and returns at once ([`Writer::submit`]). Those answers run after the commit on the writer's
//! answering thread ([`Answerer`]), one wake-up per commit for all of them: a request whose
//! response is written there needs no thread of its own waiting for the commit.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use rusqlite::Connection;

use super::checkpointer::{Checkpoints, passive_checkpoint};
use super::{HeldStatements, Tx};
use crate::error::{Error, Result};
use crate::oneshot::{self, Reply};

thread_local! {
    /// What this thread does right before it waits for a commit (see [`on_commit_wait`]).
    static ON_COMMIT_WAIT: std::cell::RefCell<Option<Box<dyn Fn()>>> =
        const { std::cell::RefCell::new(None) };
}

/// Sets what the calling thread does each time it is about to wait for a commit in
/// [`Writer::exec`]. A thread answering an HTTP request gives its turn to run away there, so the
/// number of changes waiting for one group commit is not capped by the number of turns.
pub fn on_commit_wait(hook: impl Fn() + 'static) {
    ON_COMMIT_WAIT.with(|h| *h.borrow_mut() = Some(Box::new(hook)));
}

/// The most jobs grouped into one transaction (keeps the write lock short and bounded).
pub const MAX_BATCH: usize = 512;

/// How long the writer waits without a job before it checkpoints the WAL (see [`run`]).
pub const IDLE_CHECKPOINT_AFTER: Duration = Duration::from_secs(1);

/// Counters the metrics endpoint reads.
#[derive(Default)]
pub struct WriterStats {
    pub batches: AtomicU64,
    pub jobs: AtomicU64,
    pub failed_commits: AtomicU64,
    pub commit_micros_total: AtomicU64,
    pub largest_batch: AtomicU64,
    /// Batches run a second time, with savepoints, because a job failed after writing.
    pub redone_batches: AtomicU64,
    /// Checkpoints run because the writer was idle, and those that copied the whole WAL.
    pub idle_checkpoints: AtomicU64,
    pub idle_checkpoints_complete: AtomicU64,
    /// Checkpoint passes of the checkpointer thread ([`super::checkpointer`]).
    pub background_checkpoints: AtomicU64,
    /// Checkpoints the writer ran after a commit to finish a round of the checkpointer's.
    pub handoff_checkpoints: AtomicU64,
    /// Checkpoints run inside a commit because the WAL had grown to its bound.
    pub forced_checkpoints: AtomicU64,
    /// Frames in the WAL after the last commit (the WAL hook stores them).
    pub wal_frames: AtomicI64,
}

trait Job: Send {
    /// Runs the job (again, if it ran before: the earlier result is dropped); `false` means it
    /// failed.
    fn run(&mut self, tx: &Tx) -> bool;
    /// Answers the sender once the batch's fate is known: a waiting sender at once, a submitted
    /// job by leaving its answer in `later` for the answering thread.
    fn finish(self: Box<Self>, commit: Result<()>, later: &mut Vec<Answer>);
}

struct TypedJob<T, F> {
    work: F,
    result: Option<Result<T>>,
    reply: Deliver<T>,
}

/// Where a job's answer goes.
enum Deliver<T> {
    /// To a sender waiting in [`Writer::exec`].
    Wait(Reply<Result<T>>),
    /// To what [`Writer::submit`] was given, run on the answering thread.
    Then(Then<T>),
}

/// What a submitted job's sender does with its answer. It is called exactly once: dropped
/// uncalled (the writer stopped, or was gone when the job was submitted), it is told the store is
/// shutting down, on the thread that drops it.
struct Then<T>(Option<Box<dyn FnOnce(Result<T>) + Send>>);

impl<T> Then<T> {
    fn call(mut self, answer: Result<T>) {
        if let Some(then) = self.0.take() {
            then(answer);
        }
    }
}

impl<T> Drop for Then<T> {
    fn drop(&mut self) {
        if let Some(then) = self.0.take() {
            then(Err(Error::Unavailable("The store is shutting down".into())));
        }
    }
}

/// An answer to run on the answering thread.
type Answer = Box<dyn FnOnce() + Send>;

/// The writer's answering thread: runs the answers of submitted jobs after their commit, so the
/// writer goes on to the next batch at once and the senders need no thread waiting for the
/// commit. The writer hands it each commit's answers together (one wake-up, and none while it is
/// still busy with the last ones); it runs them in commit order. Dropping it runs what is left
/// and joins the thread.
struct Answerer {
    queue: Arc<AnswerQueue>,
    thread: Option<JoinHandle<()>>,
}

struct AnswerQueue {
    state: Mutex<AnswerState>,
    ready: Condvar,
}

#[derive(Default)]
struct AnswerState {
    answers: Vec<Answer>,
    /// Whether the thread sleeps on `ready` (a notification is a system call; skip it otherwise).
    sleeping: bool,
    closed: bool,
}

impl Answerer {
    fn start() -> Answerer {
        let queue = Arc::new(AnswerQueue {
            state: Mutex::new(AnswerState::default()),
            ready: Condvar::new(),
        });
        let thread = {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name("answerer".into())
                .spawn(move || answer_loop(&queue))
                .expect("spawn the answering thread")
        };
        Answerer {
            queue,
            thread: Some(thread),
        }
    }

    /// Queues `answers` (emptying it) and wakes the thread if it sleeps.
    fn hand(&self, answers: &mut Vec<Answer>) {
        if answers.is_empty() {
            return;
        }
        let mut state = self.queue.state.lock().unwrap_or_else(|e| e.into_inner());
        state.answers.append(answers);
        if state.sleeping {
            self.queue.ready.notify_one();
        }
    }
}

impl Drop for Answerer {
    fn drop(&mut self) {
        self.queue
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed = true;
        self.queue.ready.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer_loop(queue: &AnswerQueue) {
    let mut mine: Vec<Answer> = Vec::new();
    loop {
        {
            let mut state = queue.state.lock().unwrap_or_else(|e| e.into_inner());
            while state.answers.is_empty() && !state.closed {
                state.sleeping = true;
                state = queue.ready.wait(state).unwrap_or_else(|e| e.into_inner());
                state.sleeping = false;
            }
            if state.answers.is_empty() {
                return;
            }
            std::mem::swap(&mut mine, &mut state.answers);
        }
        for answer in mine.drain(..) {
            if catch_unwind(AssertUnwindSafe(answer)).is_err() {
                log::error!("an answer after a commit panicked");
            }
        }
    }
}

impl<T, F> Job for TypedJob<T, F>
where
    T: Send + 'static,
    F: FnMut(&Tx) -> Result<T> + Send,
{
    fn run(&mut self, tx: &Tx) -> bool {
        let work = &mut self.work;
        let result = catch_unwind(AssertUnwindSafe(|| work(tx)))
            .unwrap_or_else(|_| Err(Error::Internal("a writer job panicked".into())));
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, commit: Result<()>, later: &mut Vec<Answer>) {
        let answer = match (commit, self.result) {
            (_, Some(Err(e))) => Err(e),
            (Err(e), _) => Err(e),
            (Ok(()), Some(Ok(v))) => Ok(v),
            (Ok(()), None) => Err(Error::Unavailable(
                "The store did not run the change".into(),
            )),
        };
        match self.reply {
            Deliver::Wait(reply) => reply.send(answer),
            Deliver::Then(then) => later.push(Box::new(move || then.call(answer))),
        }
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
    /// Starts the writer thread on an open, migrated read-write connection, and the checkpointer
    /// thread beside it.
    pub fn start(mut conn: Connection) -> Writer {
        let (queue, inbox) = crossbeam_channel::unbounded();
        let alive = Arc::new(AtomicBool::new(true));
        let stats = Arc::new(WriterStats::default());
        let checkpoints = Checkpoints::start(&mut conn, stats.clone());
        let answerer = Answerer::start();
        let thread = {
            let alive = alive.clone();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("writer".into())
                .spawn(move || {
                    run(conn, inbox, &stats, checkpoints, answerer);
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
    /// `work` may run twice (see the module documentation): everything it does outside the
    /// transaction must be harmless to repeat.
    pub fn exec<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&Tx) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::pair();
        let job = TypedJob {
            work,
            result: None,
            reply: Deliver::Wait(reply),
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
            .wait()
            .unwrap_or_else(|| Err(Error::Unavailable("The store is shutting down".into())))
    }

    /// Queues `work` for the next group commit and returns at once; `then` gets its result once
    /// the commit is durable (or the change failed), on the writer's answering thread. `then` is
    /// called exactly once: with `Unavailable` when the writer is gone or stops first, then on
    /// the thread that finds out (this one, if it is already gone). `work` may run twice, as in
    /// [`Writer::exec`]; `then` must not wait for anything slow, since the answers of later
    /// commits wait behind it.
    pub fn submit<T, F, G>(&self, work: F, then: G)
    where
        T: Send + 'static,
        F: FnMut(&Tx) -> Result<T> + Send + 'static,
        G: FnOnce(Result<T>) + Send + 'static,
    {
        let job = TypedJob {
            work,
            result: None,
            reply: Deliver::Then(Then(Some(Box::new(then)))),
        };
        // A writer that is gone gives the job back in the error; dropping it calls `then`.
        let _ = self.queue.send(Msg::Job(Box::new(job)));
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

/// The writer's loop.
///
/// **Idle checkpoints.** Once a commit has left frames in the WAL, the writer waits at most
/// [`IDLE_CHECKPOINT_AFTER`] for the next job; when none comes it runs a PASSIVE checkpoint (it
/// never waits for readers and blocks no one). When that copies the whole WAL into the database
/// file, every read transaction that starts afterwards reads the file alone: SQLite skips the
/// WAL index search (`walFindFrame`, 3% of a `GET /sessions/:id` with a WAL of a few thousand
/// frames) and takes every page from the shared map instead of a reader's private cache, and the
/// next commit starts the WAL over from its beginning. A busy writer never idles, so this costs it
/// nothing; under steady load the checkpointer bounds the WAL (see [`Checkpoints`]). A checkpoint
/// that could not copy everything (a reader was still on an older snapshot) is tried again after
/// the next idle interval.
///
/// **Checkpoints under load** run on the checkpointer's thread; after each commit the writer only
/// tells it when the WAL has grown, and finishes what it left ([`Checkpoints::after_commit`]).
fn run(
    conn: Connection,
    inbox: Receiver<Msg>,
    stats: &WriterStats,
    mut checkpoints: Checkpoints,
    answerer: Answerer,
) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    let mut later: Vec<Answer> = Vec::with_capacity(MAX_BATCH);
    let mut wal_has_frames = true;
    let held = HeldStatements::new(&conn);
    let tx = held.tx();
    loop {
        let mut shutdown = None;
        let first = if wal_has_frames {
            inbox.recv_timeout(IDLE_CHECKPOINT_AFTER)
        } else {
            inbox.recv().map_err(|_| RecvTimeoutError::Disconnected)
        };
        match first {
            Ok(Msg::Job(job)) => batch.push(job),
            Ok(Msg::Shutdown(ack)) => shutdown = Some(ack),
            Err(RecvTimeoutError::Timeout) => {
                wal_has_frames = !idle_checkpoint(&conn, stats);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
        while shutdown.is_none() && batch.len() < MAX_BATCH {
            match inbox.try_recv() {
                Ok(Msg::Job(job)) => batch.push(job),
                Ok(Msg::Shutdown(ack)) => shutdown = Some(ack),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
            }
        }
        if !batch.is_empty() {
            commit_batch(&tx, &mut batch, stats, &mut later);
            answerer.hand(&mut later);
            checkpoints.after_commit(&conn);
            wal_has_frames = true;
        }
        if let Some(ack) = shutdown {
            // Jobs that raced the shutdown message still get an answer.
            while let Ok(Msg::Job(job)) = inbox.try_recv() {
                batch.push(job);
            }
            if !batch.is_empty() {
                commit_batch(&tx, &mut batch, stats, &mut later);
                answerer.hand(&mut later);
            }
            // Every answer runs before the writer says it is done.
            drop(answerer);
            checkpoints.stop();
            if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
                log::error!("final WAL checkpoint failed: {e}");
            }
            drop(held);
            drop(conn);
            let _ = ack.send(());
            return;
        }
    }
}

/// Runs a PASSIVE checkpoint; true when the WAL holds nothing the database file lacks (or the
/// database is not in WAL mode). A failure is logged and counts as not done.
fn idle_checkpoint(conn: &Connection, stats: &WriterStats) -> bool {
    stats.idle_checkpoints.fetch_add(1, Ordering::Relaxed);
    match passive_checkpoint(conn) {
        Ok(Some(done)) if done.log == done.copied => {
            stats
                .idle_checkpoints_complete
                .fetch_add(1, Ordering::Relaxed);
            true
        }
        Ok(_) => false,
        Err(e) => {
            log::warn!("idle WAL checkpoint failed: {e}");
            false
        }
    }
}

/// How a batch runs its jobs.
#[derive(Clone, Copy)]
enum Mode {
    /// No savepoints; stops at the first job that fails after it changed rows.
    Optimistic,
    /// A savepoint around every job, rolled back when the job fails.
    Savepoints,
}

/// What running a batch's jobs came to.
enum Ran {
    /// Every job ran; the failed ones left nothing behind.
    Clean,
    /// A job failed after it had changed rows (optimistic mode only): the batch must be redone.
    Dirty,
}

/// Runs and commits `batch`, then answers its jobs: waiting senders at once, the answers of
/// submitted jobs into `later`.
fn commit_batch(
    tx: &Tx,
    batch: &mut Vec<Box<dyn Job>>,
    stats: &WriterStats,
    later: &mut Vec<Answer>,
) {
    let started = Instant::now();
    let size = batch.len() as u64;
    let ran = match run_batch(tx, batch, Mode::Optimistic) {
        Ok(Ran::Dirty) => {
            stats.redone_batches.fetch_add(1, Ordering::Relaxed);
            let _ = exec(tx, "ROLLBACK");
            run_batch(tx, batch, Mode::Savepoints)
        }
        other => other,
    };
    let mut commit = ran.and_then(|_| exec(tx, "COMMIT"));
    if let Err(e) = &commit {
        log::error!("group commit of {size} jobs failed: {e}");
        if !tx.conn.is_autocommit() {
            let _ = exec(tx, "ROLLBACK");
        }
        stats.failed_commits.fetch_add(1, Ordering::Relaxed);
        if let Error::Internal(_) = e {
            commit = Err(Error::Unavailable(
                "The store could not save the change".into(),
            ));
        }
    }
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
        job.finish(commit, later);
    }
}

/// Begins a transaction and runs every job of the batch in it (stopping early only when a job
/// leaves a dirty failure in optimistic mode). The transaction is left open for the caller.
fn run_batch(tx: &Tx, batch: &mut [Box<dyn Job>], mode: Mode) -> Result<Ran> {
    let conn = tx.conn;
    exec(tx, "BEGIN IMMEDIATE")?;
    for job in batch.iter_mut() {
        match mode {
            Mode::Optimistic => {
                let before = conn.total_changes();
                if !job.run(tx) && conn.total_changes() != before {
                    return Ok(Ran::Dirty);
                }
            }
            Mode::Savepoints => {
                exec(tx, "SAVEPOINT job")?;
                if job.run(tx) {
                    exec(tx, "RELEASE job")?;
                } else {
                    exec(tx, "ROLLBACK TO job")?;
                    exec(tx, "RELEASE job")?;
                }
            }
        }
        if conn.is_autocommit() {
            // SQLite rolled the whole transaction back (out of disk or memory, an I/O error):
            // nothing of the batch is left to commit.
            return Err(Error::Unavailable(
                "The store could not save the change".into(),
            ));
        }
    }
    Ok(Ran::Clean)
}

/// Runs a statement without parameters or results: the transaction control of every batch, held
/// prepared with the jobs' hottest changes.
fn exec(tx: &Tx, sql: &'static str) -> Result<()> {
    tx.execute(sql, &[])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Access, TestDir, column, open};
    use crate::oneshot::Slot;

    /// How a test job ends.
    #[derive(Clone, Copy)]
    enum Outcome {
        Succeeds,
        FailsBeforeWriting,
        FailsAfterWriting,
    }
    use Outcome::*;

    /// A job that inserts `value` into `t` and ends as `outcome` says (a failure is a 409); it
    /// counts its runs in `runs`.
    fn job(
        value: i64,
        outcome: Outcome,
        runs: Arc<AtomicU64>,
    ) -> (Box<dyn Job>, Arc<Slot<Result<i64>>>) {
        let (reply, answer) = oneshot::pair();
        let work = move |tx: &Tx| -> Result<i64> {
            runs.fetch_add(1, Ordering::SeqCst);
            if let FailsBeforeWriting = outcome {
                return Err(Error::Conflict("refused before writing".into()));
            }
            tx.conn.execute("INSERT INTO t (v) VALUES (?1)", [value])?;
            if let FailsAfterWriting = outcome {
                return Err(Error::Conflict("refused after writing".into()));
            }
            Ok(value)
        };
        let job = TypedJob {
            work,
            result: None,
            reply: Deliver::Wait(reply),
        };
        (Box::new(job), answer)
    }

    /// What one test batch came to.
    struct Committed {
        /// Each job's answer and how many times it ran.
        answers: Vec<(Result<i64>, u64)>,
        /// The table's values after the commit.
        values: Vec<i64>,
        /// Batches redone with savepoints.
        redone: u64,
    }

    /// Runs one batch of jobs in a fresh database.
    fn batch_of(name: &str, jobs: &[(i64, Outcome)]) -> Committed {
        let dir = TestDir::new(name);
        let conn = open(&dir.join("w.db"), Access::ReadWrite, true).unwrap();
        conn.execute_batch("CREATE TABLE t (v INTEGER NOT NULL UNIQUE)")
            .unwrap();
        let stats = WriterStats::default();
        let mut batch = Vec::new();
        let mut answers = Vec::new();
        for &(value, outcome) in jobs {
            let runs = Arc::new(AtomicU64::new(0));
            let (job, answer) = job(value, outcome, runs.clone());
            batch.push(job);
            answers.push((answer, runs));
        }
        commit_batch(
            &HeldStatements::new(&conn).tx(),
            &mut batch,
            &stats,
            &mut Vec::new(),
        );
        let answers = answers
            .into_iter()
            .map(|(a, runs)| (a.wait().unwrap(), runs.load(Ordering::SeqCst)))
            .collect();
        Committed {
            answers,
            values: column(&conn, "SELECT v FROM t ORDER BY v", []),
            redone: stats.redone_batches.load(Ordering::Relaxed),
        }
    }

    /// Submitted jobs are answered on the answering thread, each once, in the order they were
    /// queued, and only once their rows are committed (a separate read connection sees them). A
    /// failed job is answered with its error, a panicking answer stops no other, and a job
    /// submitted to a stopped writer is answered at once, on the submitting thread.
    #[test]
    fn submitted_jobs_are_answered_after_their_commit_once_each_and_in_order() {
        let dir = TestDir::new("writer-submit");
        let path = dir.join("w.db");
        let conn = open(&path, Access::ReadWrite, true).unwrap();
        conn.execute_batch("CREATE TABLE t (v INTEGER NOT NULL UNIQUE)")
            .unwrap();
        let check = Arc::new(Mutex::new(open(&path, Access::ReadOnly, true).unwrap()));
        let writer = Writer::start(conn);
        let (answered, answers) = crossbeam_channel::unbounded();
        for v in 0..200i64 {
            let (answered, check) = (answered.clone(), check.clone());
            let work = move |tx: &Tx| {
                if v == 50 {
                    return Err(Error::Conflict("refused".into()));
                }
                tx.conn.execute("INSERT INTO t (v) VALUES (?1)", [v])?;
                Ok(v)
            };
            writer.submit(work, move |result: Result<i64>| {
                let stored: i64 = check
                    .lock()
                    .unwrap()
                    .query_row("SELECT count(*) FROM t WHERE v = ?1", [v], |r| r.get(0))
                    .unwrap();
                let thread = std::thread::current().name().map(str::to_string);
                answered.send((v, result.ok(), stored, thread)).unwrap();
                assert_ne!(v, 70, "an answer that panics");
            });
        }
        for v in 0..200i64 {
            let (got, result, stored, thread) =
                answers.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(got, v, "answers come in the order the jobs were queued");
            assert_eq!(thread.as_deref(), Some("answerer"));
            if v == 50 {
                assert_eq!((result, stored), (None, 0));
            } else {
                assert_eq!(
                    (result, stored),
                    (Some(v), 1),
                    "answered before it was committed"
                );
            }
        }
        writer.shutdown(Duration::from_secs(10));
        assert!(answers.try_recv().is_err(), "a job was answered twice");

        let (answered, answers) = crossbeam_channel::unbounded();
        writer.submit(
            |_: &Tx| Ok(1),
            move |result: Result<i64>| {
                let thread = std::thread::current().id();
                answered.send((result, thread)).unwrap();
            },
        );
        let (result, thread) = answers.try_recv().expect("answered at once");
        assert!(matches!(result, Err(Error::Unavailable(_))));
        assert_eq!(thread, std::thread::current().id());
    }

    #[test]
    fn a_job_that_fails_before_writing_costs_the_others_nothing() {
        let b = batch_of(
            "writer-clean",
            &[(1, Succeeds), (2, FailsBeforeWriting), (3, Succeeds)],
        );
        assert_eq!(b.values, [1, 3]);
        assert_eq!(b.redone, 0);
        assert!(matches!(b.answers[0], (Ok(1), 1)));
        assert!(matches!(b.answers[1], (Err(Error::Conflict(_)), 1)));
        assert!(matches!(b.answers[2], (Ok(3), 1)));
    }

    #[test]
    fn a_job_that_fails_after_writing_leaves_nothing_and_the_others_commit() {
        let b = batch_of(
            "writer-dirty",
            &[(1, Succeeds), (2, FailsAfterWriting), (3, Succeeds)],
        );
        // Job 2's row is gone, the others' rows are there once each.
        assert_eq!(b.values, [1, 3]);
        assert_eq!(b.redone, 1);
        // Jobs up to the dirty one ran twice; the one after it only in the redo.
        assert!(matches!(b.answers[0], (Ok(1), 2)));
        assert!(matches!(b.answers[1], (Err(Error::Conflict(_)), 2)));
        assert!(matches!(b.answers[2], (Ok(3), 1)));
    }

    #[test]
    fn a_statement_that_fails_undoes_itself_without_a_redo() {
        // Job 2 inserts a value job 1 already inserted: the UNIQUE violation undoes the statement,
        // so the job changed nothing and the batch is not redone.
        let b = batch_of(
            "writer-statement",
            &[(1, Succeeds), (1, Succeeds), (3, Succeeds)],
        );
        assert_eq!(b.values, [1, 3]);
        assert_eq!(b.redone, 0);
        assert!(matches!(b.answers[0], (Ok(1), 1)));
        assert!(matches!(b.answers[1], (Err(_), 1)));
        assert!(matches!(b.answers[2], (Ok(3), 1)));
    }
}
