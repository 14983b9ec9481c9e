//! The access log, written by a thread of its own: a request formats its line and queues it, and
//! never waits on stderr (a pipe to journald that may be slow). The thread writes whatever has
//! queued in one `write` call, so a busy server pays one system call per batch, not per request.
//! After each write it pauses for [`PAUSE`] before it looks at the queue again: a line queued while
//! it is blocked waiting wakes it (a system call and a context switch for the request), a line
//! queued while it pauses does not, so under load the requests never wake it.
//!
//! Lines look like the other log lines (`[<time> INFO  sessiond::access] …`) and are on only when
//! `RUST_LOG` enables `sessiond::access` at info. When the queue is full (the destination is stuck)
//! a line is dropped and counted (`sessiond_access_log_dropped_total`); the request goes on.

use std::fmt::{self, Write as _};
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, TrySendError, bounded};

use crate::domain::time::{now_ms, rfc3339};

/// Lines that may wait for the writing thread.
const QUEUE: usize = 65_536;
/// The most bytes written in one call.
const BATCH_BYTES: usize = 256 * 1024;
/// How long the thread pauses after each write (lines wait at most about this long; at 50,000
/// requests a second about 1,000 of them queue meanwhile).
const PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

pub struct AccessLog {
    sender: Option<Sender<String>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    pub dropped: AtomicU64,
}

impl AccessLog {
    /// Starts the writing thread when the access log is enabled; otherwise every call is a no-op.
    pub fn start() -> AccessLog {
        let off = AccessLog {
            sender: None,
            thread: Mutex::new(None),
            dropped: AtomicU64::new(0),
        };
        if !log::log_enabled!(target: "sessiond::access", log::Level::Info) {
            return off;
        }
        let (tx, rx) = bounded::<String>(QUEUE);
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                // An empty line is the signal to write what is left and stop.
                let mut batch = Vec::with_capacity(BATCH_BYTES);
                let mut open = true;
                while open {
                    let Ok(line) = rx.recv() else { break };
                    open = !line.is_empty();
                    batch.extend_from_slice(line.as_bytes());
                    while open && batch.len() < BATCH_BYTES {
                        match rx.try_recv() {
                            Ok(line) if line.is_empty() => open = false,
                            Ok(line) => batch.extend_from_slice(line.as_bytes()),
                            Err(_) => break,
                        }
                    }
                    let _ = std::io::stderr().write_all(&batch);
                    batch.clear();
                    if open {
                        std::thread::sleep(PAUSE);
                    }
                }
            });
        match thread {
            Ok(thread) => AccessLog {
                sender: Some(tx),
                thread: Mutex::new(Some(thread)),
                dropped: AtomicU64::new(0),
            },
            Err(e) => {
                log::warn!("cannot start the access log thread ({e}); writing it inline");
                off
            }
        }
    }

    /// Queues one line (or logs it inline when the thread is off but the target is enabled).
    pub fn record(&self, args: fmt::Arguments) {
        let Some(tx) = &self.sender else {
            log::info!(target: "sessiond::access", "{args}");
            return;
        };
        let mut line = String::with_capacity(160);
        let _ = writeln!(
            line,
            "[{} INFO  sessiond::access] {args}",
            rfc3339(now_ms())
        );
        match tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Writes what is queued and stops the thread (at shutdown, after the last request).
    pub fn finish(&self) {
        let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        if let Some(tx) = &self.sender {
            let _ = tx.send(String::new());
        }
        let _ = thread.join();
    }
}
