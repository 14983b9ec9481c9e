//! Viewer admission (SPEC §4): every outcome in its order, exactly-N capacity under concurrency,
//! remembered passwords, gateway snapshots, and the reaper's age-out.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

pub fn basic(password: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("worm:{password}").into_bytes();
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    format!("Basic {out}")
}

#[test]
fn every_outcome_in_order() {
    // A slow reaper, so that a session past its expiry is seen as expired rather than closed.
    let server = Server::start_with(Opts::default().arg("--reap-interval", "1h"));
    let created = server
        .post("/sessions", &json!({ "authMode": "basic" }))
        .expect(201);
    let slug = created["slug"].as_str().unwrap().to_string();
    let owner = created["ownerToken"].as_str().unwrap().to_string();
    let password = created["password"].as_str().unwrap().to_string();
    let policy = |body: serde_json::Value| {
        server
            .post_auth(
                &format!("/owner/sessions/by-slug/{slug}/policy"),
                &owner,
                &body,
            )
            .expect(200);
    };
    let ask = |body: serde_json::Value| admit(&server, &slug, &body);

    // Unknown slug: 404.
    let r = server.post_auth(
        "/internal/sessions/by-slug/no-such-slug-1/admit",
        GATEWAY_KEY,
        &json!({ "ip": "1.1.1.1", "path": "/" }),
    );
    assert_eq!(r.expect(404)["error"], "Session not found");
    // Without the gateway key: 401.
    server
        .post(
            "/internal/sessions/by-slug/no-such-slug-1/admit",
            &json!({ "ip": "1.1.1.1", "path": "/" }),
        )
        .expect_error(401);

    // Basic auth required, wrong password, wrong user.
    let (allow, status, reason, id) = ask(json!({ "ip": "1.1.1.1", "path": "/" }));
    assert_eq!(
        (allow, status, reason.as_str()),
        (false, 401, "basic_auth_required")
    );
    let fresh = id.unwrap();
    assert!(
        fresh.len() == 12 && fresh.bytes().all(|c| c.is_ascii_hexdigit()),
        "fresh viewer id {fresh}"
    );
    assert_eq!(
        ask(json!({ "ip": "1.1.1.1", "path": "/", "authorization": basic("wrong") })).2,
        "basic_auth_required"
    );
    assert_eq!(
        ask(json!({ "ip": "1.1.1.1", "path": "/", "authorization": "Basic dXNlcjpwYXNz" })).2,
        "basic_auth_required"
    );
    let auth = basic(&password);
    let (allow, status, reason, _) =
        ask(json!({ "viewerId": "v1", "ip": "1.1.1.1", "path": "/", "authorization": auth }));
    assert_eq!((allow, status, reason.as_str()), (true, 200, "allowed"));

    // Viewer password on top: required, wrong, right, then remembered for this viewer id.
    policy(json!({ "password": "letmein" }));
    let base = json!({ "viewerId": "v2", "ip": "1.1.1.2", "path": "/", "authorization": auth });
    let with = |extra: serde_json::Value| {
        let mut b = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    assert_eq!(ask(base.clone()).2, "password_required");
    assert_eq!(
        ask(with(json!({ "password": "nope" }))).2,
        "password_required"
    );
    assert!(ask(with(json!({ "password": "letmein" }))).0);
    assert!(
        ask(base.clone()).0,
        "a viewer that passed the password once is remembered"
    );
    assert_eq!(
        ask(with(json!({ "viewerId": "v3" }))).2,
        "password_required",
        "other viewers are not"
    );
    // Basic auth is checked before the viewer password.
    assert_eq!(
        ask(with(
            json!({ "viewerId": "v3", "authorization": null, "password": "letmein" })
        ))
        .2,
        "basic_auth_required"
    );

    // Blocked paths: at segment boundaries, after the password checks.
    policy(json!({ "blockPaths": ["/admin"] }));
    assert_eq!(ask(with(json!({ "path": "/admin" }))).1, 403);
    assert_eq!(
        ask(with(json!({ "path": "/admin/users?x=1" }))).2,
        "path_blocked"
    );
    assert!(ask(with(json!({ "path": "/administrator" }))).0);

    // Locked: before basic auth and passwords.
    policy(json!({ "public": false }));
    assert_eq!(ask(json!({ "ip": "1.1.1.1", "path": "/" })).2, "locked");
    assert_eq!(ask(base.clone()).1, 401);

    // The owner token passes everything (and is not tracked as a viewer).
    let (allow, status, _, id) =
        ask(json!({ "ip": "9.9.9.9", "path": "/admin", "ownerToken": owner }));
    assert!(allow && status == 200);
    assert!(id.is_none());

    // Kicked comes before locked.
    server
        .post_auth(
            &format!("/owner/sessions/by-slug/{slug}/kick"),
            &owner,
            &json!({ "viewerId": "v2" }),
        )
        .expect(200);
    assert_eq!(ask(base.clone()).2, "kicked");

    // Expired (stored expiry in the past, reaper not yet run) and closed come first of all.
    policy(json!({ "public": true }));
    server.exec_sql(&format!(
        "UPDATE sessions SET expires_at = 1000 WHERE id = (SELECT session_id FROM shares WHERE slug = '{slug}')"
    ));
    let (allow, status, reason, _) =
        ask(json!({ "ip": "1.1.1.1", "path": "/", "ownerToken": owner }));
    assert_eq!((allow, status, reason.as_str()), (false, 410, "expired"));
    server
        .post_auth(
            &format!("/owner/sessions/by-slug/{slug}/close"),
            &owner,
            &json!({}),
        )
        .expect(200);
    assert_eq!(ask(base).2, "closed");

    // The viewer ids and counts the full view shows.
    let full = server
        .get_auth(&format!("/owner/sessions/by-slug/{slug}"), &owner)
        .expect(200);
    let viewers = full["activeViewers"].as_array().unwrap();
    let v1 = viewers
        .iter()
        .find(|v| v["id"] == "v1")
        .expect("v1 tracked");
    assert_eq!(v1["requests"], 1);
    assert_eq!(v1["ip"], "1.1.1.1");
    assert!(
        viewers.iter().all(|v| v["id"] != "v2"),
        "kicked viewer still listed"
    );
}

#[test]
fn exactly_n_viewers_get_in_under_concurrency() {
    let server = Server::start_with(Opts::default().arg("--threads", "16"));
    let s = create_share(&server, &json!({}));
    server
        .post_auth(
            &format!("/owner/sessions/by-slug/{}/policy", s.slug),
            &s.owner_token,
            &json!({ "maxConcurrentViewers": 5 }),
        )
        .expect(200);
    let results: Vec<(bool, u64, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..40)
            .map(|i| {
                let (server, slug) = (&server, &s.slug);
                scope.spawn(move || {
                    let (allow, status, reason, _) =
                        admit(server, slug, &json!({ "viewerId": format!("viewer-{i}"), "ip": "10.1.1.1", "path": "/" }));
                    (allow, status, reason)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let allowed = results.iter().filter(|r| r.0).count();
    assert_eq!(allowed, 5, "{results:?}");
    assert!(
        results
            .iter()
            .filter(|r| !r.0)
            .all(|r| r.1 == 429 && r.2 == "too_many_viewers")
    );
    // Admitted viewers keep getting in; new ones do not.
    let full = server
        .get_auth(&format!("/sessions/{}", s.id), &s.owner_token)
        .expect(200);
    let inside: Vec<String> = full["activeViewers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(inside.len(), 5);
    assert!(
        admit(
            &server,
            &s.slug,
            &json!({ "viewerId": inside[0], "ip": "10.1.1.1", "path": "/x" })
        )
        .0
    );
    assert_eq!(
        admit(
            &server,
            &s.slug,
            &json!({ "viewerId": "late", "ip": "10.1.1.1", "path": "/" })
        )
        .2,
        "too_many_viewers"
    );
    // Kicking one frees a place.
    server
        .post_auth(
            &format!("/owner/sessions/by-slug/{}/kick", s.slug),
            &s.owner_token,
            &json!({ "viewerId": inside[1] }),
        )
        .expect(200);
    assert!(
        admit(
            &server,
            &s.slug,
            &json!({ "viewerId": "late", "ip": "10.1.1.1", "path": "/" })
        )
        .0
    );
}

#[test]
fn idle_viewers_age_out_and_free_their_place() {
    let server = Server::start_with(
        Opts::default()
            .arg("--viewer-idle-timeout", "1s")
            .arg("--reap-interval", "100ms"),
    );
    let s = create_share(&server, &json!({}));
    server
        .post_auth(
            &format!("/owner/sessions/by-slug/{}/policy", s.slug),
            &s.owner_token,
            &json!({ "maxConcurrentViewers": 1 }),
        )
        .expect(200);
    assert!(
        admit(
            &server,
            &s.slug,
            &json!({ "viewerId": "first", "ip": "10.0.0.1", "path": "/" })
        )
        .0
    );
    assert_eq!(
        admit(
            &server,
            &s.slug,
            &json!({ "viewerId": "second", "ip": "10.0.0.2", "path": "/" })
        )
        .2,
        "too_many_viewers"
    );
    // The activity reached the store within about a second (batched, not per request).
    assert!(eventually(Duration::from_secs(3), || {
        server
            .query("SELECT requests FROM viewers WHERE viewer_id = 'first'")
            .first()
            .is_some_and(|r| r[0] == 1)
    }));
    // After the idle timeout the reaper ages it out, with an audit row by the system.
    assert!(eventually(Duration::from_secs(5), || {
        server.query("SELECT count(*) FROM viewers WHERE viewer_id = 'first'")[0][0] == 0
    }));
    let full = server
        .get_auth(&format!("/sessions/{}", s.id), &s.owner_token)
        .expect(200);
    assert_eq!(full["activeViewers"], json!([]));
    let audit =
        server.query("SELECT actor_type, metadata FROM audit WHERE action = 'viewer.aged_out'");
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0][0], "system");
    assert!(audit[0][1].as_str().unwrap().contains("first"));
    assert!(
        admit(
            &server,
            &s.slug,
            &json!({ "viewerId": "second", "ip": "10.0.0.2", "path": "/" })
        )
        .0
    );
}

#[test]
fn gateway_snapshots_merge_into_tracked_viewers() {
    let server = Server::start();
    let s = create_share(&server, &json!({}));
    server
        .post_auth(
            &format!("/owner/sessions/by-slug/{}/kick", s.slug),
            &s.owner_token,
            &json!({ "viewerId": "banned" }),
        )
        .expect(200);
    assert!(
        admit(
            &server,
            &s.slug,
            &json!({ "viewerId": "known", "ip": "10.0.0.1", "path": "/" })
        )
        .0
    );
    let now = server
        .get_auth(&format!("/sessions/{}", s.id), &s.owner_token)
        .expect(200)["createdAt"]
        .clone();
    let snapshot = json!({ "viewers": [
        { "id": "known", "lastSeenAt": now, "requests": 7, "ip": "10.0.0.9" },
        { "id": "fresh", "lastSeenAt": now, "requests": 2 },
        { "id": "banned", "lastSeenAt": now, "requests": 1 },
    ]});
    for url in [
        format!("/internal/sessions/by-slug/{}/viewers", s.slug),
        format!("/sessions/by-slug/{}/viewers", s.slug),
    ] {
        assert_eq!(
            server.post_auth(&url, GATEWAY_KEY, &snapshot).expect(200),
            json!({ "ok": true })
        );
        server
            .post_auth(&url, &s.owner_token, &snapshot)
            .expect_error(401);
    }
    let full = server
        .get_auth(&format!("/sessions/{}", s.id), &s.owner_token)
        .expect(200);
    let mut seen: Vec<(String, i64)> = full["activeViewers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["id"].as_str().unwrap().to_string(),
                v["requests"].as_i64().unwrap(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(seen, [("fresh".to_string(), 2), ("known".to_string(), 7)]);
}

#[test]
fn admissions_do_not_write_per_request() {
    let server = Server::start_with(Opts::default().arg("--reap-interval", "1h"));
    let s = create_share(&server, &json!({}));
    let before = server.query("SELECT count(*) FROM audit")[0][0]
        .as_i64()
        .unwrap();
    for _ in 0..50 {
        assert!(
            admit(
                &server,
                &s.slug,
                &json!({ "viewerId": "steady", "ip": "10.0.0.1", "path": "/" })
            )
            .0
        );
    }
    // The flush (at most once a second) writes the total, not fifty rows or fifty commits.
    assert!(eventually(Duration::from_secs(3), || {
        server
            .query("SELECT requests FROM viewers WHERE viewer_id = 'steady'")
            .first()
            .is_some_and(|r| r[0] == 50)
    }));
    assert_eq!(
        server.query("SELECT count(*) FROM audit")[0][0]
            .as_i64()
            .unwrap(),
        before
    );
}
