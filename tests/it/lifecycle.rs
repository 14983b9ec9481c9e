//! The process and the file: restarts keep everything, SIGTERM leaves an empty WAL, the reaper
//! expires sessions, secrets never reach the database file, a dead accept loop ends the process, and
//! the command line's exit codes.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::support::*;

fn wal_is_empty(db: &std::path::Path) -> bool {
    let wal = db.with_extension("db-wal");
    std::fs::metadata(&wal)
        .map(|m| m.len() == 0)
        .unwrap_or(true)
}

#[test]
fn sigterm_exits_zero_with_an_empty_wal_and_a_restart_keeps_every_session() {
    let dir = Arc::new(TempDir::new());
    let server = Server::start_in(dir.clone(), Opts::default());
    let mut shares = Vec::new();
    for i in 0..25 {
        let s = create_share(
            &server,
            &json!({ "authMode": if i % 5 == 0 { "basic" } else { "none" } }),
        );
        assert!(
            admit(
                &server,
                &s.slug,
                &json!({ "viewerId": format!("v{i}"), "ip": "10.0.0.1", "path": "/" })
            )
            .0 || i % 5 == 0
        );
        shares.push(s);
    }
    server
        .post_auth(
            &format!("/owner/sessions/by-slug/{}/close", shares[1].slug),
            &shares[1].owner_token,
            &json!({}),
        )
        .expect(200);
    server
        .post_auth(
            &format!("/owner/sessions/by-slug/{}/policy", shares[2].slug),
            &shares[2].owner_token,
            &json!({ "maxConcurrentViewers": 2, "blockPaths": ["/x"] }),
        )
        .expect(200);
    server
        .post_auth(
            &format!("/owner/sessions/by-slug/{}/kick", shares[3].slug),
            &shares[3].owner_token,
            &json!({ "viewerId": "bad" }),
        )
        .expect(200);
    let status = server.stop();
    assert!(status.success(), "{status:?}");
    let db = dir.path().join("sessiond.db");
    assert!(
        wal_is_empty(&db),
        "the WAL was not checkpointed and truncated on shutdown"
    );

    let server = Server::start_in(dir.clone(), Opts::default());
    for (i, s) in shares.iter().enumerate() {
        let full = server
            .get_auth(&format!("/sessions/{}", s.id), &s.owner_token)
            .expect(200);
        assert_eq!(full["slug"], s.slug.as_str());
        if i % 5 != 0 {
            // Viewer activity absorbed in memory was flushed at shutdown.
            let viewers = full["activeViewers"].as_array().unwrap();
            assert_eq!(viewers.len(), 1, "session {i}: {full}");
            assert_eq!(viewers[0]["requests"], 1);
        }
    }
    assert_eq!(
        server
            .get(&format!("/sessions/by-slug/{}", shares[1].slug))
            .expect(200)["closed"],
        true
    );
    let p = server
        .get_auth(
            &format!("/sessions/{}", shares[2].id),
            &shares[2].owner_token,
        )
        .expect(200);
    assert_eq!(p["policy"]["maxConcurrentViewers"], 2);
    assert_eq!(p["policy"]["blockPaths"], json!(["/x"]));
    let k = server
        .get_auth(
            &format!("/sessions/{}", shares[3].id),
            &shares[3].owner_token,
        )
        .expect(200);
    assert_eq!(k["kickedViewerIds"], json!(["bad"]));
    assert_eq!(
        admit(
            &server,
            &shares[3].slug,
            &json!({ "viewerId": "bad", "ip": "1.1.1.1", "path": "/" })
        )
        .2,
        "kicked"
    );
    drop(server);
    assert!(wal_is_empty(&db));
    // The stopped service's .db file alone is a complete, sound database.
    let copy = dir.path().join("copy.db");
    std::fs::copy(&db, &copy).unwrap();
    assert_eq!(query(&copy, "PRAGMA integrity_check")[0][0], "ok");
    assert_eq!(query(&copy, "SELECT count(*) FROM shares")[0][0], 25);
}

