//! Operations: online backups under write load, restore, the single-server lock, scheduled backups,
//! `/metrics`, `healthcheck`, and the packaging (static binary, systemd unit, Debian package).

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(bin()).args(args).output().unwrap()
}

#[test]
fn a_backup_under_write_load_holds_every_acknowledged_write() {
    let server = Server::start_with(Opts::default().arg("--anonymous-share-rate", "0"));
    let acked: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..6)
        .map(|_| {
            let (acked, stop, addr) = (acked.clone(), stop.clone(), server.addr.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let r = request(&addr, "POST", "/sessions", &[], Some(b"{}"));
                    assert_eq!(r.status, 201, "{}", r.text());
                    let id = r.json()["sessionId"].as_str().unwrap().to_string();
                    acked.lock().unwrap().push((id, Instant::now()));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let dest = server.dir.path().join("backup.db");
    let began = Instant::now();
    let out = run(&[
        "backup",
        dest.to_str().unwrap(),
        "--db",
        server.db.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("integrity ok"));
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    let before: Vec<String> = acked
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, t)| *t < began)
        .map(|(id, _)| id.clone())
        .collect();
    let total = acked.lock().unwrap().len();
    assert!(
        before.len() > 20 && total > before.len(),
        "the writers were not busy: {} before, {total} in all",
        before.len()
    );
    assert_eq!(query(&dest, "PRAGMA integrity_check")[0][0], "ok");
    let in_backup: std::collections::HashSet<String> = query(&dest, "SELECT uid FROM sessions")
        .into_iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect();
    let missing: Vec<&String> = before
        .iter()
        .filter(|id| !in_backup.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged writes missing from the backup, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    // No temporary file is left beside the backup.
    let leftovers: Vec<_> = std::fs::read_dir(server.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn restore_is_refused_while_serving_and_then_brings_the_backup_back() {
    let dir = Arc::new(TempDir::new());
    let server = Server::start_in(dir.clone(), Opts::default());
    let kept = create_share(&server, &json!({}));
    let backup = dir.path().join("snapshot.db");
    let db = server.db.clone();
    assert!(
        run(&[
            "backup",
            backup.to_str().unwrap(),
            "--db",
            db.to_str().unwrap()
        ])
        .status
        .success()
    );
    let lost = create_share(&server, &json!({}));
    // A second server, or a restore, on a database in use is refused.
    let second = Command::new(bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--db",
            db.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&second.stderr).contains("in use by a running sessiond"));
    let refused = run(&[
        "restore",
        backup.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("stop it first"));
    drop(server);
    // A stale WAL beside the database must not survive the restore.
    std::fs::write(db.with_extension("db-wal"), b"stale").unwrap();
    let restored = run(&[
        "restore",
        backup.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ]);
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert!(!db.with_extension("db-wal").exists());
    let server = Server::start_in(dir.clone(), Opts::default());
    server
        .get_auth(&format!("/sessions/{}", kept.id), &kept.owner_token)
        .expect(200);
    server
        .get_auth(&format!("/sessions/{}", lost.id), &lost.owner_token)
        .expect(404);
    drop(server);
    // A file that is not a sound database is refused.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, b"not a database at all").unwrap();
    assert_eq!(
        run(&[
            "restore",
            junk.to_str().unwrap(),
            "--db",
            db.to_str().unwrap()
        ])
        .status
        .code(),
        Some(1)
    );
    assert_eq!(
        run(&["restore", "--db", db.to_str().unwrap()])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn scheduled_backups_rotate_and_are_counted() {
    let dir = Arc::new(TempDir::new());
    let backups = dir.path().join("backups");
    let server = Server::start_in(
        dir.clone(),
        Opts::default()
            .arg("--backup-dir", backups.to_str().unwrap())
            .arg("--backup-every", "300ms")
            .arg("--backup-keep", "2"),
    );
    create_share(&server, &json!({}));
    assert!(eventually(Duration::from_secs(10), || {
        let text = server.get("/metrics").text();
        text.lines().any(|l| {
            l.starts_with("sessiond_backups_total{outcome=\"ok\"}")
                && l.split(' ').nth(1).unwrap().parse::<u64>().unwrap() >= 3
        })
    }));
    let files: Vec<_> = std::fs::read_dir(&backups)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    assert!(!files.is_empty() && files.len() <= 2, "{files:?}");
    for f in &files {
        assert_eq!(query(f, "PRAGMA integrity_check")[0][0], "ok");
        assert_eq!(query(f, "SELECT count(*) FROM shares")[0][0], 1);
    }
}

#[test]
fn metrics_parse_and_move_with_requests() {
    let server = Server::start();
    let text = server.get("/metrics");
    assert_eq!(
        text.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = text.text();
    let healthz = "sessiond_http_requests_total{route=\"/healthz\",status=\"200\"}";
    let before = metric(&text, healthz).unwrap_or(0.0);
    for _ in 0..3 {
        server.get("/healthz").expect(200);
    }
    let s = create_share(&server, &json!({}));
    admit(
        &server,
        &s.slug,
        &json!({ "viewerId": "m1", "ip": "10.0.0.1", "path": "/" }),
    );
    server.get("/nowhere").expect(404);
    let text = server.get("/metrics").text();
    assert_eq!(metric(&text, healthz), Some(before + 3.0));
    assert_eq!(
        metric(
            &text,
            "sessiond_http_requests_total{route=\"/sessions\",status=\"201\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "sessiond_http_requests_total{route=\"-\",status=\"404\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "sessiond_sessions{dialect=\"share\",status=\"active\"}"
        ),
        Some(1.0)
    );
    assert_eq!(metric(&text, "sessiond_live_viewers"), Some(1.0));
    assert!(metric(&text, "sessiond_writer_commits_total").unwrap() >= 1.0);
    assert!(metric(&text, "sessiond_http_request_duration_seconds_count").unwrap() >= 6.0);
    assert!(metric(&text, "sessiond_writer_batch_size_max").unwrap() >= 1.0);
}

#[test]
fn healthcheck_exits_zero_only_against_a_ready_server() {
    let server = Server::start();
    let ok = run(&["healthcheck", "--listen", &server.addr]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let port = server.addr.rsplit_once(':').unwrap().1.to_string();
    drop(server);
    let down = run(&["healthcheck", "--listen", &format!("127.0.0.1:{port}")]);
    assert_eq!(down.status.code(), Some(1));
    assert_eq!(run(&["healthcheck", "extra"]).status.code(), Some(2));
}

/// The release build of `packaging/build-static.sh`: static, small, and it serves.
#[test]
fn the_static_binary_the_systemd_unit_and_the_debian_package() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .arg(format!("{root}/packaging/build-static.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build-static.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let binary = format!(
        "{root}/{}",
        String::from_utf8_lossy(&out.stdout).lines().last().unwrap()
    );
    let file = Command::new("file")
        .arg(&binary)
        .output()
        .expect("the file command");
    let described = String::from_utf8_lossy(&file.stdout);
    assert!(
        described.contains("statically linked") || described.contains("static-pie linked"),
        "{described}"
    );
    let size = std::fs::metadata(&binary).unwrap().len();
    assert!(size < 15 * 1024 * 1024, "{size} bytes");
    // It serves: start it like the suite starts the debug build.
    let dir = TempDir::new();
    let mut child = Command::new(&binary)
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(dir.path().join("s.db"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let addr = std::io::BufRead::lines(std::io::BufReader::new(stderr))
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("sessiond: listening on http://")
                .map(str::to_string)
        })
        .expect("the static binary started");
    assert_eq!(request(&addr, "GET", "/readyz", &[], None).status, 200);
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(wait_timeout(&mut child, Duration::from_secs(20)).is_some_and(|s| s.success()));

    // systemd accepts the unit (pointed at this binary), where systemd is installed.
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let unit = std::fs::read_to_string(format!("{root}/packaging/sessiond.service"))
            .unwrap()
            .replace("/usr/bin/sessiond", &binary);
        let path = dir.path().join("sessiond.service");
        std::fs::write(&path, unit).unwrap();
        let verify = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .unwrap();
        let complaints = String::from_utf8_lossy(&verify.stderr);
        assert!(
            verify.status.success() && !complaints.contains("sessiond.service:"),
            "systemd-analyze verify:\n{complaints}"
        );
    } else {
        eprintln!("SKIPPED systemd-analyze verify: systemd is not installed here");
    }

    // The Debian package holds the binary, the unit and the environment file.
    let deb_dir = dir.path().join("deb");
    let deb = Command::new("bash")
        .arg(format!("{root}/packaging/build-deb.sh"))
        .arg(&binary)
        .arg(&deb_dir)
        .output()
        .unwrap();
    assert!(
        deb.status.success(),
        "build-deb.sh failed: {}",
        String::from_utf8_lossy(&deb.stderr)
    );
    let deb_path = String::from_utf8_lossy(&deb.stdout)
        .lines()
        .last()
        .unwrap()
        .to_string();
    let contents = Command::new("dpkg-deb")
        .args(["--contents", &deb_path])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&contents.stdout);
    for f in [
        "./usr/bin/sessiond",
        "./lib/systemd/system/sessiond.service",
        "./etc/sessiond/sessiond.env",
    ] {
        assert!(
            listing.contains(f),
            "{f} missing from the package:\n{listing}"
        );
    }
    let info = Command::new("dpkg-deb")
        .args(["--info", &deb_path])
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.contains("Package: sessiond")
            && info.contains("postinst")
            && info.contains("conffiles"),
        "{info}"
    );
}

#[test]
fn the_environment_file_and_the_readme_document_every_setting() {
    let root = env!("CARGO_MANIFEST_DIR");
    let env_file = std::fs::read_to_string(format!("{root}/packaging/sessiond.env")).unwrap();
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let dump = run(&["config", "--dump"]);
    assert!(dump.status.success());
    let names: Vec<String> = String::from_utf8_lossy(&dump.stdout)
        .lines()
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    assert!(names.len() >= 20, "{names:?}");
    for name in names {
        let var = format!("SESSIOND_{}", name.to_uppercase());
        assert!(
            env_file.contains(&var),
            "{var} is not in packaging/sessiond.env"
        );
        assert!(
            readme.contains(&format!("`{name}`")),
            "{name} is not in the README's settings table"
        );
    }
}

/// A request about to wait for a commit gives its turn to run away, so one group commit takes more
/// changes than there are turns (two here), and the changes are all kept.
#[test]
fn a_group_commit_is_not_capped_by_the_turns() {
    let server = Server::start_with(
        Opts::default()
            .arg("--threads", "2")
            .arg("--anonymous-share-rate", "0"),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (addr, stop) = (server.addr.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut created = 0;
                while !stop.load(Ordering::Relaxed) {
                    let r = request(&addr, "POST", "/sessions", &[], Some(b"{}"));
                    assert_eq!(r.status, 201, "{}", r.text());
                    created += 1;
                }
                created
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let created: i64 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    let text = server.get("/metrics").text();
    let largest = metric(&text, "sessiond_writer_batch_size_max").unwrap();
    assert!(
        largest > 3.0,
        "the largest group commit took {largest} changes with 2 turns"
    );
    let stored = server.query("SELECT count(*) FROM shares")[0][0]
        .as_i64()
        .unwrap();
    assert_eq!(stored, created, "every acknowledged create is stored");
    eprintln!("{created} creates from 16 clients, largest group commit {largest}");
}

/// The scheduling policies (`SCHED_OTHER` 0, `SCHED_BATCH` 3) of the server's connection threads
/// (field 41 of each thread's `stat`).
fn connection_thread_policies(pid: i32) -> Vec<u32> {
    threads_of(pid)
        .into_iter()
        .filter(|(name, _)| name == "tiny-http-conn")
        .filter_map(|(_, dir)| {
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            stat_field(&stat, 41)?.parse().ok()
        })
        .collect()
}

#[test]
fn a_connection_thread_yields_to_the_writer_after_a_change_and_not_after_a_read() {
    let server = Server::start_with(Opts::default().arg("--anonymous-share-rate", "0"));
    let batch = |policies: &[u32]| policies.iter().filter(|&&p| p == 3).count();
    let stream = std::net::TcpStream::connect(&server.addr).unwrap();
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    let mut send = |bytes: &[u8]| {
        use std::io::Write;
        (&stream).write_all(bytes).unwrap();
        read_response(&mut reader)
    };
    let read = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";
    let create = b"POST /sessions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";

    assert_eq!(send(read).status, 200);
    let policies = connection_thread_policies(server.pid());
    assert!(!policies.is_empty(), "no connection thread found");
    assert_eq!(batch(&policies), 0, "policies after a read: {policies:?}");
    // This connection's thread left its create to be answered after the commit: it waits for the
    // next request under SCHED_BATCH, and so does not preempt the writer when it wakes.
    assert_eq!(send(create).status, 201);
    let policies = connection_thread_policies(server.pid());
    assert_eq!(batch(&policies), 1, "policies after a create: {policies:?}");
    assert_eq!(send(create).status, 201);
    assert_eq!(batch(&connection_thread_policies(server.pid())), 1);
    // A read on the same connection puts its thread back to the default policy.
    assert_eq!(send(read).status, 200);
    let policies = connection_thread_policies(server.pid());
    assert_eq!(batch(&policies), 0, "policies after a read: {policies:?}");
}

/// Frames in the WAL (`mxFrame` of the WAL index header) and frames already copied into the
/// database file (`nBackfill`), read from the `-shm` file as SQLite lays it out: two copies of the
/// 48-byte header, then the checkpoint information, all in native byte order.
fn wal_frames(db: &std::path::Path) -> (u32, u32) {
    let shm = std::fs::read(format!("{}-shm", db.display())).unwrap();
    let word = |at: usize| u32::from_ne_bytes(shm[at..at + 4].try_into().unwrap());
    (word(16), word(96))
}

#[test]
fn an_idle_writer_copies_the_wal_into_the_database_file() {
    // The reaper sweeps ten times a second, and a sweep with nothing due sends the writer no job:
    // one would keep it from ever idling.
    let server = Server::start_with(Opts::default().arg("--reap-interval", "100ms"));
    let share = create_share(&server, &json!({}));
    // Without the idle checkpoint the WAL would keep these frames until 16,000 pages piled up.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (frames, copied) = loop {
        let (frames, copied) = wal_frames(&server.db);
        if (frames > 0 && copied == frames) || Instant::now() > deadline {
            break (frames, copied);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(frames > 0, "the create left no frame in the WAL");
    assert_eq!(copied, frames, "the idle writer did not copy the WAL");
    let text = server.get("/metrics").text();
    assert!(metric(&text, "sessiond_writer_idle_checkpoints_complete_total").unwrap() >= 1.0);
    // The gauge of the WAL's length is SQLite's own count (the WAL index header's).
    assert_eq!(
        metric(&text, "sessiond_wal_frames"),
        Some(f64::from(frames))
    );
    let commits = metric(&text, "sessiond_writer_commits_total").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let text = server.get("/metrics").text();
    assert_eq!(
        metric(&text, "sessiond_writer_commits_total").unwrap(),
        commits,
        "an idle server's writer committed"
    );
    assert_eq!(wal_frames(&server.db), (frames, copied));
    // Reads after the checkpoint come from the database file, and writes go on.
    server
        .get_auth(&format!("/sessions/{}", share.id), &share.owner_token)
        .expect(200);
    let again = create_share(&server, &json!({}));
    server
        .get_auth(&format!("/sessions/{}", again.id), &again.owner_token)
        .expect(200);
    assert_eq!(query(&server.db, "PRAGMA integrity_check")[0][0], "ok");
}
