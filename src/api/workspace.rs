//! Workspace sessions in the NeoSC dialect (SPEC §5): `/api/...`, errors `{"detail": "<message>"}`.
//!
//! Sign-in and MFA, the workspace catalogue, launching and ending sessions, the admin views, audit
//! logs and stats. A user sees and changes only their own sessions through the user routes; another
//! user's session answers exactly like a missing one.

use serde::Serialize;
use serde_json::{Value, json};

use super::{Fields, Principal, cursor_param, json_object, limit_param, principal};
use crate::auth;
use crate::db::audit::AuditQuery;
use crate::db::users::{self, NewUser, User};
use crate::db::workspaces::{self, NewSession, SessionFilter, WorkspaceSession};
use crate::db::{Tx, Writer, audit};
use crate::domain::time::{Millis, parse_rfc3339, rfc3339};
use crate::domain::workspace::{
    ACTIVE, LAUNCH_MODES, Role, SessionAction, TERMINATED, WORKSPACE_TYPES, Workspace,
};
use crate::domain::{Actor, AuditEntry};
use crate::error::{Error, Result};
use crate::server::{App, Ctx, Req, Resp};

const SESSION_NOT_FOUND: &str = "Session not found";
const WORKSPACE_NOT_FOUND: &str = "Workspace not found";

fn session_not_found() -> Error {
    Error::NotFound(SESSION_NOT_FOUND.into())
}

fn workspace_not_found() -> Error {
    Error::NotFound(WORKSPACE_NOT_FOUND.into())
}

fn ok(value: Value) -> Result<Resp> {
    Ok(Resp::json(200, &value))
}

fn message(text: &str) -> Result<Resp> {
    ok(json!({ "message": text }))
}

fn require_admin(p: &Principal) -> Result<()> {
    if p.is_admin() {
        Ok(())
    } else {
        Err(Error::Forbidden("Admin access required".into()))
    }
}

/// The signed-in user; an account-level API key has none.
fn require_user(p: &Principal) -> Result<&User> {
    p.user
        .as_ref()
        .ok_or_else(|| Error::Forbidden("This action needs a signed-in user".into()))
}

// ---------------------------------------------------------------------------------------------
// Views

#[derive(Serialize)]
struct UserView<'a> {
    id: &'a str,
    email: &'a str,
    name: &'a str,
    organization: &'a str,
    role: &'static str,
    mfa_enabled: bool,
}

fn user_view<'a>(u: &'a User, organization: &'a str, role: Role) -> UserView<'a> {
    UserView {
        id: &u.uid,
        email: &u.email,
        name: &u.name,
        organization,
        role: role.neosc(),
        mfa_enabled: u.totp_secret.is_some(),
    }
}

#[derive(Serialize)]
struct WorkspaceView<'a> {
    id: &'a str,
    name: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    description: &'a str,
    image_url: &'a Option<String>,
    status: &'static str,
    cpu: Option<i64>,
    memory: &'a Option<String>,
    storage: &'a Option<String>,
    url: &'a Option<String>,
    connection_type: &'a Option<String>,
    requires_netbird: bool,
    clientless: bool,
    launch_mode: &'a str,
    icon: &'a Option<String>,
    max_session_duration: Option<i64>,
    idle_timeout: Option<i64>,
}

fn workspace_view(w: &Workspace) -> WorkspaceView<'_> {
    WorkspaceView {
        id: &w.id,
        name: &w.name,
        kind: &w.kind,
        description: &w.description,
        image_url: &w.image_url,
        // Derived from the store: running while it has an active session (upstream kept one global flag).
        status: if w.active { "running" } else { "available" },
        cpu: w.cpu,
        memory: &w.memory,
        storage: &w.storage,
        url: &w.url,
        connection_type: &w.connection_type,
        requires_netbird: w.requires_netbird,
        clientless: w.clientless,
        launch_mode: &w.launch_mode,
        icon: &w.icon,
        max_session_duration: w.max_session_duration,
        idle_timeout: w.idle_timeout,
    }
}

#[derive(Serialize)]
struct SessionView<'a> {
    id: &'a str,
    user_id: &'a Option<String>,
    user_email: &'a Option<String>,
    workspace_id: &'a Option<String>,
    workspace_name: &'a Option<String>,
    workspace_type: &'a Option<String>,
    status: &'a str,
    started_at: String,
    ended_at: Option<String>,
    ip_address: &'a Option<String>,
    tunnel_status: &'static str,
    mfa_verified: bool,
}

fn tunnel_status(requires_netbird: bool, live: bool) -> &'static str {
    match (requires_netbird, live) {
        (false, _) => "not_required",
        (true, true) => "connected",
        (true, false) => "disconnected",
    }
}

