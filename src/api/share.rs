//! Share sessions in the Wormkey dialect (SPEC §3–4): `/sessions`, `/owner/...`, `/internal/...`.
//!
//! Errors are `{"error": "<message>"}`. Owner routes answer 404 before 401 (an unknown session is
//! reported before a bad token); `/internal` routes check the gateway's key first, as upstream does.

use serde_json::{Map, Value, json};

use super::json::Obj;
use super::{Fields, credential, gateway, json_object};
use crate::auth;
use crate::config::Config;
use crate::db::accounts::{Credential, CredentialKind};
use crate::db::shares::{self, NewShare};
use crate::db::{Reader, Tx, audit};
use crate::domain::share::{
    AuthMode, BASIC_USERNAME, Policy, SCOPED_TOKEN_MAX_TTL, SCOPES, Share, looks_like_slug,
    new_session_uid, parse_minutes_or_hours,
};
use crate::domain::time::{parse_rfc3339, rfc3339};
use crate::domain::{Actor, ActorType, AuditEntry};
use crate::error::{Error, Result};
use crate::server::{App, Ctx, Req, Resp};
use crate::viewers::{AdmitRequest, Loaded, ReportedViewer};

const NOT_FOUND: &str = "Session not found";
const UNAUTHORIZED: &str = "Unauthorized";
const MASKED_PASSWORD: &str = "********";
const MAX_BLOCK_PATHS: usize = 100;
const MAX_SNAPSHOT_VIEWERS: usize = 10_000;

fn not_found() -> Error {
    Error::NotFound(NOT_FOUND.into())
}

fn unauthorized() -> Error {
    Error::Unauthorized(UNAUTHORIZED.into())
}

/// How a caller proved its right to a share session.
enum Access<'r> {
    /// With the session's owner token (echoed back in the full view), borrowed from the request.
    Owner(&'r str),
    /// With an API key of the owning account.
    Account(Actor),
    /// As the gateway.
    Internal(Actor),
}

impl Access<'_> {
    fn actor(&self, share: &Share, req: &Req) -> Actor {
        match self {
            Access::Owner(_) => owner_actor(&share.uid, req),
            Access::Account(a) | Access::Internal(a) => a.clone(),
        }
    }

    fn owner_token(&self) -> Option<&str> {
        match self {
            Access::Owner(t) => Some(t),
            _ => None,
        }
    }
}

fn owner_actor(session_uid: &str, req: &Req) -> Actor {
    Actor {
        kind: ActorType::OwnerToken,
        id: Some(session_uid.to_string()),
        email: None,
        ip: req.client_ip_string(),
    }
}

/// Who may call a route, besides the gateway.
#[derive(Clone, Copy)]
struct Allow {
    owner: bool,
    /// API keys of the owning account with this scope.
    account_scope: Option<&'static str>,
    internal: bool,
}

const OWNER_ACCOUNT_INTERNAL_READ: Allow = Allow {
    owner: true,
    account_scope: Some("sessions.read"),
    internal: true,
};
const OWNER_ACCOUNT_INTERNAL_WRITE: Allow = Allow {
    owner: true,
    account_scope: Some("sessions.write"),
    internal: true,
};
const OWNER_INTERNAL: Allow = Allow {
    owner: true,
    account_scope: None,
    internal: true,
};
const OWNER_ONLY: Allow = Allow {
    owner: true,
    account_scope: None,
    internal: false,
};

/// The API key a caller presents on a route that takes account keys, resolved once and checked for
/// the route's scope before the session is looked up: a key without the scope gets the same 403
/// for a missing session as for an existing one, and learns nothing. `None` for any other bearer
/// (API keys are told apart by their prefix, so owner tokens cost no lookup).
fn account_key(ctx: &Ctx, req: &Req, allow: Allow) -> Result<Option<Credential>> {
    let (Some(scope), Some(token)) = (allow.account_scope, req.bearer()) else {
        return Ok(None);
    };
    if !token.starts_with(crate::auth::API_KEY_PREFIX) {
        return Ok(None);
    }
    let Some(key) = credential(ctx, token, &[CredentialKind::ApiKey])? else {
        return Ok(None);
    };
    if !key.has_scope(scope) {
        return Err(Error::Forbidden(format!(
            "This key lacks the {scope} scope"
        )));
    }
    Ok(Some(key))
}

