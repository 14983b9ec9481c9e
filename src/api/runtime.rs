//! Runtime sessions in the Chaser dialect (SPEC §6): `/v1/...`, errors
//! `{"error": "<code>", "message": "<message>"}`.
//!
//! The official `chaser-sdk` is the client this must satisfy: `SessionInfo` has exactly its eight
//! keys with `null` for what is unknown, lists have the SDK's envelopes, and 204s have no body.
//! Sessions launched through the workspace dialect appear here too. While a daemon's snapshot of a
//! session is fresh, status, leases and endpoints come from it.

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{Fields, Principal, credential, cursor_param, json_object, limit_param, principal};
use crate::auth;
use crate::db::accounts::{CredentialKind, NewKey};
use crate::db::audit::AuditQuery;
use crate::db::runtime::{
    self, NewRuntimeSession, NewRuntimeWorkspace, Report, RuntimeFilter, RuntimeSession,
    RuntimeWorkspace,
};
use crate::db::{audit, workspaces as ws_db};
use crate::domain::time::{Millis, parse_rfc3339, rfc3339};
use crate::domain::{Actor, ActorType, AuditEntry};
use crate::error::{Error, Result};
use crate::server::{Ctx, Req, Resp};

pub const KEY_SCOPES: &[&str] = &[
    "sessions.read",
    "sessions.write",
    "workspaces.read",
    "workspaces.write",
    "audit.read",
    "keys.write",
];
const SESSION_TYPES: &[&str] = &["browser", "sandbox"];
const DAEMON_STATUSES: &[&str] = &["starting", "running", "stopping", "terminated", "failed"];
const DEFAULT_TTL_SECONDS: i64 = 86_400;
const MAX_TTL_SECONDS: i64 = 30 * 86_400;

fn not_found(what: &str) -> Error {
    Error::NotFound(format!("{what} not found"))
}

fn caller(ctx: &Ctx, req: &Req) -> Result<Principal> {
    principal(
        ctx,
        req,
        req.header("x-chaser-account")
            .map(str::trim)
            .filter(|s| !s.is_empty()),
    )
}

// ---------------------------------------------------------------------------------------------
// Sessions

#[derive(Serialize)]
struct Endpoints {
    control: String,
    video: Option<String>,
}

#[derive(Serialize)]
struct SessionInfo<'a> {
    id: &'a str,
    created_at: String,
    status: &'a str,
    session_type: Option<&'a str>,
    endpoints: Endpoints,
    workspace_id: Option<&'a str>,
    active_connection_leases: Option<i64>,
    persistence: Option<bool>,
}

fn session_info<'a>(ctx: &Ctx, s: &'a RuntimeSession) -> SessionInfo<'a> {
    let fresh = !s.ended
        && s.snapshot_at
            .is_some_and(|t| ctx.now - t < ctx.cfg().snapshot_stale_after);
    let status = match (fresh, s.status.as_str()) {
        (true, _) => s.snapshot_status.as_deref().unwrap_or("active"),
        (false, "disconnected") => "terminated",
        (false, other) => other,
    };
    let stored_endpoints = if fresh {
        &s.snapshot_endpoints
    } else {
        &s.endpoints
    };
    let reported: Map<String, Value> = stored_endpoints
        .as_deref()
        .and_then(|e| serde_json::from_str(e).ok())
        .unwrap_or_default();
    let control = reported
        .get("control")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| ctx.cfg().control_url_template.replace("{id}", &s.id));
    let runtime = s.dialect == "runtime";
    SessionInfo {
        id: &s.id,
        created_at: rfc3339(s.created_at),
        status,
        session_type: s.session_type.as_deref(),
        endpoints: Endpoints {
            control,
            video: reported
                .get("video")
                .and_then(Value::as_str)
                .map(str::to_string),
        },
        workspace_id: s.workspace_id.as_deref(),
        active_connection_leases: if fresh {
            s.snapshot_leases
        } else {
            s.active_leases.filter(|_| runtime)
        },
        persistence: runtime.then_some(s.persistent),
    }
}