fn session_view(s: &WorkspaceSession) -> SessionView<'_> {
    SessionView {
        id: &s.id,
        user_id: &s.user_id,
        user_email: &s.user_email,
        workspace_id: &s.workspace_id,
        workspace_name: &s.workspace_name,
        workspace_type: &s.workspace_type,
        status: &s.status,
        started_at: rfc3339(s.started_at),
        ended_at: s.ended_at.map(rfc3339),
        ip_address: &s.ip_address,
        tunnel_status: tunnel_status(s.requires_netbird, s.status == ACTIVE),
        mfa_verified: s.mfa_verified,
    }
}

// ---------------------------------------------------------------------------------------------
// Sign-in

/// `POST /api/auth/login`
pub fn login(ctx: &Ctx, req: &Req) -> Result<Resp> {
    let body = json_object(req)?;
    let f = Fields::new(&body);
    let email = f
        .str("email")?
        .ok_or_else(|| Error::bad_request("email is required"))?
        .trim()
        .to_string();
    let password = f
        .str("password")?
        .ok_or_else(|| Error::bad_request("password is required"))?;
    let otp = one_time_code(&f, "otp")?;
    if email.len() > 254 || password.len() > 1024 {
        return Err(Error::Unauthorized("Invalid credentials".into()));
    }
    let ip = req.client_ip_string().unwrap_or_default();
    let keys = vec![
        format!("email:{}", email.to_lowercase()),
        format!("ip:{ip}"),
    ];
    let actor = Actor {
        kind: crate::domain::ActorType::User,
        id: None,
        email: Some(email.clone()),
        ip: req.client_ip_string(),
    };
    let now = ctx.now;

    if let Err(retry_after_secs) = ctx.app.login_throttle.check(&keys, now) {
        audit_login(&ctx.app.writer, None, &actor, false, "throttled", now)?;
        return Err(Error::TooManyRequests {
            message: "Too many failed login attempts; try again later".into(),
            retry_after_secs,
        });
    }

    let user = ctx.db.user_by_email(&email)?;
    let membership = match &user {
        Some(u) => ctx.db.membership(u.id, None)?,
        None => None,
    };
    // Unknown emails cost one argon2 check too, so timing does not tell which emails exist.
    let checked = match &user {
        Some(u) => auth::verify_password(password, &u.password_hash),
        None => auth::verify_password(password, auth::dummy_password_hash()).map(|_| false),
    };
    // A full argon2 queue is no verdict on the password: the client retries, nothing is counted.
    let password_ok = checked.map_err(|auth::Busy| Error::TooManyRequests {
        message: "Too many sign-ins at once; try again in a moment".into(),
        retry_after_secs: 1,
    })?;
    let failure = match (&user, &membership) {
        (Some(u), Some(_)) if password_ok && !u.disabled => match (&u.totp_secret, &otp) {
            (None, _) => None,
            (Some(_), None) => Some("MFA code required"),
            (Some(secret), Some(code)) if auth::totp_verify(secret, code, now) => None,
            (Some(_), Some(_)) => Some("Invalid MFA code"),
        },
        _ => Some("Invalid credentials"),
    };
    let account_id = membership.as_ref().map(|m| m.account_id);
    if let Some(detail) = failure {
        ctx.app.login_throttle.fail(&keys, now);
        let actor = Actor {
            id: user.as_ref().map(|u| u.uid.clone()),
            ..actor
        };
        audit_login(&ctx.app.writer, account_id, &actor, false, detail, now)?;
        return Err(Error::Unauthorized(detail.into()));
    }
    ctx.app.login_throttle.succeed(&keys);
    let (user, membership) = (
        user.expect("checked above"),
        membership.expect("checked above"),
    );
    let token = auth::random_url_safe(43);
    let mfa_verified = user.totp_secret.is_some();
    let (stored, user_row, account, uid) = (
        token.clone(),
        user.id,
        membership.account_id,
        user.uid.clone(),
    );
    let actor = Actor {
        id: Some(uid),
        ..actor
    };
    ctx.app.writer.exec(move |tx| {
        users::insert_login_token(tx, &stored, user_row, account, mfa_verified, now)?;
        let entry = AuditEntry::new(
            Some(account),
            &actor,
            "login",
            "user",
            actor.id.as_deref().unwrap_or(""),
        )
        .summary(if mfa_verified {
            "signed in with a second factor"
        } else {
            "signed in"
        });
        audit::record(tx, &entry, now)
    })?;
    Ok(Resp::json(
        200,
        &TokenView {
            access_token: token,
            token_type: "bearer",
            user: user_view(&user, &membership.account_name, membership.role),
        },
    ))
}

