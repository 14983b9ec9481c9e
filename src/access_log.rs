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

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError, bounded};

use crate::domain::time::{Millis, now_ms, push_rfc3339};
use crate::text::{push_decimal, push_ip, push_padded};

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
    pub fn record(&self, entry: &Entry) {
        let Some(tx) = &self.sender else {
            log::info!(target: "sessiond::access", "{entry}");
            return;
        };
        let mut line = String::with_capacity(160);
        line.push('[');
        push_time(&mut line, now_ms());
        line.push_str(" INFO  sessiond::access] ");
        entry.push_to(&mut line);
        line.push('\n');
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

thread_local! {
    /// The second this thread last stamped a line in, and its text up to the milliseconds.
    static SECOND: std::cell::RefCell<(Millis, String)> =
        const { std::cell::RefCell::new((Millis::MIN, String::new())) };
}

/// Appends `push_rfc3339`'s text of `ms`, the date and time of day written once a second per
/// thread (about 400 instructions a line otherwise).
fn push_time(out: &mut String, ms: Millis) {
    let (second, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != second {
            text.clear();
            push_rfc3339(text, second * 1000);
            // Without "000Z": the milliseconds and the zone follow.
            text.truncate(text.len().saturating_sub(4));
            *cached = second;
        }
        out.push_str(text);
    });
    push_padded(out, milli, 3);
    out.push('Z');
}

/// One answered request, as its access log line tells it:
/// `<request id> <client ip or -> <method> <route template> <status> <body bytes> <time>ms`.
pub struct Entry<'a> {
    pub request_id: &'a str,
    pub client_ip: Option<IpAddr>,
    pub method: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub bytes: usize,
    pub took: Duration,
}

impl Entry<'_> {
    /// Appends the line's text (without its prefix and newline), digit by digit: through
    /// `format_args!` the line cost about 4,000 instructions, a tenth of a `GET /sessions/:id`.
    fn push_to(&self, out: &mut String) {
        out.push_str(self.request_id);
        out.push(' ');
        match self.client_ip {
            Some(ip) => push_ip(out, ip),
            None => out.push('-'),
        }
        out.push(' ');
        out.push_str(self.method);
        out.push(' ');
        out.push_str(self.route);
        out.push(' ');
        push_decimal(out, self.status.into());
        out.push(' ');
        push_decimal(out, self.bytes as u64);
        out.push(' ');
        // Milliseconds to one decimal, rounded.
        let tenths = (self.took.as_micros() as u64 + 50) / 100;
        push_decimal(out, tenths / 10);
        out.push('.');
        push_decimal(out, tenths % 10);
        out.push_str("ms");
    }
}

impl fmt::Display for Entry<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = String::with_capacity(96);
        self.push_to(&mut line);
        f.write_str(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_rfc3339_writes_them() {
        let mut ms: Millis = 1_772_551_799_990;
        // Within a second, across seconds, minutes and a day, and far outside the usual years.
        for step in [1, 7, 999, 1_000, 59_999, 86_400_000] {
            for _ in 0..20 {
                let mut ours = String::from("[");
                push_time(&mut ours, ms);
                assert_eq!(
                    ours,
                    format!("[{}", crate::domain::time::rfc3339(ms)),
                    "{ms}"
                );
                ms += step;
            }
        }
        for ms in [
            0,
            -1,
            -1_000,
            253_402_300_799_999,
            253_402_300_800_000,
            Millis::MAX,
        ] {
            let mut ours = String::new();
            push_time(&mut ours, ms);
            assert_eq!(ours, crate::domain::time::rfc3339(ms), "{ms}");
        }
    }

    #[test]
    fn an_entry_reads_as_the_formatted_line_did() {
        let mut entry = Entry {
            request_id: "9c106a9700000000",
            client_ip: Some([10, 0, 255, 7].into()),
            method: "GET",
            route: "/sessions/:id",
            status: 200,
            bytes: 720,
            took: Duration::from_micros(1_249),
        };
        let formatted = |e: &Entry| {
            let ip = e.client_ip.map_or("-".into(), |i| i.to_string());
            format!(
                "{} {ip} {} {} {} {} {:.1}ms",
                e.request_id,
                e.method,
                e.route,
                e.status,
                e.bytes,
                e.took.as_secs_f64() * 1000.0
            )
        };
        assert_eq!(
            entry.to_string(),
            "9c106a9700000000 10.0.255.7 GET /sessions/:id 200 720 1.2ms"
        );
        for (ip, micros) in [
            (None, 0),
            (Some("::1".parse().unwrap()), 99_940),
            (Some("0.0.0.0".parse().unwrap()), 1_000_000_000),
            (Some("2001:db8::7".parse().unwrap()), 12_340),
        ] {
            entry.client_ip = ip;
            entry.took = Duration::from_micros(micros);
            entry.status = 503;
            entry.bytes = 0;
            assert_eq!(entry.to_string(), formatted(&entry));
        }
    }
}
