//! Share sessions in the Wormkey dialect: every route, both path forms, views and their secrets,
//! tokens and validation, bad input.

use serde_json::{Value, json};

use crate::support::*;

const FULL_VIEW_KEYS: &[&str] = &[
    "sessionId",
    "slug",
    "sessionToken",
    "ownerToken",
    "ownerUrl",
    "overlayScriptUrl",
    "publicUrl",
    "edgeUrl",
    "expiresAt",
    "createdAt",
    "authMode",
    "policy",
    "activeViewers",
    "kickedViewerIds",
    "closed",
    "available",
];

fn is_rfc3339_millis(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 24 && b[4] == b'-' && b[10] == b'T' && b[19] == b'.' && s.ends_with('Z')
}

#[test]
fn create_returns_the_documented_fields() {
    let server = Server::start_with(
        Opts::default()
            .arg("--public-base-url", "https://share.example.com/")
            .arg("--edge-base-url", "wss://edge.example.com"),
    );
    let resp = server.post("/sessions", &json!({ "port": 3000 }));
    let body = resp.expect(201);
    assert_eq!(
        key_order(&resp.text()),
        [
            "sessionId",
            "slug",
            "publicUrl",
            "ownerUrl",
            "ownerToken",
            "overlayScriptUrl",
            "edgeUrl",
            "sessionToken",
            "expiresAt",
            "createdAt"
        ]
    );
    let id = body["sessionId"].as_str().unwrap();
    assert!(id.starts_with("sess_") && id.len() == 37);
    assert!(
        id[5..]
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    );
    // Ids start with the creation time (the uid index then takes a batch of creates on one
    // leaf): one made later sorts after, and the random rest still differs.
    std::thread::sleep(std::time::Duration::from_millis(2));
    let later = server
        .post("/sessions", &json!({ "port": 3000 }))
        .expect(201);
    let later = later["sessionId"].as_str().unwrap();
    assert!(later > id, "{later} sorts after {id}");
    assert_ne!(later[14..], id[14..]);
    let slug = body["slug"].as_str().unwrap();
    let parts: Vec<&str> = slug.split('-').collect();
    assert_eq!(parts.len(), 3, "{slug}");
    assert!(parts[2].parse::<u32>().is_ok());
    let token = body["ownerToken"].as_str().unwrap();
    assert_eq!(token.len(), 32);
    assert!(
        token
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    );
    assert_eq!(body["sessionToken"], format!("{slug}.{token}"));
    assert_eq!(
        body["publicUrl"],
        format!("https://share.example.com/s/{slug}")
    );
    assert_eq!(
        body["ownerUrl"],
        format!("https://share.example.com/.wormkey/owner?slug={slug}&token={token}")
    );
    assert_eq!(
        body["overlayScriptUrl"],
        format!("https://share.example.com/.wormkey/overlay.js?slug={slug}")
    );
    assert_eq!(body["edgeUrl"], "wss://edge.example.com/tunnel");
    let (created, expires) = (
        body["createdAt"].as_str().unwrap(),
        body["expiresAt"].as_str().unwrap(),
    );
    assert!(is_rfc3339_millis(created) && is_rfc3339_millis(expires));
    assert!(body.get("password").is_none() && body.get("username").is_none());
    assert!(resp.header("X-Request-Id").is_some_and(|v| !v.is_empty()));

    // Basic auth: a 16-character password, shown once.
    let basic = server
        .post(
            "/sessions",
            &json!({ "authMode": "basic", "expiresIn": "30m" }),
        )
        .expect(201);
    assert_eq!(basic["username"], "worm");
    assert_eq!(basic["password"].as_str().unwrap().len(), 16);
    let full = server
        .get_auth(
            &format!("/sessions/{}", basic["sessionId"].as_str().unwrap()),
            basic["ownerToken"].as_str().unwrap(),
        )
        .expect(200);
    assert_eq!(full["username"], "worm");
    assert!(
        full.get("password").is_none(),
        "the basic password must not appear after creation"
    );
}