/// `session_type`: browser (the default) or sandbox.
fn session_type(f: &Fields) -> Result<String> {
    match f.str("session_type")? {
        None => Ok("browser".to_string()),
        Some(t) if SESSION_TYPES.contains(&t) => Ok(t.to_string()),
        Some(_) => Err(Error::bad_request(
            "session_type must be \"browser\" or \"sandbox\"",
        )),
    }
}

fn stale_cutoff(ctx: &Ctx) -> Millis {
    ctx.now - ctx.cfg().snapshot_stale_after + 1
}

/// `POST /v1/sessions`
pub fn create_session(ctx: &Ctx, req: &Req) -> Result<Resp> {
    let p = caller(ctx, req)?;
    p.require_scope("sessions.write")?;
    let allowance = ctx
        .app
        .runtime_creates
        .check(p.credential.id, ctx.now)
        .map_err(|reset| Error::TooManyRequests {
            message: "Too many sessions created with this credential; slow down".into(),
            retry_after_secs: reset,
        })?;
    let body = json_object(req)?;
    let f = Fields::new(&body);
    let session_type = session_type(&f)?;
    let workspace_name = f.str("workspace")?.map(str::trim).filter(|s| !s.is_empty());
    let ephemeral = f.bool("ephemeral")?.unwrap_or(workspace_name.is_none());
    let image = f.str("image")?.map(str::to_string);
    let proxy = f.str("proxy")?.map(strip_userinfo);
    let env_names: Vec<String> = match f.object("env")? {
        None => Vec::new(),
        Some(env) => {
            if env.values().any(|v| !v.is_string()) {
                return Err(Error::bad_request("env must map names to strings"));
            }
            env.keys().cloned().collect()
        }
    };
    let ttl_seconds = match f.int("ttl_seconds", 1, MAX_TTL_SECONDS)? {
        Some(t) => t,
        None => ctx
            .db
            .account_default_ttl(p.account_id)?
            .unwrap_or(DEFAULT_TTL_SECONDS),
    };
    if workspace_name.is_some_and(|w| w.len() > 200)
        || image.as_ref().is_some_and(|i| i.len() > 500)
    {
        return Err(Error::bad_request(
            "workspace and image must be at most 200 and 500 characters",
        ));
    }
    let existing = match workspace_name {
        Some(name) => ctx.db.runtime_workspace(p.account_id, name)?,
        None => None,
    };
    if ephemeral && workspace_name.is_some() && existing.is_none() {
        return Err(not_found("Workspace"));
    }
    let create_workspace = (!ephemeral && existing.is_none()).then(|| {
        let uid = format!("ws-{}", auth::random_hex(8));
        let name = workspace_name
            .map(str::to_string)
            .unwrap_or_else(|| uid.clone());
        (uid, name)
    });
    let (account, now, actor) = (p.account_id, ctx.now, p.actor(req));
    let mut new = NewRuntimeSession {
        account_id: p.account_id,
        user_row: p.user.as_ref().map(|u| u.id),
        workspace_row: existing.as_ref().map(|w| w.row_id),
        credential_id: p.credential.id,
        session_type: session_type.clone(),
        persistent: !ephemeral,
        image: image.clone(),
        proxy,
        env_names,
        ttl_seconds,
        ip: req.client_ip_string(),
    };
    let id = ctx.app.writer.exec(move |tx| {
        if let Some((uid, name)) = &create_workspace {
            new.workspace_row =
                Some(runtime::insert_runtime_workspace(tx, &NewRuntimeWorkspace { account_id: account, uid, name, session_type: &new.session_type, image: new.image.as_deref(), template: false }, now)?);
            let entry = AuditEntry::new(Some(account), &actor, "workspace.created", "workspace", uid)
                .summary(format!("workspace {name} created for a persistent session"));
            audit::record(tx, &entry, now)?;
        }
        let id = runtime::insert_runtime_session(tx, &new, now)?;
        let entry = AuditEntry::new(Some(account), &actor, "session.created", "session", &id)
            .summary(format!("{} session created", new.session_type))
            .metadata(json!({ "session_type": new.session_type, "persistent": new.persistent, "ttl_seconds": new.ttl_seconds }));
        audit::record(tx, &entry, now)?;
        Ok(id)
    })?;
    let s = ctx
        .db
        .runtime_session(p.account_id, &id, stale_cutoff(ctx))?
        .ok_or_else(|| not_found("Session"))?;
    let resp = Resp::json(201, &session_info(ctx, &s));
    Ok(resp
        .header("X-RateLimit-Limit", allowance.limit.to_string())
        .header("X-RateLimit-Remaining", allowance.remaining.to_string())
        .header("X-RateLimit-Reset", allowance.reset.to_string()))
}

