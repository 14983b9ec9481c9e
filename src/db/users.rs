//! Users, memberships and login tokens.

use rusqlite::{OptionalExtension, Row, params};

use super::{Reader, Tx, is_unique_violation};
use crate::auth;
use crate::domain::time::Millis;
use crate::domain::workspace::Role;
use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct User {
    pub id: i64,
    pub uid: String,
    pub email: String,
    pub name: String,
    pub password_hash: String,
    pub totp_secret: Option<String>,
    pub totp_pending: Option<String>,
    pub disabled: bool,
}

/// SQL text, a macro so that queries are built with `concat!` at compile time.
macro_rules! user_columns {
    () => {
        "id, uid, email, name, password_hash, totp_secret, totp_pending, disabled"
    };
}

fn user_from_row(r: &Row) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        uid: r.get(1)?,
        email: r.get(2)?,
        name: r.get(3)?,
        password_hash: r.get(4)?,
        totp_secret: r.get(5)?,
        totp_pending: r.get(6)?,
        disabled: r.get(7)?,
    })
}

/// A user's place in an account.
#[derive(Clone, Debug)]
pub struct Membership {
    pub account_id: i64,
    pub account_name: String,
    pub role: Role,
}

/// The condition of a login token the reaper deletes (`?1` is now).
macro_rules! dead_login_token {
    () => {
        "kind = 'login' AND (expires_at <= ?1 OR idle_expires_at <= ?1 OR revoked_at IS NOT NULL)"
    };
}

impl Reader {
    /// Whether any login token is due for deletion (so the reaper sends the writer no empty job).
    pub fn any_dead_login_token(&self, now: Millis) -> Result<bool> {
        let sql = concat!(
            "SELECT EXISTS (SELECT 1 FROM credentials WHERE ",
            dead_login_token!(),
            ")"
        );
        Ok(self
            .conn
            .prepare_cached(sql)?
            .query_row([now], |r| r.get(0))?)
    }

    pub fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        let sql = concat!("SELECT ", user_columns!(), " FROM users WHERE email = ?1");
        Ok(self
            .conn
            .prepare_cached(sql)?
            .query_row([email], user_from_row)
            .optional()?)
    }

    pub fn user_by_id(&self, id: i64) -> Result<Option<User>> {
        let sql = concat!("SELECT ", user_columns!(), " FROM users WHERE id = ?1");
        Ok(self
            .conn
            .prepare_cached(sql)?
            .query_row([id], user_from_row)
            .optional()?)
    }

    /// The user's membership in `account_id`, or (with `None`) their first account.
    pub fn membership(&self, user_id: i64, account_id: Option<i64>) -> Result<Option<Membership>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT m.account_id, a.name, m.role FROM memberships m JOIN accounts a ON a.id = m.account_id
                 WHERE m.user_id = ?1 AND (?2 IS NULL OR m.account_id = ?2)
                 ORDER BY m.created_at, m.account_id LIMIT 1",
            )?
            .query_row(params![user_id, account_id], |r| {
                let role: String = r.get(2)?;
                Ok(Membership { account_id: r.get(0)?, account_name: r.get(1)?, role: Role::parse(&role).unwrap_or(Role::Member) })
            })
            .optional()?)
    }

    pub fn account_name(&self, account_id: i64) -> Result<String> {
        Ok(self
            .conn
            .prepare_cached("SELECT name FROM accounts WHERE id = ?1")?
            .query_row([account_id], |r| r.get(0))?)
    }

    pub fn count_members(&self, account_id: i64) -> Result<i64> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT count(*) FROM memberships m JOIN users u ON u.id = m.user_id WHERE m.account_id = ?1 AND u.disabled = 0",
            )?
            .query_row([account_id], |r| r.get(0))?)
    }
}

pub struct NewUser<'a> {
    pub email: &'a str,
    pub name: &'a str,
    pub password_hash: &'a str,
    pub account_id: i64,
    pub role: Role,
}

