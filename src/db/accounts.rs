//! Accounts, users and credentials: bootstrap of an empty database, and credential look-up by hash.

use rusqlite::{Connection, OptionalExtension, params};

use super::{Reader, Tx};
use crate::auth;
use crate::domain::time::Millis;
use crate::domain::{Actor, AuditEntry};
use crate::error::Result;

/// The built-in account that owns anonymously created share sessions.
pub const ANONYMOUS_ACCOUNT: &str = "anonymous";
/// The account `serve` creates on an empty database.
pub const PERSONAL_ACCOUNT: &str = "personal";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    Login,
    ApiKey,
    ServiceKey,
}

/// A credential found by the hash of what a caller presented.
#[derive(Clone, Debug)]
pub struct Credential {
    pub id: i64,
    pub uid: String,
    pub kind: CredentialKind,
    pub account_id: Option<i64>,
    pub user_id: Option<i64>,
    pub scopes: Vec<String>,
    pub service_role: Option<String>,
    pub mfa_verified: bool,
    pub last_used_at: Option<Millis>,
    pub expires_at: Option<Millis>,
    pub idle_expires_at: Option<Millis>,
    pub revoked: bool,
}

impl Credential {
    pub fn usable(&self, now: Millis) -> bool {
        !self.revoked
            && self.expires_at.is_none_or(|t| now < t)
            && self.idle_expires_at.is_none_or(|t| now < t)
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope || s == "*")
    }
}

impl Reader {
    pub fn credential_by_hash(&self, hash: &[u8]) -> Result<Option<Credential>> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT uid, kind, account_id, scopes, service_role, expires_at, idle_expires_at,
                        revoked_at IS NOT NULL, id, user_id, mfa_verified, last_used_at
                 FROM credentials WHERE token_hash = ?1",
            )?
            .query_row([hash], |r| {
                let kind: String = r.get(1)?;
                let scopes: String = r.get(3)?;
                Ok(Credential {
                    id: r.get(8)?,
                    user_id: r.get(9)?,
                    mfa_verified: r.get(10)?,
                    last_used_at: r.get(11)?,
                    uid: r.get(0)?,
                    kind: match kind.as_str() {
                        "login" => CredentialKind::Login,
                        "api_key" => CredentialKind::ApiKey,
                        _ => CredentialKind::ServiceKey,
                    },
                    account_id: r.get(2)?,
                    scopes: serde_json::from_str(&scopes).unwrap_or_default(),
                    service_role: r.get(4)?,
                    expires_at: r.get(5)?,
                    idle_expires_at: r.get(6)?,
                    revoked: r.get(7)?,
                })
            })
            .optional()?;
        Ok(row)
    }

    pub fn account_id_by_name(&self, name: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .prepare_cached("SELECT id FROM accounts WHERE name = ?1")?
            .query_row([name], |r| r.get(0))
            .optional()?)
    }
}

/// A new API or service key to store; the caller already holds the plain value.
pub struct NewKey<'a> {
    pub token: &'a str,
    pub kind: CredentialKind,
    pub name: &'a str,
    pub account_id: Option<i64>,
    pub user_id: Option<i64>,
    pub scopes: &'a [String],
    pub service_role: Option<&'a str>,
    pub expires_at: Option<Millis>,
}

pub fn insert_key(tx: &Tx, key: &NewKey, actor: &Actor, now: Millis) -> Result<String> {
    let uid = auth::uuid_v4();
    let kind = match key.kind {
        CredentialKind::Login => "login",
        CredentialKind::ApiKey => "api_key",
        CredentialKind::ServiceKey => "service_key",
    };
    let prefix: String = key.token.chars().take(8).collect();
    tx.conn
        .prepare_cached(
            "INSERT INTO credentials (uid, kind, token_hash, prefix, name, account_id, user_id, scopes,
                                      service_role, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?
        .execute(params![
            uid,
            kind,
            &auth::token_hash(key.token)[..],
            prefix,
            key.name,
            key.account_id,
            key.user_id,
            serde_json::to_string(key.scopes)?,
            key.service_role,
            now,
            key.expires_at,
        ])?;
    let entry = AuditEntry::new(key.account_id, actor, "key.created", "key", &uid)
        .summary(format!("{kind} {prefix}… created"))
        .metadata(serde_json::json!({ "kind": kind, "name": key.name, "scopes": key.scopes, "service_role": key.service_role }));
    super::audit::record(tx, &entry, now)?;
    Ok(uid)
}

/// The administrator `serve` makes sure of.
pub struct Admin<'a> {
    pub email: &'a str,
    pub password: Option<&'a str>,
}

/// Creates the built-in accounts (with the default catalogue) and, when `admin` is given and the
/// personal account has no owner or admin yet, that administrator. Returns the generated admin
/// password when one had to be made up (the caller prints it once).
pub fn bootstrap(
    conn: &mut Connection,
    admin: Option<Admin>,
    now: Millis,
) -> Result<Option<String>> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for (name, kind) in [
        (ANONYMOUS_ACCOUNT, "system"),
        (PERSONAL_ACCOUNT, "personal"),
    ] {
        let created = tx
            .prepare_cached(
                "INSERT INTO accounts (uid, name, kind, created_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (name) DO NOTHING",
            )?
            .execute(params![auth::uuid_v4(), name, kind, now])?;
        // A new account starts with the default workspace catalogue.
        if created > 0 && kind != "system" {
            super::workspaces::seed_catalogue(&Tx::new(&tx), tx.last_insert_rowid(), now)?;
        }
    }
    let account_id: i64 = tx.query_row(
        "SELECT id FROM accounts WHERE name = ?1",
        [PERSONAL_ACCOUNT],
        |r| r.get(0),
    )?;
    let admins: i64 = tx.query_row(
        "SELECT count(*) FROM memberships WHERE account_id = ?1 AND role IN ('owner', 'admin')",
        [account_id],
        |r| r.get(0),
    )?;
    let mut generated = None;
    if let (Some(admin), 0) = (admin, admins) {
        let taken: i64 = tx.query_row(
            "SELECT count(*) FROM users WHERE email = ?1",
            [admin.email],
            |r| r.get(0),
        )?;
        if taken > 0 {
            log::warn!(
                "the personal account has no administrator and {} is taken by another user",
                admin.email
            );
            tx.commit()?;
            return Ok(None);
        }
        let password = match admin.password {
            Some(p) => p.to_string(),
            None => {
                let p = auth::random_alnum(20);
                generated = Some(p.clone());
                p
            }
        };
        let uid = auth::uuid_v4();
        tx.prepare_cached(
            "INSERT INTO users (uid, email, name, password_hash, created_at) VALUES (?1, ?2, 'Administrator', ?3, ?4)",
        )?
        .execute(params![uid, admin.email, auth::hash_password(&password), now])?;
        let user_id = tx.last_insert_rowid();
        tx.prepare_cached("INSERT INTO memberships (account_id, user_id, role, created_at) VALUES (?1, ?2, 'owner', ?3)")?
            .execute(params![account_id, user_id, now])?;
        let entry = AuditEntry::new(
            Some(account_id),
            &Actor::system(),
            "user.created",
            "user",
            &uid,
        )
        .summary(format!("bootstrap admin {} created", admin.email));
        super::audit::record(&Tx::new(&tx), &entry, now)?;
    }
    tx.commit()?;
    Ok(generated)
}