/// A proxy URL without credentials (`http://user:pass@host` → `http://host`).
fn strip_userinfo(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}{}", &url[..scheme_end + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// `GET /v1/sessions?status=&session_type=&workspace_id=&limit=&cursor=`
pub fn list_sessions(ctx: &Ctx, req: &Req) -> Result<Resp> {
    let p = caller(ctx, req)?;
    p.require_scope("sessions.read")?;
    let limit = limit_param(req, 50)?;
    let before = cursor_param(req)?;
    let filter = RuntimeFilter {
        account_id: p.account_id,
        fresh_since: stale_cutoff(ctx),
        status: req.param("status").map(str::to_string),
        session_type: req.param("session_type").map(str::to_string),
        workspace_uid: req.param("workspace_id").map(str::to_string),
        before,
        limit,
    };
    let (rows, total) = ctx.db.runtime_sessions(&filter)?;
    let next_cursor = (rows.len() == limit)
        .then(|| rows.last().map(|s| s.row_id.to_string()))
        .flatten();
    let sessions: Vec<SessionInfo> = rows.iter().map(|s| session_info(ctx, s)).collect();
    #[derive(Serialize)]
    struct Page<'a> {
        sessions: Vec<SessionInfo<'a>>,
        total: i64,
        next_cursor: Option<String>,
    }
    Ok(Resp::json(
        200,
        &Page {
            sessions,
            total,
            next_cursor,
        },
    ))
}

/// `GET /v1/sessions/{id}`
pub fn get_session(ctx: &Ctx, req: &Req, id: &str) -> Result<Resp> {
    let p = caller(ctx, req)?;
    p.require_scope("sessions.read")?;
    let s = ctx
        .db
        .runtime_session(p.account_id, id, stale_cutoff(ctx))?
        .ok_or_else(|| not_found("Session"))?;
    Ok(Resp::json(200, &session_info(ctx, &s)))
}

/// Ends one live session from the runtime side; `Ok(false)` when it had already ended.
fn terminate(ctx: &Ctx, p: &Principal, req: &Req, s: &RuntimeSession, force: bool) -> Result<bool> {
    if s.ended {
        return Ok(false);
    }
    let info = session_info(ctx, s);
    if !force && info.active_connection_leases.unwrap_or(0) > 0 {
        return Err(Error::Conflict(
            "The session has active connections; terminate with force=true".into(),
        ));
    }
    let (row, uid, account, now, actor) =
        (s.row_id, s.id.clone(), p.account_id, ctx.now, p.actor(req));
    ctx.app.writer.exec(move |tx| {
        let ended = ws_db::end_session(tx, row, "terminated", "stopped", now)?;
        if ended {
            let entry =
                AuditEntry::new(Some(account), &actor, "session.terminated", "session", &uid)
                    .metadata(json!({ "force": force }));
            audit::record(tx, &entry, now)?;
        }
        Ok(ended)
    })
}

fn force_flag(req: &Req) -> Result<bool> {
    match req.query("force") {
        None | Some("") | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(_) => Err(Error::bad_request("force must be true or false")),
    }
}

