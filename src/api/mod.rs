//! The wire dialects: one file per dialect, each with its own serde types and field names, mapping
//! requests onto the shared model in `domain/` and the store in `db/`.
//!
//! This module holds what the dialects share: strict JSON body parsing with messages that name the
//! offending field, and resolution of the credential a caller presented.

pub mod json;
pub mod ops;
pub mod runtime;
pub mod share;
pub mod workspace;

use serde_json::{Map, Value};

use crate::auth;
use crate::db::accounts::{Credential, CredentialKind};
use crate::db::users::{self, User};
use crate::domain::workspace::Role;
use crate::domain::{Actor, ActorType};
use crate::error::{Error, Result};
use crate::server::{Ctx, Req};

/// Nesting deeper than this is refused before serde sees it (serde_json's own limit is 128).
const MAX_JSON_DEPTH: usize = 32;

/// The body as a JSON object. An empty body is an empty object (routes whose fields are all optional
/// accept no body at all).
pub fn json_object(req: &Req) -> Result<Map<String, Value>> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    if json_depth(&req.body) > MAX_JSON_DEPTH {
        return Err(Error::bad_request("Request body is nested too deeply"));
    }
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Error::bad_request("Request body must be a JSON object")),
        Err(e) => Err(Error::bad_request(format!("Invalid JSON body: {e}"))),
    }
}

/// The deepest nesting of arrays and objects, counted without parsing (strings are skipped).
fn json_depth(body: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Typed access to optional fields; a present field of the wrong type is a 400 naming it.
pub struct Fields<'a> {
    map: &'a Map<String, Value>,
    prefix: &'static str,
}

impl<'a> Fields<'a> {
    pub fn new(map: &'a Map<String, Value>) -> Fields<'a> {
        Fields { map, prefix: "" }
    }

    pub fn nested(map: &'a Map<String, Value>, prefix: &'static str) -> Fields<'a> {
        Fields { map, prefix }
    }

    /// The field as sent, `None` when absent or null.
    pub fn raw(&self, name: &str) -> Option<&'a Value> {
        self.get(name)
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    fn wrong(&self, name: &str, what: &str) -> Error {
        Error::bad_request(format!("{}{name} must be {what}", self.prefix))
    }

    pub fn str(&self, name: &str) -> Result<Option<&'a str>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.wrong(name, "a string")),
        }
    }

    pub fn bool(&self, name: &str) -> Result<Option<bool>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.wrong(name, "a boolean")),
        }
    }

    /// An integer within `min..=max`.
    pub fn int(&self, name: &str, min: i64, max: i64) -> Result<Option<i64>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(v) if (min..=max).contains(&v) => Ok(Some(v)),
                _ => Err(self.wrong(name, &format!("an integer between {min} and {max}"))),
            },
            Some(_) => Err(self.wrong(name, &format!("an integer between {min} and {max}"))),
        }
    }

    pub fn str_array(&self, name: &str) -> Result<Option<Vec<String>>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| self.wrong(name, "an array of strings"))
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(_) => Err(self.wrong(name, "an array of strings")),
        }
    }

    pub fn array(&self, name: &str) -> Result<Option<&'a Vec<Value>>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(_) => Err(self.wrong(name, "an array")),
        }
    }

    pub fn object(&self, name: &str) -> Result<Option<&'a Map<String, Value>>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(_) => Err(self.wrong(name, "an object")),
        }
    }
}

/// The `limit` query parameter: 1 to 500, `default` when absent.
pub fn limit_param(req: &Req, default: usize) -> Result<usize> {
    match req.param("limit") {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| Error::bad_request("limit must be between 1 and 500")),
    }
}

/// The `cursor` query parameter: the position after which a listing goes on.
pub fn cursor_param(req: &Req) -> Result<Option<i64>> {
    req.param("cursor")
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| Error::bad_request("cursor is not valid"))
        })
        .transpose()
}

/// A usable credential of one of `kinds` for the bearer token, if any.
pub fn credential(ctx: &Ctx, token: &str, kinds: &[CredentialKind]) -> Result<Option<Credential>> {
    let found = ctx.db.credential_by_hash(&auth::token_hash(token))?;
    Ok(found.filter(|c| kinds.contains(&c.kind) && c.usable(ctx.now)))
}