#[test]
fn sigterm_under_load_answers_each_request_201_or_503_and_keeps_every_acknowledged_create() {
    // Requests are answered on their connections' own threads. From SIGTERM on, a request that
    // arrives on a kept-alive connection is answered 503 with `Retry-After` and the connection
    // closes; one already running finishes, and its 201 is on disk.
    let dir = Arc::new(TempDir::new());
    let server = Server::start_in(
        dir.clone(),
        Opts::default()
            .arg("--threads", "2")
            .arg("--anonymous-share-rate", "0"),
    );
    let addr = server.addr.clone();
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut created = Vec::new();
                let mut refused = 0;
                let request = b"POST /sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
                'connections: while let Ok(stream) = std::net::TcpStream::connect(&addr) {
                    stream
                        .set_read_timeout(Some(Duration::from_secs(20)))
                        .unwrap();
                    let mut writer = stream.try_clone().unwrap();
                    let mut reader = std::io::BufReader::new(stream);
                    loop {
                        use std::io::Write;
                        if writer.write_all(request).is_err() {
                            continue 'connections;
                        }
                        let Some(r) = try_read_response(&mut reader) else {
                            continue 'connections;
                        };
                        match r.status {
                            201 => created.push(r.json()["sessionId"].as_str().unwrap().to_string()),
                            503 => {
                                assert_eq!(r.header("retry-after"), Some("1"), "{}", r.text());
                                assert!(r.json()["error"].is_string(), "{}", r.text());
                                assert_eq!(r.header("connection"), Some("close"));
                                refused += 1;
                                if refused > 1000 {
                                    break 'connections;
                                }
                                continue 'connections;
                            }
                            other => panic!("{other} during shutdown: {}", r.text()),
                        }
                    }
                }
                (created, refused)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let status = server.stop();
    assert!(status.success(), "{status:?}");
    let mut created = Vec::new();
    let mut refused = 0;
    for client in clients {
        let (c, r) = client.join().unwrap();
        created.extend(c);
        refused += r;
    }
    assert!(
        created.len() > 20,
        "the load did not run: {}",
        created.len()
    );
    assert!(
        refused > 0,
        "no request arrived during the shutdown; the 503 path went untested"
    );
    let db = dir.path().join("sessiond.db");
    let stored: std::collections::HashSet<String> = query(&db, "SELECT uid FROM sessions")
        .into_iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect();
    let lost: Vec<_> = created.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");
    assert!(wal_is_empty(&db));
}

#[test]
fn the_reaper_expires_sessions_and_scoped_tokens() {
    let server = Server::start_with(Opts::default().arg("--reap-interval", "100ms"));
    let s = create_share(&server, &json!({ "expiresIn": "5m" }));
    let keep = create_share(&server, &json!({}));
    server
        .post_auth(
            &format!("/owner/sessions/{}/tokens", keep.id),
            &keep.owner_token,
            &json!({ "name": "old" }),
        )
        .expect(201);
    server
        .post_auth(
            &format!("/owner/sessions/{}/tokens", keep.id),
            &keep.owner_token,
            &json!({ "name": "new" }),
        )
        .expect(201);
    // Time passes for one session and one token.
    server.exec_sql(&format!(
        "UPDATE sessions SET expires_at = expires_at - 600000 WHERE uid = '{}'",
        s.id
    ));
    server.exec_sql("UPDATE share_tokens SET expires_at = 0 WHERE name = 'old'");
    assert!(eventually(Duration::from_secs(5), || {
        server
            .get(&format!("/sessions/by-slug/{}", s.slug))
            .expect(200)["closed"]
            == true
    }));
    let row = server.query(&format!(
        "SELECT status, end_reason, ended_at IS NOT NULL FROM sessions WHERE uid = '{}'",
        s.id
    ));
    assert_eq!(row[0], vec![json!("closed"), json!("expired"), json!(1)]);
    let audit = server.query(&format!(
        "SELECT actor_type FROM audit WHERE action = 'session.expired' AND resource_id = '{}'",
        s.id
    ));
    assert_eq!(audit, vec![vec![json!("system")]]);
    assert!(eventually(Duration::from_secs(5), || server
        .query("SELECT count(*) FROM share_tokens WHERE name = 'old'")
        [0][0]
        == 0));
    assert_eq!(
        server.query("SELECT count(*) FROM share_tokens WHERE name = 'new'")[0][0],
        1
    );
    assert_eq!(
        server
            .get(&format!("/sessions/by-slug/{}", keep.slug))
            .expect(200)["closed"],
        false
    );
}

