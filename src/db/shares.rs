//! Share sessions, their scoped tokens, viewers and kicks.

use rusqlite::{OptionalExtension, Row, params};

use super::{Held, Reader, Tx, is_unique_violation};
use crate::domain::share::{AuthMode, Policy, Share, new_slug};
use crate::domain::time::Millis;
use crate::error::{Error, Result};

/// SQL text, a macro so that queries are built with `concat!` at compile time.
macro_rules! share_columns {
    () => {
        "s.id, s.uid, s.account_id, sh.slug, sh.owner_token_hash, sh.auth_mode,
    sh.basic_password_hash, sh.policy_public, sh.policy_max_viewers, sh.policy_block_paths,
    sh.policy_password_hash, s.status, s.created_at, s.expires_at, s.end_reason"
    };
}

fn share_from_row(r: &Row) -> rusqlite::Result<Share> {
    // The text columns that only decide something are borrowed from the row, not copied.
    let block_paths = text(r, 9)?;
    Ok(Share {
        id: r.get(0)?,
        uid: r.get(1)?,
        account_id: r.get(2)?,
        slug: r.get(3)?,
        owner_token_hash: r.get(4)?,
        auth_mode: AuthMode::parse(text(r, 5)?).unwrap_or(AuthMode::None),
        basic_password_hash: r.get(6)?,
        policy: Policy {
            public: r.get(7)?,
            max_viewers: r.get(8)?,
            block_paths: if block_paths == "[]" {
                Vec::new()
            } else {
                serde_json::from_str(block_paths).unwrap_or_default()
            },
            password_hash: r.get(10)?,
        },
        closed: text(r, 11)? != "active",
        ended_by_expiry: r
            .get_ref(14)?
            .as_str_or_null()
            .map_err(|e| not_text(14, e))?
            == Some("expired"),
        created_at: r.get(12)?,
        expires_at: r.get::<_, Option<Millis>>(13)?.unwrap_or(Millis::MAX),
    })
}

/// A TEXT column of the row, borrowed.
fn text<'r>(r: &'r Row, column: usize) -> rusqlite::Result<&'r str> {
    r.get_ref(column)?.as_str().map_err(|e| not_text(column, e))
}

fn not_text(column: usize, e: rusqlite::types::FromSqlError) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, e.into())
}

/// A viewer as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewerRow {
    pub viewer_id: String,
    pub last_seen_at: Millis,
    pub requests: i64,
    pub ip: Option<String>,
    pub password_ok: bool,
}

/// A scoped tunnel token as stored.
pub struct ScopedToken {
    pub session_id: i64,
    pub scopes: Vec<String>,
    pub expires_at: Millis,
}

/// A share session due for expiry, or one whose viewers are being aged out.
pub struct ShareRef {
    pub id: i64,
    pub uid: String,
    pub account_id: i64,
}

/// The condition of a scoped token the reaper deletes (`?1` is now).
macro_rules! expired_token {
    () => {
        "expires_at <= ?1"
    };
}

impl Reader {
    /// Whether any scoped token is due for deletion (so the reaper sends the writer no empty job).
    pub fn any_expired_token(&self, now: Millis) -> Result<bool> {
        let sql = concat!(
            "SELECT EXISTS (SELECT 1 FROM share_tokens WHERE ",
            expired_token!(),
            ")"
        );
        Ok(self
            .conn
            .prepare_cached(sql)?
            .query_row([now], |r| r.get(0))?)
    }

    pub fn share_by_uid(&self, uid: &str) -> Result<Option<Share>> {
        let sql = concat!(
            "SELECT ",
            share_columns!(),
            " FROM sessions s JOIN shares sh ON sh.session_id = s.id WHERE s.uid = ?1"
        );
        self.held(Held::ShareByUid, sql, |stmt| {
            stmt.query_row([uid], share_from_row).optional()
        })
    }

