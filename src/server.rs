//! The HTTP edge: tiny_http workers, our own small request/response types, limits, the access log,
//! panic containment, and the designed shutdown path.
//!
//! Handlers never see tiny_http: [`handle`] turns a `tiny_http::Request` into a [`Req`] (body already
//! capped at `max_body`), asks `routes::dispatch` for a [`Resp`], and writes it back with an
//! `X-Request-Id`. A panic inside a handler becomes a 500 and an `error!` line naming the route.
//! The vendored tiny_http reads each request whole, under [`http_limits`], on its connection's own
//! thread, so a worker never waits on a client. Its accept loop retries errors that pass and stops
//! only when the listener is unusable; a worker that receives that error ends the process with a
//! non-zero exit so the supervisor restarts it, instead of living on deaf.

use std::io::Read;
use std::net::{IpAddr, TcpListener};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::auth::{RateLimiter, Throttle};
use crate::config::Config;
use crate::db::{self, Reader, Tx, Writer};
use crate::domain::time::{Millis, now_ms};
use crate::error::{Dialect, Error, Result};
use crate::oneshot;
use crate::viewers::Viewers;
use crate::{reaper, routes};

/// How many runtime sessions one credential may create per minute.
pub const RUNTIME_CREATES_PER_MINUTE: u32 = 600;

/// Everything the handlers share, built once at startup.
pub struct App {
    pub cfg: Config,
    pub writer: Writer,
    pub viewers: Viewers,
    pub anonymous_shares: RateLimiter<std::net::IpAddr>,
    /// The `anonymous` account's row id once looked up (see [`Ctx::anonymous_account`]).
    anonymous_account: std::sync::OnceLock<i64>,
    /// Runtime session creations per credential per minute.
    pub runtime_creates: RateLimiter<i64>,
    /// Failed sign-ins per email and per IP (SPEC §2: 5 in 5 minutes locks out for 5 minutes).
    pub login_throttle: Throttle,
    pub metrics: crate::metrics::Metrics,
    pub access_log: crate::access_log::AccessLog,
    /// Set when shutdown begins: workers finish their request and stop taking new ones.
    pub stopping: AtomicBool,
    request_seq: AtomicU64,
    request_prefix: String,
}

impl App {
    /// The shared state around a started writer.
    pub fn new(cfg: Config, writer: Writer) -> App {
        let mut prefix = [0u8; 4];
        crate::auth::random_bytes(&mut prefix);
        App {
            viewers: Viewers::new(cfg.viewer_idle_timeout),
            anonymous_shares: RateLimiter::new(cfg.anonymous_share_rate, 60_000),
            anonymous_account: std::sync::OnceLock::new(),
            login_throttle: Throttle::new(5, 300_000, 300_000),
            metrics: crate::metrics::Metrics::default(),
            access_log: crate::access_log::AccessLog::start(),
            runtime_creates: RateLimiter::new(RUNTIME_CREATES_PER_MINUTE, 60_000),
            writer,
            stopping: AtomicBool::new(false),
            request_seq: AtomicU64::new(0),
            request_prefix: crate::auth::hex(&prefix),
            cfg,
        }
    }
}

/// What a handler gets: the shared state, this worker's read connection, and the request's clock.
pub struct Ctx<'a> {
    pub app: &'a App,
    pub db: &'a Reader,
    pub now: Millis,
}

impl Ctx<'_> {
    pub fn cfg(&self) -> &Config {
        &self.app.cfg
    }

    /// The `anonymous` account's row id, looked up on first use and then kept (system accounts
    /// are never removed): an anonymous create opens no read transaction for it.
    pub fn anonymous_account(&self) -> Result<i64> {
        if let Some(&id) = self.app.anonymous_account.get() {
            return Ok(id);
        }
        let id = self
            .db
            .account_id_by_name(db::accounts::ANONYMOUS_ACCOUNT)?
            .ok_or_else(|| Error::Internal("the anonymous account is missing".into()))?;
        Ok(*self.app.anonymous_account.get_or_init(|| id))
    }
}

/// The request headers sessiond reads, in lower case: only these reach [`Req::header`] (and
/// [`client_ip`]) from the wire. A handler that needs another adds it here; `Req::header` asserts
/// it in debug builds.
pub const READ_HEADERS: [&str; 3] = ["authorization", "x-chaser-account", "x-forwarded-for"];

/// A request as handlers see it.
pub struct Req {
    pub method: String,
    /// The raw path, without the query string.
    pub path: String,
    /// The path's segments, percent-decoded.
    pub segments: Vec<String>,
    /// Query parameters, percent-decoded, in order.
    pub query: Vec<(String, String)>,
    /// Header names in lower case; from the wire, only [`READ_HEADERS`].
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The address of the other end of the TCP connection.
    pub peer: Option<IpAddr>,
    /// The client's address: the peer, or `X-Forwarded-For` when the peer is a trusted proxy.
    pub client_ip: Option<IpAddr>,
    pub request_id: String,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        debug_assert!(
            READ_HEADERS.contains(&name),
            "{name} is not in READ_HEADERS"
        );
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The token of `Authorization: Bearer <token>`.
    pub fn bearer(&self) -> Option<&str> {
        // By bytes: `split_once(' ')` took 150 instructions (a char searcher's setup) per call.
        let value = self.header("authorization")?;
        let (scheme, rest) = value.split_at_checked(6)?;
        let token = rest.strip_prefix(' ')?.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
    }

    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A query parameter that is present and not empty (`?status=` means no filter).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query(name).filter(|v| !v.is_empty())
    }

    pub fn client_ip_string(&self) -> Option<String> {
        self.client_ip.map(crate::text::ip_string)
    }
}

/// A response as handlers produce it.
pub struct Resp {
    pub status: u16,
    pub body: Vec<u8>,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    /// Set by [`Resp::after_commit`]: the response is made once a change is committed, and the
    /// fields above mean nothing until then.
    after_commit: Option<AfterCommit>,
}

/// A response that exists once a change is committed: the change, still to be queued, and what
/// makes the response from its result (see [`Resp::after_commit`]).
pub struct AfterCommit {
    submit: Submit,
    /// The dialect its errors are answered in (the routing table sets it).
    dialect: Dialect,
}