#[test]
fn the_reaper_prunes_audit_rows_past_their_retention() {
    let server = Server::start_with(
        Opts::default()
            .arg("--reap-interval", "100ms")
            .arg("--audit-retention", "1d"),
    );
    let old = create_share(&server, &json!({}));
    let new = create_share(&server, &json!({}));
    let created = |uid: &str| {
        server.query(&format!(
            "SELECT count(*) FROM audit WHERE action = 'session.created' AND resource_id = '{uid}'"
        ))[0][0]
            .clone()
    };
    assert_eq!((created(&old.id), created(&new.id)), (json!(1), json!(1)));
    // Time passes for one row: two days.
    server.exec_sql(&format!(
        "UPDATE audit SET created_at = created_at - 172800000 WHERE resource_id = '{}'",
        old.id
    ));
    assert!(eventually(Duration::from_secs(5), || created(&old.id) == 0));
    assert_eq!(created(&new.id), 1);
}

#[test]
fn the_reaper_works_off_a_large_expiry_backlog_in_bounded_batches() {
    let server = Server::start_with(
        Opts::default()
            .arg("--reap-interval", "100ms")
            .arg("--anonymous-share-rate", "0"),
    );
    let first = create_share(&server, &json!({}));
    // 3,000 sessions expiring at once (cloned in SQL: creating them over HTTP would only slow the test).
    server.exec_sql(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
         INSERT INTO sessions (uid, dialect, account_id, status, created_at, expires_at)
           SELECT 'sess_bulk' || i, 'share', account_id, 'active', created_at, 1000 FROM n, sessions WHERE uid = '{0}';
         INSERT INTO shares (session_id, slug, owner_token_hash, auth_mode)
           SELECT id, 'bulk-' || id, randomblob(32), 'none' FROM sessions WHERE uid LIKE 'sess_bulk%';",
        first.id
    ));
    assert!(eventually(Duration::from_secs(20), || {
        server.query(
            "SELECT count(*) FROM sessions WHERE uid LIKE 'sess_bulk%' AND status = 'closed'",
        )[0][0]
            == 3000
    }));
    assert_eq!(
        server.query("SELECT count(*) FROM audit WHERE action = 'session.expired'")[0][0],
        3000
    );
    assert_eq!(
        server
            .get(&format!("/sessions/by-slug/{}", first.slug))
            .expect(200)["closed"],
        false
    );
}

