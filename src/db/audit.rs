//! Writing audit rows. Every change calls [`record`] inside the same writer job, so a change and its
//! audit row commit or roll back together.

use rusqlite::params;

use super::Reader;

use super::Tx;
use crate::auth;
use crate::domain::AuditEntry;
use crate::domain::time::Millis;
use crate::error::Result;

pub fn record(tx: &Tx, entry: &AuditEntry, now: Millis) -> Result<()> {
    tx.conn
        .prepare_cached(
            "INSERT INTO audit (uid, account_id, actor_type, actor_id, actor_email, action, resource_type,
                                resource_id, status, summary, metadata, ip, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )?
        .execute(params![
            auth::uuid_v4(),
            entry.account_id,
            entry.actor.kind.as_str(),
            entry.actor.id,
            entry.actor.email,
            entry.action,
            entry.resource_type,
            entry.resource_id,
            if entry.success { "success" } else { "failure" },
            entry.summary,
            entry.metadata.to_string(),
            entry.actor.ip,
            now,
        ])?;
    Ok(())
}

/// Deletes up to `limit` audit rows older than `cutoff`; returns how many went.
pub fn prune(tx: &Tx, cutoff: Millis, limit: usize) -> Result<usize> {
    let n = tx
        .conn
        .prepare_cached(
            "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE created_at < ?1 ORDER BY created_at LIMIT ?2)",
        )?
        .execute(params![cutoff, limit as i64])?;
    Ok(n)
}

/// One audit row as stored.
pub struct AuditRow {
    pub row_id: i64,
    pub id: String,
    pub actor_type: String,
    pub actor_id: Option<String>,
    pub actor_email: Option<String>,
    pub action: String,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub success: bool,
    pub summary: String,
    pub metadata: String,
    pub ip: Option<String>,
    pub created_at: Millis,
}

/// Which audit rows of an account to list, newest first. `None` filters nothing.
#[derive(Default)]
pub struct AuditQuery {
    pub account_id: i64,
    /// Only rows whose actor is this user (uid).
    pub actor_user: Option<String>,
    pub action: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub success: Option<bool>,
    pub since: Option<Millis>,
    pub until: Option<Millis>,
    /// Only rows older than this row (a cursor) or this instant.
    pub before_row: Option<i64>,
    pub before_time: Option<Millis>,
    pub limit: usize,
}

impl Reader {
    pub fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditRow>> {
        let rows = self
            .conn
            .prepare_cached(
                "SELECT id, uid, actor_type, actor_id, actor_email, action, resource_type, resource_id,
                        status = 'success', summary, metadata, ip, created_at
                 FROM audit
                 WHERE account_id = ?1 AND (?2 IS NULL OR (actor_type = 'user' AND actor_id = ?2))
                   AND (?3 IS NULL OR action = ?3) AND (?4 IS NULL OR resource_type = ?4)
                   AND (?5 IS NULL OR resource_id = ?5) AND (?6 IS NULL OR (status = 'success') = ?6)
                   AND (?7 IS NULL OR created_at >= ?7) AND (?8 IS NULL OR created_at <= ?8)
                   AND (?9 IS NULL OR id < ?9) AND (?10 IS NULL OR created_at < ?10)
                 ORDER BY id DESC LIMIT ?11",
            )?
            .query_map(
                params![
                    q.account_id, q.actor_user, q.action, q.resource_type, q.resource_id, q.success, q.since, q.until,
                    q.before_row, q.before_time, q.limit as i64
                ],
                |r| {
                    Ok(AuditRow {
                        row_id: r.get(0)?,
                        id: r.get(1)?,
                        actor_type: r.get(2)?,
                        actor_id: r.get(3)?,
                        actor_email: r.get(4)?,
                        action: r.get(5)?,
                        resource_type: r.get(6)?,
                        resource_id: r.get(7)?,
                        success: r.get(8)?,
                        summary: r.get(9)?,
                        metadata: r.get(10)?,
                        ip: r.get(11)?,
                        created_at: r.get(12)?,
                    })
                },
            )?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }
}