#[test]
fn expiry_defaults_and_bounds() {
    let server = Server::start_with(Opts::default().arg("--max-share-ttl", "2h"));
    // The default of 24h is capped by this server's max_share_ttl of 2h.
    let s = server.post("/sessions", &json!({})).expect(201);
    let two_hours = 2 * 3600 * 1000;
    assert_eq!(
        parse_ms(s["expiresAt"].as_str().unwrap()) - parse_ms(s["createdAt"].as_str().unwrap()),
        two_hours
    );
    let ok = server
        .post("/sessions", &json!({ "expiresIn": "90m" }))
        .expect(201);
    let created = ok["createdAt"].as_str().unwrap();
    let expires = ok["expiresAt"].as_str().unwrap();
    assert_ne!(created, expires);
    for bad in [
        json!("0m"),
        json!("3h"),
        json!("1d"),
        json!("30"),
        json!("m"),
        json!(-5),
        json!("1.5h"),
    ] {
        let msg = server
            .post("/sessions", &json!({ "expiresIn": bad }))
            .expect_error(400);
        assert!(msg.contains("expiresIn"), "{bad}: {msg}");
    }
    let default_server = Server::start();
    let d = default_server.post("/sessions", &json!({})).expect(201);
    let day_ms = 24 * 3600 * 1000;
    let c = parse_ms(d["createdAt"].as_str().unwrap());
    let e = parse_ms(d["expiresAt"].as_str().unwrap());
    assert_eq!(e - c, day_ms);
}

fn parse_ms(s: &str) -> i64 {
    // Only the time-of-day and date parts matter for differences within days.
    let days = |y: i64, m: i64, d: i64| {
        let (y, m) = if m <= 2 { (y - 1, m + 12) } else { (y, m) };
        365 * y + y / 4 - y / 100 + y / 400 + (153 * (m - 3) + 2) / 5 + d
    };
    let n = |a: usize, b: usize| s[a..b].parse::<i64>().unwrap();
    ((days(n(0, 4), n(5, 7), n(8, 10)) * 24 + n(11, 13)) * 60 + n(14, 16)) * 60_000
        + n(17, 19) * 1000
        + n(20, 23)
}

#[test]
fn wormkey_control_plane_security_tests() {
    let server = Server::start();
    let s = create_share(&server, &json!({}));

    // Anonymous by-slug: the public view, with no secrets and no viewer data.
    let public = server
        .get(&format!("/sessions/by-slug/{}", s.slug))
        .expect(200);
    for hidden in [
        "ownerToken",
        "sessionToken",
        "ownerUrl",
        "activeViewers",
        "policy",
    ] {
        assert!(
            public.get(hidden).is_none(),
            "{hidden} leaked in the public view: {public}"
        );
    }
    assert_eq!(
        keys_of(&public).len(),
        8,
        "public view keys: {:?}",
        keys_of(&public)
    );
    assert_eq!(public["available"], true);

    // GET /sessions/:id: 401 anonymous, 200 with the owner token.
    server.get(&format!("/sessions/{}", s.id)).expect_error(401);
    server
        .get_auth(&format!("/sessions/{}", s.id), "not-the-token")
        .expect_error(401);
    server
        .get_auth(&format!("/sessions/{}", s.id), &s.owner_token)
        .expect(200);

    // Anonymous owner close: 401.
    server
        .post(
            &format!("/owner/sessions/by-slug/{}/close", s.slug),
            &json!({}),
        )
        .expect_error(401);

    // Validation: 401 without the internal key, 200 with it, 401 for <slug>.invalid.
    let validate = |token: &str, key: Option<&str>| match key {
        Some(k) => server.post_auth(
            "/internal/sessions/validate",
            k,
            &json!({ "sessionToken": token }),
        ),
        None => server.post(
            "/internal/sessions/validate",
            &json!({ "sessionToken": token }),
        ),
    };
    validate(&s.session_token, None).expect_error(401);
    validate(&s.session_token, Some("wrong-key")).expect_error(401);
    let ok = validate(&s.session_token, Some(GATEWAY_KEY)).expect(200);
    assert_eq!(
        ok,
        json!({ "ok": true, "slug": s.slug, "closed": false, "expiresAt": s.body["expiresAt"] })
    );
    let invalid = validate(&format!("{}.invalid", s.slug), Some(GATEWAY_KEY));
    assert_eq!(
        invalid.expect(401),
        json!({ "error": "Invalid session token" })
    );

    // A scoped token from POST /owner/sessions/:id/tokens (201) validates.
    let tok = server
        .post_auth(
            &format!("/owner/sessions/{}/tokens", s.id),
            &s.owner_token,
            &json!({ "scopes": ["tunnel:connect"] }),
        )
        .expect(201);
    validate(tok["token"].as_str().unwrap(), Some(GATEWAY_KEY)).expect(200);
}

