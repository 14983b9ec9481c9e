//! Workspaces, sessions of the workspace dialect, and the audit queries of the NeoSC dialect.

use rusqlite::{OptionalExtension, Row, params};

use super::{Reader, Tx, is_unique_violation};
use crate::auth;
use crate::domain::time::Millis;
use crate::domain::workspace::{ACTIVE, Workspace, default_catalogue};
use crate::error::{Error, Result};

/// SQL text, a macro so that queries are built with `concat!` at compile time.
macro_rules! workspace_columns {
    () => {
        "w.id, w.uid, w.name, w.type, w.description, w.image_url, w.cpu, w.memory,
    w.storage, w.url, w.connection_type, w.requires_netbird, w.clientless, w.launch_mode, w.icon,
    w.max_session_duration, w.idle_timeout,
    EXISTS (SELECT 1 FROM sessions s WHERE s.workspace_id = w.id AND s.status = 'active')"
    };
}

fn workspace_from_row(r: &Row) -> rusqlite::Result<Workspace> {
    Ok(Workspace {
        row_id: r.get(0)?,
        id: r.get(1)?,
        name: r.get(2)?,
        kind: r.get(3)?,
        description: r.get(4)?,
        image_url: r.get(5)?,
        cpu: r.get(6)?,
        memory: r.get(7)?,
        storage: r.get(8)?,
        url: r.get(9)?,
        connection_type: r.get(10)?,
        requires_netbird: r.get(11)?,
        clientless: r.get(12)?,
        launch_mode: r.get(13)?,
        icon: r.get(14)?,
        max_session_duration: r.get(15)?,
        idle_timeout: r.get(16)?,
        active: r.get(17)?,
    })
}

/// A session of the workspace dialect as NeoSC shows it.
#[derive(Clone, Debug)]
pub struct WorkspaceSession {
    pub row_id: i64,
    pub id: String,
    pub user_row: Option<i64>,
    pub user_id: Option<String>,
    pub user_email: Option<String>,
    pub workspace_id: Option<String>,
    pub workspace_name: Option<String>,
    pub workspace_type: Option<String>,
    pub requires_netbird: bool,
    pub status: String,
    pub started_at: Millis,
    pub ended_at: Option<Millis>,
    pub ip_address: Option<String>,
    pub mfa_verified: bool,
}

/// SQL text, a macro so that queries are built with `concat!` at compile time.
macro_rules! session_columns {
    () => {
        "s.id, s.uid, s.user_id, u.uid, u.email, w.uid, w.name, w.type,
    coalesce(w.requires_netbird, 0), s.status, s.created_at, s.ended_at, s.ip_address, s.mfa_verified"
    };
}

/// SQL text, a macro so that queries are built with `concat!` at compile time.
macro_rules! session_from {
    () => {
        "FROM sessions s LEFT JOIN users u ON u.id = s.user_id LEFT JOIN workspaces w ON w.id = s.workspace_id"
    };
}

fn session_from_row(r: &Row) -> rusqlite::Result<WorkspaceSession> {
    Ok(WorkspaceSession {
        row_id: r.get(0)?,
        id: r.get(1)?,
        user_row: r.get(2)?,
        user_id: r.get(3)?,
        user_email: r.get(4)?,
        workspace_id: r.get(5)?,
        workspace_name: r.get(6)?,
        workspace_type: r.get(7)?,
        requires_netbird: r.get(8)?,
        status: r.get(9)?,
        started_at: r.get(10)?,
        ended_at: r.get(11)?,
        ip_address: r.get(12)?,
        mfa_verified: r.get(13)?,
    })
}

/// Which workspace sessions to list, newest first.
#[derive(Default)]
pub struct SessionFilter {
    pub account_id: i64,
    pub user_row: Option<i64>,
    pub status: Option<String>,
    pub user_uid: Option<String>,
    pub workspace_uid: Option<String>,
    /// Only sessions older than this row id (the cursor).
    pub before: Option<i64>,
    pub limit: usize,
}