#[derive(Serialize)]
struct TokenView<'a> {
    access_token: String,
    token_type: &'static str,
    user: UserView<'a>,
}

fn audit_login(
    writer: &Writer,
    account_id: Option<i64>,
    actor: &Actor,
    success: bool,
    summary: &str,
    now: Millis,
) -> Result<()> {
    let mut entry = AuditEntry::new(
        account_id,
        actor,
        "login",
        "user",
        actor.id.as_deref().unwrap_or(""),
    )
    .summary(summary)
    .metadata(json!({ "email": actor.email }));
    entry.success = success;
    writer.exec(move |tx| audit::record(tx, &entry, now))
}

/// A TOTP code field: six digits as a string, or as a number (leading zeros restored).
fn one_time_code(f: &Fields, name: &str) -> Result<Option<String>> {
    match f.raw(name) {
        Some(Value::Number(n)) => Ok(Some(
            n.as_u64().map(|v| format!("{v:06}")).unwrap_or_default(),
        )),
        _ => Ok(f.str(name)?.map(|s| s.trim().to_string())),
    }
}

/// `POST /api/auth/logout` — ends the user's active sessions and revokes the token.
pub fn logout(ctx: &Ctx, req: &Req) -> Result<Resp> {
    let p = principal(ctx, req, None)?;
    let user = require_user(&p)?;
    let (user_row, account, cred, is_login, now) = (
        user.id,
        p.account_id,
        p.credential.id,
        p.credential.kind == crate::db::accounts::CredentialKind::Login,
        ctx.now,
    );
    let actor = p.actor(req);
    let terminated = ctx.app.writer.exec(move |tx| {
        let live = workspaces::live_sessions_of_user(tx, user_row, None)?;
        for (row, _) in &live {
            workspaces::end_session(tx, *row, TERMINATED, "logout", now)?;
        }
        if is_login {
            users::revoke_credential(tx, cred, now)?;
        }
        let ids: Vec<&String> = live.iter().map(|(_, uid)| uid).collect();
        let entry = AuditEntry::new(
            Some(account),
            &actor,
            "logout",
            "user",
            actor.id.as_deref().unwrap_or(""),
        )
        .summary(format!("signed out, {} session(s) terminated", live.len()))
        .metadata(json!({ "sessions_terminated": ids }));
        audit::record(tx, &entry, now)?;
        Ok(live.len())
    })?;
    ok(json!({ "message": "Logged out successfully", "sessions_terminated": terminated }))
}

/// `GET /api/auth/me`
pub fn me(ctx: &Ctx, req: &Req) -> Result<Resp> {
    let p = principal(ctx, req, None)?;
    let user = require_user(&p)?;
    Ok(Resp::json(200, &user_view(user, &p.account_name, p.role)))
}

/// `POST /api/auth/register` — admins only (upstream left it open).
pub fn register(ctx: &Ctx, req: &Req) -> Result<Resp> {
    let p = principal(ctx, req, None)?;
    require_admin(&p)?;
    let body = json_object(req)?;
    let f = Fields::new(&body);
    let email = f
        .str("email")?
        .ok_or_else(|| Error::bad_request("email is required"))?
        .trim()
        .to_string();
    let name = f.str("name")?.unwrap_or("").trim().to_string();
    let password = f
        .str("password")?
        .ok_or_else(|| Error::bad_request("password is required"))?;
    validate_email(&email)?;
    validate_password(password)?;
    if name.len() > 200 {
        return Err(Error::bad_request("name must be at most 200 characters"));
    }
    let role = match f.str("role")? {
        None | Some("user") | Some("member") => Role::Member,
        Some("admin") => Role::Admin,
        Some(_) => return Err(Error::bad_request("role must be \"admin\" or \"user\"")),
    };
    let hash = auth::hash_password(password);
    let token = auth::random_url_safe(43);
    let (stored, account, now, actor) = (token.clone(), p.account_id, ctx.now, p.actor(req));
    let (email2, name2) = (email.clone(), name.clone());
    let uid = ctx.app.writer.exec(move |tx| {
        let new = NewUser {
            email: &email2,
            name: &name2,
            password_hash: &hash,
            account_id: account,
            role,
        };
        let (row, uid) = users::insert_user(tx, &new, now)?;
        users::insert_login_token(tx, &stored, row, account, false, now)?;
        let entry = AuditEntry::new(Some(account), &actor, "register", "user", &uid)
            .summary(format!("user {email2} registered"))
            .metadata(json!({ "email": email2, "role": role.as_str() }));
        audit::record(tx, &entry, now)?;
        Ok(uid)
    })?;
    let user = UserView {
        id: &uid,
        email: &email,
        name: &name,
        organization: &p.account_name,
        role: role.neosc(),
        mfa_enabled: false,
    };
    Ok(Resp::json(
        200,
        &TokenView {
            access_token: token,
            token_type: "bearer",
            user,
        },
    ))
}