/// Queues an [`AfterCommit`]'s change on the writer, with what the edge does once it is committed.
type Submit = Box<dyn FnOnce(&Writer, Done) + Send>;

/// Makes the response of an [`AfterCommit`] once its change's result is known.
type Finish = Box<dyn FnOnce(&App) -> Result<Resp> + Send>;

/// What the edge does with a [`Finish`]: called once, on the writer's answering thread (or on
/// the thread that finds the writer gone).
type Done = Box<dyn FnOnce(Finish) + Send>;

impl AfterCommit {
    /// Queues the change; `done` gets what makes the response once it is committed.
    fn submit(self, writer: &Writer, done: Done) {
        (self.submit)(writer, done)
    }

    /// Queues the change and waits for its commit here (a connection with a response still
    /// outstanding, and [`respond`]): the response, errors in the route's dialect.
    fn wait(self, app: &App) -> Resp {
        let dialect = self.dialect;
        let (reply, slot) = oneshot::pair();
        self.submit(&app.writer, Box::new(move |finish| reply.send(finish)));
        match slot.wait() {
            Some(finish) => made(finish, app, dialect),
            None => Error::Unavailable("The store is shutting down".into()).into_resp(dialect),
        }
    }
}

/// The response `finish` makes, its error in `dialect`, or a 500 if it panics.
fn made(finish: Finish, app: &App, dialect: Dialect) -> Resp {
    match catch_unwind(AssertUnwindSafe(|| finish(app))) {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            if let Error::Internal(cause) = &e {
                log::error!("after a commit: {cause}");
            }
            e.into_resp(dialect)
        }
        Err(_) => {
            log::error!("a response made after a commit panicked");
            Error::Internal("panic".into()).into_resp(dialect)
        }
    }
}

impl Resp {
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Resp {
        // Most bodies fit in the first allocation; growing from empty cost a few reallocations each.
        // A share's creation answers 563 bytes and its full view 733 (with no viewers): with 512
        // here, growing that one time was 1.6% of a create's samples.
        let mut body = Vec::with_capacity(1024);
        if serde_json::to_writer(&mut body, value).is_err() {
            body = b"{}".to_vec();
        }
        Resp {
            status,
            body,
            content_type: "application/json",
            headers: Vec::new(),
            after_commit: None,
        }
    }

    /// A JSON body written by [`crate::api::json::Obj`].
    pub fn json_written(status: u16, body: Vec<u8>) -> Resp {
        Resp {
            status,
            body,
            content_type: "application/json",
            headers: Vec::new(),
            after_commit: None,
        }
    }

    pub fn text(status: u16, content_type: &'static str, body: String) -> Resp {
        Resp {
            status,
            body: body.into_bytes(),
            content_type,
            headers: Vec::new(),
            after_commit: None,
        }
    }

    /// A response without a body (204).
    pub fn empty(status: u16) -> Resp {
        Resp {
            status,
            body: Vec::new(),
            content_type: "application/json",
            headers: Vec::new(),
            after_commit: None,
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Resp {
        self.headers.push((name, value.into()));
        self
    }

    /// The response to a change that is committed before it is answered: `work` runs in a group
    /// commit (as [`Writer::exec`] runs it; it may run twice), and `then` makes the response from
    /// its result once the commit is durable. The edge queues the change and lets the
    /// connection's thread go back to the connection; `then` runs on the writer's answering
    /// thread, which writes the response. An `Err` from either is answered in the route's
    /// dialect. `then` must be quick: the responses of later commits wait behind it.
    pub fn after_commit<T, F, G>(work: F, then: G) -> Resp
    where
        T: Send + 'static,
        F: FnMut(&Tx) -> Result<T> + Send + 'static,
        G: FnOnce(&App, Result<T>) -> Result<Resp> + Send + 'static,
    {
        let submit = move |writer: &Writer, done: Done| {
            writer.submit(work, move |result| {
                done(Box::new(move |app: &App| then(app, result)))
            })
        };
        Resp {
            status: 0,
            body: Vec::new(),
            content_type: "application/json",
            headers: Vec::new(),
            after_commit: Some(AfterCommit {
                submit: Box::new(submit),
                dialect: Dialect::Share,
            }),
        }
    }

    /// Answers the errors of a response made after a commit in `dialect` (the routing table's).
    pub fn in_dialect(mut self, dialect: Dialect) -> Resp {
        if let Some(after) = &mut self.after_commit {
            after.dialect = dialect;
        }
        self
    }
}

/// Runs the server until SIGTERM/SIGINT (exit code 0) or a fatal accept error (exit code 1).
pub fn serve(cfg: Config) -> Result<i32> {
    let open_files = raise_file_limit();
    limit_malloc_arenas(cfg.threads);
    let _lock = db::backup::lock(&cfg.db)?;
    let mut conn = db::open(&cfg.db, db::Access::ReadWrite, cfg.synchronous_full)?;
    db::migrate::migrate(&mut conn)?;
    let admin = db::accounts::Admin {
        email: &cfg.admin_email,
        password: cfg.admin_password.as_deref(),
    };
    let generated = db::accounts::bootstrap(&mut conn, Some(admin), now_ms())?;
    if let Some(password) = generated {
        // Printed once, to stderr, never logged: the operator's only chance to read it.
        eprintln!(
            "sessiond: created admin user {} with password {password}",
            cfg.admin_email
        );
        eprintln!(
            "sessiond: store it now; it is not shown again (change it with `sessiond user passwd`)"
        );
    }
    let stored_viewers = db::shares::sessions_with_viewer_rows(&conn)?;
    let writer = Writer::start(conn);

    let listener = TcpListener::bind(cfg.listen)
        .map_err(|e| Error::Internal(format!("cannot listen on {}: {e}", cfg.listen)))?;
    let local = listener.local_addr()?;
    set_send_buffer(&listener, cfg.send_buffer)?;
    let app = App::new(cfg, writer);
    app.viewers.note_stored(stored_viewers);
    let app = Arc::new(app);
    let http = Http::start(&app, listener, open_files)?;

    let term = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, term.clone())?;
    }
    let reaper = reaper::start(app.clone(), Reader::open(&app.cfg.db)?)?;
    let backups = crate::backups::start(app.clone())?;

