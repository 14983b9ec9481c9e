//! Writing audit rows. Every change calls [`record`] inside the same writer job, so a change and its
//! audit row commit or roll back together.

use rusqlite::params;

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
