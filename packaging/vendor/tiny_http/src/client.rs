use ascii::AsciiString;

use std::io::Error as IoError;
use std::io::Result as IoResult;
use std::io::{BufRead, BufReader, BufWriter, ErrorKind, Read};

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use crate::common::{HTTPVersion, Header, Method};
use crate::request::Buffered;
use crate::util::refined_tcp_stream::Clock;
use crate::util::RefinedTcpStream;
use crate::util::{SequentialReader, SequentialReaderBuilder, SequentialWriterBuilder};
use crate::{Limits, Request, Response, StatusCode};

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client
    remote_addr: IoResult<Option<SocketAddr>>,

    // sequence of Readers to the stream, so that the data is not read in
    //  the wrong order
    source: SequentialReaderBuilder<BufReader<RefinedTcpStream>>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    sink: SequentialWriterBuilder<BufWriter<RefinedTcpStream>>,

    // Reader to read the next header from
    next_header_source: SequentialReader<BufReader<RefinedTcpStream>>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // true if the connection goes through SSL
    secure: bool,

    // sessiond patch: the limits, the read half's deadline, and the rest of a refused body,
    // drained after its request has been handed out
    limits: Arc<Limits>,
    clock: Option<Arc<Clock>>,
    refused_body: Option<Box<dyn Read + Send + 'static>>,
    // sessiond patch: the line of the head being read, its allocation kept from line to line
    line: Vec<u8>,
}

/// Error that can happen when reading a request.
#[derive(Debug)]
enum ReadError {
    /// sessiond patch: the connection ended or stayed silent before a new request began
    Idle,
    /// sessiond patch: a line longer than `max_line` or more than `max_headers` lines; the
    /// status to answer (414 for the request line, 431 for headers)
    HeadTooLarge(u16),
    /// sessiond patch: a request line or header that is not ASCII (upstream closed silently)
    NotAscii,
    WrongRequestLine,
    WrongHeader(HTTPVersion),
    /// the client sent an unrecognized `Expect` header
    ExpectationFailed(HTTPVersion),
    ReadIoError(IoError),
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    pub fn new(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
        limits: Arc<Limits>,
    ) -> ClientConnection {
        let remote_addr = read_socket.peer_addr();
        let secure = read_socket.secure();
        let clock = read_socket.clock();

        let mut source = SequentialReaderBuilder::new(BufReader::with_capacity(1024, read_socket));
        let first_header = source.next().unwrap();

        ClientConnection {
            source,
            sink: SequentialWriterBuilder::new(BufWriter::with_capacity(1024, write_socket)),
            remote_addr,
            next_header_source: first_header,
            no_more_requests: false,
            secure,
            limits,
            clock,
            refused_body: None,
            line: Vec::new(),
        }
    }

