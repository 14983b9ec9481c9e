//! Crash durability (issue 7, SPEC §9): writers hammer the server from many connections and it is
//! killed with SIGKILL at random moments; after every restart the database passes
//! `integrity_check` and every write that was answered with a 2xx is there. The same holds for a
//! kill during a backup and during a reaper sweep. `SESSIOND_SLOW_TESTS=1` runs 25 rounds; the
//! default (CI) runs a short version.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;
use crate::workspace::{ADMIN_EMAIL, ADMIN_PASSWORD, login};

pub fn slow_suite() -> bool {
    std::env::var("SESSIOND_SLOW_TESTS").is_ok_and(|v| v == "1")
}

/// A small xorshift generator: the tests only need spread, and the seed is printed.
pub struct Rng(u64);

impl Rng {
    pub fn seeded() -> Rng {
        let seed = std::env::var("SESSIOND_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("seed {seed} (SESSIOND_TEST_SEED={seed} repeats it)");
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Every write the server acknowledged with a 2xx.
#[derive(Default)]
struct Acked {
    shares: Vec<String>,
    closed_shares: Vec<String>,
    launched: Vec<String>,
    disconnected: Vec<String>,
}

/// One writer: creates and closes shares, launches and disconnects workspace sessions, until a
/// request fails (the server was killed) or `stop` is set. Only answered requests are recorded.
fn hammer(addr: String, token: String, acked: Arc<Mutex<Acked>>, stop: Arc<AtomicBool>, seed: u64) {
    let mut rng = Rng(seed | 1);
    let bearer = format!("Bearer {token}");
    let mut open: Vec<(String, String)> = Vec::new(); // (slug, owner token)
    // A POST's outcome: `Err(())` when there was no answer (the server is gone: stop),
    // `Ok(None)` for an answer that is not a 2xx (nothing to record), `Ok(Some(body))` for a 2xx.
    let post = |path: &str, auth: Option<&str>| -> Result<Option<Value>, ()> {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let r = try_request(&addr, "POST", path, &headers, Some(b"{}")).ok_or(())?;
        Ok((200..300).contains(&r.status).then(|| r.json()))
    };
    while !stop.load(Ordering::SeqCst) {
        let step = match rng.below(4) {
            0 | 1 => post("/sessions", None).map(|v| {
                let v = v?;
                let id = v["sessionId"].as_str().unwrap().to_string();
                let slug = v["slug"].as_str().unwrap().to_string();
                open.push((slug, v["ownerToken"].as_str().unwrap().to_string()));
                acked.lock().unwrap().shares.push(id);
                Some(())
            }),
            2 if !open.is_empty() => {
                let (slug, owner) = open.swap_remove(rng.below(open.len() as u64) as usize);
                let path = format!("/sessions/by-slug/{slug}/close");
                post(&path, Some(&format!("Bearer {owner}"))).map(|v| {
                    v?;
                    acked.lock().unwrap().closed_shares.push(slug);
                    Some(())
                })
            }
            _ => post("/api/workspaces/ws-sap-neogenesys/launch", Some(&bearer)).and_then(|v| {
                let Some(v) = v else { return Ok(None) };
                let sid = v["session_id"].as_str().unwrap().to_string();
                acked.lock().unwrap().launched.push(sid.clone());
                let done = post(&format!("/api/sessions/{sid}/disconnect"), Some(&bearer))?;
                if done.is_some() {
                    acked.lock().unwrap().disconnected.push(sid);
                }
                Ok(Some(()))
            }),
        };
        if step.is_err() {
            return;
        }
    }
}

fn column(db: &Server, sql: &str) -> HashSet<String> {
    db.query(sql)
        .into_iter()
        .map(|r| r[0].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Checks a restarted server against everything acknowledged so far.
fn check_acknowledged(server: &Server, acked: &Acked, round: usize) {
    assert_eq!(
        server.query("PRAGMA integrity_check")[0][0],
        "ok",
        "round {round}"
    );
    let present = column(server, "SELECT uid FROM sessions");
    let ended = column(
        server,
        "SELECT uid FROM sessions WHERE ended_at IS NOT NULL",
    );
    let closed_slugs = column(
        server,
        "SELECT slug FROM shares JOIN sessions ON sessions.id = shares.session_id \
         WHERE sessions.end_reason = 'closed'",
    );
    for (what, ids, set) in [
        ("share", &acked.shares, &present),
        ("launched session", &acked.launched, &present),
        ("disconnected session", &acked.disconnected, &ended),
        ("closed share", &acked.closed_shares, &closed_slugs),
    ] {
        let missing: Vec<&String> = ids.iter().filter(|id| !set.contains(*id)).collect();
        assert!(
            missing.is_empty(),
            "round {round}: {} of {} acknowledged {what} writes lost after SIGKILL, e.g. {:?}",
            missing.len(),
            ids.len(),
            missing.first()
        );
    }
}

fn opts() -> Opts {
    Opts::default().arg("--anonymous-share-rate", "0")
}

#[test]
fn sigkill_under_write_load_loses_no_acknowledged_write() {
    let rounds = if slow_suite() { 25 } else { 3 };
    let mut rng = Rng::seeded();
    let dir = Arc::new(TempDir::new());
    let mut server = Server::start_in(dir.clone(), opts());
    let token = login(&server, ADMIN_EMAIL, ADMIN_PASSWORD);
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let mut backups = 0;
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..8)
            .map(|_| {
                let (addr, token, acked, stop) = (
                    server.addr.clone(),
                    token.clone(),
                    acked.clone(),
                    stop.clone(),
                );
                let seed = rng.next();
                std::thread::spawn(move || hammer(addr, token, acked, stop, seed))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(150 + rng.below(600)));
        // Every third round a backup runs when the kill comes and is killed too; every third
        // round one runs and is left to finish on its own.
        let backup = (round % 3 != 0).then(|| {
            let acked_before = acked.lock().unwrap().shares.clone();
            let dest = dir.path().join(format!("backup-{round}.db"));
            let child = Command::new(bin())
                .arg("backup")
                .arg(&dest)
                .arg("--db")
                .arg(&server.db)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(rng.below(30)));
            (dest, child, acked_before)
        });
        let before = acked.lock().unwrap().shares.len();
        let status = server.kill9();
        assert!(!status.success());
        stop.store(true, Ordering::SeqCst);
        for w in writers {
            w.join().unwrap();
        }
        if let Some((dest, mut child, acked_before)) = backup {
            if round % 3 == 1 {
                let _ = child.kill();
            }
            let finished = wait_timeout(&mut child, Duration::from_secs(60))
                .expect("the backup did not finish");
            // A backup is either absent or whole, never a torn file at its name, and a finished
            // one holds every write acknowledged before it began.
            if dest.exists() {
                assert_eq!(query(&dest, "PRAGMA integrity_check")[0][0], "ok");
                let kept: HashSet<String> = query(&dest, "SELECT uid FROM sessions")
                    .into_iter()
                    .map(|r| r[0].as_str().unwrap().to_string())
                    .collect();
                assert!(acked_before.iter().all(|id| kept.contains(id)));
                backups += 1;
            } else {
                assert!(!finished.success(), "the backup succeeded but left no file");
            }
        }
        server = Server::start_in(dir.clone(), opts());
        let acked = acked.lock().unwrap();
        assert!(
            acked.shares.len() > before.saturating_sub(1),
            "round {round}: the writers did nothing"
        );
        check_acknowledged(&server, &acked, round);
    }
    let acked = acked.lock().unwrap();
    eprintln!(
        "{rounds} kills: {} shares, {} closes, {} launches, {} disconnects acknowledged and kept; \
         {backups} backups finished before a kill, all whole",
        acked.shares.len(),
        acked.closed_shares.len(),
        acked.launched.len(),
        acked.disconnected.len()
    );
    assert!(acked.shares.len() > 10 * rounds && !acked.launched.is_empty());
}

#[test]
fn sigkill_during_an_expiry_sweep_leaves_every_session_expired_exactly_once() {
    // The reaper expires at most BATCH x MAX_BATCHES_PER_TICK (4,000) sessions a tick: these
    // sweeps take several ticks.
    let n = if slow_suite() { 40_000 } else { 12_000 };
    let rounds = if slow_suite() { 5 } else { 2 };
    let mut rng = Rng::seeded();
    let dir = Arc::new(TempDir::new());
    let server = Server::start_in(dir.clone(), opts());
    let db = server.db.clone();
    drop(server);
    // Sessions are put in place directly, already due: the sweep starts with the next server.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let account: i64 = conn
            .query_row("SELECT id FROM accounts ORDER BY id LIMIT 1", [], |r| {
                r.get(0)
            })
            .unwrap();
        let tx = conn.unchecked_transaction().unwrap();
        for i in 0..n {
            tx.execute(
                "INSERT INTO sessions (uid, dialect, account_id, status, created_at, expires_at) \
                 VALUES (?1, 'share', ?2, 'active', 1, 2)",
                rusqlite::params![format!("sweep-{i}"), account],
            )
            .unwrap();
            let id = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO shares (session_id, slug, owner_token_hash, port, auth_mode) \
                 VALUES (?1, ?2, zeroblob(32), 3000, 'none')",
                rusqlite::params![id, format!("sweep-slug-{i}")],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    let live = |server: &Server| -> i64 {
        server.query("SELECT count(*) FROM sessions WHERE uid LIKE 'sweep-%' AND ended_at IS NULL")
            [0][0]
            .as_i64()
            .unwrap()
    };
    let ended_count = |server: &Server| -> i64 {
        server.query(
            "SELECT count(*) FROM sessions WHERE uid LIKE 'sweep-%' AND ended_at IS NOT NULL",
        )[0][0]
            .as_i64()
            .unwrap()
    };
    for round in 0..rounds {
        let server = Server::start_in(dir.clone(), opts());
        // Kill once the sweep is under way, at a random point of it.
        let before = ended_count(&server);
        if before == n as i64 {
            break;
        }
        assert!(eventually(Duration::from_secs(10), || ended_count(&server) > before));
        std::thread::sleep(Duration::from_millis(rng.below(1500)));
        server.kill9();
        let server = Server::start_in(dir.clone(), opts());
        assert_eq!(server.query("PRAGMA integrity_check")[0][0], "ok");
        let ended = server.query(
            "SELECT count(*) FROM sessions WHERE uid LIKE 'sweep-%' AND ended_at IS NOT NULL",
        )[0][0]
            .as_i64()
            .unwrap();
        let audited = server.query(
            "SELECT count(*), count(DISTINCT resource_id) FROM audit \
             WHERE action = 'session.expired' AND resource_id LIKE 'sweep-%'",
        );
        // Ending a session and auditing it commit together: never one without the other, never
        // twice, however the sweep was cut.
        assert!(
            audited[0][0].as_i64().unwrap() == audited[0][1].as_i64().unwrap(),
            "round {round}: a session was audited as expired twice: {audited:?}"
        );
        let audited = audited[0][0].as_i64().unwrap();
        assert_eq!(audited, ended, "round {round}: ended and audited differ");
        eprintln!("round {round}: {ended} of {n} expired when killed (or since)");
        drop(server);
    }
    let server = Server::start_in(dir, opts());
    assert!(
        eventually(Duration::from_secs(120), || live(&server) == 0),
        "the sweep did not finish after the kills"
    );
    let audited = server.query(
        "SELECT count(*) FROM audit WHERE action = 'session.expired' AND resource_id LIKE 'sweep-%'",
    )[0][0]
        .as_i64()
        .unwrap();
    assert_eq!(audited, n as i64);
}