/// `DELETE /v1/sessions/{id}?force=true` — 204, also when the session had already ended.
pub fn delete_session(ctx: &Ctx, req: &Req, id: &str) -> Result<Resp> {
    let p = caller(ctx, req)?;
    p.require_scope("sessions.write")?;
    let force = force_flag(req)?;
    let s = ctx
        .db
        .runtime_session(p.account_id, id, stale_cutoff(ctx))?
        .ok_or_else(|| not_found("Session"))?;
    terminate(ctx, &p, req, &s, force)?;
    Ok(Resp::empty(204))
}

/// `POST /v1/sessions/bulk-terminate {ids?, workspaces?, all?, session_type?, force?}`
pub fn bulk_terminate(ctx: &Ctx, req: &Req) -> Result<Resp> {
    let p = caller(ctx, req)?;
    p.require_scope("sessions.write")?;
    let body = json_object(req)?;
    let f = Fields::new(&body);
    let ids = f.str_array("ids")?.unwrap_or_default();
    let workspaces = f.str_array("workspaces")?.unwrap_or_default();
    let all = f.bool("all")?.unwrap_or(false);
    let force = f.bool("force")?.unwrap_or(false);
    let session_type = match f.str("session_type")? {
        Some(t) if !SESSION_TYPES.contains(&t) => {
            return Err(Error::bad_request(
                "session_type must be \"browser\" or \"sandbox\"",
            ));
        }
        other => other,
    };
    if ids.is_empty() && workspaces.is_empty() && !all {
        return Err(Error::bad_request("give ids, workspaces or all: true"));
    }
    if ids.len() > 1000 {
        return Err(Error::bad_request("ids may hold at most 1000 entries"));
    }
    let mut terminated = Vec::new();
    let mut failed = Vec::new();
    let mut targets: Vec<RuntimeSession> = Vec::new();
    for id in &ids {
        match ctx
            .db
            .runtime_session(p.account_id, id, stale_cutoff(ctx))?
        {
            Some(s) if session_type.is_none_or(|t| s.session_type.as_deref() == Some(t)) => {
                targets.push(s)
            }
            _ => failed
                .push(json!({ "id": id, "code": "not_found", "message": "Session not found" })),
        }
    }
    if all || !workspaces.is_empty() {
        let uids: Vec<String> = workspaces
            .iter()
            .map(|w| {
                Ok(ctx
                    .db
                    .runtime_workspace(p.account_id, w)?
                    .map(|x| x.id)
                    .unwrap_or_else(|| w.clone()))
            })
            .collect::<Result<_>>()?;
        for s in ctx.db.live_runtime_sessions(
            p.account_id,
            if all { &[] } else { &uids },
            session_type,
            stale_cutoff(ctx),
        )? {
            if !targets.iter().any(|t| t.row_id == s.row_id) {
                targets.push(s);
            }
        }
    }
    for s in &targets {
        match terminate(ctx, &p, req, s, force) {
            Ok(_) => terminated.push(s.id.clone()),
            Err(e @ (Error::Conflict(_) | Error::NotFound(_))) => {
                failed.push(json!({ "id": s.id, "code": e.code(), "message": e.public_message() }))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Resp::json(
        200,
        &json!({ "terminated": terminated, "failed": failed }),
    ))
}

// ---------------------------------------------------------------------------------------------
// Workspaces

#[derive(Serialize)]
struct WorkspaceInfo<'a> {
    id: &'a str,
    name: &'a str,
    image: &'a Option<String>,
    template: bool,
    last_session_id: &'a Option<String>,
    active_session_id: &'a Option<String>,
    session_type: &'a str,
    status: &'static str,
    persistence: bool,
    created_at: String,
}

fn workspace_info(w: &RuntimeWorkspace) -> WorkspaceInfo<'_> {
    WorkspaceInfo {
        id: &w.id,
        name: &w.name,
        image: &w.image,
        template: w.template,
        last_session_id: &w.last_session_id,
        active_session_id: &w.active_session_id,
        session_type: &w.session_type,
        status: if w.active_session_id.is_some() {
            "running"
        } else {
            "idle"
        },
        persistence: true,
        created_at: rfc3339(w.created_at),
    }
}

