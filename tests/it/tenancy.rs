//! The tenancy and auth matrix (issue 7, SPEC §1 "Not yours = not found", §2): every route that
//! names an object, probed with every kind of credential that may not touch it — none, a made-up
//! token, an expired key, a revoked key, a logged-out token, a user and a key of another account,
//! another user of the same account, a key without the scope. Each answer is the documented status
//! and is exactly the answer for a missing object (status and body), so a prober learns nothing.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;
use crate::workspace::{ADMIN_EMAIL, ADMIN_PASSWORD, login};

fn add_user(db: &Path, email: &str, extra: &[&str]) {
    let out = Command::new(bin())
        .args(["user", "add", "--email", email, "--db"])
        .arg(db)
        .args(extra)
        .env("SESSIOND_USER_PASSWORD", "tenancy-password-1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Who is asking, and what the SPEC says they get on an object that is not theirs.
struct Cred {
    name: &'static str,
    auth: Option<String>,
    /// Statuses the SPEC allows for this kind of caller (the same for a missing object).
    allowed: &'static [u16],
}

struct Route {
    method: &'static str,
    /// With `{}` where the object's id goes.
    path: &'static str,
    existing: String,
    missing: String,
    body: Value,
    /// Callers (by name) entitled to this object: not probed here.
    entitled: &'static [&'static str],
    order: Order,
}

/// How a route orders its answers (SPEC §1 and §3).
#[derive(Clone, Copy, PartialEq)]
enum Order {
    /// Account-scoped: a stranger gets exactly the answer for a missing object.
    Account,
    /// The share dialect's documented order (as upstream Wormkey): a missing session is 404 for
    /// everyone, an existing one 401 without a credential that counts there (owner token, API
    /// key, service key). Share ids and slugs are random, so this reveals nothing a prober could
    /// guess. An API key of another account still gets exactly the missing answer.
    ShareNotFoundFirst,
    /// Owner routes: 404 before 401, and only the owner token counts.
    OwnerNotFoundFirst,
    /// Gateway routes: 401 before 404 (as upstream), so every stranger gets the same 401.
    GatewayFirst,
}

/// Status and body, with what differs per request (request ids) left out.
fn answer(
    server: &Server,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &Value,
) -> (u16, String) {
    let bearer = auth.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b.as_str()));
    }
    let raw = serde_json::to_vec(body).unwrap();
    let has_body = method != "GET" && method != "DELETE";
    let r = request(
        &server.addr,
        method,
        path,
        &headers,
        has_body.then_some(raw.as_slice()),
    );
    (r.status, r.text())
}