/// Checks the caller against an existing session, with the key [`account_key`] resolved (if the
/// route takes one). A key of another account answers like a missing session.
fn authorize<'r>(
    ctx: &Ctx,
    req: &'r Req,
    share: &Share,
    allow: Allow,
    key: Option<Credential>,
) -> Result<Access<'r>> {
    let Some(token) = req.bearer() else {
        return Err(unauthorized());
    };
    if allow.owner && share.is_owner_token(token) {
        return Ok(Access::Owner(token));
    }
    if allow.internal {
        if let Some(actor) = gateway(ctx, req)? {
            return Ok(Access::Internal(actor));
        }
    }
    if let Some(key) = key {
        if key.account_id != Some(share.account_id) {
            return Err(not_found());
        }
        let actor = Actor {
            kind: ActorType::ApiKey,
            id: Some(key.uid),
            email: None,
            ip: req.client_ip_string(),
        };
        return Ok(Access::Account(actor));
    }
    Err(unauthorized())
}

fn require_gateway(ctx: &Ctx, req: &Req) -> Result<Actor> {
    gateway(ctx, req)?.ok_or_else(unauthorized)
}

fn share_by_uid(ctx: &Ctx, id: &str) -> Result<Share> {
    if id.len() > 64 {
        return Err(not_found());
    }
    ctx.db.share_by_uid(id)?.ok_or_else(not_found)
}

fn share_by_slug(ctx: &Ctx, slug: &str) -> Result<Share> {
    if !looks_like_slug(slug) {
        return Err(not_found());
    }
    ctx.db.share_by_slug(slug)?.ok_or_else(not_found)
}

fn loader<'a>(db: &'a Reader, session_id: i64) -> impl Fn() -> Result<Loaded> + 'a {
    move || Ok((db.share_viewers(session_id)?, db.share_kicked(session_id)?))
}

// ---------------------------------------------------------------------------------------------
// Views

/// A policy's fields, as the full view and the policy update show them.
fn policy_fields(o: &mut Obj, p: &Policy) {
    o.bool("public", p.public)
        .int("maxConcurrentViewers", p.max_viewers)
        .strs("blockPaths", &p.block_paths)
        .str(
            "password",
            if p.password_hash.is_some() {
                MASKED_PASSWORD
            } else {
                ""
            },
        );
}