pub fn validate_email(email: &str) -> Result<()> {
    let ok = email.len() <= 254
        && email
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty())
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(Error::bad_request("email must be a valid email address"))
    }
}

pub fn validate_password(password: &str) -> Result<()> {
    match password.chars().count() {
        0..8 => Err(Error::bad_request("password must be at least 8 characters")),
        8..=1024 => Ok(()),
        _ => Err(Error::bad_request(
            "password must be at most 1024 characters",
        )),
    }
}

/// `POST /api/auth/mfa/setup` — a new TOTP secret, pending until verified.
pub fn mfa_setup(ctx: &Ctx, req: &Req) -> Result<Resp> {
    let p = principal(ctx, req, None)?;
    let user = require_user(&p)?;
    if user.totp_secret.is_some() {
        return Err(Error::bad_request("MFA is already enabled"));
    }
    let secret = auth::new_totp_secret();
    let (row, stored, account, now, actor) =
        (user.id, secret.clone(), p.account_id, ctx.now, p.actor(req));
    ctx.app.writer.exec(move |tx| {
        users::set_totp_pending(tx, row, &stored)?;
        let entry = AuditEntry::new(
            Some(account),
            &actor,
            "mfa_setup",
            "user",
            actor.id.as_deref().unwrap_or(""),
        );
        audit::record(tx, &entry, now)
    })?;
    let label = user.email.replace('@', "%40");
    ok(json!({
        "secret": secret,
        "otpauth_url": format!("otpauth://totp/sessiond:{label}?secret={secret}&issuer=sessiond&algorithm=SHA1&digits=6&period=30"),
    }))
}

/// `POST /api/auth/mfa/verify {code}` — enables TOTP once a code from the pending secret checks out.
pub fn mfa_verify(ctx: &Ctx, req: &Req) -> Result<Resp> {
    let p = principal(ctx, req, None)?;
    let user = require_user(&p)?;
    let body = json_object(req)?;
    let code = one_time_code(&Fields::new(&body), "code")?
        .ok_or_else(|| Error::bad_request("code is required"))?;
    let pending = user
        .totp_pending
        .as_deref()
        .ok_or_else(|| Error::bad_request("Run MFA setup first"))?;
    if !auth::totp_verify(pending, &code, ctx.now) {
        return Err(Error::bad_request("Invalid MFA code"));
    }
    let (row, account, now, actor) = (user.id, p.account_id, ctx.now, p.actor(req));
    ctx.app.writer.exec(move |tx| {
        users::enable_totp(tx, row)?;
        let entry = AuditEntry::new(
            Some(account),
            &actor,
            "mfa_enabled",
            "user",
            actor.id.as_deref().unwrap_or(""),
        );
        audit::record(tx, &entry, now)
    })?;
    ok(json!({ "message": "MFA enabled successfully", "mfa_enabled": true }))
}

// ---------------------------------------------------------------------------------------------
// Workspaces

/// `GET /api/workspaces`
pub fn list_workspaces(ctx: &Ctx, req: &Req) -> Result<Resp> {
    let p = principal(ctx, req, None)?;
    p.require_scope("workspaces.read")?;
    let list = ctx.db.workspaces(p.account_id)?;
    Ok(Resp::json(
        200,
        &list.iter().map(workspace_view).collect::<Vec<_>>(),
    ))
}

