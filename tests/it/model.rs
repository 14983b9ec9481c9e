//! Model-based tests (issue 7): random operations on share and workspace sessions, each answer
//! compared with a small in-memory model of the SPEC's rules, and the whole state compared now and
//! then. The seed is printed; `SESSIOND_TEST_SEED` repeats a run. `SESSIOND_SLOW_TESTS=1` runs ten
//! times as many operations.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};

use crate::crash::{Rng, slow_suite};
use crate::support::*;
use crate::workspace::{ADMIN_EMAIL, ADMIN_PASSWORD, login, register};

// ---------------------------------------------------------------------------------------------
// Share sessions: admission, kicks, policy, close, delete, expiry (the reaper).

#[derive(Debug)]
struct MShare {
    id: String,
    slug: String,
    owner: String,
    public: bool,
    max: u64,
    password: Option<String>,
    closed: bool,
    expired: bool,
    deleted: bool,
    /// Admitted viewers and whether each has passed the current password.
    viewers: BTreeMap<String, bool>,
    kicked: BTreeSet<String>,
}

impl MShare {
    /// What the SPEC (§4) says an admission gets: (allow, status, reason).
    fn admit(&mut self, viewer: &str, password: Option<&str>) -> (bool, u64, &'static str) {
        if self.closed {
            return (false, 410, "closed");
        }
        if self.expired {
            return (false, 410, "expired");
        }
        if self.kicked.contains(viewer) {
            return (false, 403, "kicked");
        }
        if !self.public {
            return (false, 401, "locked");
        }
        let passed_before = self.viewers.get(viewer).copied().unwrap_or(false);
        let mut passes = false;
        if let Some(p) = &self.password {
            if !passed_before {
                if password != Some(p.as_str()) {
                    return (false, 401, "password_required");
                }
                passes = true;
            }
        }
        let is_new = !self.viewers.contains_key(viewer);
        if is_new && self.max > 0 && self.viewers.len() as u64 >= self.max {
            return (false, 429, "too_many_viewers");
        }
        *self.viewers.entry(viewer.to_string()).or_insert(false) |= passes;
        (true, 200, "allowed")
    }
}

