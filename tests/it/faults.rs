//! Storage faults (issue 7, SPEC §9): a full disk. Writes fail with a clear 503 in the dialect's
//! shape, reads keep working, nothing is half-written, and writes resume by themselves once space
//! returns. Needs permission to mount a tmpfs (root, as on CI); `SESSIOND_SKIP_TMPFS=1` skips it
//! where that is impossible, loudly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::support::*;
use crate::workspace::{ADMIN_EMAIL, ADMIN_PASSWORD, login};

/// A small tmpfs mounted over a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: Arc<TempDir>,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = Arc::new(TempDir::new());
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr);
            if std::env::var("SESSIOND_SKIP_TMPFS").is_ok_and(|v| v == "1") {
                eprintln!("SKIPPED: cannot mount a tmpfs ({why}); SESSIOND_SKIP_TMPFS=1");
                return None;
            }
            panic!("cannot mount a tmpfs ({why}); run as root or set SESSIOND_SKIP_TMPFS=1");
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the file system up, leaving about `leave` bytes free.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    let filler = dir.join("filler");
    let stat = nix_statvfs(dir);
    let size = stat.saturating_sub(leave);
    std::fs::write(&filler, vec![0u8; size as usize]).ok();
    filler
}

fn nix_statvfs(dir: &Path) -> u64 {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs writes into the struct we own.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(c.as_ptr(), &mut s), 0);
        s.f_bavail * s.f_frsize
    }
}

#[test]
fn a_full_disk_refuses_writes_clearly_keeps_reads_and_recovers_by_itself() {
    let Some(fs) = Tmpfs::mount("24m") else {
        return;
    };
    let opts = Opts::default().arg("--anonymous-share-rate", "0");
    let server = Server::start_in(fs.dir.clone(), opts);
    let token = login(&server, ADMIN_EMAIL, ADMIN_PASSWORD);
    let key = cli_key(&server.db, &["--name", "disk-full"]);
    let first = create_share(&server, &json!({}));
    let mut acked = 1;
    let filler = fill(fs.path(), 512 * 1024);

    // Write until the disk refuses; every refusal is a 503 in the share dialect's shape.
    let mut refused = None;
    for _ in 0..5000 {
        let r = server.post("/sessions", &json!({"port": 3000}));
        match r.status {
            201 => acked += 1,
            503 => {
                refused = Some(r);
                break;
            }
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    let refused = refused.expect("the disk never filled up");
    eprintln!("{acked} shares acknowledged before the disk filled up");
    assert_eq!(
        refused.json()["error"],
        "Storage is full",
        "{}",
        refused.text()
    );
    assert!(refused.header("Retry-After").is_some());

    // The other dialects refuse in their own shapes. (A write that still fits in pages SQLite
    // already holds may succeed: the disk is full, not every page.)
    let refusal = |path: &str, auth: &str| -> Resp {
        for _ in 0..2000 {
            let r = server.post_auth(path, auth, &json!({}));
            if r.status == 503 {
                return r;
            }
            assert!(r.status < 300, "{path}: {}", r.text());
        }
        panic!("{path} was never refused");
    };
    let launch = refusal("/api/workspaces/ws-sap-neogenesys/launch", &token);
    assert!(launch.json()["detail"].is_string(), "{}", launch.text());
    let runtime = refusal("/v1/sessions", &key);
    assert_eq!(runtime.json()["error"], "unavailable", "{}", runtime.text());

    // Reads keep working, also after the reaper has ticked against the full disk for a while.
    std::thread::sleep(Duration::from_millis(1500));
    server
        .get_auth(&format!("/sessions/{}", first.id), &first.owner_token)
        .expect(200);
    server.get("/healthz").expect(200);
    server.get_auth("/api/workspaces", &token).expect(200);

    // Space returns: writes resume without a restart.
    std::fs::remove_file(&filler).unwrap();
    let addr = server.addr.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            request(&addr, "POST", "/sessions", &[], Some(b"{}")).status == 201
        }),
        "writes did not resume:\n{}",
        server.log_text()
    );
    acked += 1;
    let log = server.log_text();
    assert!(!log.contains("panic"), "{log}");
    drop(server);

    // Nothing half-written: exactly the acknowledged shares are there, and the file is sound.
    let db = fs.path().join("sessiond.db");
    assert_eq!(query(&db, "PRAGMA integrity_check")[0][0], "ok");
    let shares = query(&db, "SELECT count(*) FROM sessions WHERE dialect = 'share'")[0][0]
        .as_i64()
        .unwrap();
    assert_eq!(shares, acked);
    let orphans = query(
        &db,
        "SELECT count(*) FROM sessions s LEFT JOIN shares h ON h.session_id = s.id \
         WHERE s.dialect = 'share' AND h.session_id IS NULL",
    )[0][0]
        .as_i64()
        .unwrap();
    assert_eq!(orphans, 0);
}