#[test]
fn every_object_route_answers_strangers_exactly_as_for_a_missing_object() {
    let dir = Arc::new(TempDir::new());
    let db = dir.path().join("sessiond.db");
    let server = Server::start_in(dir.clone(), Opts::default());
    drop(server);
    add_user(&db, "m1@example.com", &[]);
    add_user(&db, "m2@example.com", &[]);
    add_user(
        &db,
        "eve@example.com",
        &["--account", "anonymous", "--admin"],
    );
    let key_a = cli_key(&db, &["--name", "a"]);
    let key_a_readonly = cli_key(&db, &["--name", "ro", "--scopes", "audit.read"]);
    let key_b = cli_key(&db, &["--account", "anonymous", "--name", "b"]);
    let key_expired = cli_key(&db, &["--name", "old", "--expires-in", "1s"]);
    let server = Server::start_in(dir, Opts::default());

    let admin = login(&server, ADMIN_EMAIL, ADMIN_PASSWORD);
    let m1 = login(&server, "m1@example.com", "tenancy-password-1");
    let m2 = login(&server, "m2@example.com", "tenancy-password-1");
    let eve = login(&server, "eve@example.com", "tenancy-password-1");
    let logged_out = login(&server, "m1@example.com", "tenancy-password-1");
    server
        .post_auth("/api/auth/logout", &logged_out, &json!({}))
        .expect(200);
    let revoked = server
        .post_auth("/v1/keys", &key_a, &json!({"name": "revoked"}))
        .expect(201);
    let revoked_key = revoked["key"].as_str().unwrap().to_string();
    let revoked_id = revoked["id"].as_str().unwrap().to_string();
    server
        .delete_auth(&format!("/v1/keys/{revoked_id}"), &key_a)
        .expect(200);

    // Objects of account `personal` (A): each made by its owner, its id taken from the answer.
    let make = |path: &str, auth: &str, body: Value, status: u16, key: &str| -> String {
        server.post_auth(path, auth, &body).expect(status)[key]
            .as_str()
            .unwrap()
            .to_string()
    };
    let ws_session = make(
        "/api/workspaces/ws-sap-neogenesys/launch",
        &m1,
        json!({}),
        200,
        "session_id",
    );
    let workspace = make(
        "/api/workspaces",
        &admin,
        json!({"id": "ws-tenancy", "name": "Tenancy", "type": "web"}),
        201,
        "id",
    );
    let runtime = make("/v1/sessions", &key_a, json!({}), 201, "id");
    let rt_workspace = make(
        "/v1/workspaces",
        &key_a,
        json!({"name": "tenancy"}),
        201,
        "id",
    );
    let victim_key = make("/v1/keys", &key_a, json!({"name": "victim"}), 201, "id");
    let created = server
        .post_auth("/sessions", &key_a, &json!({"port": 3000}))
        .expect(201);
    let share = created["sessionId"].as_str().unwrap().to_string();
    let share_slug = created["slug"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(1100)); // key_expired is past its expiry now

    let uuid = "5e1b6a0c-2f4e-4b7a-9c1d-3e5f7a9b1c2d".to_string();
    let no_share = "sess_00000000000000000000000000000000".to_string();
    let no_ws = "ws-00000000".to_string();
    let route = |method, path, existing: &String, missing: &String, body, entitled| Route {
        method,
        path,
        existing: existing.clone(),
        missing: missing.clone(),
        body,
        entitled,
        order: Order::Account,
    };
    let users: &[&str] = &["m1", "m2"];
    let routes = vec![
        route(
            "GET",
            "/api/sessions/{}",
            &ws_session,
            &uuid,
            json!({}),
            &["m1"],
        ),
        route(
            "POST",
            "/api/sessions/{}/heartbeat",
            &ws_session,
            &uuid,
            json!({}),
            &["m1"],
        ),
        route(
            "POST",
            "/api/sessions/{}/action",
            &ws_session,
            &uuid,
            json!({"action": "logoff"}),
            &["m1"],
        ),
        route(
            "POST",
            "/api/sessions/{}/disconnect",
            &ws_session,
            &uuid,
            json!({}),
            &["m1"],
        ),
        route(
            "POST",
            "/api/admin/sessions/{}/action",
            &ws_session,
            &uuid,
            json!({"action": "logoff"}),
            &[],
        ),
        route(
            "PUT",
            "/api/workspaces/{}",
            &workspace,
            &no_ws,
            json!({"name": "x"}),
            &[],
        ),
        route(
            "DELETE",
            "/api/workspaces/{}",
            &workspace,
            &no_ws,
            json!({}),
            &[],
        ),
        route(
            "POST",
            "/api/workspaces/{}/launch",
            &workspace,
            &no_ws,
            json!({}),
            users,
        ),
        route(
            "POST",
            "/api/workspaces/{}/stop",
            &workspace,
            &no_ws,
            json!({}),
            users,
        ),
        route("GET", "/v1/sessions/{}", &runtime, &uuid, json!({}), users),
        route(
            "DELETE",
            "/v1/sessions/{}",
            &runtime,
            &uuid,
            json!({}),
            users,
        ),
        route(
            "PUT",
            "/v1/workspaces/{}/name",
            &rt_workspace,
            &uuid,
            json!({"name": "y"}),
            users,
        ),
        route(
            "DELETE",
            "/v1/workspaces/{}",
            &rt_workspace,
            &uuid,
            json!({}),
            users,
        ),
        route(
            "DELETE",
            "/v1/keys/{}",
            &victim_key,
            &uuid,
            json!({}),
            users,
        ),
        Route {
            order: Order::ShareNotFoundFirst,
            ..route("GET", "/sessions/{}", &share, &no_share, json!({}), &[])
        },
        Route {
            order: Order::ShareNotFoundFirst,
            ..route("DELETE", "/sessions/{}", &share, &no_share, json!({}), &[])
        },
    ];
    let no_slug = "nobody-here-0000".to_string();
    let mut routes = routes;
    for (method, path, body, order) in [
        (
            "GET",
            "/owner/sessions/by-slug/{}",
            json!({}),
            Order::OwnerNotFoundFirst,
        ),
        (
            "POST",
            "/owner/sessions/by-slug/{}/policy",
            json!({"public": false}),
            Order::OwnerNotFoundFirst,
        ),
        (
            "POST",
            "/owner/sessions/by-slug/{}/kick",
            json!({"viewerId": "viewer000001"}),
            Order::OwnerNotFoundFirst,
        ),
        (
            "POST",
            "/owner/sessions/by-slug/{}/close",
            json!({}),
            Order::OwnerNotFoundFirst,
        ),
        (
            "POST",
            "/sessions/by-slug/{}/policy",
            json!({"public": false}),
            Order::OwnerNotFoundFirst,
        ),
        (
            "POST",
            "/sessions/by-slug/{}/kick",
            json!({"viewerId": "viewer000001"}),
            Order::OwnerNotFoundFirst,
        ),
        (
            "POST",
            "/sessions/by-slug/{}/close",
            json!({}),
            Order::OwnerNotFoundFirst,
        ),
        (
            "GET",
            "/internal/sessions/by-slug/{}",
            json!({}),
            Order::GatewayFirst,
        ),
        (
            "POST",
            "/internal/sessions/by-slug/{}/policy",
            json!({"public": false}),
            Order::GatewayFirst,
        ),
        (
            "POST",
            "/internal/sessions/by-slug/{}/kick",
            json!({"viewerId": "viewer000001"}),
            Order::GatewayFirst,
        ),
        (
            "POST",
            "/internal/sessions/by-slug/{}/close",
            json!({}),
            Order::GatewayFirst,
        ),
        (
            "POST",
            "/internal/sessions/by-slug/{}/viewers",
            json!({"viewers": []}),
            Order::GatewayFirst,
        ),
        (
            "POST",
            "/internal/sessions/by-slug/{}/admit",
            json!({"ip": "1.1.1.1", "path": "/"}),
            Order::GatewayFirst,
        ),
    ] {
        routes.push(Route {
            order,
            ..route(method, path, &share_slug, &no_slug, body, &[])
        });
    }
    routes.push(Route {
        order: Order::OwnerNotFoundFirst,
        ..route(
            "POST",
            "/owner/sessions/{}/tokens",
            &share,
            &no_share,
            json!({}),
            &[],
        )
    });
    let unauthenticated: &[u16] = &[401];
    let creds = vec![
        Cred {
            name: "none",
            auth: None,
            allowed: unauthenticated,
        },
        Cred {
            name: "made-up token",
            auth: Some("sk_madeupmadeupmadeupmadeupmadeupmadeup".into()),
            allowed: unauthenticated,
        },
        Cred {
            name: "expired key",
            auth: Some(key_expired),
            allowed: unauthenticated,
        },
        Cred {
            name: "revoked key",
            auth: Some(revoked_key),
            allowed: unauthenticated,
        },
        Cred {
            name: "logged-out token",
            auth: Some(logged_out),
            allowed: unauthenticated,
        },
        Cred {
            name: "eve",
            auth: Some(eve),
            allowed: &[404],
        },
        Cred {
            name: "key of B",
            auth: Some(key_b),
            allowed: &[403, 404],
        },
        Cred {
            name: "m2",
            auth: Some(m2.clone()),
            allowed: &[403, 404],
        },
        Cred {
            name: "key without scopes",
            auth: Some(key_a_readonly),
            allowed: &[403],
        },
    ];
    let mut probes = 0;
    let mut table = Vec::new();
    for route in &routes {
        for cred in &creds {
            if route.entitled.contains(&cred.name) {
                continue;
            }
            let on = |id: &str| {
                let path = route.path.replace("{}", id);
                answer(
                    &server,
                    route.method,
                    &path,
                    cred.auth.as_deref(),
                    &route.body,
                )
            };
            let (on_existing, on_missing) = (on(&route.existing), on(&route.missing));
            let what = format!("{} {} as {}", route.method, route.path, cred.name);
            table.push(format!("{what}: {} {}", on_existing.0, on_existing.1));
            probes += 1;
            // Login tokens are no credential in the share dialect (SPEC §3: owner token, API
            // key, service key), so there they are as good as none.
            let login_token = matches!(cred.name, "eve" | "m2");
            let counts_as_none = match route.order {
                Order::Account | Order::GatewayFirst => false,
                Order::ShareNotFoundFirst => cred.allowed == unauthenticated || login_token,
                Order::OwnerNotFoundFirst => true,
            };
            if counts_as_none {
                assert_eq!(on_missing.0, 404, "{what}: {}", on_missing.1);
                assert_eq!(on_existing.0, 401, "{what}: {}", on_existing.1);
                continue;
            }
            if route.order == Order::GatewayFirst {
                assert_eq!(on_existing, on_missing, "{what}");
                assert_eq!(on_existing.0, 401, "{what}: {}", on_existing.1);
                continue;
            }
            assert_eq!(
                on_existing, on_missing,
                "{what}: an existing object answers differently from a missing one"
            );
            assert!(
                cred.allowed.contains(&on_existing.0),
                "{what}: {} {}",
                on_existing.0,
                on_existing.1
            );
        }
    }
    eprintln!("{}", table.join("\n"));
    // Unauthenticated callers learn nothing about why: the same answer for every bad credential.
    for route in &routes {
        let path = route.path.replace("{}", &route.existing);
        let answers: Vec<(u16, String)> = creds
            .iter()
            .filter(|c| c.allowed == unauthenticated && c.auth.is_some())
            .map(|c| answer(&server, route.method, &path, c.auth.as_deref(), &route.body))
            .collect();
        assert!(
            answers.windows(2).all(|w| w[0] == w[1]),
            "{} {}: bad credentials are told apart: {answers:?}",
            route.method,
            route.path
        );
    }
    // Routes without an object id: the bad credentials are refused alike, and a caller of
    // another account sees none of A's objects in any listing.
    let a_ids = [
        &ws_session,
        &workspace,
        &runtime,
        &rt_workspace,
        &victim_key,
        &share,
    ];
    let collections = [
        ("GET", "/api/auth/me"),
        ("GET", "/api/workspaces"),
        ("GET", "/api/sessions"),
        ("GET", "/api/sessions/active"),
        ("GET", "/api/admin/sessions"),
        ("GET", "/api/audit-logs"),
        ("GET", "/api/stats"),
        ("GET", "/v1/sessions"),
        ("GET", "/v1/workspaces"),
        ("GET", "/v1/keys"),
        ("GET", "/v1/audit/events"),
        ("GET", "/v1/accounts"),
        ("GET", "/v1/accounts/current"),
    ];
    for (method, path) in collections {
        for cred in creds.iter().filter(|c| c.allowed == unauthenticated) {
            let (status, _) = answer(&server, method, path, cred.auth.as_deref(), &json!({}));
            assert_eq!(status, 401, "{method} {path} as {}", cred.name);
            probes += 1;
        }
        for cred in creds
            .iter()
            .filter(|c| matches!(c.name, "eve" | "key of B"))
        {
            let (status, body) = answer(&server, method, path, cred.auth.as_deref(), &json!({}));
            assert!(
                status == 200 || status == 403,
                "{method} {path} as {}: {status} {body}",
                cred.name
            );
            for id in a_ids {
                assert!(
                    !body.contains(id.as_str()),
                    "{method} {path} as {} shows {id}: {body}",
                    cred.name
                );
            }
            probes += 1;
        }
    }
    // Gateway routes take a service key only: an API key or a login token of the same account
    // is refused like none.
    for cred in [&key_a, &admin] {
        let r = server.post_auth(
            "/internal/sessions/validate",
            cred,
            &json!({"sessionToken": "x"}),
        );
        assert_eq!(r.status, 401, "{}", r.text());
        let r = server.post_auth("/v1/daemon/snapshots", cred, &json!({}));
        assert_eq!(r.status, 401, "{}", r.text());
    }

    // The objects were there all along: their owners reach them.
    server
        .get_auth(&format!("/api/sessions/{ws_session}"), &m1)
        .expect(200);
    server
        .get_auth(&format!("/v1/sessions/{runtime}"), &m2)
        .expect(200);
    server
        .get_auth(&format!("/sessions/{share}"), &key_a)
        .expect(200);
    server.get_auth("/api/workspaces", &admin).expect(200);
    eprintln!("{probes} probes of {} routes", routes.len());
    assert!(probes > 200);
    // Nothing a stranger did changed the share.
    let view = server
        .get_auth(&format!("/sessions/{share}"), &key_a)
        .expect(200);
    assert_eq!(view["closed"], false);
    assert_eq!(view["policy"]["public"], true);
}
