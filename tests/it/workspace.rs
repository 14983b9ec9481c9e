//! Workspace sessions in the NeoSC dialect: sign-in, MFA, throttling, workspaces, sessions, admin
//! routes, audit logs, stats, the reaper's duration and idle limits, isolation, and the user CLI.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

pub const ADMIN_EMAIL: &str = "admin@localhost";
pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";

pub fn login(server: &Server, email: &str, password: &str) -> String {
    let r = server
        .post(
            "/api/auth/login",
            &json!({ "email": email, "password": password }),
        )
        .expect(200);
    r["access_token"].as_str().unwrap().to_string()
}

/// Registers a user through the admin route and returns their token.
pub fn register(server: &Server, admin: &str, email: &str, role: &str) -> String {
    let r = server
        .post_auth(
            "/api/auth/register",
            admin,
            &json!({ "email": email, "password": "user-password-1", "name": email, "role": role }),
        )
        .expect(200);
    r["access_token"].as_str().unwrap().to_string()
}

fn detail(r: &Resp, status: u16) -> String {
    let body = r.expect(status);
    assert_eq!(
        keys_of(&body),
        ["detail"],
        "not the workspace error shape: {body}"
    );
    body["detail"].as_str().unwrap().to_string()
}

fn put_auth(server: &Server, path: &str, token: &str, body: &Value) -> Resp {
    let auth = format!("Bearer {token}");
    server.request(
        "PUT",
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        Some(body.to_string().as_bytes()),
    )
}