/// Applies the fields present in `body` to `w`; on creation `name` and `type` are required.
fn apply_workspace_fields(
    body: &serde_json::Map<String, Value>,
    w: &mut Workspace,
    creating: bool,
) -> Result<()> {
    let f = Fields::new(body);
    let text = |name: &str, max: usize| -> Result<Option<String>> {
        match f.str(name)? {
            Some(s) if s.len() > max => Err(Error::bad_request(format!(
                "{name} must be at most {max} characters"
            ))),
            other => Ok(other.map(str::to_string)),
        }
    };
    if let Some(v) = text("name", 200)? {
        if v.trim().is_empty() {
            return Err(Error::bad_request("name must not be empty"));
        }
        w.name = v;
    } else if creating {
        return Err(Error::bad_request("name is required"));
    }
    match f.str("type")? {
        Some(t) if WORKSPACE_TYPES.contains(&t) => w.kind = t.to_string(),
        Some(_) => {
            return Err(Error::bad_request(format!(
                "type must be one of {}",
                WORKSPACE_TYPES.join(", ")
            )));
        }
        None if creating => return Err(Error::bad_request("type is required")),
        None => {}
    }
    if let Some(v) = text("description", 2000)? {
        w.description = v;
    }
    match f.str("launch_mode")? {
        Some(m) if LAUNCH_MODES.contains(&m) => w.launch_mode = m.to_string(),
        Some(_) => {
            return Err(Error::bad_request(format!(
                "launch_mode must be one of {}",
                LAUNCH_MODES.join(", ")
            )));
        }
        None if creating => w.launch_mode = "iframe".into(),
        None => {}
    }
    for (name, slot) in [
        ("image_url", &mut w.image_url),
        ("memory", &mut w.memory),
        ("storage", &mut w.storage),
        ("url", &mut w.url),
        ("connection_type", &mut w.connection_type),
        ("icon", &mut w.icon),
    ] {
        if let Some(v) = text(name, 2000)? {
            *slot = Some(v);
        }
    }
    if let Some(v) = f.int("cpu", 0, 1024)? {
        w.cpu = Some(v);
    }
    if let Some(v) = f.bool("requires_netbird")? {
        w.requires_netbird = v;
    }
    match f.bool("clientless")? {
        Some(v) => w.clientless = v,
        None if creating => w.clientless = true,
        None => {}
    }
    for (name, slot) in [
        ("max_session_duration", &mut w.max_session_duration),
        ("idle_timeout", &mut w.idle_timeout),
    ] {
        match body.get(name) {
            Some(Value::Null) => *slot = None,
            Some(_) => *slot = f.int(name, 1, 366 * 86_400)?,
            None => {}
        }
    }
    Ok(())
}

/// `POST /api/workspaces` (admin)
pub fn create_workspace(ctx: &Ctx, req: &Req) -> Result<Resp> {
    let p = principal(ctx, req, None)?;
    require_admin(&p)?;
    p.require_scope("workspaces.write")?;
    let body = json_object(req)?;
    let id = match Fields::new(&body).str("id")? {
        Some(id) if valid_workspace_id(id) => id.to_string(),
        Some(_) => {
            return Err(Error::bad_request(
                "id must be 1 to 64 lower-case letters, digits or -",
            ));
        }
        None => format!("ws-{}", auth::random_hex(8)),
    };
    let mut w = Workspace {
        id,
        ..Workspace::default()
    };
    apply_workspace_fields(&body, &mut w, true)?;
    let (account, now, actor, stored) = (p.account_id, ctx.now, p.actor(req), w.clone());
    ctx.app.writer.exec(move |tx| {
        workspaces::insert_workspace(tx, account, &stored, now)?;
        let entry = AuditEntry::new(
            Some(account),
            &actor,
            "create_workspace",
            "workspace",
            &stored.id,
        )
        .summary(format!("workspace {} created", stored.name));
        audit::record(tx, &entry, now)
    })?;
    Ok(Resp::json(201, &workspace_view(&w)))
}

pub fn valid_workspace_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

/// `PUT /api/workspaces/{id}` (admin)
pub fn update_workspace(ctx: &Ctx, req: &Req, id: &str) -> Result<Resp> {
    let p = principal(ctx, req, None)?;
    require_admin(&p)?;
    p.require_scope("workspaces.write")?;
    let mut w = ctx
        .db
        .workspace(p.account_id, id)?
        .ok_or_else(workspace_not_found)?;
    let body = json_object(req)?;
    apply_workspace_fields(&body, &mut w, false)?;
    let (account, now, actor, stored) = (p.account_id, ctx.now, p.actor(req), w.clone());
    let changed: Vec<String> = body.keys().cloned().collect();
    ctx.app.writer.exec(move |tx| {
        workspaces::update_workspace(tx, &stored)?;
        let entry = AuditEntry::new(
            Some(account),
            &actor,
            "update_workspace",
            "workspace",
            &stored.id,
        )
        .metadata(json!({ "fields": changed }));
        audit::record(tx, &entry, now)
    })?;
    Ok(Resp::json(200, &workspace_view(&w)))
}

/// `DELETE /api/workspaces/{id}` (admin; 409 while it has active sessions)
pub fn delete_workspace(ctx: &Ctx, req: &Req, id: &str) -> Result<Resp> {
    let p = principal(ctx, req, None)?;
    require_admin(&p)?;
    p.require_scope("workspaces.write")?;
    let w = ctx
        .db
        .workspace(p.account_id, id)?
        .ok_or_else(workspace_not_found)?;
    let (account, now, actor, row, uid) =
        (p.account_id, ctx.now, p.actor(req), w.row_id, w.id.clone());
    ctx.app.writer.exec(move |tx| {
        workspaces::delete_workspace(tx, row, now)?;
        let entry = AuditEntry::new(Some(account), &actor, "delete_workspace", "workspace", &uid);
        audit::record(tx, &entry, now)
    })?;
    message("Workspace deleted successfully")
}

