//! THE routing table: one `match` on (method, path segments) for every endpoint of every dialect.
//!
//! Each arm names the route template (for the access log and metrics), the dialect (for the error
//! envelope) and the handler. Nothing else routes: no middleware, no registration at a distance.

use crate::api::share::Via;
use crate::api::{ops, runtime as rt, share, workspace as ws};
use crate::error::{Dialect, Error, Result};
use crate::server::{Ctx, Req, Resp};

type Handler<'a> = Box<dyn FnOnce(&Ctx, &Req) -> Result<Resp> + 'a>;

/// Finds the route for `method` and `segments`: its template, dialect and handler.
fn lookup<'a>(
    method: &str,
    segments: &'a [&'a str],
) -> Option<(&'static str, Dialect, Handler<'a>)> {
    use Dialect::{Runtime, Share, Workspace};
    let route: (&'static str, Dialect, Handler<'a>) = match (method, segments) {
        // Operations
        ("GET", ["healthz"]) => ("/healthz", Runtime, Box::new(ops::healthz)),
        ("GET", ["readyz"]) => ("/readyz", Runtime, Box::new(ops::readyz)),
        ("GET", ["version"]) => ("/version", Runtime, Box::new(ops::version)),
        ("GET", ["metrics"]) => ("/metrics", Runtime, Box::new(ops::metrics)),

        // Share sessions (Wormkey)
        ("POST", ["sessions"]) => ("/sessions", Share, Box::new(share::create)),
        ("GET", ["sessions", "by-slug", slug]) => (
            "/sessions/by-slug/:slug",
            Share,
            Box::new(move |c, r| share::get_by_slug(c, r, slug)),
        ),
        ("GET", ["sessions", id]) => (
            "/sessions/:id",
            Share,
            Box::new(move |c, r| share::get(c, r, id)),
        ),
        ("DELETE", ["sessions", id]) => (
            "/sessions/:id",
            Share,
            Box::new(move |c, r| share::delete(c, r, id)),
        ),
        ("GET", ["owner", "sessions", "by-slug", slug]) => (
            "/owner/sessions/by-slug/:slug",
            Share,
            Box::new(move |c, r| share::owner_get_by_slug(c, r, slug)),
        ),
        ("POST", ["owner", "sessions", id, "tokens"]) => (
            "/owner/sessions/:id/tokens",
            Share,
            Box::new(move |c, r| share::create_token(c, r, id)),
        ),
        ("POST", ["owner" | "sessions", ..])
        | ("POST", ["internal", "sessions", "by-slug", _, _]) => {
            return by_slug_action(segments);
        }
        ("POST", ["internal", "sessions", "validate"]) => (
            "/internal/sessions/validate",
            Share,
            Box::new(share::validate),
        ),
        ("GET", ["internal", "sessions", "by-slug", slug]) => (
            "/internal/sessions/by-slug/:slug",
            Share,
            Box::new(move |c, r| share::internal_get_by_slug(c, r, slug)),
        ),

        // Workspace sessions (NeoSC)
        ("POST", ["api", "auth", "login"]) => ("/api/auth/login", Workspace, Box::new(ws::login)),
        ("POST", ["api", "auth", "logout"]) => {
            ("/api/auth/logout", Workspace, Box::new(ws::logout))
        }
        ("GET", ["api", "auth", "me"]) => ("/api/auth/me", Workspace, Box::new(ws::me)),
        ("POST", ["api", "auth", "register"]) => {
            ("/api/auth/register", Workspace, Box::new(ws::register))
        }
        ("POST", ["api", "auth", "mfa", "setup"]) => {
            ("/api/auth/mfa/setup", Workspace, Box::new(ws::mfa_setup))
        }
        ("POST", ["api", "auth", "mfa", "verify"]) => {
            ("/api/auth/mfa/verify", Workspace, Box::new(ws::mfa_verify))
        }
        ("GET", ["api", "workspaces"]) => {
            ("/api/workspaces", Workspace, Box::new(ws::list_workspaces))
        }
        ("POST", ["api", "workspaces"]) => {
            ("/api/workspaces", Workspace, Box::new(ws::create_workspace))
        }
        ("PUT", ["api", "workspaces", id]) => (
            "/api/workspaces/{id}",
            Workspace,
            Box::new(move |c, r| ws::update_workspace(c, r, id)),
        ),
        ("DELETE", ["api", "workspaces", id]) => (
            "/api/workspaces/{id}",
            Workspace,
            Box::new(move |c, r| ws::delete_workspace(c, r, id)),
        ),
        ("POST", ["api", "workspaces", id, "launch"]) => (
            "/api/workspaces/{id}/launch",
            Workspace,
            Box::new(move |c, r| ws::launch(c, r, id)),
        ),
        ("POST", ["api", "workspaces", id, "stop"]) => (
            "/api/workspaces/{id}/stop",
            Workspace,
            Box::new(move |c, r| ws::stop(c, r, id)),
        ),
        ("GET", ["api", "sessions"]) => ("/api/sessions", Workspace, Box::new(ws::list_sessions)),
        ("GET", ["api", "sessions", "active"]) => (
            "/api/sessions/active",
            Workspace,
            Box::new(ws::active_sessions),
        ),
        ("GET", ["api", "sessions", id]) => (
            "/api/sessions/{id}",
            Workspace,
            Box::new(move |c, r| ws::get_session(c, r, id)),
        ),
        ("POST", ["api", "sessions", id, "disconnect"]) => (
            "/api/sessions/{id}/disconnect",
            Workspace,
            Box::new(move |c, r| ws::disconnect(c, r, id)),
        ),
        ("POST", ["api", "sessions", id, "action"]) => (
            "/api/sessions/{id}/action",
            Workspace,
            Box::new(move |c, r| ws::action(c, r, id)),
        ),
        ("POST", ["api", "sessions", id, "heartbeat"]) => (
            "/api/sessions/{id}/heartbeat",
            Workspace,
            Box::new(move |c, r| ws::heartbeat(c, r, id)),
        ),
        ("GET", ["api", "admin", "sessions"]) => (
            "/api/admin/sessions",
            Workspace,
            Box::new(ws::admin_sessions),
        ),
        ("POST", ["api", "admin", "sessions", id, "action"]) => (
            "/api/admin/sessions/{id}/action",
            Workspace,
            Box::new(move |c, r| ws::admin_action(c, r, id)),
        ),
        ("GET", ["api", "audit-logs"]) => ("/api/audit-logs", Workspace, Box::new(ws::audit_logs)),
        ("GET", ["api", "stats"]) => ("/api/stats", Workspace, Box::new(ws::stats)),

        // Runtime sessions (Chaser)
        ("POST", ["v1", "sessions"]) => ("/v1/sessions", Runtime, Box::new(rt::create_session)),
        ("GET", ["v1", "sessions"]) => ("/v1/sessions", Runtime, Box::new(rt::list_sessions)),
        ("POST", ["v1", "sessions", "bulk-terminate"]) => (
            "/v1/sessions/bulk-terminate",
            Runtime,
            Box::new(rt::bulk_terminate),
        ),
        ("GET", ["v1", "sessions", id]) => (
            "/v1/sessions/{id}",
            Runtime,
            Box::new(move |c, r| rt::get_session(c, r, id)),
        ),
        ("DELETE", ["v1", "sessions", id]) => (
            "/v1/sessions/{id}",
            Runtime,
            Box::new(move |c, r| rt::delete_session(c, r, id)),
        ),
        ("GET", ["v1", "workspaces"]) => ("/v1/workspaces", Runtime, Box::new(rt::list_workspaces)),
        ("POST", ["v1", "workspaces"]) => {
            ("/v1/workspaces", Runtime, Box::new(rt::create_workspace))
        }
        ("PUT", ["v1", "workspaces", w, "name"]) => (
            "/v1/workspaces/{w}/name",
            Runtime,
            Box::new(move |c, r| rt::rename_workspace(c, r, w)),
        ),
        ("DELETE", ["v1", "workspaces", w]) => (
            "/v1/workspaces/{w}",
            Runtime,
            Box::new(move |c, r| rt::delete_workspace(c, r, w)),
        ),
        ("GET", ["v1", "audit", "events"]) => {
            ("/v1/audit/events", Runtime, Box::new(rt::audit_events))
        }
        ("GET", ["v1", "keys"]) => ("/v1/keys", Runtime, Box::new(rt::list_keys)),
        ("POST", ["v1", "keys"]) => ("/v1/keys", Runtime, Box::new(rt::create_key)),
        ("DELETE", ["v1", "keys", id]) => (
            "/v1/keys/{id}",
            Runtime,
            Box::new(move |c, r| rt::revoke_key(c, r, id)),
        ),
        ("GET", ["v1", "accounts"]) => ("/v1/accounts", Runtime, Box::new(rt::list_accounts)),
        ("GET", ["v1", "accounts", "current"]) => (
            "/v1/accounts/current",
            Runtime,
            Box::new(rt::current_account),
        ),
        ("POST", ["v1", "daemon", "snapshots"]) => (
            "/v1/daemon/snapshots",
            Runtime,
            Box::new(rt::daemon_snapshots),
        ),
        _ => return None,
    };
    Some(route)
}