pub fn totp(secret_b32: &str, at_secs: u64) -> String {
    use hmac::{KeyInit, Mac};
    let mut key = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in secret_b32.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => continue,
        };
        acc = (acc << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            key.push((acc >> bits) as u8);
        }
    }
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(&key).unwrap();
    mac.update(&(at_secs / 30).to_be_bytes());
    let d = mac.finalize().into_bytes();
    let o = (d[19] & 0x0f) as usize;
    let n = u32::from_be_bytes([d[o] & 0x7f, d[o + 1], d[o + 2], d[o + 3]]) % 1_000_000;
    format!("{n:06}")
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn neosc_api_tests_against_sessiond() {
    let server = Server::start();
    // Login success for admin and user, with their roles.
    let r = server
        .post(
            "/api/auth/login",
            &json!({ "email": ADMIN_EMAIL, "password": ADMIN_PASSWORD }),
        )
        .expect(200);
    assert_eq!(r["token_type"], "bearer");
    assert_eq!(r["access_token"].as_str().unwrap().len(), 43);
    assert_eq!(
        keys_of(&r["user"]),
        ["email", "id", "mfa_enabled", "name", "organization", "role"]
    );
    assert_eq!(r["user"]["role"], "admin");
    assert_eq!(r["user"]["organization"], "personal");
    let admin = r["access_token"].as_str().unwrap().to_string();
    register(&server, &admin, "user@example.com", "user");
    let r = server
        .post(
            "/api/auth/login",
            &json!({ "email": "USER@example.com", "password": "user-password-1" }),
        )
        .expect(200);
    assert_eq!(r["user"]["role"], "user");
    let user = r["access_token"].as_str().unwrap().to_string();

    // Invalid credentials: 401.
    let r = server.post(
        "/api/auth/login",
        &json!({ "email": ADMIN_EMAIL, "password": "wrong" }),
    );
    assert_eq!(detail(&r, 401), "Invalid credentials");
    let r = server.post(
        "/api/auth/login",
        &json!({ "email": "nobody@example.com", "password": "wrong" }),
    );
    assert_eq!(detail(&r, 401), "Invalid credentials");

    // /api/auth/me: 401 without a token, 200 with.
    assert_eq!(
        detail(&server.get("/api/auth/me"), 401),
        "Not authenticated"
    );
    assert_eq!(
        detail(&server.get_auth("/api/auth/me", "garbage"), 401),
        "Invalid token"
    );
    assert_eq!(
        server.get_auth("/api/auth/me", &user).expect(200)["email"],
        "user@example.com"
    );

    // Workspaces: items with id and name (the default catalogue).
    let list = server.get_auth("/api/workspaces", &user).expect(200);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    for id in [
        "ws-sap-neogenesys",
        "ws-remote-desktop",
        "ws-linux-desktop",
        "ws-secure-browser",
    ] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    let sap = list
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == "ws-sap-neogenesys")
        .unwrap();
    assert_eq!(sap["name"], "SAP Neogénesys");
    assert_eq!(sap["type"], "html5");
    assert_eq!(sap["launch_mode"], "iframe");
    assert_eq!(sap["status"], "available");

    // Launch, then sessions and active sessions.
    let launched = server
        .post_auth(
            "/api/workspaces/ws-sap-neogenesys/launch",
            &user,
            &json!({}),
        )
        .expect(200);
    let sid = launched["session_id"].as_str().unwrap().to_string();
    assert_eq!(launched["stream_url"], format!("/viewer/{sid}"));
    assert_eq!(launched["workspace"]["status"], "running");
    assert_eq!(launched["security"]["session_recording"], false);
    let sessions = server.get_auth("/api/sessions", &user).expect(200);
    let s = &sessions[0];
    assert_eq!(
        key_order(
            &server
                .get_auth(&format!("/api/sessions/{sid}"), &user)
                .text()
        ),
        [
            "id",
            "user_id",
            "user_email",
            "workspace_id",
            "workspace_name",
            "workspace_type",
            "status",
            "started_at",
            "ended_at",
            "ip_address",
            "tunnel_status",
            "mfa_verified"
        ]
    );
    assert_eq!(s["id"], sid.as_str());
    assert_eq!(s["user_email"], "user@example.com");
    assert_eq!(s["workspace_id"], "ws-sap-neogenesys");
    assert_eq!(s["workspace_type"], "html5");
    assert_eq!(s["status"], "active");
    assert_eq!(s["ip_address"], "127.0.0.1");
    assert_eq!(s["ended_at"], Value::Null);
    assert_eq!(s["mfa_verified"], false);
    assert_eq!(
        server
            .get_auth("/api/sessions/active", &user)
            .expect(200)
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Audit logs carry action and user_email.
    let logs = server.get_auth("/api/audit-logs", &admin).expect(200);
    let launch = logs
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["action"] == "launch_workspace")
        .expect("launch audited");
    assert_eq!(launch["user_email"], "user@example.com");
    assert_eq!(launch["resource"], format!("session:{sid}"));
    assert_eq!(launch["success"], true);

    // An action on another user's session: 404, like a missing one.
    let admin_session = server
        .post_auth(
            "/api/workspaces/ws-remote-desktop/launch",
            &admin,
            &json!({}),
        )
        .expect(200);
    let other = admin_session["session_id"].as_str().unwrap();
    let r = server.post_auth(
        &format!("/api/sessions/{other}/action"),
        &user,
        &json!({ "action": "logoff" }),
    );
    let missing = server.post_auth(
        "/api/sessions/00000000-0000-4000-8000-000000000000/action",
        &user,
        &json!({ "action": "logoff" }),
    );
    assert_eq!(detail(&r, 404), "Session not found");
    assert_eq!(r.body, missing.body);
    server
        .get_auth(&format!("/api/sessions/{other}"), &user)
        .expect(404);
    // A bogus action: 400.
    detail(
        &server.post_auth(
            &format!("/api/sessions/{sid}/action"),
            &user,
            &json!({ "action": "bogus" }),
        ),
        400,
    );
    // disconnect → disconnected; logoff → terminated.
    let r = server
        .post_auth(
            &format!("/api/sessions/{sid}/action"),
            &user,
            &json!({ "action": "disconnect" }),
        )
        .expect(200);
    assert_eq!(r["message"], "Session disconnected");
    assert_eq!(
        server
            .get_auth(&format!("/api/sessions/{sid}"), &user)
            .expect(200)["status"],
        "disconnected"
    );
    let second = server
        .post_auth("/api/workspaces/ws-linux-desktop/launch", &user, &json!({}))
        .expect(200);
    let second = second["session_id"].as_str().unwrap();
    server
        .post_auth(
            &format!("/api/sessions/{second}/action"),
            &user,
            &json!({ "action": "logoff" }),
        )
        .expect(200);
    let ended = server
        .get_auth(&format!("/api/sessions/{second}"), &user)
        .expect(200);
    assert_eq!(ended["status"], "terminated");
    assert!(ended["ended_at"].is_string());

    // Logout, then /api/auth/me is 401.
    let r = server
        .post_auth("/api/auth/logout", &admin, &json!({}))
        .expect(200);
    assert_eq!(
        r,
        json!({ "message": "Logged out successfully", "sessions_terminated": 1 })
    );
    assert_eq!(
        detail(&server.get_auth("/api/auth/me", &admin), 401),
        "Invalid token"
    );
    let end_reason = server.query(&format!(
        "SELECT status, end_reason FROM sessions WHERE uid = '{other}'"
    ));
    assert_eq!(end_reason[0], vec![json!("terminated"), json!("logout")]);
}