    log::info!(
        "sessiond {} listening on http://{local}: {} requests answered at once, with up to {} read connections",
        env!("CARGO_PKG_VERSION"),
        app.cfg.threads,
        http.answering.readers.max
    );
    eprintln!("sessiond: listening on http://{local}");
    notify_systemd("READY=1");

    let mut fatal = false;
    let mut last_probe = Instant::now();
    while !term.load(Ordering::SeqCst) && !fatal {
        std::thread::sleep(Duration::from_millis(50));
        // Requests are answered on their connections' threads; only an error that ended
        // tiny_http's accept loop comes this way.
        if let Err(e) = http.server.try_recv() {
            log::error!(
                "accepting connections failed: {e}; exiting so the supervisor can restart sessiond"
            );
            fatal = true;
        }
        if last_probe.elapsed() >= LISTENER_PROBE_EVERY {
            last_probe = Instant::now();
            http.answering.readers.close_idle(app.cfg.threads);
            if !listener_alive(local) {
                log::error!(
                    "the listener on {local} is gone; exiting so the supervisor can restart sessiond"
                );
                fatal = true;
            }
        }
    }

    // Shutdown: stop taking requests, finish in-flight ones, flush viewer activity, checkpoint.
    // A request that arrives from now on is answered 503 with `Retry-After`.
    let deadline = Instant::now() + Duration::from_millis(app.cfg.shutdown_timeout as u64);
    log::info!(
        "shutting down ({})",
        if fatal { "accept failure" } else { "signal" }
    );
    notify_systemd("STOPPING=1");
    app.stopping.store(true, Ordering::SeqCst);
    if !http.answering.finish_by(deadline) {
        log::warn!("requests were still running at the shutdown timeout");
    }
    drop(http);
    reaper.stop(deadline);
    backups.stop();
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    app.writer.shutdown(left);
    app.access_log.finish();
    log::info!("stopped");
    Ok(if fatal { 1 } else { 0 })
}

/// Sets `SO_SNDBUF` on the listener, which every accepted connection inherits (0: leaves the
/// kernel's autotuning, up to `net.ipv4.tcp_wmem`'s maximum, 4 MiB by default). A set size bounds
/// the kernel memory a client that stops reading can hold, as nginx's `listen … sndbuf=` does;
/// a response that does not fit waits for the client under the write timeout.
fn set_send_buffer(listener: &TcpListener, bytes: usize) -> Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    use std::os::fd::AsRawFd;
    let size = bytes as libc::c_int;
    // SAFETY: a valid socket descriptor and a pointer to an int of the size given.
    let set = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set != 0 {
        let e = std::io::Error::last_os_error();
        return Err(Error::Internal(format!("cannot set send_buffer: {e}")));
    }
    Ok(())
}

/// Waits for `thread` to end until `deadline`; false (and the thread left running) when it did not.
pub fn join_by(thread: std::thread::JoinHandle<()>, deadline: Instant) -> bool {
    while !thread.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if !thread.is_finished() {
        return false;
    }
    let _ = thread.join();
    true
}

/// How often the main thread checks that its own listener still accepts connections.
const LISTENER_PROBE_EVERY: Duration = Duration::from_secs(1);

/// False only when connecting to our own listener is refused: tiny_http's accept thread has ended
/// (its listener closed with it), however it ended. Any other failure (our own EMFILE, a timeout
/// under load) proves nothing and counts as alive.
fn listener_alive(mut addr: std::net::SocketAddr) -> bool {
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::ConnectionRefused,
    }
}

/// The HTTP server and what answers its requests. Dropping it closes the listener.
pub struct Http {
    pub server: tiny_http::Server,
    answering: Arc<Answering>,
}

impl Http {
    /// Serves `listener` with sessiond's limits. Each request is answered on its connection's own
    /// thread (see [`Answering`]); the first `threads` read connections are opened here, so a
    /// database that cannot be read fails the start, not the first requests.
    pub fn start(app: &Arc<App>, listener: TcpListener, open_files: u64) -> Result<Http> {
        let answering = Arc::new(Answering {
            turns: Turns::new(app.cfg.threads),
            readers: Readers::open(&app.cfg.db, app.cfg.threads)?,
            running: AtomicUsize::new(0),
            threads: AtomicUsize::new(0),
        });
        let handler = {
            let (app, answering) = (app.clone(), answering.clone());
            Arc::new(move |request| answer(&answering, &app, request))
        };
        let server = tiny_http::Server::from_listener_with_handler(
            listener,
            None,
            http_limits(&app.cfg, open_files),
            handler,
        )
        .map_err(|e| Error::Internal(format!("cannot start the HTTP server: {e}")))?;
        Ok(Http { server, answering })
    }
}

/// The stack of each connection's thread, which answers the connection's requests. Handlers,
/// SQLite and serde_json run on it; 256 KiB, tiny_http's size for threads that only parse
/// requests, leaves too little margin for them. Only the pages a thread touches are memory.
const CONNECTION_STACK: usize = 1024 * 1024;

/// Read connections per turn, at most: requests waiting for a commit keep theirs without a turn.
const READERS_PER_TURN: usize = 4;

/// A read connection beyond the first `threads` that has not been used for this long is closed:
/// after a burst of changes only as many stay open as run at once.
const IDLE_READER_CLOSES_AFTER: Duration = Duration::from_secs(1);

/// How long a request waits for a read connection when all are in use before it is answered 503.
const READER_WAIT: Duration = Duration::from_secs(10);

/// Answers requests on the connections' own threads: tiny_http calls [`answer`] with each request
/// it has read, and reads the connection's next request once it returns. Handing each request to
/// a worker thread instead, as tiny_http's queue does, cost a wake-up and a context switch per
/// request: on this 2-core VM a floor server (one primary-key lookup per request) answered 1.19
/// times as many requests on its connection threads as through the queue.
///
/// At most `threads` requests run at once (the turns). A request about to wait for a group commit
/// gives its turn away (`db::writer::on_commit_wait`), so the changes one commit can group are
/// capped by the connections, not by the turns: in the benchmark (16 turns, 64 connections
/// creating sessions) a commit took 8.5 changes when the waiting requests kept their turns and
/// 21-32 when they gave them away. Each running request holds a read connection from
/// [`Readers`], taken after the turn: the connections in use are then about as many as the turns,
/// and the pool hands out the one given back last, so the same few stay warm in the CPU caches.
/// Taken before the turn (as it once was), every one of 64 connections' threads held one while it
/// waited, and 64 read connections took turns (`GET /sessions/:id` against the lookup floor, four
/// alternating pairs of five rounds: 0.68/0.67/0.69/0.74 before, 0.71/0.72/0.75/0.74 after). A turn
/// holder that finds every connection in use waits for one: the others are held by turn holders or
/// by requests waiting for a commit, which finish without a turn.
struct Answering {
    turns: Turns,
    readers: Readers,
    /// Requests between their arrival and their answer.
    running: AtomicUsize,
    /// Numbers the threads that answer requests (the metrics' shards).
    threads: AtomicUsize,
}