/// `POST /api/workspaces/{id}/launch`
pub fn launch(ctx: &Ctx, req: &Req, id: &str) -> Result<Resp> {
    let p = principal(ctx, req, None)?;
    p.require_scope("sessions.write")?;
    let user = require_user(&p)?;
    let w = ctx
        .db
        .workspace(p.account_id, id)?
        .ok_or_else(workspace_not_found)?;
    let now = ctx.now;
    let new = NewSession {
        account_id: p.account_id,
        user_row: user.id,
        workspace_row: w.row_id,
        session_type: w.kind.clone(),
        credential_id: p.credential.id,
        mfa_verified: p.credential.mfa_verified,
        ip: req.client_ip_string(),
        expires_at: w.max_session_duration.map(|s| now + s * 1000),
    };
    let (actor, ws_uid, ws_name) = (p.actor(req), w.id.clone(), w.name.clone());
    // Answered once committed, by the writer's answering thread (see `Resp::after_commit`).
    let work = move |tx: &Tx| {
        let uid = workspaces::insert_workspace_session(tx, &new, now)?;
        let entry = AuditEntry::new(
            Some(new.account_id),
            &actor,
            "launch_workspace",
            "session",
            &uid,
        )
        .summary(format!("launched {ws_name}"))
        .metadata(json!({ "workspace_id": ws_uid }));
        audit::record(tx, &entry, now)?;
        Ok(uid)
    };
    let w = Workspace { active: true, ..w };
    let (mfa_enforced, mfa_verified) = (user.totp_secret.is_some(), p.credential.mfa_verified);
    let answer = move |app: &App, session_id: Result<String>| {
        let session_id = session_id?;
        let iframe = w.launch_mode == "iframe";
        let connection_url = w
            .url
            .clone()
            .unwrap_or_else(|| format!("{}/viewer/{session_id}", app.cfg.public_base_url));
        let view = LaunchView {
            stream_url: iframe.then(|| format!("/viewer/{session_id}")),
            session_id: &session_id,
            workspace: workspace_view(&w),
            connection_url,
            launch_mode: &w.launch_mode,
            clientless: w.clientless,
            requires_netbird: w.requires_netbird,
            connection_type: &w.connection_type,
            tunnel_status: tunnel_status(w.requires_netbird, true),
            security: SecurityView {
                mfa_enforced,
                mfa_verified,
                session_recording: false,
                max_session_duration: w.max_session_duration,
                idle_timeout: w.idle_timeout,
            },
        };
        Ok(Resp::json(200, &view))
    };
    Ok(Resp::after_commit(work, answer))
}

#[derive(Serialize)]
struct LaunchView<'a> {
    session_id: &'a str,
    workspace: WorkspaceView<'a>,
    connection_url: String,
    launch_mode: &'a str,
    clientless: bool,
    requires_netbird: bool,
    connection_type: &'a Option<String>,
    stream_url: Option<String>,
    tunnel_status: &'static str,
    security: SecurityView,
}

/// What the launch reports about protections, from real state (MFA of this sign-in, limits).
#[derive(Serialize)]
struct SecurityView {
    mfa_enforced: bool,
    mfa_verified: bool,
    session_recording: bool,
    max_session_duration: Option<i64>,
    idle_timeout: Option<i64>,
}

/// `POST /api/workspaces/{id}/stop` — ends the caller's active sessions on it (404 when unknown).
pub fn stop(ctx: &Ctx, req: &Req, id: &str) -> Result<Resp> {
    let p = principal(ctx, req, None)?;
    p.require_scope("sessions.write")?;
    let user = require_user(&p)?;
    let w = ctx
        .db
        .workspace(p.account_id, id)?
        .ok_or_else(workspace_not_found)?;
    let (user_row, account, now, actor, ws_row, ws_uid) = (
        user.id,
        p.account_id,
        ctx.now,
        p.actor(req),
        w.row_id,
        w.id.clone(),
    );
    let stopped = ctx.app.writer.exec(move |tx| {
        let live = workspaces::live_sessions_of_user(tx, user_row, Some(ws_row))?;
        for (row, _) in &live {
            workspaces::end_session(tx, *row, TERMINATED, "stopped", now)?;
        }
        let ids: Vec<&String> = live.iter().map(|(_, uid)| uid).collect();
        let entry = AuditEntry::new(
            Some(account),
            &actor,
            "stop_workspace",
            "workspace",
            &ws_uid,
        )
        .summary(format!("{} session(s) stopped", live.len()))
        .metadata(json!({ "sessions": ids }));
        audit::record(tx, &entry, now)?;
        Ok(live.len())
    })?;
    ok(json!({ "message": "Workspace stopped successfully", "sessions_terminated": stopped }))
}