#[test]
fn registration_is_for_admins_only() {
    let server = Server::start();
    let admin = login(&server, ADMIN_EMAIL, ADMIN_PASSWORD);
    let user = register(&server, &admin, "u1@example.com", "user");
    let body = json!({ "email": "u2@example.com", "password": "user-password-1", "name": "U2" });
    detail(&server.post("/api/auth/register", &body), 401);
    assert_eq!(
        detail(&server.post_auth("/api/auth/register", &user, &body), 403),
        "Admin access required"
    );
    let dup = json!({ "email": "U1@example.com", "password": "user-password-1", "name": "again" });
    assert_eq!(
        detail(&server.post_auth("/api/auth/register", &admin, &dup), 400),
        "Email already registered"
    );
    for (bad, field) in [
        (
            json!({ "email": "not-an-email", "password": "user-password-1" }),
            "email",
        ),
        (
            json!({ "email": "x@example.com", "password": "short" }),
            "password",
        ),
        (
            json!({ "email": "x@example.com", "password": "user-password-1", "role": "root" }),
            "role",
        ),
        (
            json!({ "email": 5, "password": "user-password-1" }),
            "email",
        ),
    ] {
        let msg = detail(&server.post_auth("/api/auth/register", &admin, &bad), 400);
        assert!(msg.contains(field), "{bad}: {msg}");
    }
    let admin2 = register(&server, &admin, "a2@example.com", "admin");
    assert_eq!(
        server.get_auth("/api/auth/me", &admin2).expect(200)["role"],
        "admin"
    );
}