impl Answering {
    /// Waits until no request is running, or until `deadline`; false when some still are.
    fn finish_by(&self, deadline: Instant) -> bool {
        while self.running.load(Ordering::SeqCst) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}

thread_local! {
    /// This thread's number among those that answer requests, once it has answered one.
    static THREAD: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
    /// Whether this thread holds a turn to run.
    static HOLDS_TURN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Set while a response this thread left to the writer's answering thread is not written
    /// yet (see [`answer_after_commit`]).
    static OUTSTANDING: Arc<AtomicBool> = Arc::new(AtomicBool::new(false));
    /// Whether this thread runs under `SCHED_BATCH` (see [`schedule_for`]).
    static BATCH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Sets the calling connection thread's scheduling policy for its next wait on the connection:
/// `SCHED_BATCH` after a change left to be answered after its commit, `SCHED_OTHER` (the default)
/// after a request it answered itself. Changes only when the kind of request changes.
///
/// A batch thread has the same share of the CPU; it only does not preempt the running thread
/// when it wakes. A client's next change wakes its connection's thread; on two cores that thread
/// preempted the writer in the middle of a batch: under a create load the writer spent a third of
/// its busy time waiting for a CPU (from `/proc/<tid>/schedstat`), 18-25% with this. A thread
/// whose last request was a read keeps waking at once, so reads keep their latency: batch for
/// every connection thread took GET's p99 under load from 4-7 ms to 6-31 ms.
fn schedule_for(after_commit: bool) {
    if BATCH.get() == after_commit {
        return;
    }
    BATCH.set(after_commit);
    let policy = if after_commit {
        libc::SCHED_BATCH
    } else {
        libc::SCHED_OTHER
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sets the calling thread's (0) policy from a valid parameter; either policy takes
    // priority 0 and needs no privilege. A failure leaves the policy as it was, which is correct
    // too, only slower.
    unsafe { libc::sched_setscheduler(0, policy, &param) };
}

/// Answers one request on the calling (connection) thread; false when the connection must close.
fn answer(answering: &Arc<Answering>, app: &Arc<App>, request: tiny_http::Request) -> bool {
    let thread = THREAD.get().unwrap_or_else(|| {
        let turns = answering.clone();
        db::writer::on_commit_wait(move || {
            if HOLDS_TURN.replace(false) {
                turns.turns.give();
            }
        });
        let n = answering.threads.fetch_add(1, Ordering::Relaxed);
        THREAD.set(Some(n));
        n
    });
    // Counted before `stopping` is read (both SeqCst): shutdown sets `stopping` and then waits
    // for the count, so either it waits for this request or this request sees `stopping`.
    answering.running.fetch_add(1, Ordering::SeqCst);
    let mut running = Running {
        answering,
        reader: None,
    };
    if app.stopping.load(Ordering::SeqCst) {
        unavailable(request, "The server is shutting down", true);
        return false;
    }
    answering.turns.take();
    HOLDS_TURN.set(true);
    let reader = match answering.readers.take() {
        Some(reader) => running.reader.insert(reader),
        None => {
            running.release();
            unavailable(request, "The server is busy; try again", false);
            return true;
        }
    };
    let mut prepared = prepare(thread, app, reader, request);
    running.release();
    let after_commit = prepared.out.resp.after_commit.take();
    schedule_for(after_commit.is_some());
    match after_commit {
        None => prepared.send(app),
        Some(after) => answer_after_commit(app, prepared, after, running.carry()),
    }
    true
}

/// Answers a request whose response is made once its change is committed
/// ([`Resp::after_commit`]). The change is queued and this thread goes back to the connection,
/// where it would only wait for the client's next request: a request waiting for a commit cost
/// its thread a sleep and a wake-up more than any other (a tenth of the server's CPU on the
/// create probe). After the commit, the writer's answering thread makes the response and writes
/// what the socket takes at once; what it cannot write without waiting (a client that does not
/// read, or the connection's earlier response not written yet) a thread of its own finishes,
/// under the connection's write timeout. Until the response is written the request still counts
/// as running, so shutdown waits for it.
///
/// A connection has one such response outstanding at most: while one is, the next is waited for
/// here, and its write waits for the one before. A client that pipelines changes without reading
/// the answers therefore holds one thread of its own and one finishing thread, as it held its
/// connection's thread before.
fn answer_after_commit(
    app: &Arc<App>,
    mut prepared: Prepared,
    after: AfterCommit,
    running: Carried,
) {
    let outstanding = OUTSTANDING.with(Arc::clone);
    if outstanding.load(Ordering::Acquire) {
        prepared.out.resp = after.wait(app);
        prepared.send(app);
        drop(running);
        return;
    }
    outstanding.store(true, Ordering::Relaxed);
    let dialect = after.dialect;
    let app_then = app.clone();
    after.submit(
        &app.writer,
        Box::new(move |finish| {
            prepared.out.resp = made(finish, &app_then, dialect);
            prepared.send_now(app_then, move || {
                outstanding.store(false, Ordering::Release);
                drop(running);
            });
        }),
    );
}

/// A request being answered: gives back its turn (if it still holds one) and its read connection
/// once its response is ready, or when it ends however it ends, and is counted until then.
struct Running<'a> {
    answering: &'a Arc<Answering>,
    reader: Option<Reader>,
}

impl Running<'_> {
    /// Gives back the turn (if this thread still holds one) and the read connection.
    fn release(&mut self) {
        if HOLDS_TURN.replace(false) {
            self.answering.turns.give();
        }
        if let Some(reader) = self.reader.take() {
            self.answering.readers.give(reader);
        }
    }

    /// Gives back the turn and the read connection, and keeps the request counted until the
    /// result is dropped: for a response another thread writes.
    fn carry(mut self) -> Carried {
        self.release();
        let answering = self.answering.clone();
        std::mem::forget(self);
        Carried(answering)
    }
}

/// A request whose response another thread writes, counted as running until this is dropped.
struct Carried(Arc<Answering>);

impl Drop for Carried {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.release();
        self.answering.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Answers 503 (with the `Retry-After` every `Unavailable` carries) in the dialect of the request's
/// path, without routing it.
fn unavailable(request: tiny_http::Request, message: &str, close: bool) {
    let resp = Error::Unavailable(message.into()).into_resp(routes::dialect_of(request.url()));
    let close = close.then_some(("Connection", "close"));
    let _ = write_response(request, &resp, close);
}

/// Writes `resp` as the answer to `request`: its content type, then `extra`, then its own headers.
/// tiny_http's `respond_raw` (a sessiond patch) writes it with one call, without making a
/// `tiny_http::Response` and a `Header` per header.
fn write_response<'a>(
    request: tiny_http::Request,
    resp: &'a Resp,
    extra: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> std::io::Result<()> {
    request.respond_raw(resp.status, headers_of(resp, extra), &resp.body)
}

/// The headers of `resp` as tiny_http writes them: its content type, then `extra`, then its own.
fn headers_of<'a>(
    resp: &'a Resp,
    extra: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> impl Iterator<Item = (&'a str, &'a str)> {
    std::iter::once(("Content-Type", resp.content_type))
        .chain(extra)
        .chain(resp.headers.iter().map(|(n, v)| (*n, v.as_str())))
}

/// The turns to run: at most this many requests run at once, so they do not all compete for the
/// cores (see [`Answering`]).
///
/// A semaphore whose fast path is one atomic operation: with 64 connections on two cores, a thread
/// holding a plain mutex here was often preempted, and the others then slept on it (`futex_wait`
/// from `Mutex::lock_contended` was 2% of a `GET /sessions/:id`). The mutex and condition variable
/// are only for threads that find no turn free.
struct Turns {
    free: AtomicUsize,
    /// Threads asleep (or about to sleep) waiting for a turn; counted under `sleep`.
    waiting: AtomicUsize,
    sleep: std::sync::Mutex<()>,
    freed: std::sync::Condvar,
}

impl Turns {
    fn new(turns: usize) -> Turns {
        Turns {
            free: AtomicUsize::new(turns),
            waiting: AtomicUsize::new(0),
            sleep: std::sync::Mutex::new(()),
            freed: std::sync::Condvar::new(),
        }
    }