/// A share's URLs, as parts for `json::Obj::joined` (written without being joined first).
struct Urls<'a> {
    public_url: [&'a str; 3],
    owner_url: [&'a str; 5],
    overlay_script_url: [&'a str; 3],
    edge_url: [&'a str; 2],
}

fn urls<'a>(cfg: &'a Config, slug: &'a str, owner_token: &'a str) -> Urls<'a> {
    let base = &cfg.public_base_url;
    Urls {
        public_url: [base, "/s/", slug],
        owner_url: [base, "/.wormkey/owner?slug=", slug, "&token=", owner_token],
        overlay_script_url: [base, "/.wormkey/overlay.js?slug=", slug],
        edge_url: [&cfg.edge_base_url, "/tunnel"],
    }
}

// A share's views and its creation are the most requested bodies of the dialect, written with
// `json::Obj` (see there why).

fn public_view(ctx: &Ctx, share: &Share) -> Resp {
    let u = urls(ctx.cfg(), &share.slug, "");
    let mut o = Obj::with_capacity(384);
    o.str("sessionId", &share.uid)
        .str("slug", &share.slug)
        .joined("publicUrl", &u.public_url)
        .time("expiresAt", share.expires_at)
        .time("createdAt", share.created_at)
        .str("authMode", share.auth_mode.as_str())
        .bool("closed", share.closed)
        .bool("available", share.available(ctx.now));
    Resp::json_written(200, o.finish())
}

fn full_view(ctx: &Ctx, share: &Share, owner_token: Option<&str>) -> Result<Resp> {
    let (viewers, kicked) = ctx
        .app
        .viewers
        .list(share.id, ctx.now, loader(ctx.db, share.id))?;
    let slug = &share.slug;
    let u = urls(ctx.cfg(), slug, owner_token.unwrap_or(""));
    // The seed document's keys, in its order.
    let mut o = Obj::with_capacity(1024);
    o.str("sessionId", &share.uid).str("slug", slug);
    if let Some(token) = owner_token {
        o.joined("sessionToken", &[slug, ".", token])
            .str("ownerToken", token)
            .joined("ownerUrl", &u.owner_url);
    }
    o.joined("overlayScriptUrl", &u.overlay_script_url)
        .joined("publicUrl", &u.public_url)
        .joined("edgeUrl", &u.edge_url)
        .time("expiresAt", share.expires_at)
        .time("createdAt", share.created_at)
        .str("authMode", share.auth_mode.as_str())
        .object("policy", |o| policy_fields(o, &share.policy))
        .objects("activeViewers", &viewers, |o, v| {
            o.str("id", &v.id)
                .time("lastSeenAt", v.last_seen_at)
                .int("requests", v.requests)
                .opt_str("ip", v.ip.as_deref());
        })
        .strs("kickedViewerIds", &kicked)
        .bool("closed", share.closed);
    if share.auth_mode == AuthMode::Basic {
        o.str("username", BASIC_USERNAME);
    }
    o.bool("available", share.available(ctx.now));
    Ok(Resp::json_written(200, o.finish()))
}

// ---------------------------------------------------------------------------------------------
// Creation

/// `POST /sessions`
pub fn create(ctx: &Ctx, req: &Req) -> Result<Resp> {
    let body = json_object(req)?;
    let f = Fields::new(&body);
    let port = f.int("port", 1, 65_535)?;
    let auth_mode = match f.str("authMode")? {
        None => AuthMode::None,
        Some(s) => AuthMode::parse(s)
            .ok_or_else(|| Error::bad_request("authMode must be \"none\" or \"basic\""))?,
    };
    let ttl = match f.str("expiresIn")? {
        // The default is a day, or the operator's maximum when that is shorter.
        None => (24 * 3_600_000).min(ctx.cfg().max_share_ttl),
        Some(s) => parse_minutes_or_hours(s)
            .filter(|&ms| ms >= 60_000 && ms <= ctx.cfg().max_share_ttl)
            .ok_or_else(|| {
                Error::bad_request(format!(
                    "expiresIn must be minutes or hours (like 30m or 2h) between 1m and {}",
                    crate::domain::time::format_duration(ctx.cfg().max_share_ttl)
                ))
            })?,
    };
    let policy_update = match f.object("policy")? {
        Some(p) => Some(PolicyUpdate::parse(p)?),
        None => None,
    };

    // Who is creating it: an API key of an account, or anyone (rate-limited) when allowed.
    let (account_id, key_actor) = match req.bearer() {
        Some(token) => {
            let key =
                credential(ctx, token, &[CredentialKind::ApiKey])?.ok_or_else(unauthorized)?;
            if !key.has_scope("sessions.write") {
                return Err(Error::Forbidden(
                    "This key lacks the sessions.write scope".into(),
                ));
            }
            let account = key.account_id.ok_or_else(unauthorized)?;
            let actor = Actor {
                kind: ActorType::ApiKey,
                id: Some(key.uid),
                email: None,
                ip: req.client_ip_string(),
            };
            (account, Some(actor))
        }
        None => {
            if !ctx.cfg().allow_anonymous_shares {
                return Err(unauthorized());
            }
            if let Some(ip) = req.client_ip {
                ctx.app
                    .anonymous_shares
                    .check(ip, ctx.now)
                    .map(drop)
                    .map_err(|retry_after_secs| Error::TooManyRequests {
                        message: "Too many sessions created from this address; try again later"
                            .into(),
                        retry_after_secs,
                    })?;
            }
            (ctx.anonymous_account()?, None)
        }
    };

    let uid = new_session_uid(ctx.now);
    let owner_token = auth::random_lower_alnum(32);
    let basic_password = (auth_mode == AuthMode::Basic).then(|| auth::random_alnum(16));
    let new = NewShare {
        uid: uid.clone(),
        account_id,
        owner_token_hash: auth::token_hash(&owner_token),
        port,
        auth_mode,
        basic_password_hash: basic_password.as_deref().map(auth::hash_password),
        ip: req.client_ip_string(),
        created_at: ctx.now,
        expires_at: ctx.now + ttl,
    };
    let actor = key_actor.unwrap_or_else(|| owner_actor(&uid, req));
    let password_change = policy_update
        .as_ref()
        .map(|p| p.password_change())
        .unwrap_or(PasswordChange::Keep);
    let now = ctx.now;
    // Answered once committed, by the writer's answering thread (see `Resp::after_commit`): the
    // most frequent change gives its connection's thread back at once.
    let work = move |tx: &Tx| {
        let (slug, id) = shares::insert_share(tx, &new)?;
        if let Some(update) = &policy_update {
            let policy = update.apply(&Policy::default(), password_change);
            shares::update_policy(tx, id, &policy, false)?;
        }
        let entry = AuditEntry::new(
            Some(new.account_id),
            &actor,
            "session.created",
            "share_session",
            &new.uid,
        )
        .summary(format!("share session {slug} created"))
        .metadata_text({
            // Keys in the order serde_json's map wrote them (sorted).
            let mut o = Obj::with_capacity(96);
            o.str("authMode", new.auth_mode.as_str())
                .time("expiresAt", new.expires_at)
                .str("slug", &slug);
            o.finish_string()
        });
        audit::record(tx, &entry, now)?;
        Ok(slug)
    };
    let answer = move |app: &App, slug: Result<String>| {
        let slug = slug?;
        let u = urls(&app.cfg, &slug, &owner_token);
        // The seed's keys, in its order.
        let mut o = Obj::with_capacity(768);
        o.str("sessionId", &uid)
            .str("slug", &slug)
            .joined("publicUrl", &u.public_url)
            .joined("ownerUrl", &u.owner_url)
            .str("ownerToken", &owner_token)
            .joined("overlayScriptUrl", &u.overlay_script_url)
            .joined("edgeUrl", &u.edge_url)
            .joined("sessionToken", &[&slug, ".", &owner_token])
            .time("expiresAt", now + ttl)
            .time("createdAt", now);
        if let Some(password) = &basic_password {
            o.str("username", BASIC_USERNAME).str("password", password);
        }
        Ok(Resp::json_written(201, o.finish()))
    };
    Ok(Resp::after_commit(work, answer))
}

// ---------------------------------------------------------------------------------------------
// Reading

/// `GET /sessions/:id`
pub fn get(ctx: &Ctx, req: &Req, id: &str) -> Result<Resp> {
    let key = account_key(ctx, req, OWNER_ACCOUNT_INTERNAL_READ)?;
    let share = share_by_uid(ctx, id)?;
    let access = authorize(ctx, req, &share, OWNER_ACCOUNT_INTERNAL_READ, key)?;
    full_view(ctx, &share, access.owner_token())
}

/// `GET /sessions/by-slug/:slug` — the public view, or the full view for a caller with rights.
pub fn get_by_slug(ctx: &Ctx, req: &Req, slug: &str) -> Result<Resp> {
    let share = share_by_slug(ctx, slug)?;
    if req.bearer().is_none() {
        return Ok(public_view(ctx, &share));
    }
    let allow = OWNER_ACCOUNT_INTERNAL_READ;
    match account_key(ctx, req, allow).and_then(|key| authorize(ctx, req, &share, allow, key)) {
        Ok(access) => full_view(ctx, &share, access.owner_token()),
        Err(Error::Unauthorized(_) | Error::NotFound(_) | Error::Forbidden(_)) => {
            Ok(public_view(ctx, &share))
        }
        Err(e) => Err(e),
    }
}

/// `GET /owner/sessions/by-slug/:slug`
pub fn owner_get_by_slug(ctx: &Ctx, req: &Req, slug: &str) -> Result<Resp> {
    let share = share_by_slug(ctx, slug)?;
    let access = authorize(ctx, req, &share, OWNER_ONLY, None)?;
    full_view(ctx, &share, access.owner_token())
}

/// `GET /internal/sessions/by-slug/:slug` (401 before 404, as upstream)
pub fn internal_get_by_slug(ctx: &Ctx, req: &Req, slug: &str) -> Result<Resp> {
    require_gateway(ctx, req)?;
    let share = share_by_slug(ctx, slug)?;
    full_view(ctx, &share, None)
}

// ---------------------------------------------------------------------------------------------
// Changing

/// Which callers a by-slug change route admits.
#[derive(Clone, Copy)]
pub enum Via {
    /// `/owner/...` and `/sessions/by-slug/...`: the owner or the gateway (404 before 401).
    OwnerOrGateway,
    /// `/internal/...`: the gateway only (401 before 404).
    Gateway,
}

fn by_slug_for_change(ctx: &Ctx, req: &Req, slug: &str, via: Via) -> Result<(Share, Actor)> {
    match via {
        Via::Gateway => {
            let actor = require_gateway(ctx, req)?;
            Ok((share_by_slug(ctx, slug)?, actor))
        }
        Via::OwnerOrGateway => {
            let share = share_by_slug(ctx, slug)?;
            let actor = authorize(ctx, req, &share, OWNER_INTERNAL, None)?.actor(&share, req);
            Ok((share, actor))
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PasswordChange {
    Keep,
    Remove,
    Set,
}

/// A partial policy update, validated (wrong types are a 400, unlike upstream which ignores them).
struct PolicyUpdate {
    public: Option<bool>,
    max_viewers: Option<i64>,
    block_paths: Option<Vec<String>>,
    /// `Some("")` removes protection; the masked value leaves it unchanged.
    password: Option<String>,
    password_hash: Option<String>,
}

impl PolicyUpdate {
    fn parse(body: &Map<String, Value>) -> Result<PolicyUpdate> {
        let f = Fields::nested(body, "policy.");
        let block_paths = f.str_array("blockPaths")?;
        if let Some(paths) = &block_paths {
            if paths.len() > MAX_BLOCK_PATHS {
                return Err(Error::bad_request(format!(
                    "policy.blockPaths may hold at most {MAX_BLOCK_PATHS} paths"
                )));
            }
            if let Some(bad) = paths.iter().find(|p| !p.starts_with('/') || p.len() > 1024) {
                return Err(Error::bad_request(format!(
                    "policy.blockPaths entry {bad:?} must be a path starting with /"
                )));
            }
        }
        let password = f
            .str("password")?
            .filter(|p| *p != MASKED_PASSWORD)
            .map(str::to_string);
        if password.as_ref().is_some_and(|p| p.len() > 256) {
            return Err(Error::bad_request(
                "policy.password must be at most 256 characters",
            ));
        }
        let password_hash = password
            .as_deref()
            .filter(|p| !p.is_empty())
            .map(auth::hash_password);
        Ok(PolicyUpdate {
            public: f.bool("public")?,
            max_viewers: f.int("maxConcurrentViewers", 0, 1_000_000)?,
            block_paths,
            password,
            password_hash,
        })
    }

    fn password_change(&self) -> PasswordChange {
        match self.password.as_deref() {
            None => PasswordChange::Keep,
            Some("") => PasswordChange::Remove,
            Some(_) => PasswordChange::Set,
        }
    }

    fn apply(&self, current: &Policy, change: PasswordChange) -> Policy {
        Policy {
            public: self.public.unwrap_or(current.public),
            max_viewers: self.max_viewers.unwrap_or(current.max_viewers),
            block_paths: self
                .block_paths
                .clone()
                .unwrap_or_else(|| current.block_paths.clone()),
            password_hash: match change {
                PasswordChange::Keep => current.password_hash.clone(),
                PasswordChange::Remove => None,
                PasswordChange::Set => self.password_hash.clone(),
            },
        }
    }
}

/// `POST …/by-slug/:slug/policy`
pub fn set_policy(ctx: &Ctx, req: &Req, slug: &str, via: Via) -> Result<Resp> {
    let (share, actor) = by_slug_for_change(ctx, req, slug, via)?;
    let update = PolicyUpdate::parse(&json_object(req)?)?;
    let change = update.password_change();
    let (id, account, uid, now) = (share.id, share.account_id, share.uid.clone(), ctx.now);
    let policy = ctx.app.writer.exec(move |tx| {
        let current = shares::policy_for_update(tx, id)?.ok_or_else(not_found)?;
        let policy = update.apply(&current, change);
        shares::update_policy(tx, id, &policy, change != PasswordChange::Keep)?;
        let entry = AuditEntry::new(
            Some(account),
            &actor,
            "session.policy_updated",
            "share_session",
            &uid,
        )
        .metadata(json!({
            "public": policy.public,
            "maxConcurrentViewers": policy.max_viewers,
            "blockPaths": policy.block_paths,
            "passwordProtected": policy.password_hash.is_some(),
        }));
        audit::record(tx, &entry, now)?;
        Ok(policy)
    })?;
    if change != PasswordChange::Keep {
        ctx.app.viewers.reset_passwords(id);
    }
    let mut o = Obj::with_capacity(256);
    o.bool("ok", true)
        .object("policy", |o| policy_fields(o, &policy));
    Ok(Resp::json_written(200, o.finish()))
}

/// `POST …/by-slug/:slug/kick`
pub fn kick(ctx: &Ctx, req: &Req, slug: &str, via: Via) -> Result<Resp> {
    let (share, actor) = by_slug_for_change(ctx, req, slug, via)?;
    let body = json_object(req)?;
    let viewer_id = Fields::new(&body)
        .str("viewerId")?
        .ok_or_else(|| Error::bad_request("viewerId is required"))?;
    check_viewer_id(viewer_id)?;
    let viewer_id = viewer_id.to_string();
    let (id, account, uid, now) = (share.id, share.account_id, share.uid.clone(), ctx.now);
    let kicked_id = viewer_id.clone();
    ctx.app.writer.exec(move |tx| {
        if shares::kick(tx, id, &viewer_id, now)? {
            let entry = AuditEntry::new(
                Some(account),
                &actor,
                "viewer.kicked",
                "share_session",
                &uid,
            )
            .summary(format!("viewer {viewer_id} kicked"))
            .metadata(json!({ "viewerId": viewer_id }));
            audit::record(tx, &entry, now)?;
        }
        Ok(())
    })?;
    ctx.app.viewers.kick(id, &kicked_id);
    let (_, kicked) = ctx.app.viewers.list(id, ctx.now, loader(ctx.db, id))?;
    Ok(Resp::json(
        200,
        &json!({ "ok": true, "kickedViewerIds": kicked }),
    ))
}

/// `POST …/by-slug/:slug/close`
pub fn close(ctx: &Ctx, req: &Req, slug: &str, via: Via) -> Result<Resp> {
    let (share, actor) = by_slug_for_change(ctx, req, slug, via)?;
    let (id, account, uid, now) = (share.id, share.account_id, share.uid.clone(), ctx.now);
    ctx.app.writer.exec(move |tx| {
        if shares::end(tx, id, "closed", now)? {
            let entry = AuditEntry::new(
                Some(account),
                &actor,
                "session.closed",
                "share_session",
                &uid,
            )
            .summary("share session closed");
            audit::record(tx, &entry, now)?;
        }
        Ok(())
    })?;
    Ok(Resp::json(200, &json!({ "ok": true })))
}

/// `DELETE /sessions/:id`
pub fn delete(ctx: &Ctx, req: &Req, id: &str) -> Result<Resp> {
    let key = account_key(ctx, req, OWNER_ACCOUNT_INTERNAL_WRITE)?;
    let share = share_by_uid(ctx, id)?;
    let actor = authorize(ctx, req, &share, OWNER_ACCOUNT_INTERNAL_WRITE, key)?.actor(&share, req);
    let (row, account, uid, slug, now) = (
        share.id,
        share.account_id,
        share.uid.clone(),
        share.slug.clone(),
        ctx.now,
    );
    ctx.app.writer.exec(move |tx| {
        if shares::delete(tx, row)? {
            let entry = AuditEntry::new(
                Some(account),
                &actor,
                "session.deleted",
                "share_session",
                &uid,
            )
            .summary(format!("share session {slug} deleted"))
            .metadata(json!({ "slug": slug }));
            audit::record(tx, &entry, now)?;
        }
        Ok(())
    })?;
    ctx.app.viewers.forget(row);
    Ok(Resp::json(200, &json!({ "ok": true })))
}

/// `POST /owner/sessions/:id/tokens`
pub fn create_token(ctx: &Ctx, req: &Req, id: &str) -> Result<Resp> {
    let share = share_by_uid(ctx, id)?;
    authorize(ctx, req, &share, OWNER_ONLY, None)?;
    let body = json_object(req)?;
    let f = Fields::new(&body);
    let name = f.str("name")?.unwrap_or("agent").to_string();
    if name.len() > 100 {
        return Err(Error::bad_request("name must be at most 100 characters"));
    }
    let scopes: Vec<String> = match f.str_array("scopes")? {
        Some(list) => {
            let mut kept: Vec<String> = Vec::new();
            for s in list.into_iter().filter(|s| SCOPES.contains(&s.as_str())) {
                if !kept.contains(&s) {
                    kept.push(s);
                }
            }
            kept
        }
        None => vec!["tunnel:read".to_string()],
    };
    let ttl = match f.raw("maxTtl") {
        None => 2 * 3_600_000,
        Some(Value::String(s)) => parse_minutes_or_hours(s)
            .ok_or_else(|| Error::bad_request("maxTtl must use minutes or hours"))?,
        Some(_) => return Err(Error::bad_request("maxTtl must use minutes or hours")),
    };
    let expires_at = ctx.now + ttl.min(SCOPED_TOKEN_MAX_TTL);
    let token = format!("{}.{}", share.slug, auth::random_url_safe(43));
    let hash = auth::token_hash(&token);
    let actor = owner_actor(&share.uid, req);
    let (row, account, uid, now) = (share.id, share.account_id, share.uid.clone(), ctx.now);
    let (name2, scopes2) = (name.clone(), scopes.clone());
    ctx.app.writer.exec(move |tx| {
        shares::insert_scoped_token(tx, row, &hash, &name2, &scopes2, now, expires_at)?;
        let entry = AuditEntry::new(
            Some(account),
            &actor,
            "token.created",
            "share_session",
            &uid,
        )
        .summary(format!("scoped token {name2} created"))
        .metadata(json!({ "name": name2, "scopes": scopes2, "expiresAt": rfc3339(expires_at) }));
        audit::record(tx, &entry, now)?;
        Ok(())
    })?;
    Ok(Resp::json(
        201,
        &json!({ "token": token, "name": name, "scopes": scopes, "expiresAt": rfc3339(expires_at) }),
    ))
}

// ---------------------------------------------------------------------------------------------
// The gateway's routes

/// `POST /internal/sessions/validate`
pub fn validate(ctx: &Ctx, req: &Req) -> Result<Resp> {
    require_gateway(ctx, req)?;
    let body = json_object(req)?;
    let token = match Fields::new(&body).str("sessionToken") {
        Ok(Some(t)) if !t.is_empty() => t,
        _ => return Err(Error::bad_request("sessionToken is required")),
    };
    let invalid = || Error::Unauthorized("Invalid session token".into());
    let (slug, secret) = token.split_once('.').ok_or_else(invalid)?;
    if !looks_like_slug(slug) || token.len() > 512 {
        return Err(invalid());
    }
    let share = ctx.db.share_by_slug(slug)?.ok_or_else(invalid)?;
    let valid = share.is_owner_token(secret)
        || ctx
            .db
            .scoped_token(&auth::token_hash(token))?
            .is_some_and(|t| {
                t.session_id == share.id
                    && t.expires_at > ctx.now
                    && t.scopes.iter().any(|s| s == "tunnel:connect")
            });
    if !valid {
        return Err(invalid());
    }
    Ok(Resp::json(
        200,
        &json!({ "ok": true, "slug": share.slug, "closed": share.closed, "expiresAt": rfc3339(share.expires_at) }),
    ))
}

/// `POST …/by-slug/:slug/viewers` — a gateway's snapshot of the viewers it sees.
pub fn report_viewers(ctx: &Ctx, req: &Req, slug: &str, via: Via) -> Result<Resp> {
    // Both forms are for the gateway only; the seed's /sessions/by-slug form answers 404 first.
    let share = match via {
        Via::Gateway => {
            require_gateway(ctx, req)?;
            share_by_slug(ctx, slug)?
        }
        Via::OwnerOrGateway => {
            let share = share_by_slug(ctx, slug)?;
            require_gateway(ctx, req)?;
            share
        }
    };
    let body = json_object(req)?;
    let items = Fields::new(&body)
        .array("viewers")?
        .ok_or_else(|| Error::bad_request("viewers must be an array"))?;
    if items.len() > MAX_SNAPSHOT_VIEWERS {
        return Err(Error::bad_request(format!(
            "viewers may hold at most {MAX_SNAPSHOT_VIEWERS} entries"
        )));
    }
    let mut reported = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(map) = item else {
            return Err(Error::bad_request(format!(
                "viewers[{i}] must be an object"
            )));
        };
        let f = Fields::new(map);
        let id = f
            .str("id")?
            .ok_or_else(|| Error::bad_request(format!("viewers[{i}].id is required")))?;
        check_viewer_id(id)?;
        let last_seen_at = match map.get("lastSeenAt") {
            None | Some(Value::Null) => ctx.now,
            Some(Value::String(s)) => parse_rfc3339(s).ok_or_else(|| {
                Error::bad_request(format!("viewers[{i}].lastSeenAt must be an RFC 3339 time"))
            })?,
            Some(Value::Number(n)) => n.as_i64().ok_or_else(|| {
                Error::bad_request(format!("viewers[{i}].lastSeenAt must be an RFC 3339 time"))
            })?,
            Some(_) => {
                return Err(Error::bad_request(format!(
                    "viewers[{i}].lastSeenAt must be an RFC 3339 time"
                )));
            }
        };
        let requests = f.int("requests", 0, i64::MAX)?.unwrap_or(0);
        let ip = f.str("ip")?.map(|s| s.chars().take(64).collect());
        // A gateway clock ahead of ours must not keep a viewer alive forever.
        reported.push(ReportedViewer {
            id: id.to_string(),
            last_seen_at: last_seen_at.min(ctx.now),
            requests,
            ip,
        });
    }
    ctx.app
        .viewers
        .merge_snapshot(share.id, reported, loader(ctx.db, share.id))?;
    Ok(Resp::json(200, &json!({ "ok": true })))
}

fn check_viewer_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::bad_request(
            "viewerId must be 1 to 64 letters, digits, - or _",
        ))
    }
}