// ---------------------------------------------------------------------------------------------
// Sessions

fn own_sessions(ctx: &Ctx, req: &Req, status: Option<&str>) -> Result<Resp> {
    let p = principal(ctx, req, None)?;
    p.require_scope("sessions.read")?;
    let filter = SessionFilter {
        account_id: p.account_id,
        user_row: p.user.as_ref().map(|u| u.id),
        status: status.map(str::to_string),
        limit: 1000,
        ..SessionFilter::default()
    };
    let list = ctx.db.workspace_sessions(&filter)?;
    Ok(Resp::json(
        200,
        &list.iter().map(session_view).collect::<Vec<_>>(),
    ))
}

/// `GET /api/sessions` — the caller's sessions, any status, newest first.
pub fn list_sessions(ctx: &Ctx, req: &Req) -> Result<Resp> {
    own_sessions(ctx, req, None)
}

/// `GET /api/sessions/active`
pub fn active_sessions(ctx: &Ctx, req: &Req) -> Result<Resp> {
    own_sessions(ctx, req, Some(ACTIVE))
}

/// The caller's own session; anyone else's answers like a missing one.
fn own_session(ctx: &Ctx, p: &Principal, id: &str) -> Result<WorkspaceSession> {
    let s = ctx
        .db
        .workspace_session(p.account_id, id)?
        .ok_or_else(session_not_found)?;
    match &p.user {
        Some(u) if s.user_row != Some(u.id) => Err(session_not_found()),
        _ => Ok(s),
    }
}

/// `GET /api/sessions/{id}`
pub fn get_session(ctx: &Ctx, req: &Req, id: &str) -> Result<Resp> {
    let p = principal(ctx, req, None)?;
    p.require_scope("sessions.read")?;
    let s = own_session(ctx, &p, id)?;
    Ok(Resp::json(200, &session_view(&s)))
}

/// Applies an action to a session inside the writer; a session that is not active is a 409.
fn act(
    ctx: &Ctx,
    req: &Req,
    p: &Principal,
    s: &WorkspaceSession,
    action: SessionAction,
    reason: Option<&'static str>,
) -> Result<Resp> {
    let (row, uid, account, now, actor) =
        (s.row_id, s.id.clone(), p.account_id, ctx.now, p.actor(req));
    ctx.app.writer.exec(move |tx| {
        if workspaces::session_status(tx, row)?.as_deref() != Some(ACTIVE) {
            return Err(Error::Conflict("Session is not active".into()));
        }
        if let Some((status, default_reason)) = action.outcome() {
            workspaces::end_session(tx, row, status, reason.unwrap_or(default_reason), now)?;
        }
        let entry = AuditEntry::new(
            Some(account),
            &actor,
            action.audit_action(),
            "session",
            &uid,
        )
        .summary(action.message())
        .metadata(json!({ "by_admin": reason.is_some() }));
        audit::record(tx, &entry, now)
    })?;
    message(action.message())
}

fn parse_action(req: &Req) -> Result<SessionAction> {
    let body = json_object(req)?;
    let name = Fields::new(&body)
        .str("action")?
        .ok_or_else(|| Error::bad_request("action is required"))?;
    SessionAction::parse(name)
        .ok_or_else(|| Error::bad_request("action must be one of logoff, disconnect, lock"))
}

/// `POST /api/sessions/{id}/disconnect`
pub fn disconnect(ctx: &Ctx, req: &Req, id: &str) -> Result<Resp> {
    let p = principal(ctx, req, None)?;
    p.require_scope("sessions.write")?;
    let s = own_session(ctx, &p, id)?;
    act(ctx, req, &p, &s, SessionAction::Disconnect, None)
}

/// `POST /api/sessions/{id}/action {action}`
pub fn action(ctx: &Ctx, req: &Req, id: &str) -> Result<Resp> {
    let p = principal(ctx, req, None)?;
    p.require_scope("sessions.write")?;
    let action = parse_action(req)?;
    let s = own_session(ctx, &p, id)?;
    act(ctx, req, &p, &s, action, None)
}