#[test]
fn workspace_catalogue_administration_and_derived_status() {
    let server = Server::start();
    let admin = login(&server, ADMIN_EMAIL, ADMIN_PASSWORD);
    let alice = register(&server, &admin, "alice@example.com", "user");
    let bob = register(&server, &admin, "bob@example.com", "user");

    let new = json!({ "id": "ws-lab", "name": "Lab", "type": "linux", "cpu": 4, "memory": "8GB", "requires_netbird": true, "launch_mode": "new_tab" });
    assert_eq!(
        detail(&server.post_auth("/api/workspaces", &alice, &new), 403),
        "Admin access required"
    );
    let created = server
        .post_auth("/api/workspaces", &admin, &new)
        .expect(201);
    assert_eq!(created["status"], "available");
    assert_eq!(created["cpu"], 4);
    assert_eq!(
        key_order(
            &server
                .post_auth(
                    "/api/workspaces",
                    &admin,
                    &json!({ "name": "Auto", "type": "web" })
                )
                .text()
        )[..16],
        [
            "id",
            "name",
            "type",
            "description",
            "image_url",
            "status",
            "cpu",
            "memory",
            "storage",
            "url",
            "connection_type",
            "requires_netbird",
            "clientless",
            "launch_mode",
            "icon",
            "max_session_duration"
        ]
    );
    detail(&server.post_auth("/api/workspaces", &admin, &new), 409);
    for bad in [
        json!({ "name": "x" }),
        json!({ "name": "x", "type": "vr" }),
        json!({ "type": "web" }),
        json!({ "name": "x", "type": "web", "cpu": "4" }),
    ] {
        detail(&server.post_auth("/api/workspaces", &admin, &bad), 400);
    }
    let updated = put_auth(
        &server,
        "/api/workspaces/ws-lab",
        &admin,
        &json!({ "name": "Lab 2", "memory": "16GB" }),
    )
    .expect(200);
    assert_eq!(
        (
            updated["name"].clone(),
            updated["memory"].clone(),
            updated["cpu"].clone()
        ),
        (json!("Lab 2"), json!("16GB"), json!(4))
    );
    detail(
        &put_auth(
            &server,
            "/api/workspaces/ws-nope",
            &admin,
            &json!({ "name": "x" }),
        ),
        404,
    );

    // Status is running while anyone has an active session; one user's stop does not reset it.
    let a = server
        .post_auth("/api/workspaces/ws-lab/launch", &alice, &json!({}))
        .expect(200);
    assert_eq!(
        a["stream_url"],
        Value::Null,
        "new_tab workspaces have no stream_url"
    );
    assert_eq!(a["tunnel_status"], "connected");
    server
        .post_auth("/api/workspaces/ws-lab/launch", &bob, &json!({}))
        .expect(200);
    let status = |token: &str| {
        let list = server.get_auth("/api/workspaces", token).expect(200);
        list.as_array()
            .unwrap()
            .iter()
            .find(|w| w["id"] == "ws-lab")
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(status(&alice), "running");
    let r = server
        .post_auth("/api/workspaces/ws-lab/stop", &alice, &json!({}))
        .expect(200);
    assert_eq!(r["message"], "Workspace stopped successfully");
    assert_eq!(status(&alice), "running", "bob's session keeps it running");
    assert_eq!(
        server
            .get_auth("/api/sessions/active", &bob)
            .expect(200)
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Deleting is refused while bob's session is active.
    detail(
        &server.request(
            "DELETE",
            "/api/workspaces/ws-lab",
            &[("Authorization", &format!("Bearer {admin}"))],
            None,
        ),
        409,
    );
    server
        .post_auth("/api/workspaces/ws-lab/stop", &bob, &json!({}))
        .expect(200);
    assert_eq!(status(&bob), "available");
    let alice_sessions = server.get_auth("/api/sessions", &alice).expect(200);
    assert_eq!(alice_sessions[0]["status"], "terminated");
    assert_eq!(alice_sessions[0]["tunnel_status"], "disconnected");
    // Stop and launch of an unknown workspace: 404 (upstream answered 200 to stop).
    assert_eq!(
        detail(
            &server.post_auth("/api/workspaces/ws-unknown/stop", &alice, &json!({})),
            404
        ),
        "Workspace not found"
    );
    detail(
        &server.post_auth("/api/workspaces/ws-unknown/launch", &alice, &json!({})),
        404,
    );
    let del = server.request(
        "DELETE",
        "/api/workspaces/ws-lab",
        &[("Authorization", &format!("Bearer {admin}"))],
        None,
    );
    assert_eq!(del.expect(200)["message"], "Workspace deleted successfully");
    assert!(
        server
            .get_auth("/api/workspaces", &admin)
            .expect(200)
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["id"] != "ws-lab")
    );
    // Its sessions still name it.
    assert_eq!(
        server.get_auth("/api/sessions", &bob).expect(200)[0]["workspace_name"],
        "Lab 2"
    );
    let reasons =
        server.query("SELECT DISTINCT end_reason FROM sessions WHERE dialect = 'workspace'");
    assert_eq!(reasons, vec![vec![json!("stopped")]]);
}

#[test]
fn disconnect_rules_admin_routes_audit_and_stats() {
    let server = Server::start();
    let admin = login(&server, ADMIN_EMAIL, ADMIN_PASSWORD);
    let user = register(&server, &admin, "carol@example.com", "user");
    let mut ids = Vec::new();
    for ws in ["ws-sap-neogenesys", "ws-remote-desktop", "ws-linux-desktop"] {
        ids.push(
            server
                .post_auth(&format!("/api/workspaces/{ws}/launch"), &user, &json!({}))
                .expect(200)["session_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let r = server.post_auth(
        &format!("/api/sessions/{}/disconnect", ids[0]),
        &user,
        &json!({}),
    );
    assert_eq!(r.expect(200), json!({ "message": "Session disconnected" }));
    let again = server.post_auth(
        &format!("/api/sessions/{}/disconnect", ids[0]),
        &user,
        &json!({}),
    );
    assert_eq!(detail(&again, 409), "Session is not active");
    let audit = server.query(&format!("SELECT action, actor_type FROM audit WHERE action = 'disconnect_session' AND resource_id = '{}'", ids[0]));
    assert_eq!(audit.len(), 1);
    let rows = server
        .get_auth("/api/audit-logs?action=disconnect_session", &admin)
        .expect(200);
    assert_eq!(rows[0]["resource"], format!("session:{}", ids[0]));
    let end = server.query(&format!(
        "SELECT end_reason, ended_at IS NOT NULL FROM sessions WHERE uid = '{}'",
        ids[0]
    ));
    assert_eq!(end[0], vec![json!("disconnected"), json!(1)]);

    // Admin routes: 403 for non-admins, checked before anything else.
    assert_eq!(
        detail(&server.get_auth("/api/admin/sessions", &user), 403),
        "Admin access required"
    );
    let r = server.post_auth(
        "/api/admin/sessions/not-even-an-id/action",
        &user,
        &json!({ "action": "bogus" }),
    );
    assert_eq!(detail(&r, 403), "Admin access required");
    let all = server.get_auth("/api/admin/sessions", &admin).expect(200);
    assert_eq!(all.as_array().unwrap().len(), 3);
    let active = server
        .get_auth("/api/admin/sessions?status=active", &admin)
        .expect(200);
    assert_eq!(active.as_array().unwrap().len(), 2);
    let by_ws = server
        .get_auth("/api/admin/sessions?workspace_id=ws-remote-desktop", &admin)
        .expect(200);
    assert_eq!(by_ws.as_array().unwrap().len(), 1);
    let user_id = server.get_auth("/api/auth/me", &user).expect(200)["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        server
            .get_auth(&format!("/api/admin/sessions?user_id={user_id}"), &admin)
            .expect(200)
            .as_array()
            .unwrap()
            .len(),
        3
    );
    // Paging with a cursor, newest first.
    let page1 = server.get_auth("/api/admin/sessions?limit=2", &admin);
    let cursor = page1
        .header("X-Next-Cursor")
        .expect("a next cursor")
        .to_string();
    let page1 = page1.expect(200);
    let page2 = server
        .get_auth(
            &format!("/api/admin/sessions?limit=2&cursor={cursor}"),
            &admin,
        )
        .expect(200);
    let order: Vec<&str> = page1
        .as_array()
        .unwrap()
        .iter()
        .chain(page2.as_array().unwrap())
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(order, [ids[2].as_str(), ids[1].as_str(), ids[0].as_str()]);
    for bad in [
        "limit=0",
        "limit=501",
        "limit=x",
        "cursor=abc",
        "status=sleeping",
    ] {
        detail(
            &server.get_auth(&format!("/api/admin/sessions?{bad}"), &admin),
            400,
        );
    }
    // The admin acts on the user's session.
    server
        .post_auth(
            &format!("/api/admin/sessions/{}/action", ids[1]),
            &admin,
            &json!({ "action": "logoff" }),
        )
        .expect(200);
    let end = server.query(&format!(
        "SELECT status, end_reason FROM sessions WHERE uid = '{}'",
        ids[1]
    ));
    assert_eq!(end[0], vec![json!("terminated"), json!("admin")]);
    // Lock keeps the session active.
    server
        .post_auth(
            &format!("/api/sessions/{}/action", ids[2]),
            &user,
            &json!({ "action": "lock" }),
        )
        .expect(200);
    assert_eq!(
        server
            .get_auth(&format!("/api/sessions/{}", ids[2]), &user)
            .expect(200)["status"],
        "active"
    );

    // Stats from the store.
    let stats = server.get_auth("/api/stats", &admin).expect(200);
    assert_eq!(
        stats,
        json!({ "active_sessions": 1, "total_workspaces": 4, "total_users": 2 })
    );

    // Audit logs: the admin sees the account's rows, the user only their own.
    let mine = server
        .get_auth("/api/audit-logs?limit=500", &user)
        .expect(200);
    assert!(!mine.as_array().unwrap().is_empty());
    assert!(
        mine.as_array()
            .unwrap()
            .iter()
            .all(|r| r["user_email"] == "carol@example.com"),
        "{mine}"
    );
    let everything = server
        .get_auth("/api/audit-logs?limit=500", &admin)
        .expect(200);
    assert!(
        everything
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["user_email"] == ADMIN_EMAIL)
    );
    assert!(everything.as_array().unwrap().len() > mine.as_array().unwrap().len());
    let first = server.get_auth("/api/audit-logs?limit=1", &admin);
    let cursor = first.header("X-Next-Cursor").unwrap().to_string();
    let newest = first.expect(200)[0]["id"].clone();
    let next = server
        .get_auth(&format!("/api/audit-logs?limit=1&cursor={cursor}"), &admin)
        .expect(200);
    assert_ne!(next[0]["id"], newest);
    assert_eq!(
        server
            .get_auth("/api/audit-logs?since=2999-01-01T00:00:00Z", &admin)
            .expect(200),
        json!([])
    );
    assert!(
        !server
            .get_auth("/api/audit-logs?until=2999-01-01T00:00:00.000Z", &admin)
            .expect(200)
            .as_array()
            .unwrap()
            .is_empty()
    );
    detail(
        &server.get_auth("/api/audit-logs?since=yesterday", &admin),
        400,
    );
    detail(&server.get_auth("/api/audit-logs?limit=501", &admin), 400);
}

#[test]
fn login_throttling_and_failed_logins_are_audited() {
    let server = Server::start();
    for _ in 0..5 {
        detail(
            &server.post(
                "/api/auth/login",
                &json!({ "email": ADMIN_EMAIL, "password": "nope" }),
            ),
            401,
        );
    }
    // Locked out now, even with the right password.
    let r = server.post(
        "/api/auth/login",
        &json!({ "email": ADMIN_EMAIL, "password": ADMIN_PASSWORD }),
    );
    detail(&r, 429);
    let retry: u64 = r.header("Retry-After").unwrap().parse().unwrap();
    assert!((250..=300).contains(&retry), "{retry}");
    // The IP is locked out too, for any email.
    detail(
        &server.post(
            "/api/auth/login",
            &json!({ "email": "other@example.com", "password": "x" }),
        ),
        429,
    );
    let failures =
        server.query("SELECT count(*) FROM audit WHERE action = 'login' AND status = 'failure'");
    assert_eq!(failures[0][0], 7);
    // Malformed logins are 400, not a server error.
    for bad in [
        json!({}),
        json!({ "email": "a@b" }),
        json!({ "email": 1, "password": "x" }),
    ] {
        detail(&server.post("/api/auth/login", &bad), 400);
    }
}

#[test]
fn totp_enrolment_and_mfa_verified_sessions() {
    let server = Server::start();
    let admin = login(&server, ADMIN_EMAIL, ADMIN_PASSWORD);
    let token = register(&server, &admin, "mfa@example.com", "user");
    detail(
        &server.post_auth("/api/auth/mfa/verify", &token, &json!({ "code": "123456" })),
        400,
    );
    let setup = server
        .post_auth("/api/auth/mfa/setup", &token, &json!({}))
        .expect(200);
    let secret = setup["secret"].as_str().unwrap().to_string();
    assert!(
        setup["otpauth_url"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/")
    );
    assert!(setup["otpauth_url"].as_str().unwrap().contains(&secret));
    let wrong = if totp(&secret, now_secs()) == "000000" {
        "111111"
    } else {
        "000000"
    };
    detail(
        &server.post_auth("/api/auth/mfa/verify", &token, &json!({ "code": wrong })),
        400,
    );
    let r = server
        .post_auth(
            "/api/auth/mfa/verify",
            &token,
            &json!({ "code": totp(&secret, now_secs()) }),
        )
        .expect(200);
    assert_eq!(r["mfa_enabled"], true);
    assert_eq!(
        server.get_auth("/api/auth/me", &token).expect(200)["mfa_enabled"],
        true
    );
    detail(
        &server.post_auth("/api/auth/mfa/setup", &token, &json!({})),
        400,
    );

    // The token from before enrolment did not pass a second factor.
    let s = server
        .post_auth(
            "/api/workspaces/ws-secure-browser/launch",
            &token,
            &json!({}),
        )
        .expect(200);
    assert_eq!(s["security"]["mfa_verified"], false);
    assert_eq!(s["security"]["mfa_enforced"], true);

    let creds = json!({ "email": "mfa@example.com", "password": "user-password-1" });
    assert_eq!(
        detail(&server.post("/api/auth/login", &creds), 401),
        "MFA code required"
    );
    let mut with_otp = creds.clone();
    with_otp["otp"] = json!(wrong);
    assert_eq!(
        detail(&server.post("/api/auth/login", &with_otp), 401),
        "Invalid MFA code"
    );
    with_otp["otp"] = json!(totp(&secret, now_secs()));
    let r = server.post("/api/auth/login", &with_otp).expect(200);
    let mfa_token = r["access_token"].as_str().unwrap();
    let s = server
        .post_auth(
            "/api/workspaces/ws-secure-browser/launch",
            mfa_token,
            &json!({}),
        )
        .expect(200);
    assert_eq!(s["security"]["mfa_verified"], true);
    let sid = s["session_id"].as_str().unwrap();
    assert_eq!(
        server
            .get_auth(&format!("/api/sessions/{sid}"), mfa_token)
            .expect(200)["mfa_verified"],
        true
    );
    // Both failures counted towards throttling and were audited.
    let failures = server.query(
        "SELECT summary FROM audit WHERE action = 'login' AND status = 'failure' ORDER BY id",
    );
    assert_eq!(
        failures,
        vec![
            vec![json!("MFA code required")],
            vec![json!("Invalid MFA code")]
        ]
    );
}

#[test]
fn the_reaper_ends_sessions_by_duration_and_by_idle_time() {
    let server = Server::start_with(Opts::default().arg("--reap-interval", "100ms"));
    let admin = login(&server, ADMIN_EMAIL, ADMIN_PASSWORD);
    server
        .post_auth(
            "/api/workspaces",
            &admin,
            &json!({ "id": "ws-short", "name": "Short", "type": "web", "max_session_duration": 1 }),
        )
        .expect(201);
    server
        .post_auth(
            "/api/workspaces",
            &admin,
            &json!({ "id": "ws-idle", "name": "Idle", "type": "web", "idle_timeout": 1 }),
        )
        .expect(201);
    let short = server
        .post_auth("/api/workspaces/ws-short/launch", &admin, &json!({}))
        .expect(200)["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let idle = server
        .post_auth("/api/workspaces/ws-idle/launch", &admin, &json!({}))
        .expect(200)["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Heartbeats keep the idle one alive past its timeout.
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(250));
        server
            .post_auth(
                &format!("/api/sessions/{idle}/heartbeat"),
                &admin,
                &json!({}),
            )
            .expect(200);
    }
    let state = |id: &str| {
        server.query(&format!(
            "SELECT status, end_reason FROM sessions WHERE uid = '{id}'"
        ))[0]
            .clone()
    };
    assert_eq!(state(&short), vec![json!("terminated"), json!("expired")]);
    assert_eq!(state(&idle), vec![json!("active"), Value::Null]);
    assert!(eventually(Duration::from_secs(5), || state(&idle)
        == vec![json!("terminated"), json!("idle")]));
    let r = server.post_auth(
        &format!("/api/sessions/{idle}/heartbeat"),
        &admin,
        &json!({}),
    );
    assert_eq!(detail(&r, 409), "Session is not active");
    let audit = server.query("SELECT action, actor_type FROM audit WHERE action IN ('session.expired', 'session.idle') ORDER BY id");
    assert_eq!(
        audit,
        vec![
            vec![json!("session.expired"), json!("system")],
            vec![json!("session.idle"), json!("system")]
        ]
    );
}

#[test]
fn client_addresses_come_from_trusted_proxies_only() {
    let untrusted = Server::start();
    let admin = login(&untrusted, ADMIN_EMAIL, ADMIN_PASSWORD);
    let auth = format!("Bearer {admin}");
    let launch = |server: &Server| {
        let r = server.request(
            "POST",
            "/api/workspaces/ws-remote-desktop/launch",
            &[
                ("Authorization", &auth),
                ("X-Forwarded-For", "198.51.100.7, 203.0.113.9"),
            ],
            None,
        );
        let sid = r.expect(200)["session_id"].as_str().unwrap().to_string();
        server
            .get_auth(&format!("/api/sessions/{sid}"), &admin)
            .expect(200)["ip_address"]
            .clone()
    };
    assert_eq!(launch(&untrusted), "127.0.0.1");
    drop(untrusted);
    let trusted = Server::start_with(Opts::default().arg("--trusted-proxies", "127.0.0.1"));
    let admin2 = login(&trusted, ADMIN_EMAIL, ADMIN_PASSWORD);
    let auth2 = format!("Bearer {admin2}");
    let r = trusted.request(
        "POST",
        "/api/workspaces/ws-remote-desktop/launch",
        &[
            ("Authorization", &auth2),
            ("X-Forwarded-For", "198.51.100.7, 203.0.113.9"),
        ],
        None,
    );
    let sid = r.expect(200)["session_id"].as_str().unwrap().to_string();
    assert_eq!(
        trusted
            .get_auth(&format!("/api/sessions/{sid}"), &admin2)
            .expect(200)["ip_address"],
        "203.0.113.9"
    );
}

#[test]
fn accounts_are_isolated_and_the_user_cli_manages_users() {
    let dir = std::sync::Arc::new(TempDir::new());
    let db = dir.path().join("sessiond.db");
    let cli = |args: &[&str], password: Option<&str>| {
        let mut cmd = Command::new(bin());
        cmd.arg("user").args(args).arg("--db").arg(&db);
        if let Some(p) = password {
            cmd.env("SESSIOND_USER_PASSWORD", p);
        }
        cmd.output().unwrap()
    };
    // A user of another account (the built-in anonymous account stands in for a second tenant).
    assert!(
        cli(
            &[
                "add",
                "--email",
                "eve@example.com",
                "--name",
                "Eve",
                "--account",
                "anonymous",
                "--admin"
            ],
            Some("eve-password-1")
        )
        .status
        .success()
    );
    assert!(
        cli(
            &["add", "--email", "dan@example.com", "--name", "Dan"],
            Some("dan-password-1")
        )
        .status
        .success()
    );
    assert_eq!(
        cli(
            &["add", "--email", "dan@example.com"],
            Some("dan-password-1")
        )
        .status
        .code(),
        Some(1),
        "duplicate email"
    );
    assert_eq!(
        cli(&["add", "--email", "x@example.com"], Some("short"))
            .status
            .code(),
        Some(2)
    );
    assert_eq!(cli(&["add"], Some("long-enough-1")).status.code(), Some(2));
    let server = Server::start_in(dir.clone(), Opts::default());
    let admin = login(&server, ADMIN_EMAIL, ADMIN_PASSWORD);
    let eve = login(&server, "eve@example.com", "eve-password-1");
    let dan = login(&server, "dan@example.com", "dan-password-1");
    assert_eq!(
        server.get_auth("/api/auth/me", &dan).expect(200)["role"],
        "user"
    );
    let sid = server
        .post_auth("/api/workspaces/ws-sap-neogenesys/launch", &dan, &json!({}))
        .expect(200)["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Eve, an admin elsewhere, sees nothing of this account.
    assert_eq!(
        server.get_auth("/api/workspaces", &eve).expect(200),
        json!([])
    );
    detail(
        &server.post_auth("/api/workspaces/ws-sap-neogenesys/launch", &eve, &json!({})),
        404,
    );
    detail(&server.get_auth(&format!("/api/sessions/{sid}"), &eve), 404);
    detail(
        &server.post_auth(
            &format!("/api/admin/sessions/{sid}/action"),
            &eve,
            &json!({ "action": "logoff" }),
        ),
        404,
    );
    assert_eq!(
        server.get_auth("/api/admin/sessions", &eve).expect(200),
        json!([])
    );
    let eves_view = server
        .get_auth("/api/audit-logs?limit=500", &eve)
        .expect(200);
    assert!(
        eves_view
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["user_email"] != "dan@example.com"
                && r["user_email"] != ADMIN_EMAIL
                && !r["resource"].as_str().unwrap().contains(&sid)),
        "another account's audit rows leaked: {eves_view}"
    );
    assert_eq!(
        server.get_auth("/api/stats", &eve).expect(200)["active_sessions"],
        0
    );
    assert_eq!(
        server.get_auth("/api/stats", &admin).expect(200)["active_sessions"],
        1
    );

    // passwd changes the password; disable locks the user out and invalidates their tokens.
    assert!(
        cli(
            &["passwd", "--email", "dan@example.com"],
            Some("dan-password-2")
        )
        .status
        .success()
    );
    detail(
        &server.post(
            "/api/auth/login",
            &json!({ "email": "dan@example.com", "password": "dan-password-1" }),
        ),
        401,
    );
    let dan2 = login(&server, "dan@example.com", "dan-password-2");
    assert!(
        cli(&["disable", "--email", "dan@example.com"], None)
            .status
            .success()
    );
    detail(&server.get_auth("/api/auth/me", &dan2), 401);
    detail(
        &server.post(
            "/api/auth/login",
            &json!({ "email": "dan@example.com", "password": "dan-password-2" }),
        ),
        401,
    );
    assert_eq!(
        cli(&["disable", "--email", "nobody@example.com"], None)
            .status
            .code(),
        Some(1)
    );
    assert!(
        cli(&["enable", "--email", "dan@example.com"], None)
            .status
            .success()
    );
    login(&server, "dan@example.com", "dan-password-2");

    // No password, login token or key in the database file.
    let log = server.log_text();
    drop(server);
    let bytes = std::fs::read(&db).unwrap();
    for secret in [
        ADMIN_PASSWORD,
        "eve-password-1",
        "dan-password-1",
        "dan-password-2",
        admin.as_str(),
        eve.as_str(),
        dan.as_str(),
        dan2.as_str(),
    ] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} in the database file"
        );
        assert!(!log.contains(secret), "{secret} in the log");
    }
}

