//! One error type for the whole service, and the one place that turns it into a dialect's error body.
//!
//! Handlers return `Result<Resp, Error>`; the router knows which dialect a route belongs to and calls
//! [`Error::into_resp`] with it. Messages are public: an internal cause (SQLite, I/O) is logged by the
//! server and replaced by a generic sentence, so nothing about the machine leaks to a client.

use std::fmt;

use crate::server::Resp;

/// The wire dialects, each with its own error envelope (SPEC §1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// `{"error": "<message>"}`
    Share,
    /// `{"detail": "<message>"}`
    Workspace,
    /// `{"error": "<code>", "message": "<message>"}` (also the ops endpoints)
    Runtime,
}

#[derive(Debug)]
pub enum Error {
    BadRequest(String),
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    MethodNotAllowed,
    /// The client took longer than `request_timeout` to send its request.
    RequestTimeout,
    PayloadTooLarge(String),
    /// A request line longer than the limit.
    UriTooLong,
    /// A header line too long, or too many headers.
    HeadersTooLarge,
    TooManyRequests {
        message: String,
        retry_after_secs: u64,
    },
    /// The store cannot take writes right now (disk full, writer gone, shutting down).
    Unavailable(String),
    /// A bug or an unexpected failure of a dependency; the text is logged, never sent.
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn bad_request(message: impl Into<String>) -> Error {
        Error::BadRequest(message.into())
    }

    pub fn status(&self) -> u16 {
        match self {
            Error::BadRequest(_) => 400,
            Error::Unauthorized(_) => 401,
            Error::Forbidden(_) => 403,
            Error::NotFound(_) => 404,
            Error::Conflict(_) => 409,
            Error::MethodNotAllowed => 405,
            Error::RequestTimeout => 408,
            Error::PayloadTooLarge(_) => 413,
            Error::UriTooLong => 414,
            Error::HeadersTooLarge => 431,
            Error::TooManyRequests { .. } => 429,
            Error::Unavailable(_) => 503,
            Error::Internal(_) => 500,
        }
    }

    /// The machine-readable code of the runtime dialect.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadRequest(_) => "invalid_request",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::NotFound(_) => "not_found",
            Error::Conflict(_) => "conflict",
            Error::MethodNotAllowed => "method_not_allowed",
            Error::RequestTimeout => "request_timeout",
            Error::PayloadTooLarge(_) => "payload_too_large",
            Error::UriTooLong => "uri_too_long",
            Error::HeadersTooLarge => "headers_too_large",
            Error::TooManyRequests { .. } => "rate_limited",
            Error::Unavailable(_) => "unavailable",
            Error::Internal(_) => "internal_error",
        }
    }

    /// The message a client may see.
    pub fn public_message(&self) -> &str {
        match self {
            Error::BadRequest(m)
            | Error::Unauthorized(m)
            | Error::Forbidden(m)
            | Error::NotFound(m)
            | Error::Conflict(m)
            | Error::PayloadTooLarge(m)
            | Error::Unavailable(m) => m,
            Error::TooManyRequests { message, .. } => message,
            Error::MethodNotAllowed => "Method not allowed",
            Error::RequestTimeout => "The request took too long to arrive",
            Error::UriTooLong => "Request line too long",
            Error::HeadersTooLarge => "Request headers too large",
            Error::Internal(_) => "Internal server error",
        }
    }

    /// Wraps the error in the envelope of `dialect`.
    pub fn into_resp(self, dialect: Dialect) -> Resp {
        let message = self.public_message();
        let body = match dialect {
            Dialect::Share => serde_json::json!({ "error": message }),
            Dialect::Workspace => serde_json::json!({ "detail": message }),
            Dialect::Runtime => serde_json::json!({ "error": self.code(), "message": message }),
        };
        let mut resp = Resp::json(self.status(), &body);
        if let Error::TooManyRequests {
            retry_after_secs, ..
        } = &self
        {
            resp = resp.header("Retry-After", retry_after_secs.to_string());
        }
        if let Error::Unavailable(_) = &self {
            resp = resp.header("Retry-After", "1");
        }
        resp
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Internal(cause) => write!(f, "internal error: {cause}"),
            other => write!(f, "{} {}", other.status(), other.public_message()),
        }
    }
}

impl std::error::Error for Error {}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Error {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => Error::Unavailable("Storage is full".into()),
            Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked) => {
                Error::Unavailable("Storage is busy".into())
            }
            Some(rusqlite::ErrorCode::ReadOnly) => {
                Error::Unavailable("Storage is read-only".into())
            }
            _ => Error::Internal(format!("sqlite: {e}")),
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Error {
        Error::Internal(format!("json: {e}"))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Internal(format!("io: {e}"))
    }
}
