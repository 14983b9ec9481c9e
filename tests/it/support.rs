//! The test fixture: the real `sessiond serve` on `127.0.0.1:0` in a temporary directory, a small
//! HTTP/1.1 client on std sockets, and direct SQLite access to the database file for assertions.
//! Dropping a [`Server`] sends SIGTERM and asserts a clean exit.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const GATEWAY_KEY: &str = "test-gateway-key-0123456789";

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sessiond-it-{}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst),
            Instant::now().elapsed().as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Server {
    child: Option<Child>,
    pub addr: String,
    pub dir: Arc<TempDir>,
    pub db: PathBuf,
    pub log: Arc<Mutex<Vec<String>>>,
}

/// Options for starting a server.
#[derive(Clone)]
pub struct Opts {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub nofile: Option<u64>,
    /// A command (and its arguments) that runs the server: `valgrind --tool=callgrind`, say.
    pub wrapper: Vec<String>,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            args: Vec::new(),
            env: vec![("SESSIOND_INTERNAL_API_KEY".into(), GATEWAY_KEY.into())],
            nofile: None,
            wrapper: Vec::new(),
        }
    }
}

impl Opts {
    pub fn arg(mut self, flag: &str, value: &str) -> Opts {
        self.args.push(flag.to_string());
        self.args.push(value.to_string());
        self
    }