/// `POST {/owner,}/sessions/by-slug/:slug/<action>` and `POST /internal/sessions/by-slug/:slug/<action>`.
fn by_slug_action<'a>(segments: &'a [&'a str]) -> Option<(&'static str, Dialect, Handler<'a>)> {
    use Dialect::Share;
    let (prefix, slug, action) = match segments {
        ["owner", "sessions", "by-slug", slug, action] => ("owner", *slug, *action),
        ["sessions", "by-slug", slug, action] => ("sessions", *slug, *action),
        ["internal", "sessions", "by-slug", slug, action] => ("internal", *slug, *action),
        _ => return None,
    };
    let via = if prefix == "internal" {
        Via::Gateway
    } else {
        Via::OwnerOrGateway
    };
    let handler: Handler<'a> = match (prefix, action) {
        (_, "policy") => Box::new(move |c, r| share::set_policy(c, r, slug, via)),
        (_, "kick") => Box::new(move |c, r| share::kick(c, r, slug, via)),
        (_, "close") => Box::new(move |c, r| share::close(c, r, slug, via)),
        ("internal" | "sessions", "viewers") => {
            Box::new(move |c, r| share::report_viewers(c, r, slug, via))
        }
        ("internal", "admit") => Box::new(move |c, r| share::admit(c, r, slug)),
        _ => return None,
    };
    let template = match (prefix, action) {
        ("owner", "policy") => "/owner/sessions/by-slug/:slug/policy",
        ("owner", "kick") => "/owner/sessions/by-slug/:slug/kick",
        ("owner", "close") => "/owner/sessions/by-slug/:slug/close",
        ("sessions", "policy") => "/sessions/by-slug/:slug/policy",
        ("sessions", "kick") => "/sessions/by-slug/:slug/kick",
        ("sessions", "close") => "/sessions/by-slug/:slug/close",
        ("sessions", _) => "/sessions/by-slug/:slug/viewers",
        ("internal", "policy") => "/internal/sessions/by-slug/:slug/policy",
        ("internal", "kick") => "/internal/sessions/by-slug/:slug/kick",
        ("internal", "close") => "/internal/sessions/by-slug/:slug/close",
        ("internal", "viewers") => "/internal/sessions/by-slug/:slug/viewers",
        _ => "/internal/sessions/by-slug/:slug/admit",
    };
    Some((template, Share, handler))
}