/// `GET /v1/workspaces` — a bare list.
pub fn list_workspaces(ctx: &Ctx, req: &Req) -> Result<Resp> {
    let p = caller(ctx, req)?;
    p.require_scope("workspaces.read")?;
    let list = ctx.db.runtime_workspaces(p.account_id)?;
    Ok(Resp::json(
        200,
        &list.iter().map(workspace_info).collect::<Vec<_>>(),
    ))
}

/// `POST /v1/workspaces {name?, session_type?, image?, template?}`
pub fn create_workspace(ctx: &Ctx, req: &Req) -> Result<Resp> {
    let p = caller(ctx, req)?;
    p.require_scope("workspaces.write")?;
    let body = json_object(req)?;
    let f = Fields::new(&body);
    let session_type = session_type(&f)?;
    let uid = format!("ws-{}", auth::random_hex(8));
    let name = match f.str("name")?.map(str::trim) {
        Some(n) if n.len() > 200 => {
            return Err(Error::bad_request("name must be at most 200 characters"));
        }
        Some(n) if !n.is_empty() => n.to_string(),
        _ => uid.clone(),
    };
    let image = f.str("image")?.map(str::to_string);
    let template = f.bool("template")?.unwrap_or(false);
    let (account, now, actor, stored_uid) = (p.account_id, ctx.now, p.actor(req), uid.clone());
    ctx.app.writer.exec(move |tx| {
        runtime::insert_runtime_workspace(
            tx,
            &NewRuntimeWorkspace {
                account_id: account,
                uid: &stored_uid,
                name: &name,
                session_type: &session_type,
                image: image.as_deref(),
                template,
            },
            now,
        )?;
        let entry = AuditEntry::new(
            Some(account),
            &actor,
            "workspace.created",
            "workspace",
            &stored_uid,
        )
        .summary(format!("workspace {name} created"));
        audit::record(tx, &entry, now)
    })?;
    let w = ctx
        .db
        .runtime_workspace(p.account_id, &uid)?
        .ok_or_else(|| not_found("Workspace"))?;
    Ok(Resp::json(201, &workspace_info(&w)))
}

/// `PUT /v1/workspaces/{w}/name {name}`
pub fn rename_workspace(ctx: &Ctx, req: &Req, w: &str) -> Result<Resp> {
    let p = caller(ctx, req)?;
    p.require_scope("workspaces.write")?;
    let body = json_object(req)?;
    let name = Fields::new(&body)
        .str("name")?
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Error::bad_request("name is required"))?
        .to_string();
    if name.len() > 200 {
        return Err(Error::bad_request("name must be at most 200 characters"));
    }
    let ws = ctx
        .db
        .runtime_workspace(p.account_id, w)?
        .ok_or_else(|| not_found("Workspace"))?;
    let (row, uid, account, now, actor, stored) = (
        ws.row_id,
        ws.id.clone(),
        p.account_id,
        ctx.now,
        p.actor(req),
        name.clone(),
    );
    ctx.app.writer.exec(move |tx| {
        runtime::rename_workspace(tx, row, &stored)?;
        let entry = AuditEntry::new(
            Some(account),
            &actor,
            "workspace.renamed",
            "workspace",
            &uid,
        )
        .metadata(json!({ "name": stored }));
        audit::record(tx, &entry, now)
    })?;
    Ok(Resp::json(200, &json!({ "id": ws.id, "name": name })))
}