/// The actor behind a gateway call: the configured internal key or a `gateway` service key.
pub fn gateway(ctx: &Ctx, req: &Req) -> Result<Option<Actor>> {
    let Some(token) = req.bearer() else {
        return Ok(None);
    };
    if let Some(key_hash) = &ctx.cfg().internal_api_key_hash {
        if auth::ct_eq_secret(token, key_hash) {
            return Ok(Some(Actor {
                kind: ActorType::Service,
                id: Some("internal_api_key".into()),
                email: None,
                ip: req.client_ip_string(),
            }));
        }
    }
    let service = credential(ctx, token, &[CredentialKind::ServiceKey])?;
    Ok(service
        .filter(|c| c.service_role.as_deref() == Some("gateway"))
        .map(|c| Actor {
            kind: ActorType::Service,
            id: Some(c.uid),
            email: None,
            ip: req.client_ip_string(),
        }))
}

/// A signed-in caller of the account-scoped dialects: a login token, or an API key.
pub struct Principal {
    pub credential: Credential,
    pub account_id: i64,
    pub account_name: String,
    pub role: Role,
    /// The user behind the credential; `None` for an account-level API key.
    pub user: Option<User>,
}

impl Principal {
    pub fn actor(&self, req: &Req) -> Actor {
        let ip = req.client_ip_string();
        match &self.user {
            Some(u) => Actor {
                kind: ActorType::User,
                id: Some(u.uid.clone()),
                email: Some(u.email.clone()),
                ip,
            },
            None => Actor {
                kind: ActorType::ApiKey,
                id: Some(self.credential.uid.clone()),
                email: None,
                ip,
            },
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role.is_admin()
    }

    /// API keys carry scopes; login tokens may do whatever their user may.
    pub fn require_scope(&self, scope: &str) -> Result<()> {
        if self.credential.kind == CredentialKind::ApiKey && !self.credential.has_scope(scope) {
            return Err(Error::Forbidden(format!(
                "This key lacks the {scope} scope"
            )));
        }
        Ok(())
    }
}

/// How long a credential's `last_used_at` may lag (it is written at most this often).
const TOUCH_EVERY: i64 = 60_000;

/// Resolves `Authorization: Bearer` to a login token or an API key of an account. `account` picks
/// one of the user's accounts by name (default: the credential's).
pub fn principal(ctx: &Ctx, req: &Req, account: Option<&str>) -> Result<Principal> {
    let token = req
        .bearer()
        .ok_or_else(|| Error::Unauthorized("Not authenticated".into()))?;
    let invalid = || Error::Unauthorized("Invalid token".into());
    let cred = credential(ctx, token, &[CredentialKind::Login, CredentialKind::ApiKey])?
        .ok_or_else(invalid)?;
    let user = match cred.user_id {
        Some(id) => Some(
            ctx.db
                .user_by_id(id)?
                .filter(|u| !u.disabled)
                .ok_or_else(invalid)?,
        ),
        None => None,
    };
    let wanted = match account {
        Some(name) => Some(
            ctx.db
                .account_id_by_name(name)?
                .ok_or_else(|| Error::Forbidden(format!("Not a member of {name}")))?,
        ),
        None => cred.account_id,
    };
    let (account_id, account_name, role) = match &user {
        Some(u) => {
            let m = ctx
                .db
                .membership(u.id, wanted)?
                .ok_or_else(|| match account {
                    Some(name) => Error::Forbidden(format!("Not a member of {name}")),
                    None => invalid(),
                })?;
            (m.account_id, m.account_name, m.role)
        }
        None => {
            let own = cred.account_id.ok_or_else(invalid)?;
            if wanted != Some(own) {
                return Err(Error::Forbidden(format!(
                    "Not a member of {}",
                    account.unwrap_or("")
                )));
            }
            (own, ctx.db.account_name(own)?, Role::Admin)
        }
    };
    if cred.last_used_at.is_none_or(|t| ctx.now - t > TOUCH_EVERY) {
        let (id, now) = (cred.id, ctx.now);
        ctx.app
            .writer
            .exec(move |tx| users::touch_credential(tx, id, now))?;
    }
    Ok(Principal {
        credential: cred,
        account_id,
        account_name,
        role,
        user,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_nesting_outside_strings() {
        assert_eq!(json_depth(b"{}"), 1);
        assert_eq!(json_depth(br#"{"a":[[1]]}"#), 3);
        assert_eq!(json_depth(br#"{"a":"[[[[["}"#), 1);
        assert_eq!(json_depth(br#"{"a":"\"[[[["}"#), 1);
    }
}
