use std::io::Result as IoResult;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::connection::Connection;
#[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
use crate::ssl::SslStream;

pub(crate) enum Stream {
    Http(Connection),
    #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
    Https(SslStream),
}

impl Clone for Stream {
    fn clone(&self) -> Self {
        match self {
            Stream::Http(tcp_stream) => Stream::Http(tcp_stream.try_clone().unwrap()),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => Stream::Https(ssl_stream.clone()),
        }
    }
}

impl From<Connection> for Stream {
    fn from(tcp_stream: Connection) -> Self {
        Stream::Http(tcp_stream)
    }
}

impl Stream {
    fn secure(&self) -> bool {
        match self {
            Stream::Http(_) => false,
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(_) => true,
        }
    }

    fn peer_addr(&mut self) -> IoResult<Option<SocketAddr>> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.peer_addr(),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.peer_addr(),
        }
    }

    fn set_read_timeout(&self, t: Option<Duration>) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.set_read_timeout(t),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(_) => Ok(()),
        }
    }

    fn set_write_timeout(&self, t: Option<Duration>) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.set_write_timeout(t),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(_) => Ok(()),
        }
    }

    fn shutdown(&mut self, how: Shutdown) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.shutdown(how),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.shutdown(how),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.read(buf),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.write(buf),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.write(buf),
        }
    }

    fn flush(&mut self) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.flush(),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.flush(),
        }
    }
}

pub struct RefinedTcpStream {
    stream: Stream,
    close_read: bool,
    close_write: bool,
    /// sessiond patch: the read half's deadline; `None` on the write half.
    clock: Option<Arc<Clock>>,
}

/// sessiond patch: a deadline for the reads of one connection, armed by the connection's thread
/// (which is the only reader) for each phase: waiting for a request, then reading it. Every read
/// fails with `TimedOut` once the deadline has passed, however slowly the bytes trickle in, so a
/// slow or silent client cannot hold a thread beyond the phase's timeout.
#[derive(Debug)]
pub(crate) struct Clock {
    base: Instant,
    /// Milliseconds since `base` at which reads stop; 0 when disarmed.
    deadline: AtomicU64,
    /// The receive timeout last set on the socket, in milliseconds; 0 when none.
    applied: AtomicU64,
}

/// How far the socket's receive timeout may overshoot the deadline before it is set again.
const CLOCK_SLACK_MS: u64 = 250;

impl Clock {
    fn new() -> Clock {
        Clock {
            base: Instant::now(),
            deadline: AtomicU64::new(0),
            applied: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64 + 1
    }

    /// Reads fail after `limit` from now.
    pub(crate) fn arm(&self, limit: Duration) {
        let limit = (limit.as_millis() as u64).max(1);
        self.deadline.store(self.now_ms() + limit, Relaxed);
    }

    /// Sets the socket's receive timeout to what is left before the deadline, unless the one
    /// already set ends close enough to it; fails once the deadline has passed.
    fn before_read(&self, stream: &Stream) -> IoResult<()> {
        let deadline = self.deadline.load(Relaxed);
        if deadline == 0 {
            return Ok(());
        }
        let now = self.now_ms();
        if now >= deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client took too long",
            ));
        }
        let left = deadline - now;
        let applied = self.applied.load(Relaxed);
        if applied == 0 || applied > left + CLOCK_SLACK_MS {
            stream.set_read_timeout(Some(Duration::from_millis(left)))?;
            self.applied.store(left, Relaxed);
        }
        Ok(())
    }
}

impl RefinedTcpStream {
    /// sessiond patch: fallible. Upstream cloned the socket with `try_clone().unwrap()`, so an
    /// EMFILE here panicked the accept thread and left the server alive but never accepting again.
    pub(crate) fn try_new<S>(stream: S) -> std::io::Result<(RefinedTcpStream, RefinedTcpStream)>
    where
        S: Into<Stream>,
    {
        let stream: Stream = stream.into();

        let read = match &stream {
            Stream::Http(tcp_stream) => Stream::Http(tcp_stream.try_clone()?),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => Stream::Https(ssl_stream.clone()),
        };
        let (read, write) = (read, stream);

        let read = RefinedTcpStream {
            stream: read,
            close_read: true,
            close_write: false,
            clock: Some(Arc::new(Clock::new())),
        };

        let write = RefinedTcpStream {
            stream: write,
            close_read: false,
            close_write: true,
            clock: None,
        };

        Ok((read, write))
    }

    /// Returns true if this struct wraps around a secure connection.
    #[inline]
    pub(crate) fn secure(&self) -> bool {
        self.stream.secure()
    }

    pub(crate) fn peer_addr(&mut self) -> IoResult<Option<SocketAddr>> {
        self.stream.peer_addr()
    }

    /// sessiond patch: the read half's deadline clock.
    pub(crate) fn clock(&self) -> Option<Arc<Clock>> {
        self.clock.clone()
    }

    /// sessiond patch: writes what the socket takes now, without waiting (see
    /// `Connection::write_now`); an encrypted stream takes nothing this way.
    pub(crate) fn write_now(&self, buf: &[u8]) -> IoResult<usize> {
        match &self.stream {
            Stream::Http(connection) => connection.write_now(buf),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(_) => Err(std::io::ErrorKind::WouldBlock.into()),
        }
    }

    /// sessiond patch: bounds how long one write may block on a client that does not read.
    pub(crate) fn set_write_timeout(&self, t: Option<Duration>) -> IoResult<()> {
        self.stream.set_write_timeout(t)
    }
}

impl Drop for RefinedTcpStream {
    fn drop(&mut self) {
        if self.close_read {
            self.stream.shutdown(Shutdown::Read).ok();
        }

        if self.close_write {
            self.stream.shutdown(Shutdown::Write).ok();
        }
    }
}

impl Read for RefinedTcpStream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        let Some(clock) = &self.clock else {
            return self.stream.read(buf);
        };
        // sessiond patch: reads honour the connection's deadline. A receive timeout that fires
        // before the deadline (it was set for an earlier, shorter phase) is set again and retried.
        loop {
            clock.before_read(&self.stream)?;
            match self.stream.read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    clock.applied.store(0, Relaxed);
                }
                other => return other,
            }
        }
    }
}

impl Write for RefinedTcpStream {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> IoResult<()> {
        self.stream.flush()
    }
}