#[test]
fn full_view_has_the_seed_keys_in_order_and_echoes_owner_secrets_only_to_the_owner() {
    let server = Server::start();
    let s = create_share(&server, &json!({ "port": 8080 }));
    let resp = server.get_auth(&format!("/sessions/{}", s.id), &s.owner_token);
    let full = resp.expect(200);
    assert_eq!(key_order(&resp.text()), FULL_VIEW_KEYS);
    assert_eq!(full["ownerToken"], s.owner_token.as_str());
    assert_eq!(full["sessionToken"], s.session_token.as_str());
    for url in ["ownerUrl", "publicUrl", "overlayScriptUrl", "edgeUrl"] {
        assert_eq!(full[url], s.body[url], "{url}");
    }
    let public = server
        .get(&format!("/sessions/by-slug/{}", s.slug))
        .expect(200);
    assert_eq!(public["publicUrl"], s.body["publicUrl"]);
    assert_eq!(
        full["policy"],
        json!({ "public": true, "maxConcurrentViewers": 20, "blockPaths": [], "password": "" })
    );
    assert_eq!(full["activeViewers"], json!([]));
    assert_eq!(full["kickedViewerIds"], json!([]));
    assert_eq!(full["closed"], false);

    // The owner's by-slug route and the by-slug route with the owner token give the same view.
    let by_slug = server
        .get_auth(
            &format!("/owner/sessions/by-slug/{}", s.slug),
            &s.owner_token,
        )
        .expect(200);
    assert_eq!(by_slug, full);
    let any = server
        .get_auth(&format!("/sessions/by-slug/{}", s.slug), &s.owner_token)
        .expect(200);
    assert_eq!(any, full);

    // The gateway gets the full view without the owner's secrets.
    let internal = server
        .get_auth(
            &format!("/internal/sessions/by-slug/{}", s.slug),
            GATEWAY_KEY,
        )
        .expect(200);
    for secret in ["ownerToken", "sessionToken", "ownerUrl"] {
        assert!(
            internal.get(secret).is_none(),
            "{secret} shown to the gateway"
        );
    }
    assert!(internal.get("policy").is_some() && internal.get("activeViewers").is_some());
    let internal_by_id = server
        .get_auth(&format!("/sessions/{}", s.id), GATEWAY_KEY)
        .expect(200);
    assert_eq!(internal_by_id, internal);

    // A wrong bearer on the public route still gets the public view.
    let public = server
        .get_auth(&format!("/sessions/by-slug/{}", s.slug), "garbage")
        .expect(200);
    assert!(public.get("policy").is_none());
}

#[test]
fn not_found_before_unauthorized_on_owner_routes_and_the_reverse_on_internal_ones() {
    let server = Server::start();
    let s = create_share(&server, &json!({}));
    let missing_slug = "quiet-otter-1";
    let missing_id = "sess_00000000000000000000000000000000";
    // Owner routes: unknown → 404 even without credentials.
    assert_eq!(
        server
            .get(&format!("/sessions/{missing_id}"))
            .expect_error(404),
        "Session not found"
    );
    server
        .get(&format!("/owner/sessions/by-slug/{missing_slug}"))
        .expect_error(404);
    server
        .request("DELETE", &format!("/sessions/{missing_id}"), &[], None)
        .expect_error(404);
    for action in ["policy", "kick", "close"] {
        server
            .post(
                &format!("/owner/sessions/by-slug/{missing_slug}/{action}"),
                &json!({}),
            )
            .expect_error(404);
        server
            .post(
                &format!("/sessions/by-slug/{missing_slug}/{action}"),
                &json!({}),
            )
            .expect_error(404);
        server
            .post(
                &format!("/owner/sessions/by-slug/{}/{action}", s.slug),
                &json!({}),
            )
            .expect_error(401);
        // Internal routes: 401 before 404.
        server
            .post(
                &format!("/internal/sessions/by-slug/{missing_slug}/{action}"),
                &json!({}),
            )
            .expect_error(401);
        server
            .post_auth(
                &format!("/internal/sessions/by-slug/{missing_slug}/{action}"),
                GATEWAY_KEY,
                &json!({ "viewerId": "a" }),
            )
            .expect_error(404);
    }
    server
        .post(&format!("/owner/sessions/{missing_id}/tokens"), &json!({}))
        .expect_error(404);
    server
        .post(&format!("/owner/sessions/{}/tokens", s.id), &json!({}))
        .expect_error(401);
    server
        .get(&format!("/internal/sessions/by-slug/{missing_slug}"))
        .expect_error(401);
    server
        .get_auth(
            &format!("/internal/sessions/by-slug/{missing_slug}"),
            GATEWAY_KEY,
        )
        .expect_error(404);
    server
        .get(&format!("/sessions/by-slug/{missing_slug}"))
        .expect_error(404);
    // The gateway key is not an owner token for owner-only routes.
    server
        .get_auth(&format!("/owner/sessions/by-slug/{}", s.slug), GATEWAY_KEY)
        .expect_error(401);
    server
        .post_auth(
            &format!("/owner/sessions/{}/tokens", s.id),
            GATEWAY_KEY,
            &json!({}),
        )
        .expect_error(401);
}

