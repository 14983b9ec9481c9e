//! The benchmark (issue 6): figures, not assertions. Runs only with `SESSIOND_BENCH=1`:
//!
//! ```sh
//! SESSIOND_BENCH=1 cargo test --release --test it bench -- --nocapture --test-threads=1
//! ```
//!
//! In one run on one machine it measures floors — tiny_http alone answering a constant, tiny_http with
//! one SQLite primary-key lookup per request, SQLite committing one row per fsync — and then the real
//! sessiond (this build's binary) on a database preloaded with `SESSIOND_BENCH_N` share sessions
//! (default 100,000), driven by `SESSIOND_BENCH_CONNS` keep-alive connections (default 64) for
//! `SESSIOND_BENCH_SECS` seconds per probe (default 2), alternating with the floors for `SESSIOND_BENCH_ROUNDS` rounds (default 9);
//! `SESSIOND_BENCH_ARGS` adds server flags. Floor servers run in a process of their own (`floor_process`). It prints req/s, p50/p99 latency, ratios to
//! the floors, RSS with 10,000 live viewers, and read latency during a mass-expiry sweep.
//!
//! `instructions` counts instructions per request under callgrind instead (see there), and
//! `handler_cost` times the handlers without HTTP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use blake2::{Blake2b256, Digest};
use serde_json::json;

use crate::support::*;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Default)]
struct Figures {
    name: String,
    rps: f64,
    p50_us: u64,
    p99_us: u64,
    /// A client starved for the whole probe shows here (a pool bug once held connections unread).
    max_us: u64,
    errors: u64,
    /// sessiond's cost per request (probes against sessiond).
    cost: Option<Cost>,
}

/// Builds request `i` of connection `conn`.
type MakeRequest = Arc<dyn Fn(usize, u64) -> Vec<u8> + Send + Sync>;

/// Drives `addr` from `conns` keep-alive connections for `secs`; `make(conn, i)` builds request i.
fn drive(addr: &str, conns: usize, secs: f64, make: MakeRequest) -> Figures {
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..conns)
        .map(|c| {
            let (stop, errors, make, addr) =
                (stop.clone(), errors.clone(), make.clone(), addr.to_string());
            std::thread::spawn(move || {
                let mut latencies = Vec::with_capacity(100_000);
                let mut conn = Conn::open(&addr);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let req = make(c, i);
                    i += 1;
                    let t = Instant::now();
                    let Some(ok) = conn.ask(&req) else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    };
                    latencies.push(t.elapsed().as_micros() as u32);
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latencies
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let mut all: Vec<u32> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as u64
    };
    Figures {
        name: String::new(),
        rps: all.len() as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        max_us: all.last().copied().unwrap_or(0) as u64,
        errors: errors.load(Ordering::Relaxed),
        cost: None,
    }
}

/// One keep-alive connection of the load generator.
struct Conn {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    body: Vec<u8>,
}

impl Conn {
    fn open(addr: &str) -> Conn {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
            body: Vec::new(),
        }
    }

    /// Sends `req` and reads the whole response: whether its status is 2xx, or `None` when the
    /// connection failed.
    fn ask(&mut self, req: &[u8]) -> Option<bool> {
        self.writer.write_all(req).ok()?;
        let mut line = String::new();
        if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        let ok = line.split(' ').nth(1).is_some_and(|s| s.starts_with('2'));
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap();
                }
            }
        }
        self.body.resize(len, 0);
        self.reader.read_exact(&mut self.body).unwrap();
        Some(ok)
    }
}

/// Runs each floor and then the probe, `rounds` times over, and returns the probe's figures from the
/// round whose ratio to the first floor is the median, the median ratio to each floor, and the
/// probe's median rate. This
/// machine's speed drifts by a third within minutes, so only a floor measured right next to a probe
/// is a fair baseline, and one pair can still be unlucky. The rounds are printed under a line
/// naming the probe; the probe's line that follows them shows the median round.
fn alternate(
    name: &str,
    rounds: usize,
    floors: &[(&str, &dyn Fn() -> Figures)],
    probe: &dyn Fn() -> Figures,
) -> (Figures, Vec<f64>, f64) {
    let names: Vec<&str> = floors.iter().map(|(floor, _)| *floor).collect();
    eprintln!(
        "  {name}: {rounds} rounds, each the {} and then the probe",
        names.join(" and the ")
    );
    let cpu = |f: &Figures| {
        f.cost
            .map(|c| format!(" ({:>3.0} µs)", c.cpu_us))
            .unwrap_or_default()
    };
    let mut runs: Vec<(Vec<f64>, Figures)> = (1..=rounds)
        .map(|round| {
            let measured: Vec<Figures> = floors.iter().map(|(_, floor)| floor()).collect();
            let p = probe();
            let ratios: Vec<f64> = measured.iter().map(|f| p.rps / f.rps).collect();
            let measured_floors: String = names
                .iter()
                .zip(&measured)
                .map(|(floor, f)| format!("{floor} {:>7.0}/s{}, ", f.rps, cpu(f)))
                .collect();
            let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
            eprintln!(
                "    round {round}: {measured_floors}probe {:>7.0}/s{}, ratio {}",
                p.rps,
                cpu(&p),
                shown.join(" ")
            );
            (ratios, p)
        })
        .collect();
    let medians = (0..floors.len())
        .map(|i| {
            let mut r: Vec<f64> = runs.iter().map(|(ratios, _)| ratios[i]).collect();
            r.sort_by(f64::total_cmp);
            r[rounds / 2]
        })
        .collect();
    let mut rates: Vec<f64> = runs.iter().map(|(_, p)| p.rps).collect();
    rates.sort_by(f64::total_cmp);
    runs.sort_by(|a, b| a.0[0].total_cmp(&b.0[0]));
    (runs.swap_remove(rounds / 2).1, medians, rates[rounds / 2])
}