    pub fn extra<'a>(mut self, args: impl Iterator<Item = &'a str>) -> Opts {
        self.args.extend(args.map(str::to_string));
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Opts {
        self.env.push((k.to_string(), v.to_string()));
        self
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sessiond")
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(Opts::default())
    }

    pub fn start_with(opts: Opts) -> Server {
        Server::start_in(Arc::new(TempDir::new()), opts)
    }

    /// Starts on an existing directory (for restarts); its database is `sessiond.db`.
    pub fn start_in(dir: Arc<TempDir>, opts: Opts) -> Server {
        match Server::try_start_in(dir, opts) {
            Ok(s) => s,
            Err((status, log)) => {
                panic!("sessiond did not start ({status:?}):\n{}", log.join("\n"))
            }
        }
    }

    pub fn try_start_in(
        dir: Arc<TempDir>,
        opts: Opts,
    ) -> Result<Server, (Option<ExitStatus>, Vec<String>)> {
        let db = dir.path().join("sessiond.db");
        let mut cmd = command_under(&opts.wrapper, bin());
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0", "--db"])
            .arg(&db)
            .args([
                "--threads",
                "8",
                "--admin-password",
                "admin-password-for-tests",
            ])
            .args(&opts.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        if let Some(n) = opts.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and touches only this child.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn sessiond");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let stderr = child.stderr.take().unwrap();
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(addr) = line.strip_prefix("sessiond: listening on http://") {
                        let _ = tx.send(addr.to_string());
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => Ok(Server {
                child: Some(child),
                addr,
                dir,
                db,
                log,
            }),
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                std::thread::sleep(Duration::from_millis(100));
                Err((status, log.lock().unwrap().clone()))
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate()
    }

    fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server running");
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        wait_timeout(&mut child, Duration::from_secs(20)).unwrap_or_else(|| {
            let _ = child.kill();
            panic!("sessiond did not exit within 20 s of SIGTERM");
        })
    }

    /// Kills the process with SIGKILL: no shutdown path runs, as in a crash or an OOM kill.
    pub fn kill9(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server running");
        let _ = child.kill();
        child.wait().expect("wait for the killed server")
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take().unwrap();
        let status = wait_timeout(&mut child, timeout);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        status
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        request(&self.addr, method, path, headers, body)
    }

    pub fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[], None)
    }

    pub fn get_auth(&self, path: &str, token: &str) -> Resp {
        let auth = format!("Bearer {token}");
        self.request("GET", path, &[("Authorization", &auth)], None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Resp {
        self.request(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            Some(body.to_string().as_bytes()),
        )
    }

    pub fn post_auth(&self, path: &str, token: &str, body: &Value) -> Resp {
        let auth = format!("Bearer {token}");
        self.request(
            "POST",
            path,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            Some(body.to_string().as_bytes()),
        )
    }

    pub fn delete_auth(&self, path: &str, token: &str) -> Resp {
        let auth = format!("Bearer {token}");
        self.request("DELETE", path, &[("Authorization", &auth)], None)
    }

    /// Runs a query against the live database file (WAL lets it read beside the server).
    pub fn query(&self, sql: &str) -> Vec<Vec<Value>> {
        query(&self.db, sql)
    }

    /// Changes the live database directly, standing in for time passing (expiry in the past).
    pub fn exec_sql(&self, sql: &str) {
        let conn = rusqlite::Connection::open(&self.db).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn.execute_batch(sql).unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.is_some() {
            let status = self.terminate();
            if !std::thread::panicking() {
                assert!(
                    status.success(),
                    "sessiond exited with {status:?} on SIGTERM:\n{}",
                    self.log_text()
                );
            }
        }
    }
}

pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A command that runs `program` under `wrapper` (a command and its arguments, to which the
/// program is appended: `valgrind --tool=callgrind`, say), or directly when `wrapper` is empty.
pub fn command_under(wrapper: &[String], program: impl AsRef<std::ffi::OsStr>) -> Command {
    match wrapper.split_first() {
        Some((first, args)) => {
            let mut command = Command::new(first);
            command.args(args).arg(program);
            command
        }
        None => Command::new(program),
    }
}

pub fn query(db: &Path, sql: &str) -> Vec<Vec<Value>> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut stmt = conn.prepare(sql).unwrap();
    let n = stmt.column_count();
    stmt.query_map([], |r| {
        (0..n)
            .map(|i| {
                Ok(match r.get_ref(i)? {
                    rusqlite::types::ValueRef::Null => Value::Null,
                    rusqlite::types::ValueRef::Integer(v) => Value::from(v),
                    rusqlite::types::ValueRef::Real(v) => Value::from(v),
                    rusqlite::types::ValueRef::Text(t) => {
                        Value::from(String::from_utf8_lossy(t).into_owned())
                    }
                    rusqlite::types::ValueRef::Blob(b) => {
                        Value::from(format!("<blob {}>", b.len()))
                    }
                })
            })
            .collect()
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts the status (with the body in the message when it differs) and returns the JSON body.
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "unexpected status; body: {}",
            self.text()
        );
        if self.body.is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Asserts a share-dialect error: the status and `{"error": "<message>"}` exactly.
    pub fn expect_error(&self, status: u16) -> String {
        let body = self.expect(status);
        let obj = body
            .as_object()
            .unwrap_or_else(|| panic!("error body not an object: {body}"));
        assert!(
            obj.get("error").is_some_and(Value::is_string),
            "no error message: {body}"
        );
        obj["error"].as_str().unwrap().to_string()
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    try_request(addr, method, path, headers, body)
        .unwrap_or_else(|| panic!("no complete answer from {addr} to {method} {path}"))
}

/// Like [`request`], but `None` when the connection fails or breaks before a whole answer (for
/// tests that kill the server under load).
pub fn try_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Option<Resp> {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        raw.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    raw.push_str("\r\n");
    let mut bytes = raw.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    try_raw_request(addr, &bytes)
}

/// Sends raw bytes and parses the response (for malformed requests).
pub fn raw_request(addr: &str, bytes: &[u8]) -> Resp {
    try_raw_request(addr, bytes).unwrap_or_else(|| panic!("no complete answer from {addr}"))
}

fn try_raw_request(addr: &str, bytes: &[u8]) -> Option<Resp> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    stream.write_all(bytes).ok()?;
    try_read_response(&mut BufReader::new(stream))
}

pub fn read_response(reader: &mut impl BufRead) -> Resp {
    try_read_response(reader).expect("a complete response")
}

/// Parses one response: status line, headers, and a body framed by `Content-Length`, chunked
/// (tiny_http sends bodies over 32 KiB chunked), or by the end of the connection.
pub fn try_read_response(reader: &mut impl BufRead) -> Option<Resp> {
    let mut status_line = String::new();
    reader.read_line(&mut status_line).ok()?;
    let status: u16 = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let mut body = Vec::new();
    match len {
        _ if chunked => loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim(), 16).ok()?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        },
        Some(n) => {
            body.resize(n, 0);
            reader.read_exact(&mut body).ok()?;
        }
        None => {
            let _ = reader.read_to_end(&mut body);
        }
    }
    Some(Resp {
        status,
        headers,
        body,
    })
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// A share session created anonymously, with its secrets.
pub struct Share {
    pub id: String,
    pub slug: String,
    pub owner_token: String,
    pub session_token: String,
    pub body: Value,
}

pub fn create_share(server: &Server, body: &Value) -> Share {
    let created = server.post("/sessions", body).expect(201);
    Share {
        id: created["sessionId"].as_str().unwrap().to_string(),
        slug: created["slug"].as_str().unwrap().to_string(),
        owner_token: created["ownerToken"].as_str().unwrap().to_string(),
        session_token: created["sessionToken"].as_str().unwrap().to_string(),
        body: created,
    }
}

/// Asks the admission route; returns (allow, status, reason, viewerId).
pub fn admit(server: &Server, slug: &str, body: &Value) -> (bool, u64, String, Option<String>) {
    let r = server
        .post_auth(
            &format!("/internal/sessions/by-slug/{slug}/admit"),
            GATEWAY_KEY,
            body,
        )
        .expect(200);
    (
        r["allow"].as_bool().unwrap(),
        r["status"].as_u64().unwrap(),
        r["reason"].as_str().unwrap().to_string(),
        r["viewerId"].as_str().map(str::to_string),
    )
}

pub fn keys_of(v: &Value) -> Vec<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

/// Creates a key with the CLI against a database.
pub fn cli_key(db: &Path, args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(["key", "create", "--db"])
        .arg(db)
        .args(args)
        .output()
        .expect("run sessiond key create");
    assert!(
        out.status.success(),
        "key create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The top-level keys of a JSON object in the order they appear in the text (serde_json's map sorts).
pub fn key_order(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let (mut depth, mut i, mut keys) = (0usize, 0usize, Vec::new());
    let mut expect_key = false;
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'[' => {
                depth += 1;
                expect_key = depth == 1 && bytes[i] == b'{';
            }
            b'}' | b']' => depth -= 1,
            b',' if depth == 1 => expect_key = true,
            b'"' => {
                let start = i + 1;
                i += 1;
                while bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                if depth == 1 && expect_key {
                    keys.push(text[start..i].to_string());
                    expect_key = false;
                }
            }
            _ => {}
        }
        i += 1;
    }
    keys
}

/// Checks that every line is a comment or `name{labels} value` and returns the value of `series`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            assert!(
                line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE "),
                "bad comment {line:?}"
            );
            continue;
        }
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let bare = name.split('{').next().unwrap();
        assert!(
            bare.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'),
            "bad name in {line:?}"
        );
        assert!(
            !name.contains('{') || name.ends_with('}'),
            "bad labels in {line:?}"
        );
        if name == series {
            return Some(value);
        }
    }
    None
}

/// Field `n` of a `/proc/…/stat` line, numbered as proc(5) numbers them (1 is the pid). The
/// command name (field 2) may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn stat_field(stat: &str, n: usize) -> Option<&str> {
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(n.checked_sub(3)?)
}

/// The threads of process `pid`: each one's name and its `/proc/<pid>/task/<tid>` directory.
pub fn threads_of(pid: i32) -> Vec<(String, PathBuf)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|task| {
            let dir = task.path();
            let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            (name.trim().to_string(), dir)
        })
        .collect()
}