#[test]
fn policy_updates_are_partial_validated_and_mask_the_password() {
    let server = Server::start();
    let s = create_share(&server, &json!({}));
    let url = format!("/owner/sessions/by-slug/{}/policy", s.slug);
    let r = server
        .post_auth(&url, &s.owner_token, &json!({ "maxConcurrentViewers": 3 }))
        .expect(200);
    assert_eq!(
        r,
        json!({ "ok": true, "policy": { "public": true, "maxConcurrentViewers": 3, "blockPaths": [], "password": "" } })
    );
    let r = server
        .post_auth(
            &url,
            &s.owner_token,
            &json!({ "public": false, "blockPaths": ["/admin"], "password": "hunter22" }),
        )
        .expect(200);
    assert_eq!(
        r["policy"],
        json!({ "public": false, "maxConcurrentViewers": 3, "blockPaths": ["/admin"], "password": "********" })
    );
    // Sending the mask back leaves the password unchanged.
    let r = server
        .post_auth(
            &url,
            &s.owner_token,
            &json!({ "password": "********", "public": true }),
        )
        .expect(200);
    assert_eq!(r["policy"]["password"], "********");
    assert_eq!(r["policy"]["public"], true);
    // The same through the seed's form and through the gateway's route.
    let r = server
        .post_auth(
            &format!("/sessions/by-slug/{}/policy", s.slug),
            GATEWAY_KEY,
            &json!({ "blockPaths": [] }),
        )
        .expect(200);
    assert_eq!(r["policy"]["blockPaths"], json!([]));
    let r = server
        .post_auth(
            &format!("/internal/sessions/by-slug/{}/policy", s.slug),
            GATEWAY_KEY,
            &json!({ "password": "" }),
        )
        .expect(200);
    assert_eq!(r["policy"]["password"], "");
    // The full view agrees.
    let full = server
        .get_auth(&format!("/sessions/{}", s.id), &s.owner_token)
        .expect(200);
    assert_eq!(
        full["policy"],
        json!({ "public": true, "maxConcurrentViewers": 3, "blockPaths": [], "password": "" })
    );

    // Wrong types are a 400 naming the field (upstream silently ignores them); nothing changes.
    for (body, field) in [
        (json!({ "public": "yes" }), "public"),
        (
            json!({ "maxConcurrentViewers": "5" }),
            "maxConcurrentViewers",
        ),
        (
            json!({ "maxConcurrentViewers": -1 }),
            "maxConcurrentViewers",
        ),
        (
            json!({ "maxConcurrentViewers": 2.5 }),
            "maxConcurrentViewers",
        ),
        (json!({ "blockPaths": "/admin" }), "blockPaths"),
        (json!({ "blockPaths": [1] }), "blockPaths"),
        (json!({ "blockPaths": ["admin"] }), "blockPaths"),
        (json!({ "password": 1234 }), "password"),
        (json!({ "public": false, "password": 5 }), "password"),
    ] {
        let msg = server
            .post_auth(&url, &s.owner_token, &body)
            .expect_error(400);
        assert!(msg.contains(field), "{body}: {msg}");
    }
    let after = server
        .get_auth(&format!("/sessions/{}", s.id), &s.owner_token)
        .expect(200);
    assert_eq!(
        after["policy"], full["policy"],
        "a refused update must change nothing"
    );
}