/// Creates a user and their membership; a taken email is a 400 "Email already registered".
pub fn insert_user(tx: &Tx, user: &NewUser, now: Millis) -> Result<(i64, String)> {
    let uid = auth::uuid_v4();
    let inserted = tx
        .conn
        .prepare_cached("INSERT INTO users (uid, email, name, password_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![uid, user.email, user.name, user.password_hash, now]);
    match inserted {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e, "email") => {
            return Err(Error::bad_request("Email already registered"));
        }
        Err(e) => return Err(e.into()),
    }
    let id = tx.conn.last_insert_rowid();
    tx.conn
        .prepare_cached("INSERT INTO memberships (account_id, user_id, role, created_at) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![user.account_id, id, user.role.as_str(), now])?;
    Ok((id, uid))
}

pub fn user_by_email_tx(tx: &Tx, email: &str) -> Result<Option<User>> {
    let sql = concat!("SELECT ", user_columns!(), " FROM users WHERE email = ?1");
    Ok(tx
        .conn
        .prepare_cached(sql)?
        .query_row([email], user_from_row)
        .optional()?)
}

pub fn set_password(tx: &Tx, user_id: i64, password_hash: &str) -> Result<()> {
    tx.conn
        .prepare_cached("UPDATE users SET password_hash = ?2 WHERE id = ?1")?
        .execute(params![user_id, password_hash])?;
    Ok(())
}

/// Disables or enables a user; disabling revokes every credential they hold.
pub fn set_disabled(tx: &Tx, user_id: i64, disabled: bool, now: Millis) -> Result<()> {
    tx.conn
        .prepare_cached("UPDATE users SET disabled = ?2 WHERE id = ?1")?
        .execute(params![user_id, disabled])?;
    if disabled {
        tx.conn
            .prepare_cached(
                "UPDATE credentials SET revoked_at = ?2 WHERE user_id = ?1 AND revoked_at IS NULL",
            )?
            .execute(params![user_id, now])?;
    }
    Ok(())
}

pub fn set_totp_pending(tx: &Tx, user_id: i64, secret: &str) -> Result<()> {
    tx.conn
        .prepare_cached("UPDATE users SET totp_pending = ?2 WHERE id = ?1")?
        .execute(params![user_id, secret])?;
    Ok(())
}

/// Turns the pending secret into the enrolled one.
pub fn enable_totp(tx: &Tx, user_id: i64) -> Result<bool> {
    let n = tx
        .conn
        .prepare_cached(
            "UPDATE users SET totp_secret = totp_pending, totp_pending = NULL WHERE id = ?1 AND totp_pending IS NOT NULL",
        )?
        .execute([user_id])?;
    Ok(n > 0)
}

/// Lifetimes of a login token.
pub struct LoginTtl {
    pub idle: Millis,
    pub absolute: Millis,
}

pub const LOGIN_TTL: LoginTtl = LoginTtl {
    idle: 12 * 3_600_000,
    absolute: 7 * 86_400_000,
};

pub fn insert_login_token(
    tx: &Tx,
    token: &str,
    user_id: i64,
    account_id: i64,
    mfa_verified: bool,
    now: Millis,
) -> Result<String> {
    let uid = auth::uuid_v4();
    tx.conn
        .prepare_cached(
            "INSERT INTO credentials (uid, kind, token_hash, prefix, account_id, user_id, mfa_verified, created_at,
                                      expires_at, idle_expires_at, last_used_at)
             VALUES (?1, 'login', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?7)",
        )?
        .execute(params![
            uid,
            &auth::token_hash(token)[..],
            token.chars().take(6).collect::<String>(),
            account_id,
            user_id,
            mfa_verified,
            now,
            now + LOGIN_TTL.absolute,
            now + LOGIN_TTL.idle,
        ])?;
    Ok(uid)
}

/// Marks a credential used, pushing a login token's idle expiry forward.
pub fn touch_credential(tx: &Tx, credential_id: i64, now: Millis) -> Result<()> {
    tx.conn
        .prepare_cached(
            "UPDATE credentials SET last_used_at = ?2,
                    idle_expires_at = CASE WHEN kind = 'login' THEN ?3 ELSE idle_expires_at END
             WHERE id = ?1",
        )?
        .execute(params![credential_id, now, now + LOGIN_TTL.idle])?;
    Ok(())
}

pub fn revoke_credential(tx: &Tx, credential_id: i64, now: Millis) -> Result<()> {
    tx.conn
        .prepare_cached(
            "UPDATE credentials SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
        )?
        .execute(params![credential_id, now])?;
    Ok(())
}

/// Deletes up to `limit` login tokens that expired or were revoked; returns how many went.
pub fn delete_dead_login_tokens(tx: &Tx, now: Millis, limit: usize) -> Result<usize> {
    let n = tx
        .conn
        .prepare_cached(concat!(
            "DELETE FROM credentials WHERE id IN (SELECT id FROM credentials WHERE ",
            dead_login_token!(),
            " LIMIT ?2)"
        ))?
        .execute(params![now, limit as i64])?;
    Ok(n)
}