    /// true if the connection is HTTPS
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Reads the next line from self.next_header_source.
    ///
    /// Reads until `CRLF` is reached. The next read will start
    ///  at the first byte of the new line.
    /// sessiond patch: the line may not exceed `max_line` bytes (`ReadError::HeadTooLarge`), and
    /// the first line of a request arms the request deadline once its first byte has arrived
    /// (before that, the connection is idle: a timeout or EOF there is `ReadError::Idle`).
    /// sessiond patch: the line goes into `line` (cleared first; upstream allocated a string per
    /// line) and is handed back as text, checked to be ASCII as before.
    fn read_next_line<'l>(
        &mut self,
        line: &'l mut Vec<u8>,
        first_of_request: bool,
    ) -> Result<&'l str, ReadError> {
        // sessiond patch: the line is taken from the buffered reader's buffer a run of bytes at a
        // time (upstream read it byte by byte through `Read::bytes`, about 60 instructions a byte,
        // a quarter of a small request's cost). What it accepts and refuses is unchanged: the line
        // ends at the first LF after a CR, and an error comes where upstream's byte-by-byte loop
        // would have stopped.
        let buf = line;
        buf.clear();
        loop {
            let available = match self.next_header_source.fill_buf() {
                Ok(available) => available,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) if first_of_request && buf.is_empty() => return Err(ReadError::Idle),
                Err(e) => return Err(ReadError::ReadIoError(e)),
            };
            if available.is_empty() {
                if first_of_request && buf.is_empty() {
                    return Err(ReadError::Idle);
                }
                return Err(ReadError::ReadIoError(IoError::new(
                    ErrorKind::ConnectionAborted,
                    "Unexpected EOF",
                )));
            }
            if first_of_request && buf.is_empty() {
                if let Some(clock) = &self.clock {
                    clock.arm(self.limits.request_timeout);
                }
            }
            // The end of the line: the first LF whose previous byte (perhaps already in `buf`) is
            // a CR.
            let mut end = None;
            let mut from = 0;
            while let Some(at) = available[from..].iter().position(|&b| b == b'\n') {
                let at = from + at;
                let after_cr = if at == 0 {
                    buf.last() == Some(&b'\r')
                } else {
                    available[at - 1] == b'\r'
                };
                if after_cr {
                    end = Some(at);
                    break;
                }
                from = at + 1;
            }
            // Each byte is refused once `max_line` bytes came before it on the line.
            let taken = end.map_or(available.len(), |at| at + 1);
            if buf.len() + taken > self.limits.max_line {
                let upto = self.limits.max_line + 1 - buf.len().min(self.limits.max_line);
                let upto = upto.min(available.len());
                self.next_header_source.consume(upto);
                return Err(ReadError::HeadTooLarge(if first_of_request { 414 } else { 431 }));
            }
            match end {
                Some(at) => {
                    buf.extend_from_slice(&available[..at]);
                    self.next_header_source.consume(at + 1);
                    buf.pop(); // removing the '\r'
                    if !buf.is_ascii() {
                        return Err(ReadError::NotAscii);
                    }
                    return std::str::from_utf8(buf).map_err(|_| ReadError::NotAscii);
                }
                None => {
                    let n = available.len();
                    buf.extend_from_slice(available);
                    self.next_header_source.consume(n);
                }
            }
        }
    }

    /// sessiond patch: the head of a request (split out of `read` so that the line buffer can
    /// be lent to it).
    fn read_head(
        &mut self,
        line: &mut Vec<u8>,
    ) -> Result<(Method, String, HTTPVersion, Vec<Header>), ReadError> {
        // reading the request line
        if let Some(clock) = &self.clock {
            clock.arm(self.limits.idle_timeout);
        }
        let (method, path, version) = parse_request_line(self.read_next_line(line, true)?.trim())?;

        // getting all headers
        let mut headers = Vec::new();
        loop {
            let text = self.read_next_line(line, false)?;
            if text.is_empty() {
                break;
            };
            if headers.len() >= self.limits.max_headers {
                return Err(ReadError::HeadTooLarge(431));
            }
            headers.push(match Header::parse_line(text.trim()) {
                Ok(h) => h,
                _ => return Err(ReadError::WrongHeader(version)),
            });
        }
        Ok((method, path, version, headers))
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        let mut line = std::mem::take(&mut self.line);
        let head = self.read_head(&mut line);
        // Kept for the next head unless a long line grew it: an idle connection holds no more
        // than its usual lines need.
        if line.capacity() <= 1024 {
            self.line = line;
        }
        let (method, path, version, headers) = head?;

        // building the writer for the request
        let writer = self.sink.next().unwrap();

        // follow-up for next potential request
        let mut data_source = self.source.next().unwrap();
        std::mem::swap(&mut self.next_header_source, &mut data_source);

        // building the next reader
        let request = crate::request::new_request(
            self.secure,
            method,
            path,
            version.clone(),
            headers,
            *self.remote_addr.as_ref().unwrap(),
            data_source,
            writer,
        )
        .map_err(|e| {
            use crate::request;
            match e {
                request::RequestCreationError::CreationIoError(e) => ReadError::ReadIoError(e),
                request::RequestCreationError::ExpectationFailed => {
                    ReadError::ExpectationFailed(version)
                }
                request::RequestCreationError::BadFraming => ReadError::WrongHeader(version),
            }
        })?;

        // return the request
        Ok(request)
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        use crate::{Response, StatusCode};

        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            // sessiond patch: drain what is left of a refused body (bounded by the request
            // deadline) so that the client, still sending, reads its 413 instead of a reset.
            if let Some(mut rest) = self.refused_body.take() {
                let mut sink = [0u8; 4096];
                let mut left = 16usize << 20;
                while left > 0 {
                    match rest.read(&mut sink) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => left = left.saturating_sub(n),
                    }
                }
            }
            return None;
        }

        loop {
            let mut rq = match self.read() {
                Err(ReadError::Idle) => return None,

                Err(ReadError::HeadTooLarge(status)) => {
                    let writer = self.sink.next().unwrap();
                    let response = error_response(&self.limits, status, None);
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None;
                }

                Err(ReadError::WrongRequestLine) | Err(ReadError::NotAscii) => {
                    let writer = self.sink.next().unwrap();
                    let response = error_response(&self.limits, 400, None);
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                Err(ReadError::WrongHeader(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = error_response(&self.limits, 400, None);
                    response.raw_print(writer, ver, &[], false, None).ok();
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                Err(ReadError::ReadIoError(ref err)) if err.kind() == ErrorKind::TimedOut => {
                    // request timeout
                    let writer = self.sink.next().unwrap();
                    let response = error_response(&self.limits, 408, None);
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None; // closing the connection
                }

                Err(ReadError::ExpectationFailed(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = error_response(&self.limits, 417, None);
                    // sessiond patch: with its body (upstream: `do_not_send_body` true)
                    response.raw_print(writer, ver, &[], false, None).ok();
                    return None; // TODO: should be recoverable, but needs handling in case of body
                }

                Err(ReadError::ReadIoError(_)) => return None,

                Ok(rq) => rq,
            };

            // checking HTTP version
            if *rq.http_version() > (1, 1) {
                // sessiond patch: answered through the request's own writer (upstream took the
                // next writer, which waits for this request's to be dropped: a deadlock), with the
                // error body, and the connection closes (upstream went on reading the unread body
                // as the next request)
                let response = error_response(&self.limits, 505, Some(rq.url()));
                rq.respond(response).ok();
                return None;
            }

            // updating the status of the connection
            let connection_header = rq
                .headers()
                .iter()
                .find(|h| h.field.equiv("Connection"))
                .map(|h| h.value.as_str());

            let lowercase = connection_header.map(|h| h.to_ascii_lowercase());

            match lowercase {
                Some(ref val) if val.contains("close") => self.no_more_requests = true,
                Some(ref val) if val.contains("upgrade") => self.no_more_requests = true,
                Some(ref val)
                    if !val.contains("keep-alive") && *rq.http_version() == HTTPVersion(1, 0) =>
                {
                    self.no_more_requests = true
                }
                None if *rq.http_version() == HTTPVersion(1, 0) => self.no_more_requests = true,
                _ => (),
            };

            // sessiond patch: the body is read here, on the connection's thread and under its
            // deadline, before the request is handed out.
            match rq.buffer_body(self.limits.max_body) {
                Ok(Buffered::Whole) => {}
                Ok(Buffered::TooLarge(rest)) => {
                    self.refused_body = Some(rest);
                    self.no_more_requests = true;
                }
                Err(e) => {
                    let status = match e.kind() {
                        ErrorKind::TimedOut => 408,
                        _ => 400,
                    };
                    let response = error_response(&self.limits, status, Some(rq.url()));
                    rq.respond(response).ok();
                    return None;
                }
            }

            // returning the request
            return Some(rq);
        }
    }
}

/// sessiond patch: an error the connection answers itself, with the body [`Limits::error_body`]
/// gives (upstream: always empty).
fn error_response(limits: &Limits, status: u16, path: Option<&str>) -> crate::ResponseBox {
    match limits.error_body {
        Some(body_of) => {
            let (content_type, body) = body_of(status, path);
            let mut response = Response::from_data(body).with_status_code(status);
            if let Ok(h) = crate::Header::from_bytes("Content-Type", content_type) {
                response.add_header(h);
            }
            response.boxed()
        }
        None => Response::new_empty(StatusCode(status)).boxed(),
    }
}

/// Parses a "HTTP/1.1" string.
fn parse_http_version(version: &str) -> Result<HTTPVersion, ReadError> {
    let (major, minor) = match version {
        "HTTP/0.9" => (0, 9),
        "HTTP/1.0" => (1, 0),
        "HTTP/1.1" => (1, 1),
        "HTTP/2.0" => (2, 0),
        "HTTP/3.0" => (3, 0),
        _ => return Err(ReadError::WrongRequestLine),
    };

    Ok(HTTPVersion(major, minor))
}

/// Parses the request line of the request.
/// eg. GET / HTTP/1.1
fn parse_request_line(line: &str) -> Result<(Method, String, HTTPVersion), ReadError> {
    let mut parts = line.split(' ');

    let method = parts.next().and_then(|w| w.parse().ok());
    let path = parts.next().map(ToOwned::to_owned);
    let version = parts.next().and_then(|w| parse_http_version(w).ok());

    method
        .and_then(|method| Some((method, path?, version?)))
        .ok_or(ReadError::WrongRequestLine)
}

#[cfg(test)]
mod test {
    #[test]
    fn test_parse_request_line() {
        let (method, path, ver) = super::parse_request_line("GET /hello HTTP/1.1").unwrap();

        assert!(method == crate::Method::Get);
        assert!(path == "/hello");
        assert!(ver == crate::common::HTTPVersion(1, 1));

        assert!(super::parse_request_line("GET /hello").is_err());
        assert!(super::parse_request_line("qsd qsd qsd").is_err());
    }
}