fn get(path: &str, auth: Option<&str>) -> Vec<u8> {
    let auth = auth
        .map(|a| format!("Authorization: Bearer {a}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: b\r\n{auth}\r\n").into_bytes()
}

fn post(path: &str, auth: Option<&str>, body: &str) -> Vec<u8> {
    let auth = auth
        .map(|a| format!("Authorization: Bearer {a}\r\n"))
        .unwrap_or_default();
    format!("POST {path} HTTP/1.1\r\nHost: b\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

/// What a floor server answers (see [`floor_process`]).
#[derive(Clone, Copy)]
enum Floor {
    /// A constant JSON body.
    Constant,
    /// One primary-key lookup in the benchmark's database per request.
    Lookup,
}

/// A floor server: plain tiny_http, as its documentation shows it (a queue and `threads` workers
/// calling `recv`), in a process of its own, like sessiond. Run inside this (load-generating)
/// process, it was 5-20% faster than the same server in a process of its own (four pairs, two
/// sessions): threads of one process switch without changing address spaces, which no real server
/// and its clients do. Dropping it kills the process.
struct FloorServer {
    addr: String,
    child: std::process::Child,
}

impl FloorServer {
    fn start(floor: Floor, threads: usize, db: &std::path::Path) -> FloorServer {
        FloorServer::start_under(&[], floor, threads, db)
    }

    /// Starts the floor's process under `wrapper` (a command and its arguments, to which the
    /// process's own command line is appended), or directly when it is empty.
    fn start_under(
        wrapper: &[String],
        floor: Floor,
        threads: usize,
        db: &std::path::Path,
    ) -> FloorServer {
        let mut child = command_under(wrapper, std::env::current_exe().unwrap())
            .args([
                "bench::floor_process",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                "SESSIOND_BENCH_FLOOR",
                match floor {
                    Floor::Constant => "constant",
                    Floor::Lookup => "lookup",
                },
            )
            .env("SESSIOND_BENCH_FLOOR_DB", db)
            .env("SESSIOND_BENCH_FLOOR_THREADS", threads.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let addr = stdout
            .lines()
            .map_while(|l| l.ok())
            // The test harness's "test bench::floor_process ... " comes first on the line.
            .find_map(|l| Some(l.split_once("FLOOR LISTENING ")?.1.trim().to_string()))
            .expect("the floor server did not start");
        FloorServer { addr, child }
    }

    /// Drives the floor like a probe drives sessiond, and measures what its process spent.
    fn drive(&self, conns: usize, secs: f64) -> Figures {
        let pid = self.child.id() as i32;
        let before = Spent::of(pid);
        let mut f = drive(&self.addr, conns, secs, Arc::new(|_, _| get("/x", None)));
        f.cost = Some(before.per_request(Spent::of(pid), (f.rps * secs).max(1.0)));
        f
    }
}

impl Drop for FloorServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The floor server's process (started by [`FloorServer::start`], which sets the variables it
/// reads; without them it does nothing). It serves until its standard input closes.
#[test]
fn floor_process() {
    let Ok(floor) = std::env::var("SESSIOND_BENCH_FLOOR") else {
        return;
    };
    let db = std::path::PathBuf::from(std::env::var("SESSIOND_BENCH_FLOOR_DB").unwrap());
    let threads: usize = env_num("SESSIOND_BENCH_FLOOR_THREADS", 16) as usize;
    let n: i64 =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap()
            .query_row("SELECT max(id) FROM sessions", [], |r| r.get(0))
            .unwrap();
    // SQLite as sessiond's readers use it: no memory statistics (a global mutex on every
    // allocation) and pages read from a memory map. Ten alternating pairs measured this 1.04
    // times as fast as the defaults (median).
    // SAFETY: called before this process opens any connection.
    unsafe {
        rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS, 0 as std::ffi::c_int);
    }
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    println!("FLOOR LISTENING {}", server.server_addr().to_ip().unwrap());
    for worker in 0..threads {
        let (server, db, floor) = (server.clone(), db.clone(), floor.clone());
        std::thread::spawn(move || {
            let conn = rusqlite::Connection::open_with_flags(
                &db,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .unwrap();
            conn.execute_batch("PRAGMA mmap_size = 1073741824").unwrap();
            // A counter per thread picks the row: reading /dev/urandom here, as this floor once
            // did, cost three system calls per request and made the floor slower.
            let mut next = rand_u64() ^ worker as u64;
            loop {
                let Ok(rq) = server.recv() else { return };
                let body = if floor == "constant" {
                    r#"{"status":"ok","session":"constant"}"#.to_string()
                } else {
                    next = next.wrapping_add(1);
                    let id = pick(0, next, n as u64) as i64 + 1;
                    let (uid, status): (String, String) = conn
                        .prepare_cached("SELECT uid, status FROM sessions WHERE id = ?1")
                        .unwrap()
                        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
                        .unwrap();
                    format!(r#"{{"id":"{uid}","status":"{status}"}}"#)
                };
                let resp = tiny_http::Response::from_string(body).with_header(
                    tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
                        .unwrap(),
                );
                let _ = rq.respond(resp);
            }
        });
    }
    // The parent holds our standard input open while it needs us.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `RssAnon`, `RssFile`, ...).
fn status_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// What sessiond has spent so far, from `/proc`: CPU clock ticks (user + system) of the process
/// and of its writer thread, and context switches (voluntary and not) of all its threads.
#[derive(Clone, Copy)]
struct Spent {
    ticks: f64,
    writer_ticks: f64,
    switches: f64,
}

/// The server's cost per request over a probe.
#[derive(Clone, Copy)]
struct Cost {
    cpu_us: f64,
    writer_cpu_us: f64,
    switches: f64,
}

impl Spent {
    fn of(pid: i32) -> Spent {
        // utime and stime.
        let ticks = |stat: &str| -> f64 {
            [14, 15]
                .into_iter()
                .filter_map(|n| stat_field(stat, n)?.parse::<f64>().ok())
                .sum()
        };
        let read = |path: std::path::PathBuf| std::fs::read_to_string(path).unwrap_or_default();
        let mut spent = Spent {
            ticks: ticks(&read(format!("/proc/{pid}/stat").into())),
            writer_ticks: 0.0,
            switches: 0.0,
        };
        for (name, dir) in threads_of(pid) {
            if name == "writer" {
                spent.writer_ticks += ticks(&read(dir.join("stat")));
            }
            spent.switches += read(dir.join("status"))
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
                .sum::<f64>();
        }
        spent
    }

    /// The cost per request of `requests` requests served between `self` and `later`.
    fn per_request(self, later: Spent, requests: f64) -> Cost {
        let us = 1e6 / ticks_per_second() / requests;
        Cost {
            cpu_us: (later.ticks - self.ticks) * us,
            writer_cpu_us: (later.writer_ticks - self.writer_ticks) * us,
            switches: (later.switches - self.switches) / requests,
        }
    }
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn rss_kib(pid: i32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// RSS and its parts: anonymous memory (the process's own) and mapped file pages (the database
/// file's pages that memory-mapped reads touched; shared with the kernel's page cache).
fn rss_parts(pid: i32) -> String {
    format!(
        "{:.1} MiB ({:.1} anonymous, {:.1} file-backed)",
        rss_kib(pid) as f64 / 1024.0,
        status_kib(pid, "RssAnon") as f64 / 1024.0,
        status_kib(pid, "RssFile") as f64 / 1024.0
    )
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    u64::from_le_bytes(b)
}

/// Cheap per-thread pseudo-random numbers for picking targets (not for secrets).
fn pick(seed: u64, i: u64, n: u64) -> u64 {
    let mut x = seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x % n
}

/// The request threads (`--threads`) the benchmark serves with, and the floors' workers.
fn server_threads() -> usize {
    std::thread::available_parallelism()
        .map(|p| p.get() * 8)
        .unwrap_or(16)
        .max(8)
}

/// `GET /sessions/:id` of a random preloaded share (of `n`), with its owner token.
fn owner_get(seed: u64, n: u64) -> MakeRequest {
    Arc::new(move |c, i| {
        let k = pick(seed ^ c as u64, i, n);
        get(
            &format!("/sessions/sess_bench{k:027}"),
            Some(&format!("benchtoken{k:022}")),
        )
    })
}

/// `GET /sessions/by-slug/:slug` of a random preloaded share, without credentials.
fn public_get(seed: u64, n: u64) -> MakeRequest {
    Arc::new(move |c, i| {
        let k = pick(seed ^ c as u64, i, n);
        get(&format!("/sessions/by-slug/bench-slug-{k}"), None)
    })
}

/// The gateway's admission of connection `c`'s viewer to a random preloaded share: nearly always a
/// viewer new to its share (the writer then records it).
fn admission(seed: u64, n: u64) -> MakeRequest {
    Arc::new(move |c, i| {
        let k = pick(seed ^ c as u64, i, n);
        post(
            &format!("/internal/sessions/by-slug/bench-slug-{k}/admit"),
            Some(GATEWAY_KEY),
            &format!(r#"{{"viewerId":"c{c}","ip":"10.0.0.1","path":"/"}}"#),
        )
    })
}

const GET_NAME: &str = "GET /sessions/:id (owner bearer)";
const SLUG_NAME: &str = "GET /sessions/by-slug/:slug";
const ADMIT_NAME: &str = "POST /internal/.../admit";
const CREATE_NAME: &str = "POST /sessions";
const LAUNCH_NAME: &str = "POST /api/workspaces/{id}/launch";
const RUNTIME_NAME: &str = "GET /v1/sessions/{id}";

#[test]
fn bench() {
    if std::env::var("SESSIOND_BENCH").as_deref() != Ok("1") {
        eprintln!("bench: skipped (set SESSIOND_BENCH=1; see the README's Benchmark section)");
        return;
    }
    let n = env_num("SESSIOND_BENCH_N", 100_000);
    let conns = env_num("SESSIOND_BENCH_CONNS", 64) as usize;
    let secs = env_num("SESSIOND_BENCH_SECS", 2) as f64;
    let rounds = env_num("SESSIOND_BENCH_ROUNDS", 9).max(1) as usize;
    let threads = server_threads();
    // `SESSIOND_BENCH_PROBES=get,admit` runs only those probes (and the floors they are compared
    // with): healthz, create, get, slug, admit, launch, runtime, sweep, cold. All by default.
    let probes = std::env::var("SESSIOND_BENCH_PROBES").ok();
    let want = |probe: &str| {
        probes
            .as_deref()
            .is_none_or(|list| list.split(',').any(|p| p.trim() == probe))
    };
    let mut results: Vec<Figures> = Vec::new();
    let mut record = |name: &str, mut f: Figures| {
        f.name = name.to_string();
        let cpu = f
            .cost
            .map(|c| {
                format!(
                    "  cpu {:.0} µs/req (writer {:.0}), {:.1} switches/req",
                    c.cpu_us, c.writer_cpu_us, c.switches
                )
            })
            .unwrap_or_default();
        eprintln!(
            "  {:<44} {:>9.0} req/s  p50 {:>6} µs  p99 {:>7} µs  max {:>5} ms  non-2xx {}{cpu}",
            f.name,
            f.rps,
            f.p50_us,
            f.p99_us,
            f.max_us / 1000,
            f.errors
        );
        results.push(f);
    };

    // The database: schema and admin from a first start, then n share sessions with known tokens.
    let dir = Arc::new(TempDir::new());
    let db = dir.path().join("sessiond.db");
    drop(Server::start_in(dir.clone(), Opts::default()));
    let api_key = cli_key(&db, &["--name", "bench"]);
    let load = Instant::now();
    load_shares(&db, n);
    eprintln!(
        "bench: {n} share sessions loaded in {:.1} s ({:.1} MiB file); {conns} connections, {secs} s per probe, {threads} server threads",
        load.elapsed().as_secs_f64(),
        std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0
    );

    // Floors, in this process, on the same machine and in the same run.
    eprintln!("floors:");
    // The constant floor stands for the machine's speed: the issue measured Wormkey's create rate
    // when it answered about 70k req/s here, and the create rounds measure it again.
    let constant_floor = || FloorServer::start(Floor::Constant, threads, &db).drive(conns, secs);
    record("tiny_http, constant JSON", constant_floor());
    let seed = rand_u64();
    let nn = n;
    // The floor for the read ratios; `alternate` measures it again next to each round of a probe.
    let pk_floor = || FloorServer::start(Floor::Lookup, threads, &db).drive(conns, secs);
    record("tiny_http + SQLite primary-key lookup", pk_floor());
    // SQLite alone committing one row per fsync. The machine's fsync rate drifts by a third within
    // minutes, so the create probe is compared with it in alternating rounds, like the reads with
    // the lookup floor.
    let fsync_db = {
        let conn = rusqlite::Connection::open(dir.path().join("fsync.db")).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);").unwrap();
        conn
    };
    let fsync_floor = || {
        let started = Instant::now();
        let mut count = 0u64;
        while started.elapsed().as_secs_f64() < secs.min(3.0) {
            fsync_db
                .execute("INSERT INTO t (v) VALUES ('x')", [])
                .unwrap();
            count += 1;
        }
        Figures {
            rps: count as f64 / started.elapsed().as_secs_f64(),
            ..Figures::default()
        }
    };
    let fsync = fsync_floor().rps;
    eprintln!(
        "  {:<44} {:>9.0} commits/s",
        "SQLite one-row commit, WAL, synchronous=FULL", fsync
    );

    // sessiond itself.
    let server = Server::start_in(
        dir.clone(),
        Opts::default()
            .arg("--anonymous-share-rate", "0")
            .arg("--threads", &threads.to_string())
            .arg("--reap-interval", "1s")
            .env(
                "RUST_LOG",
                &std::env::var("SESSIOND_BENCH_LOG").unwrap_or_else(|_| "info".into()),
            )
            .extra(
                std::env::var("SESSIOND_BENCH_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            ),
    );
    let addr = server.addr.clone();
    let pid = server.pid();
    let token = login_token(&server);
    let runtime_ids: Arc<Vec<String>> = Arc::new(
        (0..500)
            .map(|_| {
                server
                    .post_auth("/v1/sessions", &api_key, &json!({}))
                    .expect(201)["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect(),
    );
    eprintln!("sessiond (RSS after start: {} MiB):", rss_kib(pid) / 1024);
    // RSS with 10,000 live viewers.
    for v in 0..10_000u64 {
        let body = format!(r#"{{"viewerId":"rss{v}","ip":"10.0.0.2","path":"/"}}"#);
        let r = request(
            &addr,
            "POST",
            &format!("/internal/sessions/by-slug/bench-slug-{}/admit", v % n),
            &[("Authorization", &format!("Bearer {GATEWAY_KEY}"))],
            Some(body.as_bytes()),
        );
        assert_eq!(r.status, 200);
    }
    let rss = rss_kib(pid);
    eprintln!(
        "  RSS with {n} sessions and 10,000 live viewers: {}",
        rss_parts(pid)
    );
    // One probe against sessiond with the run's connections and duration.
    // Each probe against sessiond also reports what the server spent per request: CPU (all
    // threads, and the writer's) and context switches. It shows where a change acts; it drifts with
    // the machine too (134-205 µs per create for one binary on one afternoon).
    let load = |make: MakeRequest| {
        let before = Spent::of(pid);
        let mut f = drive(&addr, conns, secs, make);
        f.cost = Some(before.per_request(Spent::of(pid), (f.rps * secs).max(1.0)));
        f
    };
    if want("healthz") {
        record(
            "GET /healthz (no database)",
            load(Arc::new(|_, _| get("/healthz", None))),
        );
    }
    let writer = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .unwrap_or(0.0)
    };
    let s2 = seed;
    // A probe compared with the primary-key floor, in alternating rounds.
    let against_floor = |name: &str, make: MakeRequest| {
        let (figures, ratios, _) = alternate(name, rounds, &[("floor", &pk_floor)], &|| {
            load(make.clone())
        });
        (figures, ratios[0])
    };
    let mut get_ratio = None;
    if want("get") {
        let (figures, ratio) = against_floor(GET_NAME, owner_get(s2, nn));
        get_ratio = Some(ratio);
        record(GET_NAME, figures);
    }
    if want("slug") {
        // Alternated with the floor too, though its target compares it with a fixed figure: the
        // round with the median ratio is a typical one.
        let (figures, _) = against_floor(SLUG_NAME, public_get(s2, nn));
        record(SLUG_NAME, figures);
    }
    let mut admit_ratio = None;
    if want("admit") {
        let (figures, ratio) = against_floor(ADMIT_NAME, admission(s2, nn));
        admit_ratio = Some(ratio);
        record(ADMIT_NAME, figures);
    }
    // The other two probes have no target; a launch commits, so it is compared with the fsync
    // floor, and a runtime read with the lookup floor.
    let mut launch_ratio = None;
    if want("launch") {
        let t2 = token.clone();
        let launch =
            Arc::new(move |_, _| post("/api/workspaces/ws-remote-desktop/launch", Some(&t2), "{}"));
        let (figures, ratios, _) = alternate(
            LAUNCH_NAME,
            rounds,
            &[("fsync floor", &fsync_floor)],
            &|| load(launch.clone()),
        );
        launch_ratio = Some(ratios[0]);
        record(LAUNCH_NAME, figures);
    }
    let mut runtime_ratio = None;
    if want("runtime") {
        let (ids, key2) = (runtime_ids.clone(), api_key.clone());
        let (figures, ratio) = against_floor(
            RUNTIME_NAME,
            Arc::new(move |c, i| {
                get(
                    &format!(
                        "/v1/sessions/{}",
                        ids[pick(s2 ^ c as u64, i, ids.len() as u64) as usize]
                    ),
                    Some(&key2),
                )
            }),
        );
        runtime_ratio = Some(ratio);
        record(RUNTIME_NAME, figures);
    }

    // Creates come after the reads, so those run at the specified 100,000 sessions (each create
    // round adds about as many again); the sweep below expires the 100,000 preloaded ones only.
    let mut create_ratios = None;
    if want("create") {
        let before = server.get("/metrics").text();
        let (figures, ratios, median_rate) = alternate(
            CREATE_NAME,
            rounds,
            &[
                ("fsync floor", &fsync_floor),
                ("constant floor", &constant_floor),
            ],
            &|| load(Arc::new(|_, _| post("/sessions", None, "{}"))),
        );
        record(CREATE_NAME, figures);
        create_ratios = Some((ratios[0], ratios[1], median_rate));
        let after = server.get("/metrics").text();
        let commits = writer(&after, "sessiond_writer_commits_total")
            - writer(&before, "sessiond_writer_commits_total");
        let changes = writer(&after, "sessiond_writer_changes_total")
            - writer(&before, "sessiond_writer_changes_total");
        let busy = writer(&after, "sessiond_writer_commit_seconds_total")
            - writer(&before, "sessiond_writer_commit_seconds_total");
        eprintln!(
            "  {:<44} {:.1} changes per commit ({changes} in {commits} commits, largest {})",
            "group commit",
            changes / commits.max(1.0),
            writer(&after, "sessiond_writer_batch_size_max")
        );
        let count = |name: &str| writer(&after, name) - writer(&before, name);
        eprintln!(
            "  {:<44} {} background passes, {} handoffs, {} forced, {} idle",
            "WAL checkpoints",
            count("sessiond_writer_background_checkpoints_total"),
            count("sessiond_writer_handoff_checkpoints_total"),
            count("sessiond_writer_forced_checkpoints_total"),
            count("sessiond_writer_idle_checkpoints_total"),
        );
        // The writer's time from BEGIN to the end of COMMIT over all rounds: its cost per change,
        // whatever the clients did meanwhile.
        eprintln!(
            "  {:<44} {:.0} µs per change ({:.2} ms per commit, busy {:.0}% of the probes)",
            "writer time",
            busy * 1e6 / changes.max(1.0),
            busy * 1e3 / commits.max(1.0),
            busy * 100.0 / (secs * rounds as f64)
        );
    }
    eprintln!(
        "  RSS after all probes (many more live viewers): {}",
        rss_parts(pid)
    );

    // Reads during a sweep that expires every preloaded session at once.
    let read = |name: &str| {
        drive(
            &addr,
            conns,
            // The reaper takes about 5 s to expire 100,000 sessions: the reads span it.
            5.0,
            Arc::new(move |c, i| {
                get(
                    &format!(
                        "/sessions/by-slug/bench-slug-{}",
                        pick(s2 ^ c as u64 ^ 7, i, nn)
                    ),
                    None,
                )
            }),
        )
        .tap(|f| {
            eprintln!(
                "  {name:<44} {:>9.0} req/s  p50 {:>6} µs  p99 {:>7} µs",
                f.rps, f.p50_us, f.p99_us
            )
        })
    };
    let sweep = want("sweep").then(|| {
        let idle = read("reads, idle");
        server.exec_sql(
            "UPDATE sessions SET expires_at = 1000 WHERE uid LIKE 'sess_bench%' AND ended_at IS NULL",
        );
        let sweep_started = Instant::now();
        let during = read("reads during the expiry sweep");
        let expired = server.query("SELECT count(*) FROM sessions WHERE end_reason = 'expired'")[0]
            [0]
        .as_i64()
        .unwrap();
        eprintln!(
            "  sweep: {} sessions expired by the reaper {:.1} s after the mass expiry",
            expired,
            sweep_started.elapsed().as_secs_f64()
        );
        (idle.p99_us, during.p99_us)
    });

    // Cold start: the database grown to COLD_N sessions, a fresh process, time to /readyz 200.
    drop(server);
    let cold = want("cold").then(|| {
        let cold_n = env_num("SESSIOND_BENCH_COLD_N", 1_000_000);
        let grow = Instant::now();
        {
            let mut conn = rusqlite::Connection::open(&db).unwrap();
            let tx = conn.transaction().unwrap();
            {
                let mut s = tx.prepare("INSERT INTO sessions (uid, dialect, account_id, status, created_at, expires_at) VALUES (?1, 'share', 1, 'active', 1, ?2)").unwrap();
                let mut sh = tx.prepare("INSERT INTO shares (session_id, slug, owner_token_hash, auth_mode) VALUES (?1, ?2, zeroblob(32), 'none')").unwrap();
                for i in n..cold_n.max(n) {
                    s.execute(rusqlite::params![format!("sess_cold{i:028}"), i64::MAX / 2])
                        .unwrap();
                    sh.execute(rusqlite::params![
                        tx.last_insert_rowid(),
                        format!("cold-slug-{i}")
                    ])
                    .unwrap();
                }
            }
            tx.commit().unwrap();
            conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                .unwrap();
        }
        let total = query(&db, "SELECT count(*) FROM sessions")[0][0]
            .as_i64()
            .unwrap();
        eprintln!(
            "cold start ({total} sessions in the file, grown in {:.1} s; the page cache is warm):",
            grow.elapsed().as_secs_f64()
        );
        let cold = {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let listen = format!("127.0.0.1:{port}");
            let started = Instant::now();
            let mut child = std::process::Command::new(bin())
                .args(["serve", "--listen", &listen, "--db"])
                .arg(&db)
                .args(["--admin-password", "admin-password-for-tests"])
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let ready = loop {
                if let Ok(mut c) = TcpStream::connect(&listen) {
                    let _ = c.write_all(b"GET /readyz HTTP/1.1\r\nConnection: close\r\n\r\n");
                    let mut out = String::new();
                    let _ = c.read_to_string(&mut out);
                    if out.starts_with("HTTP/1.1 200") {
                        break started.elapsed();
                    }
                }
                assert!(started.elapsed() < Duration::from_secs(60), "never ready");
                std::thread::sleep(Duration::from_millis(2));
            };
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
            ready
        };
        eprintln!(
            "  {:<44} {:>9.0} ms",
            "process start to /readyz 200",
            cold.as_secs_f64() * 1000.0
        );
        (total, cold)
    });

    // Summary: ratios in this run (for the probes that ran).
    let by = |name: &str| results.iter().find(|f| f.name == name).map(|f| f.rps);
    let floor = by("tiny_http + SQLite primary-key lookup").unwrap_or(f64::NAN);
    eprintln!("ratios (this run):");
    if let (Some(rps), Some(ratio)) = (by("GET /sessions/:id (owner bearer)"), get_ratio) {
        eprintln!(
            "  GET /sessions/:id / floor, median of {rounds} rounds   {ratio:.2}  (target ≥ 0.8; {:.2} against the first floor)",
            rps / floor
        );
    }
    if let (Some(rps), Some(ratio)) = (by("POST /internal/.../admit"), admit_ratio) {
        eprintln!(
            "  admit / floor, median of {rounds} rounds               {ratio:.2}  (target ≥ 0.7; {:.2} against the first floor)",
            rps / floor
        );
    }
    if let (Some(rps), Some((ratio, to_constant, median_rate))) =
        (by("POST /sessions"), create_ratios)
    {
        eprintln!(
            "  POST /sessions / one-fsync-per-commit, median of {rounds} rounds {ratio:.2}  (target ≥ 3; {:.2} against the first floor)",
            rps / fsync
        );
        // The issue measured Wormkey's 16k creates/s in the run where the constant floor answered
        // about 70k req/s: in one run's terms, creates at 16/70 of that floor. The machine's speed
        // moves by a third from hour to hour, so the bare 16k/s is printed too, as it stands.
        eprintln!(
            "  POST /sessions vs Wormkey (16k/s at a 70k/s constant floor), median of {rounds} rounds {:.2}  (target ≥ 1)",
            to_constant / (16.0 / 70.0)
        );
        eprintln!(
            "  POST /sessions vs the bare Wormkey figure (16k/s), median rate of {rounds} rounds {:.2}  (the machine's speed unaccounted)",
            median_rate / 16_000.0
        );
    }
    if let Some(ratio) = launch_ratio {
        eprintln!(
            "  launch / one-fsync-per-commit, median of {rounds} rounds {ratio:.2}  (no target)"
        );
    }
    if let Some(ratio) = runtime_ratio {
        eprintln!(
            "  GET /v1/sessions/{{id}} / floor, median of {rounds} rounds {ratio:.2}  (no target)"
        );
    }
    if let Some(rps) = by("GET /sessions/by-slug/:slug") {
        eprintln!(
            "  by-slug vs the Wormkey figure at 80k (2k/s)      {:.2}  (issue's figure, not measured here; target ≥ 10)",
            rps / 2_000.0
        );
    }
    if let Some((idle, during)) = sweep {
        eprintln!(
            "  p99 of reads during the sweep / idle             {:.2}  (target ≤ 10)",
            during as f64 / idle.max(1) as f64
        );
    }
    eprintln!(
        "  RSS                                              {:.1} MiB (target ≤ 64)",
        rss as f64 / 1024.0
    );
    if let Some((total, cold)) = cold {
        eprintln!(
            "  cold start at {total} sessions to /readyz 200   {:.0} ms (target < 1000)",
            cold.as_secs_f64() * 1000.0
        );
    }
}

fn login_token(server: &Server) -> String {
    let r = server
        .post(
            "/api/auth/login",
            &json!({ "email": "admin@localhost", "password": "admin-password-for-tests" }),
        )
        .expect(200);
    r["access_token"].as_str().unwrap().to_string()
}

trait Tap: Sized {
    fn tap(self, f: impl FnOnce(&Self)) -> Self {
        f(&self);
        self
    }
}

impl Tap for Figures {}

/// Adds `n` live share sessions to the database at `db` in one transaction: `sess_bench<i>` with
/// slug `bench-slug-<i>` and owner token `benchtoken<i>` (both zero-padded as below), expiring in a
/// day, in account 1.
fn load_shares(db: &std::path::Path, n: u64) {
    let mut conn = rusqlite::Connection::open(db).unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut s = tx.prepare("INSERT INTO sessions (uid, dialect, account_id, status, created_at, expires_at) VALUES (?1, 'share', 1, 'active', ?2, ?3)").unwrap();
        let mut sh = tx.prepare("INSERT INTO shares (session_id, slug, owner_token_hash, auth_mode, policy_max_viewers) VALUES (?1, ?2, ?3, 'none', 1000)").unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        for i in 0..n {
            s.execute(rusqlite::params![
                format!("sess_bench{i:027}"),
                now,
                now + 86_400_000
            ])
            .unwrap();
            let id = tx.last_insert_rowid();
            let token = format!("benchtoken{i:022}");
            let hash: [u8; 32] = Blake2b256::digest(token.as_bytes()).into();
            sh.execute(rusqlite::params![id, format!("bench-slug-{i}"), &hash[..]])
                .unwrap();
        }
    }
    tx.commit().unwrap();
}

/// Instructions per request, counted by callgrind over the whole server process (every thread:
/// reading the request, the handler, SQLite, the writer, the response, the access log), for the
/// floors and for sessiond. Unlike the timed probes these counts do not drift with the machine, so
/// a change shows as a difference of a few hundred instructions where req/s would hide it in
/// noise. Each server runs under `valgrind --tool=callgrind` (the Debian package `valgrind`);
/// `SESSIOND_BENCH_REQUESTS` requests (default 4,000) on four keep-alive connections are counted
/// after 500 that warm it up. Runs only with `SESSIOND_BENCH_INSTRUCTIONS=1`:
///
/// ```sh
/// SESSIOND_BENCH_INSTRUCTIONS=1 cargo test --release --test it instructions -- --nocapture
/// ```
#[test]
fn instructions() {
    if std::env::var("SESSIOND_BENCH_INSTRUCTIONS").as_deref() != Ok("1") {
        return;
    }
    for tool in ["valgrind", "callgrind_control"] {
        let found = std::process::Command::new(tool)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "{tool} is missing: install valgrind (apt-get install valgrind)"
        );
    }
    let n = env_num("SESSIOND_BENCH_N", 100_000);
    let count = env_num("SESSIOND_BENCH_REQUESTS", 4_000);
    let dir = Arc::new(TempDir::new());
    let db = dir.path().join("sessiond.db");
    drop(Server::start_in(dir.clone(), Opts::default()));
    load_shares(&db, n);
    let dumps = dir.path().join("callgrind");
    std::fs::create_dir_all(&dumps).unwrap();
    let wrapper = |name: &str| -> Vec<String> {
        vec![
            "valgrind".into(),
            "--tool=callgrind".into(),
            format!("--callgrind-out-file={}/{name}.%p", dumps.display()),
        ]
    };
    // The counters are zeroed after the warm-up and dumped after the counted requests (the
    // process's dump number `dump`); the dump's `totals:` line is the instructions of every thread
    // in between.
    let count_requests = |pid: i32,
                          name: &str,
                          dump: usize,
                          addr: &str,
                          make: MakeRequest|
     -> f64 {
        let conns = 4usize;
        let send = |from: u64, requests: u64| {
            std::thread::scope(|scope| {
                for c in 0..conns {
                    let make = make.clone();
                    scope.spawn(move || {
                        let mut conn = Conn::open(addr);
                        for i in from..from + requests / conns as u64 {
                            assert_eq!(conn.ask(&make(c, i)), Some(true), "{name}: request {i}");
                        }
                    });
                }
            });
        };
        let control = |flag: &str| {
            let status = std::process::Command::new("callgrind_control")
                .args([flag, &pid.to_string()])
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "callgrind_control {flag} {pid}");
        };
        send(0, 500);
        control("-z");
        send(1_000_000, count);
        control("-d");
        let dump = dumps.join(format!("{name}.{pid}.{dump}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&dump).unwrap_or_default();
            if let Some(total) = text.lines().find_map(|l| l.strip_prefix("totals: ")) {
                return total.trim().parse::<f64>().unwrap() / count as f64;
            }
            assert!(
                Instant::now() < deadline,
                "no callgrind dump at {}",
                dump.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    eprintln!(
        "instructions per request (callgrind, whole server process; {count} requests on 4 connections after 500, {n} sessions):"
    );
    let mut floors = Vec::new();
    for (floor, name, label) in [
        (
            Floor::Constant,
            "floor-constant",
            "tiny_http, constant JSON",
        ),
        (
            Floor::Lookup,
            "floor-lookup",
            "tiny_http + SQLite primary-key lookup",
        ),
    ] {
        let server = FloorServer::start_under(&wrapper(name), floor, 4, &db);
        let per = count_requests(
            server.child.id() as i32,
            name,
            1,
            &server.addr,
            Arc::new(|_, _| get("/x", None)),
        );
        eprintln!("  {label:<44} {per:>9.0}");
        floors.push(per);
    }
    let lookup = floors[1];
    // Served as the timed benchmark serves it.
    let threads = server_threads();
    let server = Server::start_in(
        dir.clone(),
        Opts {
            wrapper: wrapper("sessiond"),
            ..Opts::default()
        }
        .arg("--anonymous-share-rate", "0")
        .arg("--threads", &threads.to_string())
        .arg("--reap-interval", "1s"),
    );
    // A fixed seed: the same sessions in the same order every run.
    let seed = 0x5e55_10d0;
    let probes: [(&str, MakeRequest); 5] = [
        (
            "GET /healthz (no database)",
            Arc::new(|_, _| get("/healthz", None)),
        ),
        (GET_NAME, owner_get(seed, n)),
        (SLUG_NAME, public_get(seed, n)),
        (ADMIT_NAME, admission(seed, n)),
        // Last: it adds sessions.
        (CREATE_NAME, Arc::new(|_, _| post("/sessions", None, "{}"))),
    ];
    // One process for every probe: each zeroes the counters and dumps them once more.
    for (dump, (label, make)) in (1..).zip(probes) {
        let per = count_requests(server.pid(), "sessiond", dump, &server.addr, make);
        eprintln!(
            "  {label:<44} {per:>9.0}  lookup floor / probe {:.2}",
            lookup / per
        );
    }
}

/// The handlers' own cost, without HTTP and on one thread: `server::respond` called in a loop over
/// a real `App` (its writer thread, a SQLite file of `SESSIOND_BENCH_N` shares) for
/// `GET /sessions/:id` and an admission, `SESSIOND_BENCH_ITERS` calls per round (default 100,000).
/// The HTTP probes above swing by a third between runs on a shared machine; these figures do not
/// swing as much, and under `valgrind --tool=callgrind` (with fewer calls) they become instruction
/// counts per function, which do not swing at all. Runs only with `SESSIOND_BENCH_HANDLERS=1`:
///
/// ```sh
/// SESSIOND_BENCH_HANDLERS=1 cargo test --release --test it handler_cost -- --nocapture
/// ```
#[test]
fn handler_cost() {
    use sessiond::db::{self, Reader, Writer};
    use sessiond::server::{self, App, Incoming};
    if std::env::var("SESSIOND_BENCH_HANDLERS").as_deref() != Ok("1") {
        return;
    }
    let n = env_num("SESSIOND_BENCH_N", 100_000);
    let iters = env_num("SESSIOND_BENCH_ITERS", 100_000);
    let rounds = env_num("SESSIOND_BENCH_ROUNDS", 3);
    let dir = TempDir::new();
    let path = dir.path().join("handlers.db");
    let env = |name: &str| match name {
        "SESSIOND_DB" => Some(path.to_string_lossy().into_owned()),
        "SESSIOND_INTERNAL_API_KEY" => Some(GATEWAY_KEY.into()),
        "SESSIOND_ADMIN_PASSWORD" => Some("admin-password-for-tests".into()),
        _ => None,
    };
    let (raw, _) = sessiond::config::parse(&[], &env).unwrap();
    let cfg = raw.into_config().unwrap();
    let mut conn = db::open(&cfg.db, db::Access::ReadWrite, true).unwrap();
    db::migrate::migrate(&mut conn).unwrap();
    let admin = db::accounts::Admin {
        email: &cfg.admin_email,
        password: cfg.admin_password.as_deref(),
    };
    let now = sessiond::domain::time::now_ms();
    db::accounts::bootstrap(&mut conn, Some(admin), now).unwrap();
    // The same shares as the HTTP benchmark's, checkpointed into the file.
    load_shares(&path, n);
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    let app = Arc::new(App::new(cfg, Writer::start(conn)));
    let reader = Reader::open(&app.cfg.db).unwrap();
    let request = |method: &str, url: String, token: String, body: String| Incoming {
        method: method.to_string(),
        url,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("authorization".into(), format!("Bearer {token}")),
        ],
        body: Ok(body.into_bytes()),
        peer: Some([127, 0, 0, 1].into()),
        client_ip: Some([127, 0, 0, 1].into()),
        request_id: "bench".into(),
    };
    let seed = rand_u64();
    // The requests are made before the clock starts: only `respond` is timed.
    let routes: [(&str, &dyn Fn(u64) -> Incoming); 2] = [
        (GET_NAME, &|k| {
            request(
                "GET",
                format!("/sessions/sess_bench{k:027}"),
                format!("benchtoken{k:022}"),
                String::new(),
            )
        }),
        (ADMIT_NAME, &|k| {
            request(
                "POST",
                format!("/internal/sessions/by-slug/bench-slug-{k}/admit"),
                GATEWAY_KEY.into(),
                format!(r#"{{"viewerId":"c{}","ip":"10.0.0.1","path":"/"}}"#, k % 64),
            )
        }),
    ];
    eprintln!("handlers: {n} shares, one thread, {iters} calls of server::respond per round");
    for (name, make) in routes {
        let mut figures = Vec::new();
        for round in 0..rounds {
            let batch: Vec<Incoming> = (0..iters).map(|i| make(pick(seed ^ round, i, n))).collect();
            let started = Instant::now();
            for incoming in batch {
                let (_, resp) = server::respond(&app, &reader, incoming);
                assert!(resp.status < 300, "{name}: {}", resp.status);
            }
            figures.push(started.elapsed().as_secs_f64() * 1e6 / iters as f64);
        }
        let shown: Vec<String> = figures.iter().map(|us| format!("{us:.2}")).collect();
        eprintln!("  {name:<44} µs per call: {}", shown.join(" "));
    }
}