#[test]
fn kick_close_and_delete() {
    let server = Server::start();
    let s = create_share(&server, &json!({}));
    let (allow, _, _, viewer) = admit(
        &server,
        &s.slug,
        &json!({ "viewerId": "viewer-one", "ip": "10.0.0.1", "path": "/" }),
    );
    assert!(allow);
    assert_eq!(viewer.as_deref(), Some("viewer-one"));
    admit(
        &server,
        &s.slug,
        &json!({ "viewerId": "viewer-two", "ip": "10.0.0.2", "path": "/" }),
    );

    // Kick: idempotent, removes the viewer, refuses it from then on.
    let kick = format!("/owner/sessions/by-slug/{}/kick", s.slug);
    for _ in 0..2 {
        let r = server
            .post_auth(&kick, &s.owner_token, &json!({ "viewerId": "viewer-one" }))
            .expect(200);
        assert_eq!(r, json!({ "ok": true, "kickedViewerIds": ["viewer-one"] }));
    }
    server
        .post_auth(&kick, &s.owner_token, &json!({}))
        .expect_error(400);
    server
        .post_auth(&kick, &s.owner_token, &json!({ "viewerId": 7 }))
        .expect_error(400);
    let r = server
        .post_auth(
            &format!("/internal/sessions/by-slug/{}/kick", s.slug),
            GATEWAY_KEY,
            &json!({ "viewerId": "someone" }),
        )
        .expect(200);
    assert_eq!(r["kickedViewerIds"], json!(["viewer-one", "someone"]));
    let full = server
        .get_auth(&format!("/sessions/{}", s.id), &s.owner_token)
        .expect(200);
    let ids: Vec<&str> = full["activeViewers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["viewer-two"]);
    assert_eq!(full["kickedViewerIds"], json!(["viewer-one", "someone"]));
    let (allow, status, reason, _) = admit(
        &server,
        &s.slug,
        &json!({ "viewerId": "viewer-one", "ip": "10.0.0.1", "path": "/" }),
    );
    assert_eq!((allow, status, reason.as_str()), (false, 403, "kicked"));

    // Close: idempotent; stays readable with closed: true.
    let close = format!("/owner/sessions/by-slug/{}/close", s.slug);
    for _ in 0..2 {
        assert_eq!(
            server
                .post_auth(&close, &s.owner_token, &json!({}))
                .expect(200),
            json!({ "ok": true })
        );
    }
    let closed = server
        .get(&format!("/sessions/by-slug/{}", s.slug))
        .expect(200);
    assert_eq!(
        (closed["closed"].clone(), closed["available"].clone()),
        (json!(true), json!(false))
    );
    let v = server
        .post_auth(
            "/internal/sessions/validate",
            GATEWAY_KEY,
            &json!({ "sessionToken": s.session_token }),
        )
        .expect(200);
    assert_eq!(v["closed"], true);

    // Delete: 200 {ok:true}, then 404 on id and slug.
    server
        .delete_auth(&format!("/sessions/{}", s.id), "bad")
        .expect_error(401);
    assert_eq!(
        server
            .delete_auth(&format!("/sessions/{}", s.id), &s.owner_token)
            .expect(200),
        json!({ "ok": true })
    );
    server
        .get_auth(&format!("/sessions/{}", s.id), &s.owner_token)
        .expect_error(404);
    server
        .get(&format!("/sessions/by-slug/{}", s.slug))
        .expect_error(404);
    server
        .delete_auth(&format!("/sessions/{}", s.id), &s.owner_token)
        .expect_error(404);

    // Each change wrote its audit row in the same transaction.
    let actions = server.query(&format!(
        "SELECT action, actor_type FROM audit WHERE resource_id = '{}' ORDER BY id",
        s.id
    ));
    let actions: Vec<String> = actions
        .iter()
        .map(|r| format!("{}/{}", r[0].as_str().unwrap(), r[1].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            "session.created/owner_token",
            "viewer.kicked/owner_token",
            "viewer.kicked/service",
            "session.closed/owner_token",
            "session.deleted/owner_token"
        ]
    );
    assert_eq!(server.query(&format!("SELECT count(*) FROM viewers v JOIN sessions s ON s.id = v.session_id WHERE s.uid = '{}'", s.id))[0][0], 0);
}

#[test]
fn scoped_tokens() {
    let server = Server::start();
    let s = create_share(&server, &json!({}));
    let url = format!("/owner/sessions/{}/tokens", s.id);
    let t = server
        .post_auth(&url, &s.owner_token, &json!({}))
        .expect(201);
    assert_eq!(t["name"], "agent");
    assert_eq!(t["scopes"], json!(["tunnel:read"]));
    let token = t["token"].as_str().unwrap();
    assert!(token.starts_with(&format!("{}.", s.slug)) && token.len() > s.slug.len() + 30);
    // tunnel:read alone does not validate a tunnel.
    server
        .post_auth(
            "/internal/sessions/validate",
            GATEWAY_KEY,
            &json!({ "sessionToken": token }),
        )
        .expect_error(401);

    let t = server
        .post_auth(&url, &s.owner_token, &json!({ "name": "ci", "scopes": ["tunnel:connect", "bogus", "tunnel:close"], "maxTtl": "48h" }))
        .expect(201);
    assert_eq!(t["scopes"], json!(["tunnel:connect", "tunnel:close"]));
    let created = server.query(&format!(
        "SELECT t.expires_at - t.created_at FROM share_tokens t JOIN sessions s ON s.id = t.session_id WHERE s.uid = '{}' AND t.name = 'ci'",
        s.id
    ));
    assert_eq!(created[0][0], 24 * 3600 * 1000, "maxTtl is capped at 24h");
    server
        .post_auth(
            "/internal/sessions/validate",
            GATEWAY_KEY,
            &json!({ "sessionToken": t["token"] }),
        )
        .expect(200);

    for bad in [json!("2d"), json!("0h"), json!("x"), json!(5)] {
        let r = server.post_auth(&url, &s.owner_token, &json!({ "maxTtl": bad }));
        assert_eq!(
            r.expect(400),
            json!({ "error": "maxTtl must use minutes or hours" }),
            "{bad}"
        );
    }
    // A token of one session does not validate another.
    let other = create_share(&server, &json!({}));
    let forged = format!("{}.{}", other.slug, token.split_once('.').unwrap().1);
    server
        .post_auth(
            "/internal/sessions/validate",
            GATEWAY_KEY,
            &json!({ "sessionToken": forged }),
        )
        .expect_error(401);
    let forged = format!("{}.{}", other.slug, s.owner_token);
    server
        .post_auth(
            "/internal/sessions/validate",
            GATEWAY_KEY,
            &json!({ "sessionToken": forged }),
        )
        .expect_error(401);
    // Missing token: 400.
    for body in [
        json!({}),
        json!({ "sessionToken": "" }),
        json!({ "sessionToken": 12 }),
    ] {
        server
            .post_auth("/internal/sessions/validate", GATEWAY_KEY, &body)
            .expect_error(400);
    }
    // An expired scoped token no longer validates.
    server.exec_sql("UPDATE share_tokens SET expires_at = 0 WHERE name = 'ci'");
    server
        .post_auth(
            "/internal/sessions/validate",
            GATEWAY_KEY,
            &json!({ "sessionToken": t["token"] }),
        )
        .expect_error(401);
}

#[test]
fn api_keys_and_service_keys_from_the_cli() {
    let dir = std::sync::Arc::new(TempDir::new());
    let db = dir.path().join("sessiond.db");
    let personal = cli_key(&db, &["--name", "ci"]);
    let read_only = cli_key(&db, &["--scopes", "sessions.read"]);
    let other_account = cli_key(&db, &["--account", "anonymous"]);
    let gateway = cli_key(&db, &["--service", "gateway"]);
    let daemon = cli_key(&db, &["--service", "daemon"]);
    assert!(personal.starts_with("sk_") && gateway.starts_with("svc_"));
    let server = Server::start_in(
        dir,
        Opts {
            env: Vec::new(),
            ..Opts::default()
        },
    );

    // A share created with an API key belongs to that key's account; the key reads it without secrets.
    let created = server
        .post_auth("/sessions", &personal, &json!({}))
        .expect(201);
    let id = created["sessionId"].as_str().unwrap();
    let account = server.query(&format!(
        "SELECT a.name FROM sessions s JOIN accounts a ON a.id = s.account_id WHERE s.uid = '{id}'"
    ));
    assert_eq!(account[0][0], "personal");
    let full = server
        .get_auth(&format!("/sessions/{id}"), &personal)
        .expect(200);
    assert!(full.get("ownerToken").is_none() && full.get("policy").is_some());
    server
        .get_auth(&format!("/sessions/{id}"), &read_only)
        .expect(200);
    // Scope enforced; another account's key sees nothing.
    server
        .delete_auth(&format!("/sessions/{id}"), &read_only)
        .expect_error(403);
    server
        .post_auth("/sessions", &read_only, &json!({}))
        .expect_error(403);
    assert_eq!(
        server
            .get_auth(&format!("/sessions/{id}"), &other_account)
            .expect_error(404),
        "Session not found"
    );
    server
        .delete_auth(&format!("/sessions/{id}"), &other_account)
        .expect_error(404);
    server
        .post_auth("/sessions", "sk_not_a_key", &json!({}))
        .expect_error(401);

    // Service keys with role gateway work on /internal; daemon keys do not; no internal key is set.
    let slug = created["slug"].as_str().unwrap();
    server
        .get_auth(&format!("/internal/sessions/by-slug/{slug}"), &gateway)
        .expect(200);
    server
        .get_auth(&format!("/internal/sessions/by-slug/{slug}"), &daemon)
        .expect_error(401);
    server
        .get_auth(&format!("/internal/sessions/by-slug/{slug}"), GATEWAY_KEY)
        .expect_error(401);
    let actor = server.query(
        "SELECT actor_type FROM audit WHERE action = 'session.created' AND actor_type = 'api_key'",
    );
    assert_eq!(actor.len(), 1);
    // The creation's audit metadata: the slug, the auth mode and the expiry, as JSON text.
    let metadata = server.query(&format!(
        "SELECT metadata FROM audit WHERE action = 'session.created' AND resource_id = '{id}'"
    ));
    assert_eq!(
        metadata[0][0],
        json!({ "authMode": "none", "expiresAt": created["expiresAt"], "slug": slug }).to_string()
    );
    // Deleting with the account key works.
    server
        .delete_auth(&format!("/sessions/{id}"), &personal)
        .expect(200);
}

#[test]
fn anonymous_creation_is_rate_limited_or_off() {
    let server = Server::start_with(Opts::default().arg("--anonymous-share-rate", "3"));
    for _ in 0..3 {
        server.post("/sessions", &json!({})).expect(201);
    }
    let r = server.post("/sessions", &json!({}));
    r.expect_error(429);
    let retry: u64 = r.header("Retry-After").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));

    let closed = Server::start_with(Opts::default().arg("--allow-anonymous-shares", "false"));
    closed.post("/sessions", &json!({})).expect_error(401);
}