impl Reader {
    pub fn workspaces(&self, account_id: i64) -> Result<Vec<Workspace>> {
        let sql = concat!(
            "SELECT ",
            workspace_columns!(),
            " FROM workspaces w WHERE w.account_id = ?1 AND w.deleted_at IS NULL ORDER BY w.id"
        );
        let rows = self
            .conn
            .prepare_cached(sql)?
            .query_map([account_id], workspace_from_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    pub fn workspace(&self, account_id: i64, uid: &str) -> Result<Option<Workspace>> {
        let sql = concat!(
            "SELECT ",
            workspace_columns!(),
            " FROM workspaces w WHERE w.account_id = ?1 AND w.uid = ?2 AND w.deleted_at IS NULL"
        );
        Ok(self
            .conn
            .prepare_cached(sql)?
            .query_row(params![account_id, uid], workspace_from_row)
            .optional()?)
    }

    pub fn workspace_session(
        &self,
        account_id: i64,
        uid: &str,
    ) -> Result<Option<WorkspaceSession>> {
        let sql = concat!(
            "SELECT ",
            session_columns!(),
            " ",
            session_from!(),
            " WHERE s.uid = ?1 AND s.account_id = ?2 AND s.dialect = 'workspace'"
        );
        Ok(self
            .conn
            .prepare_cached(sql)?
            .query_row(params![uid, account_id], session_from_row)
            .optional()?)
    }

    pub fn workspace_sessions(&self, f: &SessionFilter) -> Result<Vec<WorkspaceSession>> {
        let sql = concat!("SELECT ", session_columns!(), " ", session_from!(), "
             WHERE s.account_id = ?1 AND s.dialect = 'workspace'
               AND (?2 IS NULL OR s.user_id = ?2) AND (?3 IS NULL OR s.status = ?3)
               AND (?4 IS NULL OR u.uid = ?4) AND (?5 IS NULL OR w.uid = ?5) AND (?6 IS NULL OR s.id < ?6)
             ORDER BY s.id DESC LIMIT ?7");
        let rows = self
            .conn
            .prepare_cached(sql)?
            .query_map(
                params![
                    f.account_id,
                    f.user_row,
                    f.status,
                    f.user_uid,
                    f.workspace_uid,
                    f.before,
                    f.limit as i64
                ],
                session_from_row,
            )?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Stored sessions by dialect and status (for `/metrics`).
    pub fn session_counts(&self) -> Result<Vec<(String, String, i64)>> {
        let rows = self
            .conn
            .prepare_cached("SELECT dialect, status, count(*) FROM sessions GROUP BY dialect, status ORDER BY 1, 2")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    pub fn count_active_sessions(&self, account_id: i64) -> Result<i64> {
        Ok(self
            .conn
            .prepare_cached("SELECT count(*) FROM sessions WHERE account_id = ?1 AND dialect = 'workspace' AND status = 'active'")?
            .query_row([account_id], |r| r.get(0))?)
    }

    /// Live workspace sessions past their workspace's idle timeout: (row, uid, account, user).
    pub fn idle_workspace_sessions(
        &self,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<(i64, String, i64)>> {
        let rows = self
            .conn
            .prepare_cached(
                "SELECT s.id, s.uid, s.account_id FROM sessions s JOIN workspaces w ON w.id = s.workspace_id
                 WHERE s.ended_at IS NULL AND s.dialect = 'workspace' AND w.idle_timeout IS NOT NULL
                   AND s.last_activity_at + w.idle_timeout * 1000 <= ?1
                 LIMIT ?2",
            )?
            .query_map(params![now, limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Live non-share sessions past their stored expiry: (row, uid, account, dialect).
    pub fn sessions_due(
        &self,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<(i64, String, i64, String)>> {
        let rows = self
            .conn
            .prepare_cached(
                "SELECT id, uid, account_id, dialect FROM sessions
                 WHERE ended_at IS NULL AND expires_at IS NOT NULL AND expires_at <= ?1 AND dialect <> 'share'
                 ORDER BY expires_at LIMIT ?2",
            )?
            .query_map(params![now, limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }
}

/// Inserts the default catalogue into a new account.
pub fn seed_catalogue(tx: &Tx, account_id: i64, now: Millis) -> Result<()> {
    for w in default_catalogue() {
        insert_workspace(tx, account_id, &w, now)?;
    }
    Ok(())
}

/// Stores a new workspace; an id already in use is a 409.
pub fn insert_workspace(tx: &Tx, account_id: i64, w: &Workspace, now: Millis) -> Result<i64> {
    let inserted = tx
        .conn
        .prepare_cached(
            "INSERT INTO workspaces (uid, account_id, name, type, description, image_url, cpu, memory, storage, url,
                                     connection_type, requires_netbird, clientless, launch_mode, icon,
                                     max_session_duration, idle_timeout, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
        )?
        .execute(params![
            w.id, account_id, w.name, w.kind, w.description, w.image_url, w.cpu, w.memory, w.storage, w.url,
            w.connection_type, w.requires_netbird, w.clientless, w.launch_mode, w.icon, w.max_session_duration,
            w.idle_timeout, now
        ]);
    match inserted {
        Ok(_) => Ok(tx.conn.last_insert_rowid()),
        Err(e) if is_unique_violation(&e, "uid") => {
            Err(Error::Conflict("Workspace already exists".into()))
        }
        Err(e) => Err(e.into()),
    }
}

pub fn update_workspace(tx: &Tx, w: &Workspace) -> Result<()> {
    tx.conn
        .prepare_cached(
            "UPDATE workspaces SET name = ?2, type = ?3, description = ?4, image_url = ?5, cpu = ?6, memory = ?7,
                    storage = ?8, url = ?9, connection_type = ?10, requires_netbird = ?11, clientless = ?12,
                    launch_mode = ?13, icon = ?14, max_session_duration = ?15, idle_timeout = ?16
             WHERE id = ?1",
        )?
        .execute(params![
            w.row_id, w.name, w.kind, w.description, w.image_url, w.cpu, w.memory, w.storage, w.url,
            w.connection_type, w.requires_netbird, w.clientless, w.launch_mode, w.icon, w.max_session_duration,
            w.idle_timeout
        ])?;
    Ok(())
}

/// Soft-deletes a workspace unless it has active sessions (409).
pub fn delete_workspace(tx: &Tx, row_id: i64, now: Millis) -> Result<()> {
    let active: bool = tx
        .conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM sessions WHERE workspace_id = ?1 AND ended_at IS NULL)",
        )?
        .query_row([row_id], |r| r.get(0))?;
    if active {
        return Err(Error::Conflict("Workspace has active sessions".into()));
    }
    tx.conn
        .prepare_cached("UPDATE workspaces SET deleted_at = ?2 WHERE id = ?1")?
        .execute(params![row_id, now])?;
    Ok(())
}

pub struct NewSession {
    pub account_id: i64,
    pub user_row: i64,
    pub workspace_row: i64,
    pub session_type: String,
    pub credential_id: i64,
    pub mfa_verified: bool,
    pub ip: Option<String>,
    pub expires_at: Option<Millis>,
}

pub fn insert_workspace_session(tx: &Tx, s: &NewSession, now: Millis) -> Result<String> {
    let uid = auth::uuid_v4();
    tx.conn
        .prepare_cached(
            "INSERT INTO sessions (uid, dialect, account_id, user_id, workspace_id, credential_id, session_type, status,
                                   mfa_verified, ip_address, created_at, expires_at, last_activity_at)
             VALUES (?1, 'workspace', ?2, ?3, ?4, ?5, ?6, 'active', ?7, ?8, ?9, ?10, ?9)",
        )?
        .execute(params![
            uid, s.account_id, s.user_row, s.workspace_row, s.credential_id, s.session_type, s.mfa_verified, s.ip, now,
            s.expires_at
        ])?;
    Ok(uid)
}

/// Ends a live session with `status` and `reason`; false when it was not live.
pub fn end_session(tx: &Tx, row_id: i64, status: &str, reason: &str, now: Millis) -> Result<bool> {
    let n = tx
        .conn
        .prepare_cached(
            "UPDATE sessions SET status = ?2, end_reason = ?3, ended_at = ?4 WHERE id = ?1 AND ended_at IS NULL",
        )?
        .execute(params![row_id, status, reason, now])?;
    Ok(n > 0)
}

/// The live sessions of a user (optionally on one workspace): (row, uid).
pub fn live_sessions_of_user(
    tx: &Tx,
    user_row: i64,
    workspace_row: Option<i64>,
) -> Result<Vec<(i64, String)>> {
    let rows = tx
        .conn
        .prepare_cached(
            "SELECT id, uid FROM sessions WHERE user_id = ?1 AND status = ?3 AND ended_at IS NULL
               AND dialect = 'workspace' AND (?2 IS NULL OR workspace_id = ?2)",
        )?
        .query_map(params![user_row, workspace_row, ACTIVE], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// Records activity on a live session; false when it is not active.
pub fn heartbeat(tx: &Tx, row_id: i64, now: Millis) -> Result<bool> {
    let n = tx
        .conn
        .prepare_cached("UPDATE sessions SET last_activity_at = ?2 WHERE id = ?1 AND status = 'active' AND ended_at IS NULL")?
        .execute(params![row_id, now])?;
    Ok(n > 0)
}

/// The status of a session read inside the writer (for checks that must not race).
pub fn session_status(tx: &Tx, row_id: i64) -> Result<Option<String>> {
    Ok(tx
        .conn
        .prepare_cached("SELECT status FROM sessions WHERE id = ?1")?
        .query_row([row_id], |r| r.get(0))
        .optional()?)
}