/// `DELETE /v1/workspaces/{w}?force=true` — 409 while a session is live, unless forced.
pub fn delete_workspace(ctx: &Ctx, req: &Req, w: &str) -> Result<Resp> {
    let p = caller(ctx, req)?;
    p.require_scope("workspaces.write")?;
    let force = force_flag(req)?;
    let ws = ctx
        .db
        .runtime_workspace(p.account_id, w)?
        .ok_or_else(|| not_found("Workspace"))?;
    if force {
        for s in ctx.db.live_runtime_sessions(
            p.account_id,
            std::slice::from_ref(&ws.id),
            None,
            stale_cutoff(ctx),
        )? {
            terminate(ctx, &p, req, &s, true)?;
        }
    }
    let (row, uid, account, now, actor) = (
        ws.row_id,
        ws.id.clone(),
        p.account_id,
        ctx.now,
        p.actor(req),
    );
    ctx.app.writer.exec(move |tx| {
        ws_db::delete_workspace(tx, row, now)?;
        let entry = AuditEntry::new(
            Some(account),
            &actor,
            "workspace.deleted",
            "workspace",
            &uid,
        )
        .metadata(json!({ "force": force }));
        audit::record(tx, &entry, now)
    })?;
    Ok(Resp::empty(204))
}

// ---------------------------------------------------------------------------------------------
// Audit, keys, accounts

