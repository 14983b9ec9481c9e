//! Hostile and broken clients (issue 7, SPEC §9): malformed HTTP, lying framing, slow senders,
//! idle connections by the thousand, too many connections, descriptor exhaustion. The server must
//! never panic, exit or go deaf, must answer in the dialect's error shape, and must keep serving
//! real clients meanwhile. Each property here was seen to fail with its defence removed.

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Reads whatever the server sends until it closes the connection (or 20 s pass).
fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn status_of(raw: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(raw);
    text.lines().next()?.split_whitespace().nth(1)?.parse().ok()
}

/// Asserts that the response `raw` has status `wanted`, showing the whole response otherwise.
#[track_caller]
fn assert_status(raw: &[u8], wanted: u16) {
    assert_eq!(
        status_of(raw),
        Some(wanted),
        "{}",
        String::from_utf8_lossy(raw)
    );
}

fn body_of(raw: &[u8]) -> Value {
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    serde_json::from_slice(&raw[at + 4..])
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(raw)))
}

/// A GET that must be answered while hostile clients are connected.
fn healthy(addr: &str) -> bool {
    let mut s = connect(addr);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    status_of(&read_all(&mut s)) == Some(200)
}

#[test]
fn malformed_http_gets_a_clear_error_in_the_dialects_shape_never_a_500() {
    let server = Server::start_with(
        Opts::default()
            .arg("--max-body", "1024")
            .arg("--request-timeout", "2s"),
    );
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let long_path = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(9000));
    let long_header = format!("GET /healthz HTTP/1.1\r\nX-A: {}\r\n\r\n", "a".repeat(9000));
    let many_headers = format!("GET /healthz HTTP/1.1\r\n{}\r\n", "X-A: b\r\n".repeat(101));
    let big_chunks = format!(
        "POST /sessions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n",
        format!("400\r\n{}\r\n", "a".repeat(1024)).repeat(3)
    );
    // (what, raw request, acceptable statuses, the error key of the dialect when JSON is expected)
    type Case = (&'static str, Vec<u8>, &'static [u16], Option<&'static str>);
    let cases: Vec<Case> = vec![
        ("not HTTP", b"GARBAGE\r\n\r\n".to_vec(), &[400], Some("error")),
        ("no version", b"GET /healthz\r\n\r\n".to_vec(), &[400], Some("error")),
        ("unknown version", b"GET / HTTP/9.9\r\n\r\n".to_vec(), &[400], Some("error")),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), &[400, 505], None),
        ("raw non-ASCII target", b"GET /sessions/\xff\xfe HTTP/1.1\r\n\r\n".to_vec(), &[400], Some("error")),
        ("bad percent-encoding", b"GET /sessions/by-slug/%zz HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(), &[400], Some("error")),
        ("percent-encoded invalid UTF-8", b"GET /sessions/by-slug/%ff%fe HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(), &[400, 404], Some("error")),
        ("bad percent-encoding, workspace", b"GET /api/workspaces/%zz HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(), &[400], Some("detail")),
        ("bad percent-encoding, runtime", b"GET /v1/sessions/%zz HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(), &[400], Some("message")),
        ("header without colon", b"GET /healthz HTTP/1.1\r\nNoColon\r\n\r\n".to_vec(), &[400], Some("error")),
        ("non-ASCII header", b"GET /healthz HTTP/1.1\r\nX-A: \xff\r\n\r\n".to_vec(), &[400], Some("error")),
        ("request line too long", long_path.into_bytes(), &[414], Some("error")),
        ("header line too long", long_header.into_bytes(), &[431], Some("error")),
        ("too many headers", many_headers.into_bytes(), &[431], Some("error")),
        ("negative Content-Length", b"POST /sessions HTTP/1.1\r\nContent-Length: -5\r\n\r\nhello".to_vec(), &[400], Some("error")),
        ("signed Content-Length", b"POST /sessions HTTP/1.1\r\nContent-Length: +2\r\n\r\n{}".to_vec(), &[400], Some("error")),
        ("overflowing Content-Length", b"POST /sessions HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n{}".to_vec(), &[400], Some("error")),
        ("disagreeing Content-Lengths", b"POST /sessions HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}".to_vec(), &[400], Some("error")),
        ("Content-Length and chunked", b"POST /sessions HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), &[400], Some("error")),
        ("unknown Transfer-Encoding", b"POST /sessions HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nxx".to_vec(), &[400], Some("error")),
        ("chunked garbage", b"POST /sessions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n".to_vec(), &[400], Some("error")),
        ("chunk size overflow", b"POST /sessions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFFFFFF\r\nab\r\n".to_vec(), &[400], Some("error")),
        ("chunked body over max_body", big_chunks.into_bytes(), &[413], Some("error")),
        ("declared body over max_body", b"POST /api/workspaces HTTP/1.1\r\nContent-Length: 99999999999999\r\n\r\n{}".to_vec(), &[413], Some("detail")),
        ("lying Content-Length, then silence", b"POST /v1/sessions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{}".to_vec(), &[408], Some("message")),
        ("unsupported Expect", b"POST /sessions HTTP/1.1\r\nExpect: teapot\r\nContent-Length: 2\r\n\r\n{}".to_vec(), &[417], Some("error")),
        ("deeply nested JSON", format!("POST /sessions HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{deep}", deep.len()).into_bytes(), &[400, 413], Some("error")),
        ("invalid UTF-8 JSON", b"POST /api/auth/login HTTP/1.1\r\nConnection: close\r\nContent-Length: 4\r\n\r\n\xff\xfe{}".to_vec(), &[400], Some("detail")),
        ("NUL in the target", b"GET /sessions/by-slug/a%00b HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(), &[400, 404], Some("error")),
    ];
    for (what, raw, allowed, key) in cases {
        let mut s = connect(&server.addr);
        s.write_all(&raw).unwrap();
        let started = Instant::now();
        let answer = read_all(&mut s);
        let status = status_of(&answer);
        assert!(
            status.is_some_and(|st| allowed.contains(&st)),
            "{what}: got {status:?}, wanted one of {allowed:?}: {:?}",
            String::from_utf8_lossy(&answer)
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: the connection was held open {:?}",
            started.elapsed()
        );
        if let Some(key) = key {
            let body = body_of(&answer);
            assert!(body.get(key).is_some(), "{what}: {body}");
        }
        assert!(
            healthy(&server.addr),
            "{what}: the server stopped answering"
        );
    }
    let log = server.log_text();
    assert!(!log.contains("panic"), "{log}");
    assert!(!log.contains(" 500 "), "{log}");
}

/// What the server answers to `raw` sent whole, and sent a byte at a time.
fn answered_whole_and_bytewise(addr: &str, raw: &[u8]) -> (Option<u16>, Option<u16>) {
    let mut whole = connect(addr);
    whole.write_all(raw).unwrap();
    let mut bytewise = connect(addr);
    bytewise.set_nodelay(true).unwrap();
    for b in raw {
        // A refusal may close the connection before the rest is written.
        if bytewise.write_all(std::slice::from_ref(b)).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_micros(300));
    }
    (
        status_of(&read_all(&mut whole)),
        status_of(&read_all(&mut bytewise)),
    )
}

#[test]
fn a_request_head_reads_the_same_however_its_bytes_arrive() {
    // The line limit (8192 bytes with its CRLF) holds to the byte, and a head split anywhere across
    // reads, a CR in one and its LF in the next, reads as it does whole: tiny_http reads lines a
    // run of buffered bytes at a time (patch 12), not byte by byte.
    let server = Server::start();
    let line = |len: usize| {
        let path = format!(
            "/v1/sessions/{}",
            "a".repeat(len - "GET  HTTP/1.1\r\n".len() - 13)
        );
        let raw = format!("GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert_eq!(raw.find('\n'), Some(len - 1));
        raw
    };
    let header = |len: usize| {
        let value = "b".repeat(len - "X-A: \r\n".len());
        format!("GET /healthz HTTP/1.1\r\nX-A: {value}\r\nConnection: close\r\n\r\n")
    };
    for (raw, wanted) in [
        (line(8192), 401),
        (line(8193), 414),
        (header(8192), 200),
        (header(8193), 431),
    ] {
        let mut s = connect(&server.addr);
        // A refusal may close the connection before the rest of the request is written.
        let _ = s.write_all(raw.as_bytes());
        assert_eq!(status_of(&read_all(&mut s)), Some(wanted), "{}", raw.len());
    }
    let cases: [(&[u8], u16); 5] = [
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            200,
        ),
        (
            b"GET /healthz HTTP/1.1\r\nX-A: a\nb\r\nConnection: close\r\n\r\n",
            200,
        ),
        (
            b"GET /healthz HTTP/1.1\r\nX-A: a\r\r\nConnection: close\r\n\r\n",
            200,
        ),
        (b"GET /healthz HTTP/1.1\r\nNoColon\r\n\r\n", 400),
        (
            b"POST /v1/sessions HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
            401,
        ),
    ];
    for (raw, wanted) in cases {
        let (whole, bytewise) = answered_whole_and_bytewise(&server.addr, raw);
        let what = String::from_utf8_lossy(raw);
        assert_eq!(whole, bytewise, "{what}");
        assert_eq!(whole, Some(wanted), "{what}");
    }
}

#[test]
fn keep_alive_and_pipelined_requests_still_work() {
    let server = Server::start();
    let mut s = connect(&server.addr);
    let body = b"{\"port\":3000}";
    let one = format!(
        "POST /sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut raw = Vec::new();
    for _ in 0..3 {
        raw.extend_from_slice(one.as_bytes());
        raw.extend_from_slice(body);
    }
    raw.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(&raw).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut slugs = Vec::new();
    for _ in 0..3 {
        let resp = read_response(&mut reader);
        assert_eq!(resp.status, 201, "{}", resp.text());
        slugs.push(resp.json()["slug"].as_str().unwrap().to_string());
    }
    slugs.dedup();
    assert_eq!(slugs.len(), 3);
    assert_eq!(read_response(&mut reader).status, 200);
    // Expect: 100-continue is answered before the body is read.
    s.write_all(
        b"POST /sessions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    )
    .unwrap();
    assert_eq!(read_response(&mut reader).status, 100);
    s.write_all(b"{}").unwrap();
    assert_eq!(read_response(&mut reader).status, 201);
}

#[test]
fn slow_senders_hold_no_worker_and_get_a_408_in_the_dialects_shape() {
    // Two workers. Unpatched tiny_http handed a request to a worker as soon as its head arrived,
    // and the worker then waited for the body: two silent clients stopped the whole server.
    let server = Server::start_with(
        Opts::default()
            .arg("--threads", "2")
            .arg("--request-timeout", "3s"),
    );
    let mut slow = Vec::new();
    for (path, key) in [
        ("/sessions", "error"),
        ("/api/auth/login", "detail"),
        ("/v1/sessions", "message"),
        ("/sessions", "error"),
    ] {
        // A body declared and never sent.
        let mut s = connect(&server.addr);
        let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 64\r\n\r\n{{");
        s.write_all(head.as_bytes()).unwrap();
        slow.push((s, key));
    }
    for _ in 0..4 {
        // A head trickled in, one byte at a time, never finished.
        let mut s = connect(&server.addr);
        s.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ").unwrap();
        slow.push((s, "error"));
    }
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    for _ in 0..20 {
        assert!(healthy(&server.addr), "a real client was not served");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "real clients waited for the slow ones: {:?}",
        started.elapsed()
    );
    for (mut s, key) in slow {
        let _ = s.write_all(b"a");
        let answer = read_all(&mut s);
        assert_status(&answer, 408);
        assert!(body_of(&answer).get(key).is_some());
    }
    assert!(healthy(&server.addr));
}

#[test]
fn idle_connections_by_the_thousand_are_served_around_and_then_closed() {
    let n = 1500;
    let server = Server::start_with(Opts::default().arg("--idle-timeout", "3s"));
    let mut idle = Vec::with_capacity(n);
    for i in 0..n {
        let s = TcpStream::connect(&server.addr).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        idle.push(s);
        if i % 250 == 0 {
            assert!(healthy(&server.addr), "deaf with {i} idle connections");
        }
    }
    let created = server.post("/sessions", &json!({"port": 3000})).expect(201);
    assert!(created["slug"].is_string());
    // Every idle connection is closed by the server once idle_timeout has passed.
    std::thread::sleep(Duration::from_secs(3));
    let deadline = Instant::now() + Duration::from_secs(20);
    for s in &mut idle {
        let left = deadline.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 16];
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("an idle connection was not closed: {other:?}"),
        }
    }
    assert!(healthy(&server.addr));
    assert!(!server.log_text().contains("panic"));
}

#[test]
fn beyond_max_connections_new_clients_get_a_503_at_once_not_a_hang() {
    let server = Server::start_with(Opts::default().arg("--max-connections", "16"));
    let held: Vec<TcpStream> = (0..16).map(|_| connect(&server.addr)).collect();
    // The connection count is taken when a connection's thread starts: give them a moment.
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let mut s = connect(&server.addr);
    s.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
    let answer = read_all(&mut s);
    assert_status(&answer, 503);
    assert!(body_of(&answer).get("error").is_some());
    assert!(started.elapsed() < Duration::from_secs(2));
    for h in &held {
        let _ = h.shutdown(Shutdown::Both);
    }
    drop(held);
    assert!(eventually(Duration::from_secs(5), || healthy(&server.addr)));
}

/// Sets the soft open-file limit of a running process (the hard limit stays).
fn set_nofile(pid: i32, n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reads the new limit from, and writes the old one to, structs we own.
    unsafe {
        assert_eq!(
            libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut lim),
            0
        );
        lim.rlim_cur = n.min(lim.rlim_max);
        let rc = libc::prlimit(pid, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut());
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    }
}

#[test]
fn running_out_of_descriptors_backs_off_and_serves_again_never_deaf() {
    // Unpatched tiny_http panicked its accept thread on EMFILE while cloning a socket, and ended
    // its accept loop for good on any error of accept() itself: the process lived on, deaf. Now
    // accept errors back off and retry, and serving resumes once descriptors are free again.
    let server = Server::start_with(Opts::default().arg("--threads", "2"));
    assert!(healthy(&server.addr));
    let open = std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
        .unwrap()
        .count() as u64;
    set_nofile(server.pid(), open + 6);
    let mut held = Vec::new();
    for _ in 0..40 {
        match TcpStream::connect(&server.addr) {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        eventually(Duration::from_secs(5), || server
            .log_text()
            .contains("Too many open files")),
        "the test did not exhaust descriptors:\n{}",
        server.log_text()
    );
    drop(held);
    set_nofile(server.pid(), 4096);
    assert!(
        eventually(Duration::from_secs(10), || healthy(&server.addr)),
        "the server did not serve again:\n{}",
        server.log_text()
    );
    // Dropping the server asserts that it is still running and exits 0 on SIGTERM.
}

#[test]
fn requests_without_a_descriptor_for_a_read_connection_wait_for_one() {
    // A request waiting for a commit keeps its read connection and gives its turn away; the next
    // request then opens another read connection. With no descriptor left for it, that request
    // must wait for a connection in use (and never hold the only turn while it waits): with one
    // turn and one connection open, every change must still succeed. (A share's creation no
    // longer waits on its thread, so the changes are scoped tokens, which do.)
    let server = Server::start_with(
        Opts::default()
            .arg("--threads", "1")
            .arg("--anonymous-share-rate", "0"),
    );
    let shares: Vec<Value> = (0..2)
        .map(|_| {
            let r = server.post("/sessions", &json!({ "port": 3000 }));
            assert_eq!(r.status, 201, "{}", r.text());
            r.json()
        })
        .collect();
    let clients: Vec<TcpStream> = (0..2).map(|_| connect(&server.addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let open = std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
        .unwrap()
        .count() as u64;
    set_nofile(server.pid(), open);
    let threads: Vec<_> = clients
        .into_iter()
        .zip(shares)
        .map(|(stream, share)| {
            std::thread::spawn(move || {
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                let request = format!(
                    "POST /owner/sessions/{}/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}",
                    share["sessionId"].as_str().unwrap(),
                    share["ownerToken"].as_str().unwrap()
                );
                for _ in 0..10 {
                    writer.write_all(request.as_bytes()).unwrap();
                    let r = read_response(&mut reader);
                    assert_eq!(r.status, 201, "{}", r.text());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(
        server
            .log_text()
            .contains("cannot open another read connection"),
        "no request ran out of descriptors; the test did not test anything:\n{}",
        server.log_text()
    );
    set_nofile(server.pid(), 4096);
    assert_eq!(
        server.query("SELECT count(*) FROM share_tokens")[0][0].as_i64(),
        Some(20)
    );
}

#[test]
fn every_connection_of_a_burst_is_served_while_the_others_stay_open() {
    // tiny_http hands each accepted connection to a pool thread. Its pool counted a thread that
    // had been woken for one connection as still free for the next, so in a burst some
    // connections were queued behind connections that stay open: their requests were not read
    // until another client left (the benchmark saw 5 s stalls, and batches of 3 instead of 30).
    let server = Server::start();
    // Busy cores make a woken pool thread slow to take its connection, as under real load.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinners: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    for round in 0..5 {
        // All at once, from as many threads, as a gateway's pool or a load generator connects.
        let go = std::sync::Arc::new(std::sync::Barrier::new(64));
        let mut conns: Vec<TcpStream> = (0..64)
            .map(|_| {
                let (go, addr) = (go.clone(), server.addr.clone());
                std::thread::spawn(move || {
                    go.wait();
                    let s = TcpStream::connect(&addr).expect("connect");
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    s
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        for (i, s) in conns.iter_mut().enumerate() {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap_or_else(|e| panic!("round {round}, connection {i}: {e}"));
        }
        for (i, s) in conns.iter_mut().enumerate() {
            let resp = try_read_response(&mut BufReader::new(s));
            assert!(
                resp.is_some_and(|r| r.status == 200),
                "round {round}: connection {i} of 64 was not served while the others stayed open"
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in spinners {
        s.join().unwrap();
    }
}

/// A share whose full view lists `n` viewers (a gateway's snapshot), for large responses.
fn share_with_viewers(server: &Server, n: usize) -> Share {
    let share = create_share(server, &json!({ "port": 3000 }));
    let now = share.body["createdAt"].clone();
    let viewers: Vec<Value> = (0..n)
        .map(|i| json!({ "id": format!("viewer-{i:03}"), "lastSeenAt": now, "requests": 1, "ip": "10.0.0.1" }))
        .collect();
    server
        .post_auth(
            &format!("/internal/sessions/by-slug/{}/viewers", share.slug),
            GATEWAY_KEY,
            &json!({ "viewers": viewers }),
        )
        .expect(200);
    share
}

#[test]
fn responses_are_framed_for_heads_old_clients_and_large_bodies() {
    // sessiond writes its responses itself (tiny_http patch 13); each of these framings is what
    // tiny_http's own response path sent.
    let server = Server::start();
    let header = |resp: &Resp, name: &str| {
        resp.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    // A HEAD gets the length of the body it does not get: the next response follows at once.
    let mut s = connect(&server.addr);
    s.write_all(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let raw = String::from_utf8(read_all(&mut s)).unwrap();
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(head.contains("\r\nContent-Length: 15"), "{raw}");
    assert!(rest.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(rest.ends_with("\r\n\r\n{\"status\":\"ok\"}"), "{raw}");
    // An HTTP/1.0 client gets an HTTP/1.0 answer with its length, and the connection closes.
    let mut s = connect(&server.addr);
    s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
    let raw = String::from_utf8(read_all(&mut s)).unwrap();
    assert!(raw.starts_with("HTTP/1.0 200 OK\r\n"), "{raw}");
    assert!(raw.contains("\r\nContent-Length: 15\r\n"), "{raw}");
    assert!(raw.ends_with("\r\n\r\n{\"status\":\"ok\"}"), "{raw}");
    // A body of 32 KiB or more is sent chunked, and so is any body to a client that asks with TE.
    let share = share_with_viewers(&server, 400);
    let view = format!(
        "GET /sessions/{} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n",
        share.id, share.owner_token
    );
    let big = raw_request(&server.addr, format!("{view}\r\n").as_bytes());
    assert_eq!(big.status, 200);
    assert!(big.body.len() >= 32768, "{}", big.body.len());
    assert_eq!(
        header(&big, "transfer-encoding").as_deref(),
        Some("chunked")
    );
    assert_eq!(big.json()["activeViewers"].as_array().unwrap().len(), 400);
    let asked = raw_request(
        &server.addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nTE: chunked\r\n\r\n",
    );
    assert_eq!(
        header(&asked, "transfer-encoding").as_deref(),
        Some("chunked")
    );
    assert_eq!(asked.json()["status"], "ok");
    let plain = raw_request(&server.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(header(&plain, "content-length").as_deref(), Some("15"));
    assert_eq!(header(&plain, "transfer-encoding"), None);
    for name in ["server", "date", "content-type", "x-request-id"] {
        assert!(
            header(&plain, name).is_some(),
            "{name}: {:?}",
            plain.headers
        );
    }
}

#[test]
fn responses_larger_than_the_write_buffer_are_not_held_back_on_keep_alive() {
    // tiny_http writes through a 1 KiB buffer, so a larger response leaves in two sends. Without
    // TCP_NODELAY the second waited for the client's delayed ACK: about 40 ms per response, on every
    // full view with viewers, every listing. 50 of them would take 2 s on that alone.
    let server = Server::start();
    let s = share_with_viewers(&server, 20);
    let mut conn = connect(&server.addr);
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let request = format!(
        "GET /sessions/{} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        s.id, s.owner_token
    );
    let started = Instant::now();
    for _ in 0..50 {
        conn.write_all(request.as_bytes()).unwrap();
        let resp = read_response(&mut reader);
        assert_eq!(resp.status, 200);
        assert!(resp.text().len() > 2048, "{}", resp.text());
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1200),
        "50 large responses on one connection took {took:?}: held back by Nagle's algorithm"
    );
}

/// The value of an unlabelled counter on `/metrics`.
fn counter(server: &Server, name: &str) -> u64 {
    let text = server.get("/metrics").text();
    metric(&text, name).unwrap_or_else(|| panic!("{name} is not on /metrics:\n{text}")) as u64
}

#[test]
fn a_client_that_does_not_read_answers_after_commits_holds_up_no_one_and_gets_them_in_order() {
    // A share's creation is answered after its commit by the writer's answering thread, which
    // writes only what the connection takes at once and leaves the rest to a thread of its own.
    // One client, with a receive buffer of a few KiB (and the server's send buffers at 8 KiB),
    // pipelines creates and reads between them, then reads nothing until its answers stop
    // fitting. Whether the answer that does not fit is one the answering thread writes, or one
    // the connection's own thread writes (a create that came while an earlier one was still
    // outstanding waits on its thread), depends on the timing, so the client tries again until
    // the answering thread's did not fit. Meanwhile everyone else must be answered, and the
    // client must get every answer whole and in order.
    let server = Server::start_with(
        Opts::default()
            .arg("--anonymous-share-rate", "0")
            .arg("--send-buffer", "4096"),
    );
    let stream = connect(&server.addr);
    let small: libc::c_int = 4096;
    // SAFETY: a valid socket descriptor and an int-sized option value.
    let set = unsafe {
        use std::os::fd::AsRawFd;
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&small as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0);
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let creates = |i: usize| i % 20 != 19;
    let request = |i: usize| {
        if creates(i) {
            let body = format!("{{\"port\":{}}}", 1000 + i);
            format!(
                "POST /sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        } else {
            "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_string()
        }
    };
    const PER_TRY: usize = 60;
    let mut created = Vec::new();
    let mut others = 0;
    for attempt in 0..30 {
        let first = attempt * PER_TRY;
        let burst: String = (first..first + PER_TRY).map(request).collect();
        writer.write_all(burst.as_bytes()).unwrap();
        // Until an answer of the answering thread did not fit, or the creates stop (a create's
        // answer on its connection's thread did not fit, and that thread waits for the client).
        let stored = || server.query("SELECT count(*) FROM shares")[0][0].as_i64();
        let (mut last, mut still, started) = (stored(), 0, Instant::now());
        let stalled = loop {
            std::thread::sleep(Duration::from_millis(50));
            if counter(&server, "sessiond_http_responses_finished_later_total") > 0 {
                break true;
            }
            let now = stored();
            still = if now == last { still + 1 } else { 0 };
            last = now;
            if still >= 6 || started.elapsed() > Duration::from_secs(10) {
                break false;
            }
        };
        if stalled {
            // Others are answered meanwhile, creates included.
            for _ in 0..20 {
                let r = server.post("/sessions", &json!({ "port": 80 }));
                assert_eq!(r.status, 201, "{}", r.text());
                others += 1;
            }
        }
        for i in first..first + PER_TRY {
            let r = read_response(&mut reader);
            if creates(i) {
                assert_eq!(r.status, 201, "answer {i}: {}", r.text());
                let uid = r.json()["sessionId"].as_str().unwrap().to_string();
                created.push((uid, 1000 + i as i64));
            } else {
                assert_eq!(r.status, 200, "answer {i}: {}", r.text());
                assert_eq!(r.json()["status"], "ok", "answer {i}");
            }
        }
        if stalled {
            break;
        }
    }
    assert!(
        others > 0,
        "no answer of the answering thread had to wait for the client; the test did not test anything"
    );
    // Each create's answer names the share its own request made.
    let ports: std::collections::HashMap<String, i64> = server
        .query("SELECT s.uid, sh.port FROM sessions s JOIN shares sh ON sh.session_id = s.id")
        .into_iter()
        .map(|row| {
            (
                row[0].as_str().unwrap().to_string(),
                row[1].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports.len(), created.len() + others);
    for (uid, port) in &created {
        assert_eq!(ports.get(uid), Some(port), "{uid}");
    }

    // A client that pipelines creates and goes away unread costs nothing but the writes.
    let mut gone = connect(&server.addr);
    let burst: String = (0..200).map(|i| request(3 * i)).collect();
    gone.write_all(burst.as_bytes()).unwrap();
    gone.shutdown(Shutdown::Both).unwrap();
    drop(gone);
    assert!(healthy(&server.addr));
    // Dropping the server asserts that it stops cleanly (exit 0 on SIGTERM).
}

#[test]
fn a_create_on_a_connection_that_closes_is_answered_whole_before_the_close() {
    // A create's answer is written after its commit by another thread than the connection's,
    // which may have finished with the connection by then (`Connection: close`, HTTP/1.0). The
    // answer must still arrive whole, and the connection close after it.
    let server = Server::start_with(Opts::default().arg("--anonymous-share-rate", "0"));
    for head in [
        "POST /sessions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n",
        "POST /sessions HTTP/1.0\r\n",
    ] {
        let mut s = connect(&server.addr);
        let request =
            format!("{head}Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}");
        s.write_all(request.as_bytes()).unwrap();
        let raw = read_all(&mut s);
        assert_status(&raw, 201);
        let uid = body_of(&raw)["sessionId"].as_str().unwrap().to_string();
        let stored = server.query(&format!(
            "SELECT count(*) FROM sessions WHERE uid = '{uid}'"
        ));
        assert_eq!(stored[0][0].as_i64(), Some(1), "{head}");
    }
}