#[test]
fn no_issued_secret_reaches_the_database_its_backup_or_a_debug_log() {
    // A full scenario across the three dialects, logged at debug level; then every token, key
    // and password issued or presented (rightly or wrongly) is looked for, byte for byte, in
    // the database, its WAL, a backup, and the log.
    let dir = Arc::new(TempDir::new());
    let db = dir.path().join("sessiond.db");
    let api_key = cli_key(&db, &[]);
    let gateway_key = cli_key(&db, &["--service", "gateway"]);
    let daemon_key = cli_key(&db, &["--service", "daemon"]);
    let server = Server::start_in(dir.clone(), Opts::default().env("RUST_LOG", "debug"));
    let mut secrets = vec![
        GATEWAY_KEY.to_string(),
        api_key.clone(),
        gateway_key.clone(),
        daemon_key.clone(),
        "admin-password-for-tests".to_string(),
    ];
    // Workspace dialect: sign-ins (also failed ones), registration, MFA, logout.
    let admin = crate::workspace::login(&server, "admin@localhost", "admin-password-for-tests");
    secrets.push(admin.clone());
    for wrong in ["wrong-password-1", "Wrong-Password-2"] {
        let status = server
            .post(
                "/api/auth/login",
                &json!({"email": "admin@localhost", "password": wrong}),
            )
            .status;
        assert_eq!(status, 401);
        secrets.push(wrong.to_string());
    }
    let user = crate::workspace::register(&server, &admin, "carol@example.com", "user");
    secrets.extend([user.clone(), "user-password-1".to_string()]);
    let setup = server
        .post_auth("/api/auth/mfa/setup", &user, &json!({}))
        .expect(200);
    let totp_secret = setup["secret"].as_str().unwrap().to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let code = crate::workspace::totp(&totp_secret, now);
    server
        .post_auth("/api/auth/mfa/verify", &user, &json!({"code": code}))
        .expect(200);
    let sid = server
        .post_auth(
            "/api/workspaces/ws-sap-neogenesys/launch",
            &user,
            &json!({}),
        )
        .expect(200)["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    server
        .post_auth(&format!("/api/sessions/{sid}/heartbeat"), &user, &json!({}))
        .expect(200);
    server
        .post_auth("/api/auth/logout", &user, &json!({}))
        .expect(200);
    // Runtime dialect: a key made over HTTP, sessions, a daemon report.
    let key = server
        .post_auth("/v1/keys", &api_key, &json!({"name": "made over http"}))
        .expect(201)["key"]
        .as_str()
        .unwrap()
        .to_string();
    secrets.push(key.clone());
    let runtime = server
        .post_auth("/v1/sessions", &key, &json!({}))
        .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    server
        .get_auth(&format!("/v1/sessions/{runtime}"), &key)
        .expect(200);
    server
        .post_auth(
            "/v1/daemon/snapshots",
            &daemon_key,
            &json!({"node_id": "node-1", "sessions": [{"id": runtime, "status": "running"}]}),
        )
        .expect(200);
    for i in 0..10 {
        let created = server
            .post(
                "/sessions",
                &json!({ "authMode": if i % 2 == 0 { "basic" } else { "none" } }),
            )
            .expect(201);
        let (id, slug, owner) = (
            created["sessionId"].as_str().unwrap(),
            created["slug"].as_str().unwrap(),
            created["ownerToken"].as_str().unwrap(),
        );
        secrets.push(owner.to_string());
        secrets.push(created["sessionToken"].as_str().unwrap().to_string());
        if let Some(p) = created["password"].as_str() {
            secrets.push(p.to_string());
        }
        let viewer_password = format!("viewer-pass-{i}");
        server
            .post_auth(
                &format!("/owner/sessions/by-slug/{slug}/policy"),
                owner,
                &json!({ "password": viewer_password }),
            )
            .expect(200);
        secrets.push(viewer_password);
        let t = server
            .post_auth(
                &format!("/owner/sessions/{id}/tokens"),
                owner,
                &json!({ "scopes": ["tunnel:connect"] }),
            )
            .expect(201);
        secrets.push(t["token"].as_str().unwrap().to_string());
    }
    let by_key = server
        .post_auth("/sessions", &api_key, &json!({}))
        .expect(201);
    secrets.push(by_key["ownerToken"].as_str().unwrap().to_string());
    // Viewers present the basic-auth password and the viewer password, rightly and wrongly.
    let basic = server
        .post("/sessions", &json!({"authMode": "basic"}))
        .expect(201);
    let (slug, password) = (
        basic["slug"].as_str().unwrap().to_string(),
        basic["password"].as_str().unwrap().to_string(),
    );
    secrets.extend([password.clone(), "not-the-password".to_string()]);
    for pw in [&password, &"not-the-password".to_string()] {
        let header = crate::admission::basic(pw);
        admit(
            &server,
            &slug,
            &json!({"ip": "1.1.1.1", "path": "/", "authorization": header}),
        );
    }
    let backup = dir.path().join("backup.db");
    let out = Command::new(bin())
        .arg("backup")
        .arg(&backup)
        .arg("--db")
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success());
    let log = server.log_text();
    assert!(
        log.contains("DEBUG"),
        "the scenario did not log at debug level"
    );
    let wal = std::fs::read(db.with_extension("db-wal")).unwrap_or_default();
    drop(server);
    let mut files = vec![
        std::fs::read(&db).unwrap(),
        wal,
        std::fs::read(&backup).unwrap(),
    ];
    if let Ok(wal) = std::fs::read(db.with_extension("db-wal")) {
        files.push(wal);
    }
    for secret in &secrets {
        for bytes in &files {
            assert!(
                !contains(bytes, secret.as_bytes()),
                "secret {secret:?} found in the database file"
            );
        }
        // Random tokens are also absent from the log (the admin password was given, never printed).
        assert!(
            !log.contains(secret.as_str()),
            "secret {secret:?} found in the log"
        );
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn first_start_prints_generated_admin_credentials_once() {
    let dir = Arc::new(TempDir::new());
    let server = Server::start_in(dir.clone(), Opts::default().arg("--admin-password", ""));
    let first = server.log_text();
    assert!(
        first.contains("created admin user admin@localhost with password "),
        "{first}"
    );
    let password = first
        .split("with password ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert!(password.len() >= 16);
    drop(server);
    let server = Server::start_in(dir, Opts::default().arg("--admin-password", ""));
    assert!(
        !server.log_text().contains(&password),
        "the password was shown again"
    );
    let users = server.query("SELECT email, password_hash FROM users");
    assert_eq!(users.len(), 1);
    assert!(users[0][1].as_str().unwrap().starts_with("$argon2id$"));
}

#[test]
fn command_line_exit_codes_and_schema_checks() {
    let run = |args: &[&str]| Command::new(bin()).args(args).output().unwrap();
    assert_eq!(run(&[]).status.code(), Some(2));
    assert_eq!(run(&["bogus"]).status.code(), Some(2));
    assert_eq!(
        run(&["serve", "--listen", "not-an-address"]).status.code(),
        Some(2)
    );
    assert_eq!(run(&["serve", "extra"]).status.code(), Some(2));
    assert_eq!(run(&["version"]).status.code(), Some(0));

    let dir = TempDir::new();
    let db = dir.path().join("s.db");
    let db = db.to_str().unwrap();
    assert_eq!(
        run(&["migrate", "--check", "--db", db]).status.code(),
        Some(1),
        "a fresh file has pending migrations"
    );
    assert_eq!(run(&["migrate", "--db", db]).status.code(), Some(0));
    let checked = run(&["migrate", "--check", "--db", db]);
    assert_eq!(checked.status.code(), Some(0));
    let ok = run(&["check", "--db", db]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("integrity: ok"));

    // A database from a newer sessiond is refused, naming both versions.
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let refused = run(&["serve", "--db", db, "--listen", "127.0.0.1:0"]);
    assert_eq!(refused.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&refused.stderr);
    assert!(
        msg.contains("schema version 99") && msg.contains("this binary's 4"),
        "{msg}"
    );

    let dump = run(&["config", "--dump", "--internal-api-key", "very-secret"]);
    let text = String::from_utf8_lossy(&dump.stdout);
    assert!(
        text.contains("listen = \"127.0.0.1:8080\"") && !text.contains("very-secret"),
        "{text}"
    );
}

#[test]
fn a_database_of_schema_version_1_is_migrated_in_place_and_keeps_its_sessions_and_audit() {
    // Version 1 had an index on audit(resource_type, resource_id) that no query used (gone in 2),
    // a UNIQUE audit uid and full indexes on sessions' user and workspace (gone in 3), and CHECK
    // constraints with `IN` lists (OR chains in 4).
    let dir = Arc::new(TempDir::new());
    let server = Server::start_in(dir.clone(), Opts::default());
    let share = create_share(&server, &json!({"port": 3000}));
    assert_eq!(server.stop().code(), Some(0));
    let db = dir.path().join("sessiond.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let audit_sql: String = conn
        .query_row(
            "SELECT sql FROM sqlite_schema WHERE name = 'audit'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let old_audit = audit_sql
        .replace(
            "uid           TEXT    NOT NULL,",
            "uid           TEXT    NOT NULL UNIQUE,",
        )
        .replace(
            "actor_type = 'user' OR actor_type = 'api_key' OR actor_type = 'owner_token'
                                          OR actor_type = 'service' OR actor_type = 'system'",
            "actor_type IN ('user', 'api_key', 'owner_token', 'service', 'system')",
        );
    assert!(old_audit.contains("actor_type IN ("), "{old_audit}");
    assert_ne!(old_audit, audit_sql);
    conn.execute_batch(&format!(
        "ALTER TABLE audit RENAME TO audit_now;
         DROP INDEX audit_account_time; DROP INDEX audit_time;
         {old_audit};
         INSERT INTO audit SELECT * FROM audit_now; DROP TABLE audit_now;
         CREATE INDEX audit_account_time ON audit(account_id, created_at);
         CREATE INDEX audit_time ON audit(created_at);
         CREATE INDEX audit_resource ON audit(resource_type, resource_id);
         DROP INDEX sessions_user; CREATE INDEX sessions_user ON sessions(user_id, created_at);
         DROP INDEX sessions_workspace; CREATE INDEX sessions_workspace ON sessions(workspace_id, status);
         PRAGMA user_version = 1;"
    ))
    .unwrap();
    let audit_before: i64 = conn
        .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
        .unwrap();
    assert!(audit_before > 0);
    drop(conn);

    let server = Server::start_in(dir, Opts::default());
    let log = server.log_text();
    assert!(
        log.contains("database migrated to schema version 2"),
        "{log}"
    );
    assert!(
        log.contains("database migrated to schema version 3"),
        "{log}"
    );
    assert!(
        log.contains("database migrated to schema version 4"),
        "{log}"
    );
    let in_lists =
        server.query("SELECT name FROM sqlite_schema WHERE sql LIKE '%actor_type IN (%'");
    assert!(in_lists.is_empty(), "{in_lists:?}");
    let gone = server.query(
        "SELECT name FROM sqlite_schema WHERE name IN ('audit_resource', 'sqlite_autoindex_audit_1', 'audit_now')",
    );
    assert!(gone.is_empty(), "{gone:?}");
    let partial = server.query(
        "SELECT count(*) FROM sqlite_schema WHERE name IN ('sessions_user', 'sessions_workspace') AND sql LIKE '%IS NOT NULL'",
    );
    assert_eq!(partial[0][0], json!(2));
    assert_eq!(server.query("PRAGMA user_version")[0][0], json!(4));
    assert_eq!(
        server.query("SELECT count(*) FROM audit WHERE action = 'session.created'")[0][0],
        json!(1)
    );
    assert!(
        server.query("SELECT count(*) FROM audit")[0][0]
            .as_i64()
            .unwrap()
            >= audit_before
    );
    let view = server
        .get(&format!("/sessions/by-slug/{}", share.slug))
        .expect(200);
    assert_eq!(view["sessionId"], json!(share.id));
}

#[test]
fn secrets_come_from_files_and_readiness_is_notified_after_bind() {
    use std::os::unix::net::UnixDatagram;
    let dir = Arc::new(TempDir::new());
    let key_file = dir.path().join("gateway.key");
    std::fs::write(&key_file, "key-from-a-file\n").unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let opts = Opts {
        env: vec![
            (
                "SESSIOND_INTERNAL_API_KEY_FILE".into(),
                key_file.to_str().unwrap().into(),
            ),
            ("NOTIFY_SOCKET".into(), socket_path.to_str().unwrap().into()),
        ],
        ..Opts::default()
    };
    let server = Server::start_in(dir, opts);
    let mut buf = [0u8; 64];
    let n = socket.recv(&mut buf).expect("READY=1 on the notify socket");
    assert_eq!(&buf[..n], b"READY=1");
    // The listener was bound before READY: a request right now is answered.
    server.get("/healthz").expect(200);
    let s = create_share(&server, &json!({}));
    server
        .get_auth(
            &format!("/internal/sessions/by-slug/{}", s.slug),
            "key-from-a-file",
        )
        .expect(200);
    server
        .get_auth(
            &format!("/internal/sessions/by-slug/{}", s.slug),
            "key-from-a-file-x",
        )
        .expect_error(401);
    let status = server.stop();
    assert!(status.success());
    let n = socket
        .recv(&mut buf)
        .expect("STOPPING=1 on the notify socket");
    assert_eq!(&buf[..n], b"STOPPING=1");
}