/// The error envelope for a path, also for requests that match no route.
pub fn dialect_of(path: &str) -> Dialect {
    if path == "/api" || path.starts_with("/api/") {
        Dialect::Workspace
    } else if path == "/v1"
        || path.starts_with("/v1/")
        || matches!(path, "/healthz" | "/readyz" | "/version" | "/metrics")
    {
        Dialect::Runtime
    } else {
        Dialect::Share
    }
}

/// The route template of a request, for logs.
pub fn route_of(method: &str, segments: &[String]) -> &'static str {
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    lookup(method, &segs).map(|(t, _, _)| t).unwrap_or("-")
}

/// Answers a request: (route template, response).
pub fn dispatch(ctx: &Ctx, req: &Req) -> (&'static str, Resp) {
    let segs: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    let dialect = dialect_of(&req.path);
    let method = if req.method == "HEAD" {
        "GET"
    } else {
        req.method.as_str()
    };
    match lookup(method, &segs) {
        Some((template, dialect, handler)) => match handler(ctx, req) {
            Ok(resp) => (template, resp.in_dialect(dialect)),
            Err(e) => {
                if let Error::Internal(cause) = &e {
                    log::error!("{} {template} [{}]: {cause}", req.method, req.request_id);
                }
                (template, e.into_resp(dialect))
            }
        },
        None => {
            let allowed: Vec<&str> = ["GET", "POST", "PUT", "DELETE"]
                .into_iter()
                .filter(|m| lookup(m, &segs).is_some())
                .collect();
            if allowed.is_empty() {
                ("-", Error::NotFound("Not found".into()).into_resp(dialect))
            } else {
                let resp = Error::MethodNotAllowed
                    .into_resp(dialect)
                    .header("Allow", allowed.join(", "));
                ("-", resp)
            }
        }
    }
}