    pub fn share_by_slug(&self, slug: &str) -> Result<Option<Share>> {
        let sql = concat!(
            "SELECT ",
            share_columns!(),
            " FROM shares sh JOIN sessions s ON s.id = sh.session_id WHERE sh.slug = ?1"
        );
        self.held(Held::ShareBySlug, sql, |stmt| {
            stmt.query_row([slug], share_from_row).optional()
        })
    }

    pub fn share_viewers(&self, session_id: i64) -> Result<Vec<ViewerRow>> {
        let rows = self
            .conn
            .prepare_cached(
                "SELECT viewer_id, last_seen_at, requests, ip, password_ok FROM viewers WHERE session_id = ?1",
            )?
            .query_map([session_id], |r| {
                Ok(ViewerRow {
                    viewer_id: r.get(0)?,
                    last_seen_at: r.get(1)?,
                    requests: r.get(2)?,
                    ip: r.get(3)?,
                    password_ok: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    pub fn share_kicked(&self, session_id: i64) -> Result<Vec<String>> {
        let rows = self
            .conn
            .prepare_cached(
                "SELECT viewer_id FROM kicked_viewers WHERE session_id = ?1 ORDER BY id",
            )?
            .query_map([session_id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    pub fn scoped_token(&self, hash: &[u8]) -> Result<Option<ScopedToken>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT session_id, scopes, expires_at FROM share_tokens WHERE token_hash = ?1",
            )?
            .query_row([hash], |r| {
                let scopes: String = r.get(1)?;
                Ok(ScopedToken {
                    session_id: r.get(0)?,
                    scopes: serde_json::from_str(&scopes).unwrap_or_default(),
                    expires_at: r.get(2)?,
                })
            })
            .optional()?)
    }

    /// Live share sessions whose expiry has passed, oldest first.
    pub fn shares_due(&self, now: Millis, limit: usize) -> Result<Vec<ShareRef>> {
        let rows = self
            .conn
            .prepare_cached(
                "SELECT id, uid, account_id FROM sessions
                 WHERE ended_at IS NULL AND expires_at IS NOT NULL AND expires_at <= ?1 AND dialect = 'share'
                 ORDER BY expires_at LIMIT ?2",
            )?
            .query_map(params![now, limit as i64], |r| {
                Ok(ShareRef { id: r.get(0)?, uid: r.get(1)?, account_id: r.get(2)? })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Stored viewers not seen since `cutoff`, with their session.
    pub fn idle_viewers(&self, cutoff: Millis, limit: usize) -> Result<Vec<(ShareRef, String)>> {
        let rows = self
            .conn
            .prepare_cached(
                "SELECT s.id, s.uid, s.account_id, v.viewer_id FROM viewers v JOIN sessions s ON s.id = v.session_id
                 WHERE v.last_seen_at < ?1 ORDER BY v.last_seen_at LIMIT ?2",
            )?
            .query_map(params![cutoff, limit as i64], |r| {
                Ok((ShareRef { id: r.get(0)?, uid: r.get(1)?, account_id: r.get(2)? }, r.get(3)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }
}

/// What creating a share session stores; the plain secrets never reach this layer.
pub struct NewShare {
    pub uid: String,
    pub account_id: i64,
    pub owner_token_hash: [u8; 32],
    pub port: Option<i64>,
    pub auth_mode: AuthMode,
    pub basic_password_hash: Option<String>,
    pub ip: Option<String>,
    pub created_at: Millis,
    pub expires_at: Millis,
}

/// Inserts a share session under a fresh slug, drawing again on the rare collision. Returns the slug
/// and the row id.
pub fn insert_share(tx: &Tx, share: &NewShare) -> Result<(String, i64)> {
    tx.execute(
        "INSERT INTO sessions (uid, dialect, account_id, status, ip_address, created_at, expires_at)
         VALUES (?1, 'share', ?2, 'active', ?3, ?4, ?5)",
        params![share.uid, share.account_id, share.ip, share.created_at, share.expires_at],
    )?;
    let id = tx.conn.last_insert_rowid();
    let policy = Policy::default();
    for _ in 0..16 {
        let slug = new_slug();
        let inserted = tx.execute(
            "INSERT INTO shares (session_id, slug, owner_token_hash, port, auth_mode, basic_password_hash,
                                 policy_public, policy_max_viewers, policy_block_paths)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, '[]')",
            params![
                id,
                slug,
                &share.owner_token_hash[..],
                share.port,
                share.auth_mode.as_str(),
                share.basic_password_hash,
                policy.public,
                policy.max_viewers,
            ],
        );
        match inserted {
            Ok(_) => return Ok((slug, id)),
            Err(e) if is_unique_violation(&e, "slug") => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Internal(
        "could not allocate a free slug in 16 draws".into(),
    ))
}

/// The current policy, read inside the writer so that concurrent partial updates compose.
pub fn policy_for_update(tx: &Tx, session_id: i64) -> Result<Option<Policy>> {
    Ok(tx
        .conn
        .prepare_cached(
            "SELECT policy_public, policy_max_viewers, policy_block_paths, policy_password_hash
             FROM shares WHERE session_id = ?1",
        )?
        .query_row([session_id], |r| {
            let block_paths: String = r.get(2)?;
            Ok(Policy {
                public: r.get(0)?,
                max_viewers: r.get(1)?,
                block_paths: serde_json::from_str(&block_paths).unwrap_or_default(),
                password_hash: r.get(3)?,
            })
        })
        .optional()?)
}

/// Stores a policy. When the password changed, every viewer must pass it again.
pub fn update_policy(
    tx: &Tx,
    session_id: i64,
    policy: &Policy,
    password_changed: bool,
) -> Result<()> {
    tx.conn
        .prepare_cached(
            "UPDATE shares SET policy_public = ?2, policy_max_viewers = ?3, policy_block_paths = ?4,
                               policy_password_hash = ?5
             WHERE session_id = ?1",
        )?
        .execute(params![
            session_id,
            policy.public,
            policy.max_viewers,
            serde_json::to_string(&policy.block_paths)?,
            policy.password_hash,
        ])?;
    if password_changed {
        tx.conn
            .prepare_cached("UPDATE viewers SET password_ok = 0 WHERE session_id = ?1")?
            .execute([session_id])?;
    }
    Ok(())
}

/// Records a kick (idempotent) and forgets the viewer; returns whether it was new.
pub fn kick(tx: &Tx, session_id: i64, viewer_id: &str, now: Millis) -> Result<bool> {
    let added = tx
        .conn
        .prepare_cached(
            "INSERT INTO kicked_viewers (session_id, viewer_id, kicked_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (session_id, viewer_id) DO NOTHING",
        )?
        .execute(params![session_id, viewer_id, now])?;
    delete_viewers(tx, session_id, &[viewer_id.to_string()])?;
    Ok(added > 0)
}

/// The sessions with viewer or kick rows, read once at startup (see `Viewers::note_stored`).
pub fn sessions_with_viewer_rows(conn: &rusqlite::Connection) -> Result<Vec<i64>> {
    let mut stmt =
        conn.prepare("SELECT session_id FROM viewers UNION SELECT session_id FROM kicked_viewers")?;
    let ids = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<i64>>>()?;
    Ok(ids)
}

/// Ends a live share session; returns false when it had already ended.
pub fn end(tx: &Tx, session_id: i64, reason: &str, now: Millis) -> Result<bool> {
    let n = tx
        .conn
        .prepare_cached(
            "UPDATE sessions SET status = 'closed', end_reason = ?2, ended_at = ?3
             WHERE id = ?1 AND ended_at IS NULL",
        )?
        .execute(params![session_id, reason, now])?;
    Ok(n > 0)
}

/// Removes a share session with its tokens, viewers and kicks.
pub fn delete(tx: &Tx, session_id: i64) -> Result<bool> {
    let n = tx
        .conn
        .prepare_cached("DELETE FROM sessions WHERE id = ?1")?
        .execute([session_id])?;
    Ok(n > 0)
}

pub fn insert_scoped_token(
    tx: &Tx,
    session_id: i64,
    token_hash: &[u8],
    name: &str,
    scopes: &[String],
    now: Millis,
    expires_at: Millis,
) -> Result<()> {
    tx.conn
        .prepare_cached(
            "INSERT INTO share_tokens (session_id, token_hash, name, scopes, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![session_id, token_hash, name, serde_json::to_string(scopes)?, now, expires_at])?;
    Ok(())
}

/// Writes absorbed viewer activity. Rows of sessions deleted meanwhile are skipped, and so are
/// rows of viewers kicked meanwhile: the flush takes activity from memory before a kick and may
/// be written after it, and the row it would bring back shows the kicked viewer as active once
/// the session is loaded from the store again.
///
/// Each row is a single-row `INSERT … VALUES … ON CONFLICT DO UPDATE`, with the session's existence
/// and kicks read once per session beforehand, in one query. (An `INSERT … SELECT … WHERE EXISTS`
/// is a multi-row write to SQLite, which then opens and closes a statement journal for every row;
/// inside the job's savepoint that cost grew with the flush, and a flush of 100,000 viewers held
/// the writer, and every other write behind it, for seconds.)
pub fn upsert_viewers(tx: &Tx, batch: &[(i64, ViewerRow)]) -> Result<()> {
    // No row: the session is gone; one row with NULL: live, nobody kicked; else the kicked ids.
    let mut kicked = tx.conn.prepare_cached(
        "SELECT k.viewer_id FROM sessions s LEFT JOIN kicked_viewers k ON k.session_id = s.id
         WHERE s.id = ?1",
    )?;
    let mut upsert = tx.conn.prepare_cached(
        "INSERT INTO viewers (session_id, viewer_id, last_seen_at, requests, ip, password_ok)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (session_id, viewer_id) DO UPDATE SET
            last_seen_at = max(last_seen_at, excluded.last_seen_at), requests = excluded.requests,
            ip = coalesce(excluded.ip, ip), password_ok = excluded.password_ok",
    )?;
    // Per session: `None` when it is gone, else the viewers kicked from it.
    let mut known: std::collections::HashMap<i64, Option<Vec<String>>> =
        std::collections::HashMap::new();
    for (session_id, v) in batch {
        let kicks = match known.entry(*session_id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let rows = kicked
                    .query_map([session_id], |r| r.get::<_, Option<String>>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let kicks = (!rows.is_empty()).then(|| rows.into_iter().flatten().collect());
                e.insert(kicks)
            }
        };
        match kicks {
            Some(kicks) if !kicks.contains(&v.viewer_id) => {}
            _ => continue,
        }
        upsert.execute(params![
            session_id,
            v.viewer_id,
            v.last_seen_at,
            v.requests,
            v.ip,
            v.password_ok
        ])?;
    }
    Ok(())
}

pub fn delete_viewers(tx: &Tx, session_id: i64, viewer_ids: &[String]) -> Result<()> {
    let mut stmt = tx
        .conn
        .prepare_cached("DELETE FROM viewers WHERE session_id = ?1 AND viewer_id = ?2")?;
    for id in viewer_ids {
        stmt.execute(params![session_id, id])?;
    }
    Ok(())
}

/// Deletes up to `limit` expired scoped tokens; returns how many went.
pub fn delete_expired_tokens(tx: &Tx, now: Millis, limit: usize) -> Result<usize> {
    let n = tx
        .conn
        .prepare_cached(concat!(
            "DELETE FROM share_tokens WHERE id IN (SELECT id FROM share_tokens WHERE ",
            expired_token!(),
            " LIMIT ?2)"
        ))?
        .execute(params![now, limit as i64])?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::migrate;
    use std::collections::HashSet;

    /// A migrated in-memory store with one account (row id 1).
    fn store_with_account() -> rusqlite::Connection {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        migrate::migrate(&mut conn).unwrap();
        conn.execute(
            "INSERT INTO accounts (uid, name, kind, created_at) VALUES ('a', 'a', 'system', 0)",
            [],
        )
        .unwrap();
        conn
    }

    /// A share session of account 1 with the id `uid`.
    fn new_share(uid: &str) -> NewShare {
        NewShare {
            uid: uid.into(),
            account_id: 1,
            owner_token_hash: crate::auth::token_hash(uid),
            port: None,
            auth_mode: AuthMode::None,
            basic_password_hash: None,
            ip: None,
            created_at: 0,
            expires_at: 10_000,
        }
    }

    /// Slugs stay unique and allocation keeps working with 1,000,000 stored sessions: the UNIQUE
    /// index rejects a collision, and the insert draws again.
    #[test]
    fn slug_allocation_at_a_million_sessions() {
        let mut conn = store_with_account();
        let tx = conn.transaction().unwrap();
        {
            let mut session = tx
                .prepare("INSERT INTO sessions (uid, dialect, account_id, status, created_at, expires_at) VALUES (?1, 'share', 1, 'active', 0, 0)")
                .unwrap();
            let mut share = tx
                .prepare("INSERT OR IGNORE INTO shares (session_id, slug, owner_token_hash, auth_mode) VALUES (?1, ?2, ?3, 'none')")
                .unwrap();
            for i in 0..1_000_000i64 {
                session.execute([format!("s{i}")]).unwrap();
                share
                    .execute(params![i + 1, new_slug(), i.to_le_bytes().to_vec()])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
        let stored: i64 = conn
            .query_row("SELECT count(*) FROM shares", [], |r| r.get(0))
            .unwrap();
        assert!(stored > 990_000, "the slug space is too dense: {stored}");

        let started = std::time::Instant::now();
        let mut slugs = HashSet::new();
        for i in 0..2_000 {
            let (slug, _) = insert_share(&Tx::new(&conn), &new_share(&format!("new{i}"))).unwrap();
            assert!(slugs.insert(slug));
        }
        let distinct: i64 = conn
            .query_row("SELECT count(DISTINCT slug) FROM shares", [], |r| r.get(0))
            .unwrap();
        assert_eq!(distinct, stored + 2_000);
        eprintln!(
            "2,000 slugs allocated among {stored} stored in {:?}",
            started.elapsed()
        );
    }

    /// A flush of viewer activity taken before a kick and written after it (the flush thread
    /// and the kick are separate writer jobs) must not bring the kicked viewer's row back: after
    /// the session's entry leaves memory, that row would show the viewer as active again.
    #[test]
    fn a_flush_written_after_a_kick_skips_the_kicked_viewer() {
        let conn = store_with_account();
        let tx = Tx::new(&conn);
        let (_, id) = insert_share(&tx, &new_share("s1")).unwrap();
        let row = |viewer: &str, seen: Millis| ViewerRow {
            viewer_id: viewer.into(),
            last_seen_at: seen,
            requests: 1,
            ip: None,
            password_ok: false,
        };
        upsert_viewers(&tx, &[(id, row("v1", 1)), (id, row("v2", 1))]).unwrap();
        assert!(kick(&tx, id, "v1", 2).unwrap());
        // The flush that took v1's activity before the kick commits after it.
        upsert_viewers(&tx, &[(id, row("v1", 3)), (id, row("v2", 3))]).unwrap();

        let stored: Vec<String> = crate::db::column(
            &conn,
            "SELECT viewer_id FROM viewers WHERE session_id = ?1 ORDER BY viewer_id",
            [id],
        );
        assert_eq!(stored, ["v2"]);
    }
}