    fn try_take(&self) -> bool {
        let mut free = self.free.load(Ordering::SeqCst);
        while free > 0 {
            match self.free.compare_exchange_weak(
                free,
                free - 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return true,
                Err(now) => free = now,
            }
        }
        false
    }

    /// Takes a turn, waiting for one. Turns always come back: a holder never waits for anything
    /// but the writer, and gives its turn before it does.
    fn take(&self) {
        if self.try_take() {
            return;
        }
        let mut guard = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
        self.waiting.fetch_add(1, Ordering::SeqCst);
        // `waiting` is raised before `free` is looked at again, and `give` raises `free` before it
        // looks at `waiting` (all SeqCst): either this thread sees the turn given back, or the
        // giver sees this thread waiting and notifies it under `sleep`, which this thread holds
        // until it sleeps. No wake-up is lost.
        while !self.try_take() {
            guard = self.freed.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }

    fn give(&self) {
        self.free.fetch_add(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            let _guard = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.freed.notify_one();
        }
    }
}

/// The read connections of the requests that run: the most recently used one is handed out
/// first (its pages are warm), at most `max` are open, and those beyond the first `threads` close
/// once idle for [`IDLE_READER_CLOSES_AFTER`].
struct Readers {
    db: std::path::PathBuf,
    max: usize,
    pool: std::sync::Mutex<ReaderPool>,
    given_back: std::sync::Condvar,
}

struct ReaderPool {
    /// Idle connections with the time each was given back, the least recently used first.
    idle: Vec<(Reader, Instant)>,
    /// Open connections, idle or not.
    open: usize,
    /// Requests waiting for a connection to be given back. A connection given back notifies only
    /// when there are some: `Condvar::notify_one` makes a system call whether or not anyone waits.
    waiting: usize,
    /// When the last attempt to open one failed, until one opens again: no other attempt is made
    /// for a second, and the failure is logged once.
    open_failed: Option<Instant>,
}

impl Readers {
    /// Opens `threads` connections to `db`; up to `READERS_PER_TURN` times as many may open later.
    fn open(db: &std::path::Path, threads: usize) -> Result<Readers> {
        let idle = (0..threads)
            .map(|_| Ok((Reader::open(db)?, Instant::now())))
            .collect::<Result<Vec<_>>>()?;
        Ok(Readers {
            db: db.to_path_buf(),
            max: threads * READERS_PER_TURN,
            pool: std::sync::Mutex::new(ReaderPool {
                open: idle.len(),
                idle,
                waiting: 0,
                open_failed: None,
            }),
            given_back: std::sync::Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReaderPool> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle connection, a new one while fewer than `max` are open, or the next one given back
    /// within [`READER_WAIT`]; `None` after that.
    fn take(&self) -> Option<Reader> {
        let deadline = Instant::now() + READER_WAIT;
        let mut pool = self.lock();
        loop {
            if let Some((reader, _)) = pool.idle.pop() {
                return Some(reader);
            }
            let may_open = pool
                .open_failed
                .is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
            if pool.open < self.max && may_open {
                pool.open += 1;
                drop(pool);
                let opened = Reader::open(&self.db);
                pool = self.lock();
                match opened {
                    Ok(reader) => {
                        pool.open_failed = None;
                        return Some(reader);
                    }
                    Err(e) => {
                        // Out of descriptors, most likely: wait for a connection in use.
                        pool.open -= 1;
                        if pool.open_failed.replace(Instant::now()).is_none() {
                            log::warn!("cannot open another read connection: {e}");
                        }
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            pool.waiting += 1;
            pool = self
                .given_back
                .wait_timeout(pool, left.min(Duration::from_secs(1)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            pool.waiting -= 1;
        }
    }

    fn give(&self, reader: Reader) {
        let mut pool = self.lock();
        pool.idle.push((reader, Instant::now()));
        if pool.waiting > 0 {
            self.given_back.notify_one();
        }
    }

    /// Closes the connections beyond `keep` that have been idle for [`IDLE_READER_CLOSES_AFTER`].
    fn close_idle(&self, keep: usize) {
        let closing: Vec<(Reader, Instant)> = {
            let mut pool = self.lock();
            let stale = pool
                .idle
                .iter()
                .take_while(|(_, since)| since.elapsed() >= IDLE_READER_CLOSES_AFTER)
                .count()
                .min(pool.open.saturating_sub(keep));
            pool.open -= stale;
            pool.idle.drain(..stale).collect()
        };
        drop(closing);
    }
}

/// Routes one request from tiny_http and builds its response on `db`, without sending it: the
/// caller gives its turn and read connection back first, so a client slow to read its response
/// holds nothing but its own connection's thread.
fn prepare(worker: usize, app: &App, db: &Reader, mut request: tiny_http::Request) -> Prepared {
    let started = Instant::now();
    let request_id = request_id(app, &request);
    let method = request.method().as_str().to_ascii_uppercase();
    let url = request.url().to_string();
    let peer = request.remote_addr().map(|a| a.ip());
    // Only the headers something reads are copied (two allocations each).
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .filter_map(|h| {
            let name = h.field.as_str().as_str();
            let read = READ_HEADERS.iter().find(|r| r.eq_ignore_ascii_case(name))?;
            Some((read.to_string(), h.value.as_str().to_string()))
        })
        .collect();
    let client_ip = client_ip(&app.cfg, peer, &headers);
    let body = read_body(&mut request, app.cfg.max_body);
    let incoming = Incoming {
        method,
        url,
        headers,
        body,
        peer,
        client_ip,
        request_id,
    };
    let Answered {
        route,
        resp,
        method,
        request_id,
    } = answer_incoming(app, db, incoming);
    Prepared {
        request,
        out: Outgoing {
            worker,
            resp,
            started,
            request_id,
            client_ip,
            method,
            route,
        },
    }
}

/// A request with its response ready to be written (or, with `after_commit` set, to be made).
struct Prepared {
    request: tiny_http::Request,
    out: Outgoing,
}

/// A response and what its metrics and access log line need.
struct Outgoing {
    /// The number of the thread that read the request (the metrics' shard).
    worker: usize,
    resp: Resp,
    started: Instant,
    request_id: String,
    client_ip: Option<IpAddr>,
    method: String,
    route: &'static str,
}

impl Prepared {
    /// Writes the response and the access log line.
    fn send(self, app: &App) {
        let Prepared { request, out } = self;
        out.observe(app);
        let written = write_response(request, &out.resp, out.id());
        out.log(app, written);
    }

    /// Writes what of the response the connection takes without waiting, and leaves the rest
    /// (if any) to a thread of its own; the access log line and `then` follow the last byte.
    fn send_now(self, app: Arc<App>, then: impl FnOnce() + Send + 'static) {
        let Prepared { request, out } = self;
        out.observe(&app);
        app.metrics
            .responses_after_commit
            .fetch_add(1, Ordering::Relaxed);
        let resp = &out.resp;
        let unsent =
            match request.try_respond_raw(resp.status, headers_of(resp, out.id()), &resp.body) {
                Ok(written) => {
                    out.log(&app, written);
                    then();
                    return;
                }
                Err(unsent) => unsent,
            };
        app.metrics
            .responses_finished_later
            .fetch_add(1, Ordering::Relaxed);
        let finish = move || {
            let resp = &out.resp;
            let written = unsent.respond_raw(resp.status, headers_of(resp, out.id()), &resp.body);
            out.log(&app, written);
            then();
        };
        // A thread that cannot be started gives the work back through `work`; it is then done
        // here, bounded by the connection's write timeout.
        let work = Arc::new(std::sync::Mutex::new(Some(finish)));
        let taken = work.clone();
        let spawned = std::thread::Builder::new()
            .name("response".into())
            .stack_size(FINISHING_STACK)
            .spawn(move || {
                if let Some(finish) = taken.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    finish();
                }
            });
        if let Err(e) = spawned {
            log::warn!("cannot start a thread to finish a response ({e}); finishing it here");
            if let Some(finish) = work.lock().unwrap_or_else(|e| e.into_inner()).take() {
                finish();
            }
        }
    }
}

/// The stack of a thread that finishes writing one response: it only writes bytes.
const FINISHING_STACK: usize = 64 * 1024;

impl Outgoing {
    /// The header every response carries besides its own.
    fn id(&self) -> [(&str, &str); 1] {
        [("X-Request-Id", self.request_id.as_str())]
    }

    /// Counts the response in the metrics, before it is written.
    fn observe(&self, app: &App) {
        let (method, route, request_id) = (&self.method, self.route, &self.request_id);
        if self.resp.status == 500 {
            log::error!("500 for {method} {route} [{request_id}]");
        }
        app.metrics.observe_request(
            self.worker,
            route,
            self.resp.status,
            self.started.elapsed().as_secs_f64(),
        );
    }

    /// Writes the access log line once the response is written.
    fn log(&self, app: &App, written: std::io::Result<()>) {
        let request_id = &self.request_id;
        if let Err(e) = written {
            log::debug!("could not write the response [{request_id}]: {e}");
        }
        app.access_log.record(&crate::access_log::Entry {
            request_id,
            client_ip: self.client_ip,
            method: &self.method,
            route: self.route,
            status: self.resp.status,
            bytes: self.resp.body.len(),
            took: self.started.elapsed(),
        });
    }
}

/// A request off the wire, before routing: what [`respond`] needs, and nothing of tiny_http.
pub struct Incoming {
    pub method: String,
    /// The request target: path and query string.
    pub url: String,
    /// Header names in lower case ([`prepare`] passes only [`READ_HEADERS`]).
    pub headers: Vec<(String, String)>,
    /// The body, or why it could not be read (too large, broken).
    pub body: Result<Vec<u8>>,
    pub peer: Option<IpAddr>,
    pub client_ip: Option<IpAddr>,
    pub request_id: String,
}

/// Routes one request and answers it: the route template (for logs and metrics) and the response.
/// A panic in a handler is contained here and answered 500. The fuzz targets call this directly.
pub fn respond(app: &App, db: &Reader, incoming: Incoming) -> (&'static str, Resp) {
    let mut answered = answer_incoming(app, db, incoming);
    if let Some(after) = answered.resp.after_commit.take() {
        answered.resp = after.wait(app);
    }
    (answered.route, answered.resp)
}

/// What [`respond`] answers, with the request's method and id handed back for the access log (a
/// copy of each made before the request was handed over cost two allocations a request).
struct Answered {
    route: &'static str,
    resp: Resp,
    method: String,
    request_id: String,
}

fn answer_incoming(app: &App, db: &Reader, incoming: Incoming) -> Answered {
    let Incoming {
        method,
        mut url,
        headers,
        body,
        peer,
        client_ip,
        request_id,
    } = incoming;
    let path_len = url.bytes().position(|b| b == b'?').unwrap_or(url.len());
    let dialect = routes::dialect_of(&url[..path_len]);
    let parsed = match body {
        Err(e) => Err(e.into_resp(dialect)),
        Ok(body) => match (
            decode_segments(&url[..path_len]),
            parse_query(url.get(path_len + 1..).unwrap_or("")),
        ) {
            (Some(segments), Some(query)) => Ok((segments, query, body)),
            _ => Err(
                Error::bad_request("Invalid percent-encoding in the request target")
                    .into_resp(dialect),
            ),
        },
    };
    let (segments, query, body) = match parsed {
        Ok(parsed) => parsed,
        Err(resp) => {
            return Answered {
                route: "-",
                resp,
                method,
                request_id,
            };
        }
    };
    // The path is the URL without its query: the URL's own text, cut.
    url.truncate(path_len);
    let req = Req {
        method,
        path: url,
        segments,
        query,
        headers,
        body,
        peer,
        client_ip,
        request_id,
    };
    let ctx = Ctx {
        app,
        db,
        now: now_ms(),
    };
    let (route, resp) = match catch_unwind(AssertUnwindSafe(|| routes::dispatch(&ctx, &req))) {
        Ok(answer) => answer,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let route = routes::route_of(&req.method, &req.segments);
            log::error!(
                "panic while handling {} {route} [{}]: {what}",
                req.method,
                req.request_id
            );
            (route, Error::Internal("panic".into()).into_resp(dialect))
        }
    };
    let Req {
        method, request_id, ..
    } = req;
    Answered {
        route,
        resp,
        method,
        request_id,
    }
}

fn request_id(app: &App, request: &tiny_http::Request) -> String {
    let given = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("X-Request-Id"))
        .map(|h| h.value.as_str())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        });
    match given {
        Some(v) => v.to_string(),
        None => generated_request_id(
            &app.request_prefix,
            app.request_seq.fetch_add(1, Ordering::Relaxed),
        ),
    }
}

/// `prefix` and then `seq` in eight or more hex digits: `format!("{prefix}{seq:08x}")`, written by
/// hand (the formatting machinery cost a thousand instructions a request).
fn generated_request_id(prefix: &str, seq: u64) -> String {
    let digits = (16 - seq.leading_zeros() as usize / 4).max(8);
    let mut id = String::with_capacity(prefix.len() + digits);
    id.push_str(prefix);
    id.extend(
        (0..digits)
            .rev()
            .map(|d| char::from(b"0123456789abcdef"[(seq >> (4 * d)) as usize & 15])),
    );
    id
}

/// Reads the body, refusing more than `max` bytes with 413 before reading them when the length is
/// declared.
fn read_body(request: &mut tiny_http::Request, max: usize) -> Result<Vec<u8>> {
    let too_large = || Error::PayloadTooLarge(format!("Request body is larger than {max} bytes"));
    if request.body_length().is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let mut body = Vec::with_capacity(request.body_length().unwrap_or(0).min(max));
    request
        .as_reader()
        .take(max as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|_| Error::bad_request("Could not read the request body"))?;
    if body.len() > max {
        return Err(too_large());
    }
    Ok(body)
}

fn client_ip(cfg: &Config, peer: Option<IpAddr>, headers: &[(String, String)]) -> Option<IpAddr> {
    let peer = peer?;
    if !cfg.trusted_proxies.contains(&peer) {
        return Some(peer);
    }
    // The right-most address that is not itself a trusted proxy is the client.
    let forwarded = headers
        .iter()
        .filter(|(k, _)| k == "x-forwarded-for")
        .map(|(_, v)| v.as_str());
    let mut chain: Vec<IpAddr> = forwarded
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    while let Some(ip) = chain.pop() {
        if !cfg.trusted_proxies.contains(&ip) {
            return Some(ip);
        }
    }
    Some(peer)
}

fn decode_segments(path: &str) -> Option<Vec<String>> {
    // `/` searched for by bytes, which for paths this short is cheaper than `split('/')`'s
    // searcher (about 140 instructions a request).
    let mut segments = Vec::with_capacity(4);
    let mut rest = path;
    while !rest.is_empty() {
        let end = rest.bytes().position(|b| b == b'/').unwrap_or(rest.len());
        if end > 0 {
            segments.push(percent_decode(&rest[..end])?);
        }
        rest = rest.get(end + 1..).unwrap_or("");
    }
    Some(segments)
}

fn parse_query(query: &str) -> Option<Vec<(String, String)>> {
    query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((
                percent_decode(&k.replace('+', " "))?,
                percent_decode(&v.replace('+', " "))?,
            ))
        })
        .collect()
}

/// Decodes `%XX` escapes; `None` for a malformed escape or a result that is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    // Most segments (ids, slugs, route words) have nothing to decode.
    if !s.bytes().any(|b| b == b'%') {
        return Some(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Two hex digits (`from_str_radix` alone would take a sign too: `%+f`).
            let hex = s.get(i + 1..i + 3)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// glibc gives each thread that allocates concurrently an arena of its own, up to 8 per core, and
/// arenas keep freed memory. sessiond runs a thread per connection, so the cap is one arena per
/// worker turn (`threads`, at least 4 and at most 64): about as many threads run our code at once.
/// Four arenas for 16 turns, the earlier cap, made the threads queue on the arenas' locks: on this
/// machine's benchmark GET /sessions/:id went from 69-72 to 47-59 µs of CPU per request with 16,
/// and the RSS at 100,000 sessions and 10,000 viewers stayed at 55-57 MiB.
fn limit_malloc_arenas(threads: usize) {
    let arenas = threads.clamp(4, 64) as libc::c_int;
    // SAFETY: mallopt only adjusts allocator parameters; called before the worker threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

/// Raises the soft limit on open files to the hard limit (each connection costs two descriptors)
/// and returns the limit in force, which caps `max_connections`.
fn raise_file_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                log::warn!("could not raise the open-file limit above {}", lim.rlim_cur);
                return lim.rlim_cur;
            }
            return lim.rlim_max;
        }
        lim.rlim_cur
    }
}

/// The HTTP edge's defences against slow, idle, oversized and too many clients (see the vendored
/// tiny_http's PATCHED.md): each connection's own thread reads a whole request under
/// `request_timeout` before a worker sees it, so a slow client never holds a worker.
pub fn http_limits(cfg: &Config, open_files: u64) -> tiny_http::Limits {
    // Each connection holds two descriptors; keep room for the database (three per reader), logs
    // and backups.
    let reserve = 64 + 3 * (cfg.threads * READERS_PER_TURN) as u64;
    let fit = (open_files.saturating_sub(reserve) / 2).max(1) as usize;
    if cfg.max_connections > fit {
        log::warn!(
            "max_connections {} does not fit the open-file limit {open_files}; using {fit}",
            cfg.max_connections
        );
    }
    let ms = |m: Millis| Duration::from_millis(m as u64);
    tiny_http::Limits {
        idle_timeout: ms(cfg.idle_timeout),
        request_timeout: ms(cfg.request_timeout),
        write_timeout: ms(cfg.request_timeout),
        max_line: 8192,
        max_headers: 100,
        max_body: cfg.max_body,
        max_connections: cfg.max_connections.min(fit),
        error_body: Some(edge_error),
        connection_stack: CONNECTION_STACK,
    }
}

/// The body of an error tiny_http answers on its own, before a worker sees the request, in the
/// dialect of the path when it is known.
fn edge_error(status: u16, path: Option<&str>) -> (&'static str, Vec<u8>) {
    let error = match status {
        408 => Error::RequestTimeout,
        413 => Error::PayloadTooLarge("Request body is too large".into()),
        414 => Error::UriTooLong,
        431 => Error::HeadersTooLarge,
        503 => Error::Unavailable("Too many connections".into()),
        417 => Error::bad_request("Unsupported Expect header"),
        505 => Error::bad_request("Only HTTP/1.0 and HTTP/1.1 are supported"),
        _ => Error::bad_request("Malformed HTTP request"),
    };
    let path = path.map_or("/", |p| p.split('?').next().unwrap_or(p));
    (
        "application/json",
        error.into_resp(routes::dialect_of(path)).body,
    )
}

/// Tells systemd (`Type=notify`) about our state, when started by it. A no-op elsewhere.
pub fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let socket = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let sent = if let Some(abstract_name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
            .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
    } else {
        socket.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = sent {
        log::warn!("could not notify systemd ({state}): {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_bound_the_holders_and_wake_every_waiter() {
        let turns = Arc::new(Turns::new(3));
        let holding = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (turns, holding, most) = (turns.clone(), holding.clone(), most.clone());
                std::thread::spawn(move || {
                    for i in 0..2_000 {
                        turns.take();
                        let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        if i % 64 == 0 {
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        holding.fetch_sub(1, Ordering::SeqCst);
                        turns.give();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 3);
        assert_eq!(turns.free.load(Ordering::SeqCst), 3);
        assert_eq!(turns.waiting.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b").as_deref(), Some("a b"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(percent_decode("%+f"), None);
        assert_eq!(percent_decode("%-1"), None);
        assert_eq!(percent_decode("sess_0a").as_deref(), Some("sess_0a"));
        assert_eq!(percent_decode("").as_deref(), Some(""));
    }

    #[test]
    fn paths_split_into_decoded_segments() {
        let segments = |p: &str| decode_segments(p).map(|s| s.join("|"));
        assert_eq!(
            segments("/sessions/sess_0a").as_deref(),
            Some("sessions|sess_0a")
        );
        assert_eq!(segments("//a//b/").as_deref(), Some("a|b"));
        assert_eq!(segments("/a%2Fb/%C3%A9/é").as_deref(), Some("a/b|é|é"));
        assert_eq!(segments("").as_deref(), Some(""));
        assert_eq!(segments("/").as_deref(), Some(""));
        assert_eq!(segments("a"), Some("a".into()));
        assert_eq!(segments("/a/%zz"), None);
    }

    #[test]
    fn the_bearer_token_is_what_follows_the_scheme_and_a_space() {
        let bearer = |value: &str| {
            let req = Req {
                method: "GET".into(),
                path: "/".into(),
                segments: Vec::new(),
                query: Vec::new(),
                headers: vec![("authorization".into(), value.into())],
                body: Vec::new(),
                peer: None,
                client_ip: None,
                request_id: String::new(),
            };
            req.bearer().map(str::to_string)
        };
        assert_eq!(bearer("Bearer abc").as_deref(), Some("abc"));
        assert_eq!(bearer("bEaReR  abc ").as_deref(), Some("abc"));
        assert_eq!(bearer("Bearer a b").as_deref(), Some("a b"));
        for refused in [
            "Bearer",
            "Bearer ",
            "Bearer   ",
            "Bearerabc",
            "Basic abc",
            "Bearé abc",
            "",
            "Bear abc",
        ] {
            assert_eq!(bearer(refused), None, "{refused:?}");
        }
    }

    #[test]
    fn generated_request_ids_are_the_prefix_and_eight_or_more_hex_digits() {
        for seq in [
            0,
            1,
            0xabc,
            0xffff_ffff,
            0x1_0000_0000,
            0x0123_4567_89ab_cdef,
            u64::MAX,
        ] {
            assert_eq!(
                generated_request_id("9c106a97", seq),
                format!("9c106a97{seq:08x}")
            );
        }
    }
}