/// `GET /v1/audit/events?action=&resource_type=&resource_id=&status=&before=&limit=`
pub fn audit_events(ctx: &Ctx, req: &Req) -> Result<Resp> {
    let p = caller(ctx, req)?;
    p.require_scope("audit.read")?;
    let q = |name: &str| {
        req.query(name)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let limit = limit_param(req, 100)?;
    let success = match req.query("status") {
        None | Some("") => None,
        Some("success") => Some(true),
        Some("failure") => Some(false),
        Some(_) => return Err(Error::bad_request("status must be success or failure")),
    };
    // `before` is an event id (the last one of the previous page) or a time.
    let (before_row, before_time) = match req.query("before") {
        None | Some("") => (None, None),
        Some(v) => match parse_rfc3339(v) {
            Some(t) => (None, Some(t)),
            None => (
                Some(ctx.db.audit_row_id(p.account_id, v)?.ok_or_else(|| {
                    Error::bad_request("before must be an event id or an RFC 3339 time")
                })?),
                None,
            ),
        },
    };
    let filter = AuditQuery {
        account_id: p.account_id,
        action: q("action"),
        resource_type: q("resource_type"),
        resource_id: q("resource_id"),
        success,
        before_row,
        before_time,
        limit,
        ..AuditQuery::default()
    };
    let events: Vec<Value> = ctx
        .db
        .audit(&filter)?
        .into_iter()
        .map(|r| {
            json!({
                "id": r.id,
                "actor_type": r.actor_type,
                "actor_id": r.actor_id,
                "action": r.action,
                "resource_type": r.resource_type,
                "resource_id": r.resource_id,
                "status": if r.success { "success" } else { "failure" },
                "summary": r.summary,
                "metadata": serde_json::from_str::<Value>(&r.metadata).unwrap_or(Value::Null),
                "created_at": rfc3339(r.created_at),
            })
        })
        .collect();
    Ok(Resp::json(200, &json!({ "events": events })))
}

fn full_access(scopes: &[String]) -> bool {
    KEY_SCOPES.iter().all(|s| scopes.iter().any(|x| x == s))
}

/// `GET /v1/keys`
pub fn list_keys(ctx: &Ctx, req: &Req) -> Result<Resp> {
    let p = caller(ctx, req)?;
    p.require_scope("keys.write")?;
    let keys: Vec<Value> = ctx
        .db
        .api_keys(p.account_id)?
        .into_iter()
        .map(|k| {
            json!({
                "id": k.id,
                "key_prefix": k.prefix,
                "name": k.name,
                "full_access": full_access(&k.scopes),
                "scopes": k.scopes,
                "created_at": rfc3339(k.created_at),
                "last_used_at": k.last_used_at.map(rfc3339),
                "revoked": k.revoked,
            })
        })
        .collect();
    Ok(Resp::json(200, &json!({ "keys": keys })))
}

/// `POST /v1/keys {name?, scopes?}` — the key is shown in this answer only.
pub fn create_key(ctx: &Ctx, req: &Req) -> Result<Resp> {
    let p = caller(ctx, req)?;
    p.require_scope("keys.write")?;
    let body = json_object(req)?;
    let f = Fields::new(&body);
    let name = f.str("name")?.unwrap_or("").to_string();
    if name.len() > 100 {
        return Err(Error::bad_request("name must be at most 100 characters"));
    }
    let scopes: Vec<String> = match f.str_array("scopes")? {
        None => KEY_SCOPES.iter().map(|s| s.to_string()).collect(),
        Some(list) => {
            if let Some(bad) = list.iter().find(|s| !KEY_SCOPES.contains(&s.as_str())) {
                return Err(Error::bad_request(format!("scopes: unknown scope {bad:?}")));
            }
            let mut kept: Vec<String> = Vec::new();
            for s in list {
                if !kept.contains(&s) {
                    kept.push(s);
                }
            }
            kept
        }
    };
    // An API key never grants more than its creator has: keys made by a user act as that user.
    if p.credential.kind == CredentialKind::ApiKey {
        if let Some(extra) = scopes.iter().find(|s| !p.credential.has_scope(s)) {
            return Err(Error::Forbidden(format!(
                "This key cannot grant the {extra} scope it lacks"
            )));
        }
    }
    let token = auth::new_api_key();
    let (stored, account, user, now, actor, stored_name, stored_scopes) = (
        token.clone(),
        p.account_id,
        p.user.as_ref().map(|u| u.id),
        ctx.now,
        p.actor(req),
        name.clone(),
        scopes.clone(),
    );
    let id = ctx.app.writer.exec(move |tx| {
        let key = NewKey {
            token: &stored,
            kind: CredentialKind::ApiKey,
            name: &stored_name,
            account_id: Some(account),
            user_id: user,
            scopes: &stored_scopes,
            service_role: None,
            expires_at: None,
        };
        crate::db::accounts::insert_key(tx, &key, &actor, now)
    })?;
    let prefix: String = token.chars().take(8).collect();
    Ok(Resp::json(
        201,
        &json!({ "id": id, "key": token, "key_prefix": prefix, "name": name, "full_access": full_access(&scopes), "scopes": scopes }),
    ))
}

/// `DELETE /v1/keys/{id}`
pub fn revoke_key(ctx: &Ctx, req: &Req, id: &str) -> Result<Resp> {
    let p = caller(ctx, req)?;
    p.require_scope("keys.write")?;
    let (account, now, actor, uid) = (p.account_id, ctx.now, p.actor(req), id.to_string());
    let found = ctx.app.writer.exec(move |tx| {
        if !runtime::revoke_key(tx, account, &uid, now)? {
            return Ok(false);
        }
        let entry = AuditEntry::new(Some(account), &actor, "key.revoked", "key", &uid);
        audit::record(tx, &entry, now)?;
        Ok(true)
    })?;
    if !found {
        return Err(not_found("Key"));
    }
    Ok(Resp::json(200, &json!({ "id": id, "revoked": true })))
}

fn account_view(a: &runtime::AccountRow) -> Value {
    json!({ "id": a.id, "kind": a.kind, "name": a.name, "role": a.role, "personal": a.kind == "personal", "created_at": rfc3339(a.created_at) })
}

/// `GET /v1/accounts`
pub fn list_accounts(ctx: &Ctx, req: &Req) -> Result<Resp> {
    let p = caller(ctx, req)?;
    let accounts = match &p.user {
        Some(u) => ctx.db.accounts_of_user(u.id)?,
        None => vec![ctx.db.account(p.account_id)?],
    };
    Ok(Resp::json(
        200,
        &json!({ "accounts": accounts.iter().map(account_view).collect::<Vec<_>>() }),
    ))
}

/// `GET /v1/accounts/current`
pub fn current_account(ctx: &Ctx, req: &Req) -> Result<Resp> {
    let p = caller(ctx, req)?;
    let mut account = ctx.db.account(p.account_id)?;
    account.role = p.role.as_str().to_string();
    Ok(Resp::json(
        200,
        &json!({ "account": account_view(&account) }),
    ))
}

// ---------------------------------------------------------------------------------------------
// Daemons

/// `POST /v1/daemon/snapshots {node_id, sessions:[{id, status, active_connection_leases, endpoints?}]}`
pub fn daemon_snapshots(ctx: &Ctx, req: &Req) -> Result<Resp> {
    let token = req
        .bearer()
        .ok_or_else(|| Error::Unauthorized("Not authenticated".into()))?;
    let daemon = credential(ctx, token, &[CredentialKind::ServiceKey])?
        .filter(|c| c.service_role.as_deref() == Some("daemon"))
        .ok_or_else(|| Error::Unauthorized("A daemon service key is required".into()))?;
    let account = daemon
        .account_id
        .ok_or_else(|| Error::Unauthorized("A daemon service key is required".into()))?;
    let body = json_object(req)?;
    let f = Fields::new(&body);
    let node_id = f
        .str("node_id")?
        .filter(|n| !n.is_empty() && n.len() <= 200)
        .ok_or_else(|| Error::bad_request("node_id is required"))?
        .to_string();
    let items = f
        .array("sessions")?
        .ok_or_else(|| Error::bad_request("sessions must be an array"))?;
    if items.len() > 10_000 {
        return Err(Error::bad_request(
            "sessions may hold at most 10000 entries",
        ));
    }
    let mut reports = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(map) = item else {
            return Err(Error::bad_request(format!(
                "sessions[{i}] must be an object"
            )));
        };
        let f = Fields::new(map);
        let id = f
            .str("id")?
            .ok_or_else(|| Error::bad_request(format!("sessions[{i}].id is required")))?
            .to_string();
        let status = f
            .str("status")?
            .ok_or_else(|| Error::bad_request(format!("sessions[{i}].status is required")))?;
        if !DAEMON_STATUSES.contains(&status) {
            return Err(Error::bad_request(format!(
                "sessions[{i}].status must be one of {}",
                DAEMON_STATUSES.join(", ")
            )));
        }
        let leases = f
            .int("active_connection_leases", 0, 1_000_000)?
            .unwrap_or(0);
        let endpoints = match f.object("endpoints")? {
            None => None,
            Some(e) if e.values().all(|v| v.is_string() || v.is_null()) => {
                Some(Value::Object(e.clone()).to_string())
            }
            Some(_) => {
                return Err(Error::bad_request(format!(
                    "sessions[{i}].endpoints must map names to URLs"
                )));
            }
        };
        reports.push(Report {
            id,
            status: status.to_string(),
            leases,
            endpoints,
        });
    }
    let actor = Actor {
        kind: ActorType::Service,
        id: Some(daemon.uid.clone()),
        email: None,
        ip: req.client_ip_string(),
    };
    let now = ctx.now;
    let (reconciled, unknown) = ctx.app.writer.exec(move |tx| {
        let (mut reconciled, mut unknown) = (0, Vec::new());
        for report in &reports {
            match runtime::apply_snapshot(tx, account, &node_id, report, now)? {
                None => unknown.push(report.id.clone()),
                Some(ended) => {
                    reconciled += 1;
                    if ended {
                        let action = format!("session.{}", report.status);
                        let entry =
                            AuditEntry::new(Some(account), &actor, &action, "session", &report.id)
                                .summary(format!(
                                    "node {node_id} reported the session {}",
                                    report.status
                                ));
                        audit::record(tx, &entry, now)?;
                    }
                }
            }
        }
        Ok((reconciled, unknown))
    })?;
    Ok(Resp::json(
        200,
        &json!({ "ok": true, "reconciled": reconciled, "unknown": unknown }),
    ))
}
