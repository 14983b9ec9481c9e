//! The runtime dialect's view of sessions (runtime sessions and, unified, workspace sessions),
//! daemon snapshots, runtime workspaces, API keys, accounts and audit events.

use rusqlite::{OptionalExtension, Row, params};

use super::{Reader, Tx};
use crate::auth;
use crate::domain::time::Millis;
use crate::error::{Error, Result};

/// A session as the runtime dialect sees it, with the latest daemon snapshot.
#[derive(Clone, Debug)]
pub struct RuntimeSession {
    pub row_id: i64,
    pub id: String,
    pub created_at: Millis,
    pub dialect: String,
    pub status: String,
    pub ended: bool,
    pub session_type: Option<String>,
    pub workspace_id: Option<String>,
    pub persistent: bool,
    pub active_leases: Option<i64>,
    pub endpoints: Option<String>,
    pub snapshot_status: Option<String>,
    pub snapshot_leases: Option<i64>,
    pub snapshot_endpoints: Option<String>,
    pub snapshot_at: Option<Millis>,
}

/// SQL text, a macro so that queries are built with `concat!` at compile time.
macro_rules! session_select {
    () => {
        "SELECT s.id, s.uid, s.account_id, s.created_at, s.dialect, s.status, s.ended_at IS NOT NULL,
       s.session_type, w.uid, coalesce(r.persistent, 0), r.active_leases, r.endpoints, r.snapshot_status,
       r.snapshot_leases, r.snapshot_endpoints, r.snapshot_at,
       CASE WHEN s.ended_at IS NULL AND r.snapshot_at >= ?1 THEN r.snapshot_status
            WHEN s.status = 'disconnected' THEN 'terminated'
            ELSE s.status END AS effective_status
  FROM sessions s
  LEFT JOIN workspaces w ON w.id = s.workspace_id
  LEFT JOIN runtime_sessions r ON r.session_id = s.id"
    };
}

fn session_from_row(r: &Row) -> rusqlite::Result<RuntimeSession> {
    Ok(RuntimeSession {
        row_id: r.get(0)?,
        id: r.get(1)?,
        created_at: r.get(3)?,
        dialect: r.get(4)?,
        status: r.get(5)?,
        ended: r.get(6)?,
        session_type: r.get(7)?,
        workspace_id: r.get(8)?,
        persistent: r.get(9)?,
        active_leases: r.get(10)?,
        endpoints: r.get(11)?,
        snapshot_status: r.get(12)?,
        snapshot_leases: r.get(13)?,
        snapshot_endpoints: r.get(14)?,
        snapshot_at: r.get(15)?,
    })
}

#[derive(Default)]
pub struct RuntimeFilter {
    pub account_id: i64,
    /// Snapshots at or after this instant are fresh.
    pub fresh_since: Millis,
    pub status: Option<String>,
    pub session_type: Option<String>,
    pub workspace_uid: Option<String>,
    pub before: Option<i64>,
    pub limit: usize,
}

/// A runtime workspace as `/v1/workspaces` shows it.
pub struct RuntimeWorkspace {
    pub row_id: i64,
    pub id: String,
    pub name: String,
    pub image: Option<String>,
    pub template: bool,
    pub session_type: String,
    pub created_at: Millis,
    pub last_session_id: Option<String>,
    pub active_session_id: Option<String>,
}

/// SQL text, a macro so that queries are built with `concat!` at compile time.
macro_rules! workspace_select {
    () => {
        "SELECT w.id, w.uid, w.name, w.image, w.template, w.type, w.created_at,
       (SELECT s.uid FROM sessions s WHERE s.workspace_id = w.id ORDER BY s.id DESC LIMIT 1),
       (SELECT s.uid FROM sessions s WHERE s.workspace_id = w.id AND s.ended_at IS NULL ORDER BY s.id DESC LIMIT 1)
  FROM workspaces w"
    };
}

fn workspace_from_row(r: &Row) -> rusqlite::Result<RuntimeWorkspace> {
    Ok(RuntimeWorkspace {
        row_id: r.get(0)?,
        id: r.get(1)?,
        name: r.get(2)?,
        image: r.get(3)?,
        template: r.get(4)?,
        session_type: r.get(5)?,
        created_at: r.get(6)?,
        last_session_id: r.get(7)?,
        active_session_id: r.get(8)?,
    })
}

pub struct KeyRow {
    pub id: String,
    pub prefix: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: Millis,
    pub last_used_at: Option<Millis>,
    pub revoked: bool,
}