/// `POST /internal/sessions/by-slug/:slug/admit` — the policy decision for one viewer request.
pub fn admit(ctx: &Ctx, req: &Req, slug: &str) -> Result<Resp> {
    require_gateway(ctx, req)?;
    let body = json_object(req)?;
    let f = Fields::new(&body);
    let viewer_id = f.str("viewerId")?;
    if let Some(id) = viewer_id {
        check_viewer_id(id)?;
    }
    let ip = f
        .str("ip")?
        .ok_or_else(|| Error::bad_request("ip is required"))?;
    if ip.len() > 64 {
        return Err(Error::bad_request("ip must be at most 64 characters"));
    }
    let path = f
        .str("path")?
        .ok_or_else(|| Error::bad_request("path is required"))?;
    if !path.starts_with('/') {
        return Err(Error::bad_request("path must start with /"));
    }
    let request = AdmitRequest {
        viewer_id,
        ip: Some(ip),
        path,
        password: f.str("password")?,
        authorization: f.str("authorization")?,
        owner_token: f.str("ownerToken")?,
    };
    let share = match looks_like_slug(slug)
        .then(|| ctx.db.share_by_slug(slug))
        .transpose()?
        .flatten()
    {
        Some(s) => s,
        None => {
            let body = json!({ "error": NOT_FOUND, "allow": false, "status": 404, "reason": "not_found", "viewerId": null });
            return Ok(Resp::json(404, &body));
        }
    };
    let decision = ctx
        .app
        .viewers
        .admit(&share, &request, ctx.now, loader(ctx.db, share.id))?;
    let (allow, status, reason) = match decision.refusal {
        None => (true, 200, "allowed"),
        Some(r) => (false, r.status(), r.reason()),
    };
    // The gateway asks on every viewer request: written by `json::Obj`, not serde_json.
    let mut o = Obj::with_capacity(96);
    o.bool("allow", allow)
        .int("status", status.into())
        .str("reason", reason)
        .opt_str("viewerId", decision.viewer_id.as_deref());
    Ok(Resp::json_written(200, o.finish()))
}
