//! Runtime sessions in the Chaser dialect: SessionInfo's exact shape, persistence rules, bulk
//! termination, scopes and account isolation, keys, accounts, audit events, daemon snapshots
//! (freshness, staleness, loss), TTLs, and the unification with the workspace dialect.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;
use crate::workspace::{ADMIN_EMAIL, ADMIN_PASSWORD, login};

const SESSION_INFO_KEYS: &[&str] = &[
    "id",
    "created_at",
    "status",
    "session_type",
    "endpoints",
    "workspace_id",
    "active_connection_leases",
    "persistence",
];

/// Asserts the runtime error shape: `{"error": code, "message": text}` with a request id.
fn runtime_error(r: &Resp, status: u16, code: &str) {
    let body = r.expect(status);
    assert_eq!(body["error"], code, "{body}");
    assert!(body["message"].is_string(), "{body}");
    assert_eq!(keys_of(&body), ["error", "message"]);
    assert!(r.header("X-Request-Id").is_some());
}

struct Fixture {
    server: Server,
    key: String,
    daemon: String,
    other: String,
}

fn fixture(opts: Opts) -> Fixture {
    let dir = Arc::new(TempDir::new());
    let db = dir.path().join("sessiond.db");
    let key = cli_key(&db, &["--name", "tests"]);
    let daemon = cli_key(&db, &["--service", "daemon"]);
    let other = cli_key(&db, &["--account", "anonymous"]);
    Fixture {
        server: Server::start_in(dir, opts),
        key,
        daemon,
        other,
    }
}

fn delete(server: &Server, path: &str, token: &str) -> Resp {
    server.delete_auth(path, token)
}