#[test]
fn bad_input_gets_a_clear_error_and_never_a_500() {
    let server = Server::start_with(Opts::default().arg("--max-body", "1024"));
    let s = create_share(&server, &json!({}));
    let owner = format!("Bearer {}", s.owner_token);
    let gw = format!("Bearer {GATEWAY_KEY}");
    let policy = format!("/owner/sessions/by-slug/{}/policy", s.slug);
    let admit_url = format!("/internal/sessions/by-slug/{}/admit", s.slug);
    let viewers_url = format!("/internal/sessions/by-slug/{}/viewers", s.slug);
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let deep_obj = format!("{{\"a\":{}1{}}}", "[".repeat(100), "]".repeat(100));
    let big = format!("{{\"port\": 1, \"pad\": \"{}\"}}", "x".repeat(2000));
    type Case<'a> = (&'a str, String, Option<&'a str>, Vec<u8>, u16);
    let cases: Vec<Case> = vec![
        ("POST", "/sessions".into(), None, b"{not json".to_vec(), 400),
        ("POST", "/sessions".into(), None, b"[1,2]".to_vec(), 400),
        ("POST", "/sessions".into(), None, b"\"text\"".to_vec(), 400),
        (
            "POST",
            "/sessions".into(),
            None,
            b"\xff\xfe{}".to_vec(),
            400,
        ),
        ("POST", "/sessions".into(), None, deep.into_bytes(), 400),
        ("POST", "/sessions".into(), None, deep_obj.into_bytes(), 400),
        (
            "POST",
            "/sessions".into(),
            None,
            br#"{"authMode":"digest"}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/sessions".into(),
            None,
            br#"{"authMode":1}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/sessions".into(),
            None,
            br#"{"port":"80"}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/sessions".into(),
            None,
            br#"{"port":70000}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/sessions".into(),
            None,
            br#"{"policy":"open"}"#.to_vec(),
            400,
        ),
        (
            "POST",
            "/sessions".into(),
            None,
            br#"{"policy":{"public":"no"}}"#.to_vec(),
            400,
        ),
        ("POST", "/sessions".into(), None, big.into_bytes(), 413),
        (
            "POST",
            policy.clone(),
            Some(&owner),
            b"{\"public\":".to_vec(),
            400,
        ),
        (
            "POST",
            admit_url.clone(),
            Some(&gw),
            br#"{"path":"/"}"#.to_vec(),
            400,
        ),
        (
            "POST",
            admit_url.clone(),
            Some(&gw),
            br#"{"ip":"1.1.1.1"}"#.to_vec(),
            400,
        ),
        (
            "POST",
            admit_url.clone(),
            Some(&gw),
            br#"{"ip":"1.1.1.1","path":"nope"}"#.to_vec(),
            400,
        ),
        (
            "POST",
            admit_url.clone(),
            Some(&gw),
            br#"{"ip":"1.1.1.1","path":"/","viewerId":"bad id!"}"#.to_vec(),
            400,
        ),
        (
            "POST",
            admit_url.clone(),
            Some(&gw),
            br#"{"ip":1,"path":"/"}"#.to_vec(),
            400,
        ),
        (
            "POST",
            viewers_url.clone(),
            Some(&gw),
            br#"{}"#.to_vec(),
            400,
        ),
        (
            "POST",
            viewers_url.clone(),
            Some(&gw),
            br#"{"viewers":{}}"#.to_vec(),
            400,
        ),
        (
            "POST",
            viewers_url.clone(),
            Some(&gw),
            br#"{"viewers":[1]}"#.to_vec(),
            400,
        ),
        (
            "POST",
            viewers_url.clone(),
            Some(&gw),
            br#"{"viewers":[{"lastSeenAt":"x"}]}"#.to_vec(),
            400,
        ),
        (
            "POST",
            viewers_url.clone(),
            Some(&gw),
            br#"{"viewers":[{"id":"a","lastSeenAt":"yesterday"}]}"#.to_vec(),
            400,
        ),
        (
            "POST",
            viewers_url.clone(),
            Some(&gw),
            br#"{"viewers":[{"id":"a","requests":-1}]}"#.to_vec(),
            400,
        ),
        ("GET", "/sessions/%zz".into(), None, Vec::new(), 400),
        ("GET", "/sessions/%ff%fe".into(), None, Vec::new(), 400),
        (
            "GET",
            "/sessions/by-slug/..%2f..%2fetc".into(),
            None,
            Vec::new(),
            404,
        ),
        (
            "GET",
            format!("/sessions/{}", "x".repeat(5000)),
            None,
            Vec::new(),
            404,
        ),
        (
            "GET",
            "/sessions/by-slug/'%20OR%201=1--".into(),
            None,
            Vec::new(),
            404,
        ),
        ("GET", "/nowhere".into(), None, Vec::new(), 404),
        ("PUT", "/sessions".into(), None, Vec::new(), 405),
        (
            "GET",
            "/internal/sessions/validate".into(),
            None,
            Vec::new(),
            405,
        ),
    ];
    for (method, path, auth, body, status) in cases {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = auth {
            headers.push(("Authorization", a));
        }
        let r = server.request(method, &path, &headers, Some(&body));
        assert_eq!(
            r.status,
            status,
            "{method} {path} {:?}: {}",
            String::from_utf8_lossy(&body),
            r.text()
        );
        let json = r.json();
        assert!(
            json["error"].is_string(),
            "{method} {path}: not the share error shape: {json}"
        );
    }
    // A body declared larger than max_body is refused before it is read.
    let r = raw_request(
        &server.addr,
        b"POST /sessions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5000\r\n\r\n{\"a\":1}",
    );
    assert_eq!(r.status, 413);
    // An absurd declared length is refused, and dropping the unread body costs nothing (tiny_http
    // 0.12 allocated the declared length on drop and aborted the process; see packaging/vendor).
    for length in ["99999999999999", "1000000000", "18446744073709551615"] {
        let r = raw_request(
            &server.addr,
            format!("POST /sessions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {length}\r\n\r\n{{}}").as_bytes(),
        );
        assert_eq!(r.status, 413, "Content-Length {length}");
        server.get("/healthz").expect(200);
    }
    // A chunked body over the cap is refused too.
    let mut chunked = b"POST /sessions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    chunked
        .extend_from_slice(format!("{:x}\r\n{}\r\n0\r\n\r\n", 1500, "y".repeat(1500)).as_bytes());
    assert_eq!(raw_request(&server.addr, &chunked).status, 413);
    // The server is still healthy and logged no 500.
    server.get("/healthz").expect(200);
    assert!(
        !server.log_text().contains(" 500 "),
        "a 500 was logged:\n{}",
        server.log_text()
    );
}