/// The two NeoSC client scripts (monitor active sessions; disconnect sessions older than N hours)
/// run unchanged against sessiond, given only its URL and a token.
#[test]
fn neosc_client_scripts_work_against_sessiond() {
    let Ok(python) = which_python() else {
        panic!("python3 is needed for the NeoSC client scripts and was not found on PATH");
    };
    let server = Server::start();
    let admin = login(&server, ADMIN_EMAIL, ADMIN_PASSWORD);
    let user = register(&server, &admin, "frank@example.com", "user");
    let mut ids = Vec::new();
    for ws in ["ws-sap-neogenesys", "ws-remote-desktop", "ws-linux-desktop"] {
        ids.push(
            server
                .post_auth(&format!("/api/workspaces/{ws}/launch"), &user, &json!({}))
                .expect(200)["session_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // One session started three hours ago.
    server.exec_sql(&format!(
        "UPDATE sessions SET created_at = created_at - 3 * 3600 * 1000 WHERE uid = '{}'",
        ids[0]
    ));
    let script = |name: &str, args: &[&str]| {
        let out = Command::new(&python)
            .arg(format!(
                "{}/tests/clients/{name}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .args(args)
            .env("NEOSC_URL", format!("http://{}", server.addr))
            .env("NEOSC_TOKEN", &admin)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let monitor = script("monitor_active_sessions.py", &["--once"]);
    assert!(
        monitor.starts_with("3 active session(s), 4 workspaces, 2 users"),
        "{monitor}"
    );
    for id in &ids {
        assert!(monitor.contains(id.as_str()), "{monitor}");
    }
    assert!(monitor.contains("frank@example.com") && monitor.contains("SAP Neogénesys"));
    let dry = script("disconnect_old_sessions.py", &["--hours", "2", "--dry-run"]);
    assert!(
        dry.contains(&ids[0]) && dry.contains("Disconnected 0 session(s)"),
        "{dry}"
    );
    let out = script("disconnect_old_sessions.py", &["--hours", "2"]);
    assert!(out.contains("Disconnected 1 session(s)"), "{out}");
    let statuses: Vec<String> = ids
        .iter()
        .map(|id| {
            server
                .get_auth(&format!("/api/sessions/{id}"), &user)
                .expect(200)["status"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(statuses, ["disconnected", "active", "active"]);
}

fn which_python() -> Result<String, ()> {
    for candidate in ["python3", "python"] {
        if Command::new(candidate)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Ok(candidate.to_string());
        }
    }
    Err(())
}

#[test]
fn login_tokens_expire_idle_or_absolute_and_the_reaper_removes_them() {
    let server = Server::start_with(Opts::default().arg("--reap-interval", "100ms"));
    let idle = login(&server, ADMIN_EMAIL, ADMIN_PASSWORD);
    let old = login(&server, ADMIN_EMAIL, ADMIN_PASSWORD);
    let fresh = login(&server, ADMIN_EMAIL, ADMIN_PASSWORD);
    let expiry = server.query("SELECT expires_at - created_at, idle_expires_at - created_at FROM credentials WHERE kind = 'login' LIMIT 1");
    assert_eq!(
        expiry[0],
        vec![json!(7 * 86_400_000i64), json!(12 * 3_600_000i64)]
    );
    // Stand-ins for time passing: one token idle past 12 h, one past its 7-day lifetime.
    let ids = server.query("SELECT id FROM credentials WHERE kind = 'login' ORDER BY id");
    server.exec_sql(&format!(
        "UPDATE credentials SET idle_expires_at = 1 WHERE id = {}",
        ids[0][0]
    ));
    server.exec_sql(&format!(
        "UPDATE credentials SET expires_at = 1 WHERE id = {}",
        ids[1][0]
    ));
    detail(&server.get_auth("/api/auth/me", &idle), 401);
    detail(&server.get_auth("/api/auth/me", &old), 401);
    server.get_auth("/api/auth/me", &fresh).expect(200);
    assert!(eventually(Duration::from_secs(5), || server
        .query("SELECT count(*) FROM credentials WHERE kind = 'login'")
        [0][0]
        == 1));
}