#[test]
fn session_info_shape_lifecycle_and_listing() {
    let f = fixture(Opts::default().arg("--public-base-url", "https://cp.example.com"));
    let s = &f.server;
    let r = s.post_auth("/v1/sessions", &f.key, &json!({ "session_type": "sandbox", "env": { "TOKEN": "do-not-store-me" }, "proxy": "http://user:pw@proxy:3128" }));
    assert_eq!(key_order(&r.text()), SESSION_INFO_KEYS);
    assert_eq!(r.header("X-RateLimit-Limit"), Some("600"));
    assert!(r.header("X-RateLimit-Remaining").is_some() && r.header("X-RateLimit-Reset").is_some());
    let info = r.expect(201);
    let id = info["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 36);
    assert_eq!(info["status"], "active");
    assert_eq!(info["session_type"], "sandbox");
    assert_eq!(
        info["endpoints"],
        json!({ "control": format!("https://cp.example.com/v1/sessions/{id}/cdp"), "video": null })
    );
    assert_eq!(info["workspace_id"], Value::Null);
    assert_eq!(info["active_connection_leases"], 0);
    assert_eq!(info["persistence"], false);
    let stored = s.query(&format!("SELECT r.env_names, r.proxy FROM runtime_sessions r JOIN sessions x ON x.id = r.session_id WHERE x.uid = '{id}'"));
    assert_eq!(
        stored[0],
        vec![json!("[\"TOKEN\"]"), json!("http://proxy:3128")]
    );

    let got = s.get_auth(&format!("/v1/sessions/{id}"), &f.key);
    assert_eq!(key_order(&got.text()), SESSION_INFO_KEYS);
    assert_eq!(got.expect(200), info);
    for _ in 0..3 {
        s.post_auth("/v1/sessions", &f.key, &json!({})).expect(201);
    }
    let page = s.get_auth("/v1/sessions?limit=2", &f.key).expect(200);
    assert_eq!(keys_of(&page), ["next_cursor", "sessions", "total"]);
    assert_eq!(page["total"], 4);
    assert_eq!(page["sessions"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest = s
        .get_auth(&format!("/v1/sessions?limit=2&cursor={cursor}"), &f.key)
        .expect(200);
    assert_eq!(
        rest["sessions"][1]["id"],
        id.as_str(),
        "newest first; the first one comes last"
    );
    assert_eq!(
        s.get_auth("/v1/sessions?session_type=sandbox", &f.key)
            .expect(200)["total"],
        1
    );
    assert_eq!(
        s.get_auth("/v1/sessions?session_type=browser", &f.key)
            .expect(200)["total"],
        3
    );

    // DELETE is 204 and idempotent; the session reads as terminated.
    let d = delete(s, &format!("/v1/sessions/{id}"), &f.key);
    assert_eq!(d.status, 204);
    assert!(d.body.is_empty());
    assert_eq!(
        delete(s, &format!("/v1/sessions/{id}?force=true"), &f.key).status,
        204
    );
    assert_eq!(
        s.get_auth(&format!("/v1/sessions/{id}"), &f.key)
            .expect(200)["status"],
        "terminated"
    );
    assert_eq!(
        s.get_auth("/v1/sessions?status=terminated", &f.key)
            .expect(200)["total"],
        1
    );
    assert_eq!(
        s.get_auth("/v1/sessions?status=active", &f.key).expect(200)["total"],
        3
    );

    // Errors in the runtime shape.
    runtime_error(
        &s.get_auth("/v1/sessions/00000000-0000-4000-8000-000000000000", &f.key),
        404,
        "not_found",
    );
    runtime_error(&delete(s, "/v1/sessions/nope", &f.key), 404, "not_found");
    runtime_error(&s.get("/v1/sessions"), 401, "unauthorized");
    runtime_error(&s.get_auth("/v1/sessions", "sk_bogus"), 401, "unauthorized");
    for bad in [
        json!({ "session_type": "vm" }),
        json!({ "ttl_seconds": 0 }),
        json!({ "ttl_seconds": "60" }),
        json!({ "env": { "A": 1 } }),
        json!({ "ephemeral": "yes" }),
    ] {
        runtime_error(
            &s.post_auth("/v1/sessions", &f.key, &bad),
            400,
            "invalid_request",
        );
    }
    runtime_error(
        &s.get_auth("/v1/sessions?limit=0", &f.key),
        400,
        "invalid_request",
    );
    runtime_error(
        &delete(s, &format!("/v1/sessions/{id}?force=maybe"), &f.key),
        400,
        "invalid_request",
    );
}

#[test]
fn persistent_sessions_need_a_workspace_and_hold_it_alone() {
    let f = fixture(Opts::default());
    let s = &f.server;
    let first = s
        .post_auth("/v1/sessions", &f.key, &json!({ "workspace": "alpha" }))
        .expect(201);
    assert_eq!(first["persistence"], true);
    let ws = first["workspace_id"].as_str().unwrap().to_string();
    assert!(ws.starts_with("ws-") && ws.len() == 11);
    // The workspace was made on the fly, named alpha.
    let list = s.get_auth("/v1/workspaces", &f.key).expect(200);
    let alpha = list
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == ws.as_str())
        .unwrap();
    assert_eq!(
        keys_of(alpha),
        [
            "active_session_id",
            "created_at",
            "id",
            "image",
            "last_session_id",
            "name",
            "persistence",
            "session_type",
            "status",
            "template"
        ]
    );
    assert_eq!(
        (alpha["name"].clone(), alpha["status"].clone()),
        (json!("alpha"), json!("running"))
    );
    assert_eq!(alpha["active_session_id"], first["id"]);
    // One live persistent session per workspace, by name or by id.
    runtime_error(
        &s.post_auth("/v1/sessions", &f.key, &json!({ "workspace": "alpha" })),
        409,
        "conflict",
    );
    runtime_error(
        &s.post_auth(
            "/v1/sessions",
            &f.key,
            &json!({ "workspace": ws, "ephemeral": false }),
        ),
        409,
        "conflict",
    );
    // Ephemeral sessions may share it, but never create one.
    let eph = s
        .post_auth(
            "/v1/sessions",
            &f.key,
            &json!({ "workspace": "alpha", "ephemeral": true }),
        )
        .expect(201);
    assert_eq!(
        (eph["persistence"].clone(), eph["workspace_id"].clone()),
        (json!(false), json!(ws))
    );
    runtime_error(
        &s.post_auth(
            "/v1/sessions",
            &f.key,
            &json!({ "workspace": "nowhere", "ephemeral": true }),
        ),
        404,
        "not_found",
    );
    // Rename; delete is refused while a session lives, unless forced.
    let renamed = s.request(
        "PUT",
        &format!("/v1/workspaces/{ws}/name"),
        &[("Authorization", &format!("Bearer {}", f.key))],
        Some(br#"{"name":"beta"}"#),
    );
    assert_eq!(renamed.expect(200), json!({ "id": ws, "name": "beta" }));
    runtime_error(&delete(s, "/v1/workspaces/beta", &f.key), 409, "conflict");
    assert_eq!(
        delete(s, "/v1/workspaces/beta?force=true", &f.key).status,
        204
    );
    assert_eq!(
        s.get_auth(
            &format!("/v1/sessions/{}", first["id"].as_str().unwrap()),
            &f.key
        )
        .expect(200)["status"],
        "terminated"
    );
    assert_eq!(
        s.get_auth(
            &format!("/v1/sessions/{}", eph["id"].as_str().unwrap()),
            &f.key
        )
        .expect(200)["status"],
        "terminated"
    );
    runtime_error(&delete(s, "/v1/workspaces/beta", &f.key), 404, "not_found");
    // A workspace from POST /v1/workspaces.
    let created = s.post_auth("/v1/workspaces", &f.key, &json!({ "name": "gamma", "session_type": "sandbox", "image": "debian:12", "template": true })).expect(201);
    assert_eq!(
        (
            created["template"].clone(),
            created["status"].clone(),
            created["image"].clone()
        ),
        (json!(true), json!("idle"), json!("debian:12"))
    );
    assert_eq!(created["last_session_id"], Value::Null);
    runtime_error(
        &s.post_auth("/v1/workspaces", &f.key, &json!({ "session_type": "vm" })),
        400,
        "invalid_request",
    );
    assert_eq!(delete(s, "/v1/workspaces/gamma", &f.key).status, 204);
}

#[test]
fn bulk_terminate_reports_each_failure() {
    let f = fixture(Opts::default());
    let s = &f.server;
    let a = s
        .post_auth("/v1/sessions", &f.key, &json!({ "workspace": "one" }))
        .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b = s
        .post_auth(
            "/v1/sessions",
            &f.key,
            &json!({ "session_type": "sandbox" }),
        )
        .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let c = s.post_auth("/v1/sessions", &f.key, &json!({})).expect(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s
        .post_auth(
            "/v1/sessions/bulk-terminate",
            &f.key,
            &json!({ "ids": [b, "missing-id"] }),
        )
        .expect(200);
    assert_eq!(r["terminated"], json!([b]));
    assert_eq!(
        r["failed"],
        json!([{ "id": "missing-id", "code": "not_found", "message": "Session not found" }])
    );
    let r = s
        .post_auth(
            "/v1/sessions/bulk-terminate",
            &f.key,
            &json!({ "workspaces": ["one"] }),
        )
        .expect(200);
    assert_eq!(r["terminated"], json!([a]));
    let r = s
        .post_auth(
            "/v1/sessions/bulk-terminate",
            &f.key,
            &json!({ "all": true, "session_type": "browser" }),
        )
        .expect(200);
    assert_eq!(r["terminated"], json!([c]));
    runtime_error(
        &s.post_auth("/v1/sessions/bulk-terminate", &f.key, &json!({})),
        400,
        "invalid_request",
    );
    assert_eq!(
        s.get_auth("/v1/sessions?status=active", &f.key).expect(200)["total"],
        0
    );
}

#[test]
fn scopes_accounts_keys_and_audit_events() {
    let f = fixture(Opts::default());
    let s = &f.server;
    let id = s.post_auth("/v1/sessions", &f.key, &json!({})).expect(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Another account's key learns nothing: the same 404 as a missing session.
    let theirs = s.get_auth(&format!("/v1/sessions/{id}"), &f.other);
    let missing = s.get_auth(
        "/v1/sessions/00000000-0000-4000-8000-000000000000",
        &f.other,
    );
    runtime_error(&theirs, 404, "not_found");
    assert_eq!(theirs.body, missing.body);
    runtime_error(
        &delete(s, &format!("/v1/sessions/{id}"), &f.other),
        404,
        "not_found",
    );
    assert_eq!(s.get_auth("/v1/sessions", &f.other).expect(200)["total"], 0);
    // X-Chaser-Account naming an account the caller is not in: 403.
    let r = s.request(
        "GET",
        "/v1/sessions",
        &[
            ("Authorization", &format!("Bearer {}", f.other)),
            ("X-Chaser-Account", "personal"),
        ],
        None,
    );
    runtime_error(&r, 403, "forbidden");
    let r = s.request(
        "GET",
        "/v1/sessions",
        &[
            ("Authorization", &format!("Bearer {}", f.key)),
            ("X-Chaser-Account", "personal"),
        ],
        None,
    );
    assert_eq!(r.expect(200)["total"], 1);

    // A signed-in user mints keys over /v1; scopes are enforced.
    let token = login(s, ADMIN_EMAIL, ADMIN_PASSWORD);
    let created = s
        .post_auth(
            "/v1/keys",
            &token,
            &json!({ "name": "reader", "scopes": ["sessions.read"] }),
        )
        .expect(201);
    assert_eq!(
        keys_of(&created),
        ["full_access", "id", "key", "key_prefix", "name", "scopes"]
    );
    assert_eq!(created["full_access"], false);
    let reader = created["key"].as_str().unwrap().to_string();
    assert!(
        reader.starts_with("sk_") && reader.starts_with(created["key_prefix"].as_str().unwrap())
    );
    s.get_auth(&format!("/v1/sessions/{id}"), &reader)
        .expect(200);
    runtime_error(
        &s.post_auth("/v1/sessions", &reader, &json!({})),
        403,
        "forbidden",
    );
    runtime_error(
        &delete(s, &format!("/v1/sessions/{id}"), &reader),
        403,
        "forbidden",
    );
    runtime_error(&s.get_auth("/v1/keys", &reader), 403, "forbidden");
    runtime_error(
        &s.post_auth("/v1/keys", &token, &json!({ "scopes": ["root"] })),
        400,
        "invalid_request",
    );
    let keys = s.get_auth("/v1/keys", &token).expect(200);
    let listed = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == created["id"])
        .unwrap()
        .clone();
    assert_eq!(listed["revoked"], false);
    assert!(listed.get("key").is_none() && !keys.to_string().contains(&reader));
    assert!(listed["last_used_at"].is_string(), "last_used_at is kept");
    let revoked = s
        .delete_auth(
            &format!("/v1/keys/{}", created["id"].as_str().unwrap()),
            &token,
        )
        .expect(200);
    assert_eq!(revoked["revoked"], true);
    runtime_error(
        &s.get_auth(&format!("/v1/sessions/{id}"), &reader),
        401,
        "unauthorized",
    );
    runtime_error(
        &s.delete_auth("/v1/keys/not-a-key", &token),
        404,
        "not_found",
    );

    // Accounts.
    let accounts = s.get_auth("/v1/accounts", &token).expect(200);
    assert_eq!(accounts["accounts"][0]["name"], "personal");
    assert_eq!(accounts["accounts"][0]["personal"], true);
    assert_eq!(accounts["accounts"][0]["role"], "owner");
    let current = s.get_auth("/v1/accounts/current", &f.key).expect(200);
    assert_eq!(current["account"]["name"], "personal");
    for k in ["id", "kind", "name", "role", "personal"] {
        assert!(current["account"].get(k).is_some(), "{k}");
    }

    // Audit events with filters.
    let events = s
        .get_auth(&format!("/v1/audit/events?resource_id={id}"), &f.key)
        .expect(200);
    let e = &events["events"][0];
    assert_eq!(
        (
            e["action"].clone(),
            e["resource_type"].clone(),
            e["actor_type"].clone()
        ),
        (json!("session.created"), json!("session"), json!("api_key"))
    );
    assert!(e["metadata"].is_object());
    let created_events = s
        .get_auth("/v1/audit/events?action=key.created&limit=1", &f.key)
        .expect(200);
    assert_eq!(created_events["events"].as_array().unwrap().len(), 1);
    let before = created_events["events"][0]["id"].as_str().unwrap();
    let older = s
        .get_auth(
            &format!("/v1/audit/events?action=key.created&before={before}"),
            &f.key,
        )
        .expect(200);
    assert!(
        older["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["id"] != before)
    );
    // Paging one event at a time visits every event once, newest first, even where several
    // share a millisecond (the sessions and keys above were made back to back).
    let all = s.get_auth("/v1/audit/events?limit=100", &f.key).expect(200)["events"].clone();
    let all: Vec<String> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert!(all.len() >= 4, "{all:?}");
    let mut paged: Vec<String> = Vec::new();
    loop {
        let path = match paged.last() {
            Some(last) => format!("/v1/audit/events?limit=1&before={last}"),
            None => "/v1/audit/events?limit=1".to_string(),
        };
        let page = s.get_auth(&path, &f.key).expect(200);
        match page["events"][0]["id"].as_str() {
            Some(id) => paged.push(id.to_string()),
            None => break,
        }
        assert!(paged.len() <= all.len(), "paging does not end: {paged:?}");
    }
    assert_eq!(paged, all);
    assert_eq!(
        s.get_auth("/v1/audit/events?status=failure", &f.key)
            .expect(200)["events"],
        json!([])
    );
    runtime_error(
        &s.get_auth("/v1/audit/events?status=maybe", &f.key),
        400,
        "invalid_request",
    );
    runtime_error(
        &s.get_auth("/v1/audit/events?before=garbage", &f.key),
        400,
        "invalid_request",
    );
}

#[test]
fn daemon_snapshots_freshness_staleness_and_loss() {
    let f = fixture(
        Opts::default()
            .arg("--snapshot-stale-after", "1s")
            .arg("--snapshot-lost-after", "3s")
            .arg("--reap-interval", "100ms"),
    );
    let s = &f.server;
    let a = s.post_auth("/v1/sessions", &f.key, &json!({})).expect(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b = s.post_auth("/v1/sessions", &f.key, &json!({})).expect(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let report = json!({ "node_id": "node-1", "sessions": [
        { "id": a, "status": "running", "active_connection_leases": 2, "endpoints": { "control": "wss://node-1/cdp/a", "video": "https://node-1/video/a" } },
        { "id": b, "status": "starting", "active_connection_leases": 0 },
        { "id": "unknown-session", "status": "running", "active_connection_leases": 0 },
    ]});
    // Only daemon service keys may report.
    runtime_error(
        &s.post_auth("/v1/daemon/snapshots", &f.key, &report),
        401,
        "unauthorized",
    );
    runtime_error(
        &s.post_auth("/v1/daemon/snapshots", GATEWAY_KEY, &report),
        401,
        "unauthorized",
    );
    let r = s
        .post_auth("/v1/daemon/snapshots", &f.daemon, &report)
        .expect(200);
    assert_eq!(
        r,
        json!({ "ok": true, "reconciled": 2, "unknown": ["unknown-session"] })
    );
    let info = s.get_auth(&format!("/v1/sessions/{a}"), &f.key).expect(200);
    assert_eq!(
        (
            info["status"].clone(),
            info["active_connection_leases"].clone()
        ),
        (json!("running"), json!(2))
    );
    assert_eq!(
        info["endpoints"],
        json!({ "control": "wss://node-1/cdp/a", "video": "https://node-1/video/a" })
    );
    assert_eq!(
        s.get_auth("/v1/sessions?status=running", &f.key)
            .expect(200)["total"],
        1
    );
    // Live leases make a plain delete a conflict.
    runtime_error(
        &delete(s, &format!("/v1/sessions/{a}"), &f.key),
        409,
        "conflict",
    );
    for bad in [
        json!({ "sessions": [] }),
        json!({ "node_id": "n", "sessions": [{ "id": a, "status": "sleeping" }] }),
        json!({ "node_id": "n", "sessions": {} }),
    ] {
        runtime_error(
            &s.post_auth("/v1/daemon/snapshots", &f.daemon, &bad),
            400,
            "invalid_request",
        );
    }
    // A terminal report ends a session for good.
    s.post_auth(
        "/v1/daemon/snapshots",
        &f.daemon,
        &json!({ "node_id": "node-1", "sessions": [{ "id": b, "status": "failed" }] }),
    )
    .expect(200);
    s.post_auth(
        "/v1/daemon/snapshots",
        &f.daemon,
        &json!({ "node_id": "node-1", "sessions": [{ "id": b, "status": "running" }] }),
    )
    .expect(200);
    assert_eq!(
        s.get_auth(&format!("/v1/sessions/{b}"), &f.key).expect(200)["status"],
        "failed"
    );
    // Once stale, the stored values show again.
    std::thread::sleep(Duration::from_millis(1300));
    let stale = s.get_auth(&format!("/v1/sessions/{a}"), &f.key).expect(200);
    assert_eq!(stale["status"], "active");
    // A daemon that stops reporting loses the session: failed, end_reason lost, audited.
    assert!(eventually(Duration::from_secs(6), || s
        .get_auth(&format!("/v1/sessions/{a}"), &f.key)
        .expect(200)["status"]
        == "failed"));
    let row = s.query(&format!(
        "SELECT status, end_reason FROM sessions WHERE uid = '{a}'"
    ));
    assert_eq!(row[0], vec![json!("failed"), json!("lost")]);
    let audit = s.query(&format!(
        "SELECT actor_type FROM audit WHERE action = 'session.lost' AND resource_id = '{a}'"
    ));
    assert_eq!(audit, vec![vec![json!("system")]]);
}

#[test]
fn ttls_bound_runtime_sessions() {
    let f = fixture(Opts::default().arg("--reap-interval", "100ms"));
    let s = &f.server;
    let short = s
        .post_auth("/v1/sessions", &f.key, &json!({ "ttl_seconds": 1 }))
        .expect(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let long = s.post_auth("/v1/sessions", &f.key, &json!({})).expect(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(eventually(Duration::from_secs(5), || s
        .get_auth(&format!("/v1/sessions/{short}"), &f.key)
        .expect(200)["status"]
        == "terminated"));
    let row = s.query(&format!(
        "SELECT end_reason FROM sessions WHERE uid = '{short}'"
    ));
    assert_eq!(row[0][0], "expired");
    assert_eq!(
        s.get_auth(&format!("/v1/sessions/{long}"), &f.key)
            .expect(200)["status"],
        "active"
    );
    let ttl = s.query(&format!(
        "SELECT (expires_at - created_at) / 1000 FROM sessions WHERE uid = '{long}'"
    ));
    assert_eq!(ttl[0][0], 86_400, "the default TTL is a day");
}

#[test]
fn workspace_sessions_are_runtime_sessions_too() {
    let f = fixture(Opts::default());
    let s = &f.server;
    let token = login(s, ADMIN_EMAIL, ADMIN_PASSWORD);
    let one = s
        .post_auth(
            "/api/workspaces/ws-remote-desktop/launch",
            &token,
            &json!({}),
        )
        .expect(200)["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let two = s
        .post_auth(
            "/api/workspaces/ws-linux-desktop/launch",
            &token,
            &json!({}),
        )
        .expect(200)["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let info = s.get_auth(&format!("/v1/sessions/{one}"), &f.key);
    assert_eq!(key_order(&info.text()), SESSION_INFO_KEYS);
    let info = info.expect(200);
    assert_eq!(
        (
            info["session_type"].clone(),
            info["status"].clone(),
            info["workspace_id"].clone()
        ),
        (json!("rdp"), json!("active"), json!("ws-remote-desktop"))
    );
    assert_eq!(info["persistence"], Value::Null);
    // The login token works on /v1 as well.
    s.get_auth(&format!("/v1/sessions/{one}"), &token)
        .expect(200);
    // Ended from /v1, seen ended in /api; ended from /api, seen ended in /v1.
    assert_eq!(
        delete(s, &format!("/v1/sessions/{one}"), &f.key).status,
        204
    );
    assert_eq!(
        s.get_auth(&format!("/api/sessions/{one}"), &token)
            .expect(200)["status"],
        "terminated"
    );
    s.post_auth(
        &format!("/api/sessions/{two}/disconnect"),
        &token,
        &json!({}),
    )
    .expect(200);
    assert_eq!(
        s.get_auth(&format!("/v1/sessions/{two}"), &f.key)
            .expect(200)["status"],
        "terminated"
    );
    let rdp = s.get_auth("/v1/workspaces", &f.key).expect(200);
    let rdp = rdp
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == "ws-remote-desktop")
        .unwrap()
        .clone();
    assert_eq!(rdp["last_session_id"], one.as_str());
    assert_eq!(rdp["active_session_id"], Value::Null);
}

/// The official `chaser-sdk` 0.2.1 from PyPI, pointed at sessiond with `base_url`. The suite installs
/// it into a virtual environment under `target/`; where PyPI cannot be reached the test says so and
/// skips (it never passes silently).
#[test]
fn the_official_chaser_sdk_works_against_sessiond() {
    let python = match chaser_sdk_python() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED the_official_chaser_sdk_works_against_sessiond: {why}");
            return;
        }
    };
    let f = fixture(Opts::default());
    let out = std::process::Command::new(&python)
        .arg(format!(
            "{}/tests/clients/chaser_sdk_check.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .env("CHASER_BASE_URL", format!("http://{}", f.server.addr))
        .env("CHASER_API_KEY", &f.key)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the SDK check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}

/// A Python with chaser-sdk 0.2.1: `SESSIOND_SDK_PYTHON`, or a venv made under `target/`.
fn chaser_sdk_python() -> Result<String, String> {
    if let Ok(p) = std::env::var("SESSIOND_SDK_PYTHON") {
        return Ok(p);
    }
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/chaser-sdk-venv");
    let python = venv.join("bin/python");
    let has_sdk = |py: &std::path::Path| {
        std::process::Command::new(py)
            .args([
                "-c",
                "import importlib.metadata as m; assert m.version('chaser-sdk') == '0.2.1'",
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if has_sdk(&python) {
        return Ok(python.to_string_lossy().into_owned());
    }
    let made = std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .map_err(|e| format!("python3 is not available: {e}"))?;
    if !made.status.success() {
        return Err(format!(
            "python3 -m venv failed: {}",
            String::from_utf8_lossy(&made.stderr)
        ));
    }
    let pip = std::process::Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "chaser-sdk==0.2.1",
        ])
        .output()
        .map_err(|e| format!("pip did not run: {e}"))?;
    if !pip.status.success() {
        return Err(format!(
            "PyPI unreachable or chaser-sdk==0.2.1 not installable: {}",
            String::from_utf8_lossy(&pip.stderr)
        ));
    }
    Ok(python.to_string_lossy().into_owned())
}