pub struct AccountRow {
    pub id: String,
    pub kind: String,
    pub name: String,
    pub role: String,
    pub created_at: Millis,
}

/// The filter of [`Reader::runtime_sessions`], shared by its page and its count.
macro_rules! runtime_condition {
    () => {
        "s.account_id = ?2 AND s.dialect IN ('runtime', 'workspace')
            AND (?3 IS NULL OR effective_status = ?3) AND (?4 IS NULL OR s.session_type = ?4)
            AND (?5 IS NULL OR w.uid = ?5)"
    };
}

impl Reader {
    pub fn runtime_session(
        &self,
        account_id: i64,
        uid: &str,
        fresh_since: Millis,
    ) -> Result<Option<RuntimeSession>> {
        let sql = concat!(
            session_select!(),
            " WHERE s.uid = ?2 AND s.account_id = ?3 AND s.dialect IN ('runtime', 'workspace')"
        );
        Ok(self
            .conn
            .prepare_cached(sql)?
            .query_row(params![fresh_since, uid, account_id], session_from_row)
            .optional()?)
    }

    /// A page of sessions, newest first, and the total matching the filter.
    pub fn runtime_sessions(&self, f: &RuntimeFilter) -> Result<(Vec<RuntimeSession>, i64)> {
        let sql = concat!(
            session_select!(),
            " WHERE ",
            runtime_condition!(),
            " AND (?6 IS NULL OR s.id < ?6) ORDER BY s.id DESC LIMIT ?7"
        );
        let rows = self
            .conn
            .prepare_cached(sql)?
            .query_map(
                params![
                    f.fresh_since,
                    f.account_id,
                    f.status,
                    f.session_type,
                    f.workspace_uid,
                    f.before,
                    f.limit as i64
                ],
                session_from_row,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let count_sql = concat!(
            "SELECT count(*) FROM (",
            session_select!(),
            " WHERE ",
            runtime_condition!(),
            ")"
        );
        let total = self.conn.prepare_cached(count_sql)?.query_row(
            params![
                f.fresh_since,
                f.account_id,
                f.status,
                f.session_type,
                f.workspace_uid
            ],
            |r| r.get(0),
        )?;
        Ok((rows, total))
    }

    /// Live sessions of an account matching a bulk selection.
    pub fn live_runtime_sessions(
        &self,
        account_id: i64,
        workspace_uids: &[String],
        session_type: Option<&str>,
        fresh_since: Millis,
    ) -> Result<Vec<RuntimeSession>> {
        let sql = concat!(session_select!(), " WHERE s.account_id = ?2 AND s.dialect IN ('runtime', 'workspace') AND s.ended_at IS NULL
               AND (?3 IS NULL OR s.session_type = ?3) ORDER BY s.id");
        let rows: Vec<RuntimeSession> = self
            .conn
            .prepare_cached(sql)?
            .query_map(
                params![fresh_since, account_id, session_type],
                session_from_row,
            )?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows
            .into_iter()
            .filter(|s| {
                workspace_uids.is_empty()
                    || s.workspace_id
                        .as_ref()
                        .is_some_and(|w| workspace_uids.contains(w))
            })
            .collect())
    }

    /// A workspace by id or, failing that, by name.
    pub fn runtime_workspace(
        &self,
        account_id: i64,
        id_or_name: &str,
    ) -> Result<Option<RuntimeWorkspace>> {
        let sql = concat!(
            workspace_select!(),
            " WHERE w.account_id = ?1 AND w.deleted_at IS NULL AND (w.uid = ?2 OR w.name = ?2)
             ORDER BY w.uid = ?2 DESC, w.id LIMIT 1"
        );
        Ok(self
            .conn
            .prepare_cached(sql)?
            .query_row(params![account_id, id_or_name], workspace_from_row)
            .optional()?)
    }

    pub fn runtime_workspaces(&self, account_id: i64) -> Result<Vec<RuntimeWorkspace>> {
        let sql = concat!(
            workspace_select!(),
            " WHERE w.account_id = ?1 AND w.deleted_at IS NULL ORDER BY w.id"
        );
        let rows = self
            .conn
            .prepare_cached(sql)?
            .query_map([account_id], workspace_from_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    pub fn account_default_ttl(&self, account_id: i64) -> Result<Option<i64>> {
        Ok(self
            .conn
            .prepare_cached("SELECT default_ttl_seconds FROM accounts WHERE id = ?1")?
            .query_row([account_id], |r| r.get(0))?)
    }

    /// API keys of an account (`user_id` given: only that user's).
    pub fn api_keys(&self, account_id: i64) -> Result<Vec<KeyRow>> {
        let rows = self
            .conn
            .prepare_cached(
                "SELECT uid, prefix, name, scopes, created_at, last_used_at, revoked_at IS NOT NULL FROM credentials
                 WHERE account_id = ?1 AND kind = 'api_key' ORDER BY id",
            )?
            .query_map([account_id], |r| {
                let scopes: String = r.get(3)?;
                Ok(KeyRow {
                    id: r.get(0)?,
                    prefix: r.get(1)?,
                    name: r.get(2)?,
                    scopes: serde_json::from_str(&scopes).unwrap_or_default(),
                    created_at: r.get(4)?,
                    last_used_at: r.get(5)?,
                    revoked: r.get(6)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// The accounts a user belongs to, with their role.
    pub fn accounts_of_user(&self, user_id: i64) -> Result<Vec<AccountRow>> {
        let rows = self
            .conn
            .prepare_cached(
                "SELECT a.uid, a.kind, a.name, m.role, a.created_at FROM memberships m JOIN accounts a ON a.id = m.account_id
                 WHERE m.user_id = ?1 ORDER BY m.created_at, a.id",
            )?
            .query_map([user_id], |r| Ok(AccountRow { id: r.get(0)?, kind: r.get(1)?, name: r.get(2)?, role: r.get(3)?, created_at: r.get(4)? }))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    pub fn account(&self, account_id: i64) -> Result<AccountRow> {
        Ok(self
            .conn
            .prepare_cached("SELECT uid, kind, name, created_at FROM accounts WHERE id = ?1")?
            .query_row([account_id], |r| {
                Ok(AccountRow {
                    id: r.get(0)?,
                    kind: r.get(1)?,
                    name: r.get(2)?,
                    role: "admin".into(),
                    created_at: r.get(3)?,
                })
            })?)
    }

    pub fn audit_row_id(&self, account_id: i64, uid: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .prepare_cached("SELECT id FROM audit WHERE uid = ?1 AND account_id = ?2")?
            .query_row(params![uid, account_id], |r| r.get(0))
            .optional()?)
    }

    /// Live runtime sessions whose daemon stopped reporting before `cutoff`: (row, uid, account).
    pub fn lost_runtime_sessions(
        &self,
        cutoff: Millis,
        limit: usize,
    ) -> Result<Vec<(i64, String, i64)>> {
        let rows = self
            .conn
            .prepare_cached(
                "SELECT s.id, s.uid, s.account_id FROM runtime_sessions r JOIN sessions s ON s.id = r.session_id
                 WHERE r.snapshot_at IS NOT NULL AND r.snapshot_at < ?1 AND s.ended_at IS NULL LIMIT ?2",
            )?
            .query_map(params![cutoff, limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }
}

pub struct NewRuntimeSession {
    pub account_id: i64,
    pub user_row: Option<i64>,
    pub workspace_row: Option<i64>,
    pub credential_id: i64,
    pub session_type: String,
    pub persistent: bool,
    pub image: Option<String>,
    pub proxy: Option<String>,
    pub env_names: Vec<String>,
    pub ttl_seconds: i64,
    pub ip: Option<String>,
}

/// Stores a runtime session; a persistent one is refused (409) when its workspace already has one live.
pub fn insert_runtime_session(tx: &Tx, s: &NewRuntimeSession, now: Millis) -> Result<String> {
    if let (true, Some(ws)) = (s.persistent, s.workspace_row) {
        let live: i64 = tx
            .conn
            .prepare_cached(
                "SELECT count(*) FROM sessions x JOIN runtime_sessions r ON r.session_id = x.id
                 WHERE x.workspace_id = ?1 AND x.ended_at IS NULL AND r.persistent = 1",
            )?
            .query_row([ws], |r| r.get(0))?;
        if live > 0 {
            return Err(Error::Conflict(
                "The workspace already has an active persistent session".into(),
            ));
        }
    }
    let uid = auth::uuid_v4();
    tx.conn
        .prepare_cached(
            "INSERT INTO sessions (uid, dialect, account_id, user_id, workspace_id, credential_id, session_type, status,
                                   ip_address, created_at, expires_at, last_activity_at)
             VALUES (?1, 'runtime', ?2, ?3, ?4, ?5, ?6, 'active', ?7, ?8, ?9, ?8)",
        )?
        .execute(params![
            uid, s.account_id, s.user_row, s.workspace_row, s.credential_id, s.session_type, s.ip, now,
            now + s.ttl_seconds * 1000
        ])?;
    let row = tx.conn.last_insert_rowid();
    tx.conn
        .prepare_cached(
            "INSERT INTO runtime_sessions (session_id, persistent, image, proxy, env_names, ttl_seconds)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![row, s.persistent, s.image, s.proxy, serde_json::to_string(&s.env_names)?, s.ttl_seconds])?;
    Ok(uid)
}

/// A workspace created through the runtime dialect.
pub struct NewRuntimeWorkspace<'a> {
    pub account_id: i64,
    pub uid: &'a str,
    pub name: &'a str,
    pub session_type: &'a str,
    pub image: Option<&'a str>,
    pub template: bool,
}

pub fn insert_runtime_workspace(tx: &Tx, w: &NewRuntimeWorkspace, now: Millis) -> Result<i64> {
    let inserted = tx
        .conn
        .prepare_cached(
            "INSERT INTO workspaces (uid, account_id, name, type, image, template, launch_mode, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'native', ?7)",
        )?
        .execute(params![w.uid, w.account_id, w.name, w.session_type, w.image, w.template, now]);
    match inserted {
        Ok(_) => Ok(tx.conn.last_insert_rowid()),
        Err(e) if super::is_unique_violation(&e, "uid") => {
            Err(Error::Conflict("Workspace already exists".into()))
        }
        Err(e) => Err(e.into()),
    }
}

pub fn rename_workspace(tx: &Tx, row_id: i64, name: &str) -> Result<()> {
    tx.conn
        .prepare_cached("UPDATE workspaces SET name = ?2 WHERE id = ?1")?
        .execute(params![row_id, name])?;
    Ok(())
}

/// One session as a daemon reported it.
pub struct Report {
    pub id: String,
    pub status: String,
    pub leases: i64,
    /// JSON object of endpoint URLs, when reported.
    pub endpoints: Option<String>,
}

/// Applies one daemon report to a runtime session of `account_id`. Returns `None` when the session
/// is unknown (to this account), else whether the report ended it.
pub fn apply_snapshot(
    tx: &Tx,
    account_id: i64,
    node_id: &str,
    report: &Report,
    now: Millis,
) -> Result<Option<bool>> {
    let found: Option<(i64, bool)> = tx
        .conn
        .prepare_cached(
            "SELECT s.id, s.ended_at IS NOT NULL FROM sessions s JOIN runtime_sessions r ON r.session_id = s.id
             WHERE s.uid = ?1 AND s.account_id = ?2",
        )?
        .query_row(params![report.id, account_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((row, ended)) = found else {
        return Ok(None);
    };
    if ended {
        // Terminal statuses never go back to live.
        return Ok(Some(false));
    }
    tx.conn
        .prepare_cached(
            "UPDATE runtime_sessions SET node_id = ?2, snapshot_status = ?3, snapshot_leases = ?4,
                    snapshot_endpoints = coalesce(?5, snapshot_endpoints), snapshot_at = ?6,
                    active_leases = ?4, endpoints = coalesce(?5, endpoints)
             WHERE session_id = ?1",
        )?
        .execute(params![
            row,
            node_id,
            report.status,
            report.leases,
            report.endpoints,
            now
        ])?;
    let ended_now = match report.status.as_str() {
        "terminated" => super::workspaces::end_session(tx, row, "terminated", "stopped", now)?,
        "failed" => super::workspaces::end_session(tx, row, "failed", "failed", now)?,
        _ => false,
    };
    Ok(Some(ended_now))
}

/// Ends a runtime session as lost by its daemon.
pub fn mark_lost(tx: &Tx, row: i64, now: Millis) -> Result<bool> {
    super::workspaces::end_session(tx, row, "failed", "lost", now)
}

pub fn revoke_key(tx: &Tx, account_id: i64, uid: &str, now: Millis) -> Result<bool> {
    let n = tx
        .conn
        .prepare_cached(
            "UPDATE credentials SET revoked_at = coalesce(revoked_at, ?3) WHERE uid = ?1 AND account_id = ?2 AND kind = 'api_key'",
        )?
        .execute(params![uid, account_id, now])?;
    Ok(n > 0)
}