#[test]
fn request_ids_and_access_log() {
    let server = Server::start();
    let r = server.request(
        "GET",
        "/healthz",
        &[("X-Request-Id", "trace-abc-123")],
        None,
    );
    assert_eq!(r.header("X-Request-Id"), Some("trace-abc-123"));
    let r2 = server.get("/healthz");
    let generated = r2.header("X-Request-Id").unwrap().to_string();
    assert!(generated.len() >= 8);
    let s = create_share(&server, &json!({}));
    server
        .get_auth(&format!("/sessions/{}", s.id), &s.owner_token)
        .expect(200);
    // Header names match in any case.
    let raw = format!(
        "GET /sessions/{} HTTP/1.1\r\nhOsT: x\r\naUTHORIZATION: Bearer {}\r\nConnection: close\r\n\r\n",
        s.id, s.owner_token
    );
    assert_eq!(raw_request(&server.addr, raw.as_bytes()).status, 200);
    assert!(eventually(std::time::Duration::from_secs(5), || server
        .log_text()
        .contains("GET /sessions/:id 200")));
    let log = server.log_text();
    assert!(log.contains("trace-abc-123") && log.contains(&generated));
    // Route templates, never ids or tokens, in the access log.
    assert!(
        !log.contains(&s.id) && !log.contains(&s.owner_token),
        "the log shows an id or token:\n{log}"
    );
    let ready = server.get("/readyz").expect(200);
    assert_eq!(ready["status"], "ready");
    let version = server.get("/version").expect(200);
    assert_eq!(version["name"], "sessiond");
    let _: Value = version;
}