fn admit_raw(server: &Server, slug: &str, body: &Value) -> Resp {
    let raw = serde_json::to_vec(body).unwrap();
    let auth = format!("Bearer {GATEWAY_KEY}");
    request(
        &server.addr,
        "POST",
        &format!("/internal/sessions/by-slug/{slug}/admit"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        Some(&raw),
    )
}

fn check_share(server: &Server, m: &MShare, step: usize) {
    let r = server.get_auth(&format!("/sessions/{}", m.id), &m.owner);
    if m.deleted {
        assert_eq!(r.status, 404, "step {step}: deleted share {}", m.slug);
        return;
    }
    let v = r.expect(200);
    let mut live: Vec<String> = v["activeViewers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_string())
        .collect();
    live.sort();
    let want: Vec<String> = m.viewers.keys().cloned().collect();
    assert_eq!(live, want, "step {step}: viewers of {}: {v}", m.slug);
    assert_eq!(v["policy"]["public"], m.public, "step {step}: {v}");
    assert_eq!(
        v["policy"]["maxConcurrentViewers"], m.max,
        "step {step}: {v}"
    );
    if m.closed {
        assert_eq!(v["closed"], true, "step {step}: {v}");
    }
}

#[test]
fn share_sessions_follow_the_model_under_random_operations() {
    let steps = if slow_suite() { 6000 } else { 600 };
    let mut rng = Rng::seeded();
    let server = Server::start_with(
        Opts::default()
            .arg("--viewer-idle-timeout", "1h")
            .arg("--anonymous-share-rate", "0"),
    );
    let mut shares: Vec<MShare> = Vec::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for step in 0..steps {
        let op = if shares.is_empty() { 0 } else { rng.below(100) };
        // Mostly the few newest shares, so that operations pile up on the same sessions.
        let n = shares.len().max(1) as u64;
        let pick = if rng.below(4) == 0 {
            rng.below(n)
        } else {
            n - 1 - rng.below(n.min(3))
        } as usize;
        let kind = match op {
            0..=7 => {
                let max = rng.below(4);
                let s = create_share(&server, &json!({"policy": {"maxConcurrentViewers": max}}));
                shares.push(MShare {
                    id: s.id,
                    slug: s.slug,
                    owner: s.owner_token,
                    public: true,
                    max,
                    password: None,
                    closed: false,
                    expired: false,
                    deleted: false,
                    viewers: BTreeMap::new(),
                    kicked: BTreeSet::new(),
                });
                "create"
            }
            8..=59 => {
                let m = &mut shares[pick];
                let viewer = format!("viewer{:06x}", rng.below(4));
                let password = match (rng.below(4), &m.password) {
                    (0 | 1, Some(p)) => Some(p.clone()),
                    (2, _) => Some("wrong-guess".to_string()),
                    _ => None,
                };
                // Each attempt from its own address: the guessing throttle is another test's.
                let ip = format!(
                    "10.{}.{}.{}",
                    rng.below(250),
                    rng.below(250),
                    rng.below(250)
                );
                let mut body = json!({"viewerId": viewer, "ip": ip, "path": "/"});
                if let Some(p) = &password {
                    body["password"] = json!(p);
                }
                let r = admit_raw(&server, &m.slug, &body);
                if m.deleted {
                    assert_eq!(r.status, 404, "step {step}");
                } else {
                    let got = r.expect(200);
                    let want = m.admit(&viewer, password.as_deref());
                    let got = (
                        got["allow"].as_bool().unwrap(),
                        got["status"].as_u64().unwrap(),
                        got["reason"].as_str().unwrap().to_string(),
                    );
                    assert_eq!(
                        (got.0, got.1, got.2.as_str()),
                        want,
                        "step {step}: admit {viewer} {password:?} to {m:?}"
                    );
                }
                "admit"
            }
            60..=67 => {
                let m = &mut shares[pick];
                let viewer = format!("viewer{:06x}", rng.below(4));
                let r = server.post_auth(
                    &format!("/owner/sessions/by-slug/{}/kick", m.slug),
                    &m.owner,
                    &json!({"viewerId": viewer}),
                );
                if m.deleted {
                    assert_eq!(r.status, 404, "step {step}");
                } else {
                    r.expect(200);
                    m.viewers.remove(&viewer);
                    m.kicked.insert(viewer);
                }
                "kick"
            }
            68..=81 => {
                let m = &mut shares[pick];
                let mut body = json!({});
                match rng.below(4) {
                    0 => body["public"] = json!(rng.below(3) != 0),
                    1 => body["maxConcurrentViewers"] = json!(rng.below(4)),
                    _ => {
                        body["password"] = json!(if rng.below(3) == 0 { "" } else { "open-sesame" })
                    }
                }
                let r = server.post_auth(
                    &format!("/owner/sessions/by-slug/{}/policy", m.slug),
                    &m.owner,
                    &body,
                );
                if m.deleted {
                    assert_eq!(r.status, 404, "step {step}");
                } else {
                    r.expect(200);
                    if let Some(p) = body["public"].as_bool() {
                        m.public = p;
                    }
                    if let Some(x) = body["maxConcurrentViewers"].as_u64() {
                        m.max = x;
                    }
                    if let Some(p) = body["password"].as_str() {
                        // A new password (or none) must be passed again by everyone.
                        m.password = (!p.is_empty()).then(|| p.to_string());
                        m.viewers.values_mut().for_each(|passed| *passed = false);
                    }
                }
                "policy"
            }
            82..=86 if !shares[pick].expired => {
                // Closing an expired share races the reaper (either reason is right): not drawn.
                let m = &mut shares[pick];
                let r = server.post_auth(
                    &format!("/owner/sessions/by-slug/{}/close", m.slug),
                    &m.owner,
                    &json!({}),
                );
                if m.deleted {
                    assert_eq!(r.status, 404, "step {step}");
                } else {
                    r.expect(200);
                    m.closed = true;
                }
                "close"
            }
            87..=89 => {
                let m = &mut shares[pick];
                let r = server.delete_auth(&format!("/sessions/{}", m.id), &m.owner);
                if m.deleted {
                    assert_eq!(r.status, 404, "step {step}");
                } else {
                    r.expect(200);
                    m.deleted = true;
                }
                "delete"
            }
            90..=93 if !shares[pick].closed && !shares[pick].deleted => {
                // Time passes for this session: it is due, and the reaper ends it.
                let m = &mut shares[pick];
                server.exec_sql(&format!(
                    "UPDATE sessions SET expires_at = 1 WHERE uid = '{}'",
                    m.id
                ));
                m.expired = true;
                "expire"
            }
            _ => {
                check_share(&server, &shares[pick], step);
                "check"
            }
        };
        *counts.entry(kind).or_insert(0) += 1;
    }
    // The reaper has ended every expired share with an audit row, and nothing else.
    let expired: Vec<&MShare> = shares.iter().filter(|m| m.expired && !m.deleted).collect();
    assert!(eventually(Duration::from_secs(10), || {
        expired.iter().all(|m| {
            server.query(&format!(
                "SELECT end_reason FROM sessions WHERE uid = '{}'",
                m.id
            ))[0][0]
                == "expired"
        })
    }));
    for (i, m) in shares.iter().enumerate() {
        check_share(&server, m, steps + i);
    }
    eprintln!("{} shares; operations: {counts:?}", shares.len());
}

// ---------------------------------------------------------------------------------------------
// Workspace sessions: launch, disconnect, actions, heartbeats, stop, admin actions, logout.

#[derive(Debug, Clone, PartialEq)]
struct MSession {
    id: String,
    user: usize,
    workspace: usize,
    status: &'static str,
}

const WORKSPACES: [&str; 2] = ["ws-sap-neogenesys", "ws-remote-desktop"];

#[test]
fn workspace_sessions_follow_the_model_under_random_operations() {
    let steps = if slow_suite() { 3000 } else { 300 };
    let mut rng = Rng::seeded();
    let server = Server::start();
    let admin = login(&server, ADMIN_EMAIL, ADMIN_PASSWORD);
    register(&server, &admin, "u0@example.com", "user");
    register(&server, &admin, "u1@example.com", "user");
    let sign_in = |u: usize| login(&server, &format!("u{u}@example.com"), "user-password-1");
    let mut tokens = [sign_in(0), sign_in(1)];
    let mut sessions: Vec<MSession> = Vec::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let active = |sessions: &[MSession], u: usize, w: usize| {
        sessions
            .iter()
            .filter(|s| s.user == u && s.workspace == w && s.status == "active")
            .count()
    };
    for step in 0..steps {
        let u = rng.below(2) as usize;
        let token = tokens[u].clone();
        let op = if sessions.is_empty() {
            0
        } else {
            rng.below(100)
        };
        let pick = rng.below(sessions.len().max(1) as u64) as usize;
        let kind = match op {
            0..=24 => {
                let w = rng.below(2) as usize;
                let r = server.post_auth(
                    &format!("/api/workspaces/{}/launch", WORKSPACES[w]),
                    &token,
                    &json!({}),
                );
                let id = r.expect(200)["session_id"].as_str().unwrap().to_string();
                sessions.push(MSession {
                    id,
                    user: u,
                    workspace: w,
                    status: "active",
                });
                "launch"
            }
            25..=64 => {
                let s = &mut sessions[pick];
                let (path, body, outcome): (String, Value, Option<&'static str>) =
                    match rng.below(5) {
                        0 => (
                            format!("/api/sessions/{}/disconnect", s.id),
                            json!({}),
                            Some("disconnected"),
                        ),
                        1 => (
                            format!("/api/sessions/{}/action", s.id),
                            json!({"action": "logoff"}),
                            Some("terminated"),
                        ),
                        2 => (
                            format!("/api/sessions/{}/action", s.id),
                            json!({"action": "disconnect"}),
                            Some("disconnected"),
                        ),
                        3 => (
                            format!("/api/sessions/{}/action", s.id),
                            json!({"action": "lock"}),
                            None,
                        ),
                        _ => (format!("/api/sessions/{}/heartbeat", s.id), json!({}), None),
                    };
                let r = server.post_auth(&path, &token, &body);
                let want = if s.user != u {
                    404
                } else if s.status != "active" {
                    409
                } else {
                    200
                };
                assert_eq!(
                    r.status,
                    want,
                    "step {step}: {path} {body} by u{u} on {s:?}: {}",
                    r.text()
                );
                if want == 200 {
                    if let Some(status) = outcome {
                        s.status = status;
                    }
                }
                "own action"
            }
            65..=74 => {
                let s = &mut sessions[pick];
                let r = server.post_auth(
                    &format!("/api/admin/sessions/{}/action", s.id),
                    &admin,
                    &json!({"action": "logoff"}),
                );
                let want = if s.status == "active" { 200 } else { 409 };
                assert_eq!(
                    r.status,
                    want,
                    "step {step}: admin logoff of {s:?}: {}",
                    r.text()
                );
                if want == 200 {
                    s.status = "terminated";
                }
                "admin action"
            }
            75..=82 => {
                let w = rng.below(2) as usize;
                server
                    .post_auth(
                        &format!("/api/workspaces/{}/stop", WORKSPACES[w]),
                        &token,
                        &json!({}),
                    )
                    .expect(200);
                for s in sessions.iter_mut() {
                    if s.user == u && s.workspace == w && s.status == "active" {
                        s.status = "terminated";
                    }
                }
                "stop"
            }
            83..=85 => {
                let r = server
                    .post_auth("/api/auth/logout", &token, &json!({}))
                    .expect(200);
                let mine = (0..2).map(|w| active(&sessions, u, w)).sum::<usize>();
                assert_eq!(
                    r["sessions_terminated"], mine,
                    "step {step}: logout of u{u}"
                );
                for s in sessions.iter_mut() {
                    if s.user == u && s.status == "active" {
                        s.status = "terminated";
                    }
                }
                assert_eq!(server.get_auth("/api/auth/me", &token).status, 401);
                tokens[u] = sign_in(u);
                "logout"
            }
            _ => {
                // The user's own list, their active list, and the workspaces' derived status.
                let list = server
                    .get_auth("/api/sessions?limit=500", &token)
                    .expect(200);
                let got: BTreeMap<String, String> = list
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| {
                        (
                            s["id"].as_str().unwrap().to_string(),
                            s["status"].as_str().unwrap().to_string(),
                        )
                    })
                    .collect();
                let want: BTreeMap<String, String> = sessions
                    .iter()
                    .filter(|s| s.user == u)
                    .map(|s| (s.id.clone(), s.status.to_string()))
                    .collect();
                assert_eq!(got, want, "step {step}: sessions of u{u}");
                let act = server.get_auth("/api/sessions/active", &token).expect(200);
                assert_eq!(
                    act.as_array().unwrap().len(),
                    want.values().filter(|s| *s == "active").count(),
                    "step {step}"
                );
                let list = server.get_auth("/api/workspaces", &token).expect(200);
                for (w, name) in WORKSPACES.iter().enumerate() {
                    let ws = list
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|x| x["id"] == *name)
                        .unwrap();
                    let running = (0..2).any(|u| active(&sessions, u, w) > 0);
                    assert_eq!(
                        ws["status"],
                        if running { "running" } else { "available" },
                        "step {step}: {name}"
                    );
                }
                "check"
            }
        };
        *counts.entry(kind).or_insert(0) += 1;
    }
    let stats = server.get_auth("/api/stats", &admin).expect(200);
    assert_eq!(
        stats["active_sessions"],
        sessions.iter().filter(|s| s.status == "active").count()
    );
    eprintln!("{} sessions; operations: {counts:?}", sessions.len());
}