/// `POST /api/sessions/{id}/heartbeat` — activity that keeps an idle timeout from firing.
pub fn heartbeat(ctx: &Ctx, req: &Req, id: &str) -> Result<Resp> {
    let p = principal(ctx, req, None)?;
    p.require_scope("sessions.write")?;
    let s = own_session(ctx, &p, id)?;
    let (row, now) = (s.row_id, ctx.now);
    if !ctx
        .app
        .writer
        .exec(move |tx| workspaces::heartbeat(tx, row, now))?
    {
        return Err(Error::Conflict("Session is not active".into()));
    }
    ok(json!({ "message": "Heartbeat received", "last_activity_at": rfc3339(now) }))
}

/// A bare JSON list, with `X-Next-Cursor` when a further page may exist.
fn page<T: Serialize>(items: &[T], limit: usize, last: Option<i64>) -> Result<Resp> {
    let resp = Resp::json(200, items);
    Ok(match (items.len() == limit, last) {
        (true, Some(row)) => resp.header("X-Next-Cursor", row.to_string()),
        _ => resp,
    })
}

/// `GET /api/admin/sessions?status=&user_id=&workspace_id=&limit=&cursor=`
pub fn admin_sessions(ctx: &Ctx, req: &Req) -> Result<Resp> {
    let p = principal(ctx, req, None)?;
    require_admin(&p)?;
    p.require_scope("sessions.read")?;
    let (limit, before) = (limit_param(req, 100)?, cursor_param(req)?);
    let status = match req.query("status") {
        None | Some("") => None,
        Some(s @ ("active" | "disconnected" | "terminated")) => Some(s.to_string()),
        Some(_) => {
            return Err(Error::bad_request(
                "status must be one of active, disconnected, terminated",
            ));
        }
    };
    let filter = SessionFilter {
        account_id: p.account_id,
        status,
        user_uid: req.param("user_id").map(str::to_string),
        workspace_uid: req.param("workspace_id").map(str::to_string),
        before,
        limit,
        ..SessionFilter::default()
    };
    let list = ctx.db.workspace_sessions(&filter)?;
    let views: Vec<SessionView> = list.iter().map(session_view).collect();
    page(&views, limit, list.last().map(|s| s.row_id))
}

/// `POST /api/admin/sessions/{id}/action` — 403 for non-admins, checked first.
pub fn admin_action(ctx: &Ctx, req: &Req, id: &str) -> Result<Resp> {
    let p = principal(ctx, req, None)?;
    require_admin(&p)?;
    p.require_scope("sessions.write")?;
    let action = parse_action(req)?;
    let s = ctx
        .db
        .workspace_session(p.account_id, id)?
        .ok_or_else(session_not_found)?;
    act(ctx, req, &p, &s, action, Some("admin"))
}

/// `GET /api/audit-logs` — admins see the account's rows, users their own; newest first.
pub fn audit_logs(ctx: &Ctx, req: &Req) -> Result<Resp> {
    let p = principal(ctx, req, None)?;
    p.require_scope("audit.read")?;
    let (limit, before) = (limit_param(req, 100)?, cursor_param(req)?);
    let time = |name: &str| -> Result<Option<Millis>> {
        match req.query(name) {
            None | Some("") => Ok(None),
            Some(v) => parse_rfc3339(v)
                .map(Some)
                .ok_or_else(|| Error::bad_request(format!("{name} must be an RFC 3339 time"))),
        }
    };
    let filter = AuditQuery {
        account_id: p.account_id,
        actor_user: if p.is_admin() {
            None
        } else {
            p.user.as_ref().map(|u| u.uid.clone())
        },
        action: req.param("action").map(str::to_string),
        since: time("since")?,
        until: time("until")?,
        before_row: before,
        limit,
        ..AuditQuery::default()
    };
    let rows = ctx.db.audit(&filter)?;
    let views: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "user_id": if r.actor_type == "user" { r.actor_id.clone() } else { None },
                "user_email": r.actor_email,
                "action": r.action,
                "resource": match (&r.resource_type, &r.resource_id) {
                    (Some(t), Some(id)) if !id.is_empty() => format!("{t}:{id}"),
                    (Some(t), _) => t.clone(),
                    _ => String::new(),
                },
                "details": if r.summary.is_empty() { r.metadata.clone() } else { r.summary.clone() },
                "ip_address": r.ip,
                "timestamp": rfc3339(r.created_at),
                "success": r.success,
            })
        })
        .collect();
    page(&views, limit, rows.last().map(|r| r.row_id))
}

/// `GET /api/stats`
pub fn stats(ctx: &Ctx, req: &Req) -> Result<Resp> {
    let p = principal(ctx, req, None)?;
    p.require_scope("sessions.read")?;
    ok(json!({
        "active_sessions": ctx.db.count_active_sessions(p.account_id)?,
        "total_workspaces": ctx.db.workspaces(p.account_id)?.len(),
        "total_users": ctx.db.count_members(p.account_id)?,
    }))
}
