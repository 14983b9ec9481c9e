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
    tx.execute(
        "INSERT INTO audit (uid, account_id, actor_type, actor_id, actor_email, action, resource_type,
                            resource_id, status, summary, metadata, ip, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        params![
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
            entry.metadata,
            entry.actor.ip,
            now,
        ],
    )?;
    Ok(())
}

/// The condition of an audit row the reaper prunes (`?1` is the cutoff).
macro_rules! audit_prunable {
    () => {
        "created_at < ?1"
    };
}

/// Deletes up to `limit` audit rows older than `cutoff`; returns how many went.
pub fn prune(tx: &Tx, cutoff: Millis, limit: usize) -> Result<usize> {
    let n = tx
        .conn
        .prepare_cached(concat!(
            "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE ",
            audit_prunable!(),
            " ORDER BY created_at LIMIT ?2)"
        ))?
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

/// The listing, newest first. It walks `audit_account_time` backwards from the newest row the
/// bounds allow (the time bounds and the cursor's time are range bounds on that index, written so
/// that an absent one means "no bound" without changing the plan) and stops after `LIMIT` matches:
/// no query sorts an account's whole history. Rows of the same millisecond go by id, and a cursor
/// row (`before_row`) is the last one of the previous page.
const AUDIT_LISTING: &str =
    "SELECT id, uid, actor_type, actor_id, actor_email, action, resource_type, resource_id,
        status = 'success', summary, metadata, ip, created_at
 FROM audit
 WHERE account_id = ?1 AND (?2 IS NULL OR (actor_type = 'user' AND actor_id = ?2))
   AND (?3 IS NULL OR action = ?3) AND (?4 IS NULL OR resource_type = ?4)
   AND (?5 IS NULL OR resource_id = ?5) AND (?6 IS NULL OR (status = 'success') = ?6)
   AND created_at >= coalesce(?7, -9223372036854775808)
   AND created_at <= coalesce(?8, 9223372036854775807)
   AND created_at < coalesce(?10, 9223372036854775807)
   AND created_at <= coalesce((SELECT created_at FROM audit WHERE id = ?9), 9223372036854775807)
   AND (?9 IS NULL OR id < ?9 OR created_at < (SELECT created_at FROM audit WHERE id = ?9))
 ORDER BY created_at DESC, id DESC LIMIT ?11";

impl Reader {
    /// Whether any audit row is older than `cutoff` (so the reaper sends the writer no empty job).
    pub fn any_audit_before(&self, cutoff: Millis) -> Result<bool> {
        let sql = concat!(
            "SELECT EXISTS (SELECT 1 FROM audit WHERE ",
            audit_prunable!(),
            ")"
        );
        Ok(self
            .conn
            .prepare_cached(sql)?
            .query_row([cutoff], |r| r.get(0))?)
    }

    pub fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditRow>> {
        let rows = self
            .conn
            .prepare_cached(AUDIT_LISTING)?
            .query_map(
                params![
                    q.account_id,
                    q.actor_user,
                    q.action,
                    q.resource_type,
                    q.resource_id,
                    q.success,
                    q.since,
                    q.until,
                    q.before_row,
                    q.before_time,
                    q.limit as i64
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

#[cfg(test)]
mod tests {
    use super::*;

    fn listing_plan(conn: &rusqlite::Connection) -> String {
        crate::db::query_plan(
            conn,
            AUDIT_LISTING,
            rusqlite::params_from_iter(std::iter::repeat_n(None::<i64>, 11)),
        )
    }

    /// The listing's plan uses the account's time index for its order: with a temporary b-tree,
    /// every page of `GET /v1/audit/events` read and sorted the account's whole history.
    #[test]
    fn the_listing_walks_an_index_and_sorts_nothing() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        crate::db::migrate::migrate(&mut conn).unwrap();
        let plan = listing_plan(&conn);
        assert!(
            plan.contains(
                "USING INDEX audit_account_time (account_id=? AND created_at>? AND created_at<?)"
            ),
            "{plan}"
        );
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }

    /// Paging one row at a time visits every row once, newest first, also where many rows share
    /// a millisecond (a batch of changes in one group commit does).
    #[test]
    fn paging_by_cursor_visits_every_row_once_across_equal_times() {
        let dir = crate::db::TestDir::new("audit");
        let path = dir.join("audit.db");
        let mut conn = crate::db::open(&path, crate::db::Access::ReadWrite, false).unwrap();
        crate::db::migrate::migrate(&mut conn).unwrap();
        for i in 0..30i64 {
            conn.execute(
                "INSERT INTO audit (uid, account_id, actor_type, action, status, created_at)
                 VALUES (?1, 7, 'system', 'x', 'success', ?2)",
                params![format!("e{i}"), 1000 + i / 10],
            )
            .unwrap();
        }
        let reader = Reader::open(&path).unwrap();
        let all: Vec<i64> = reader
            .audit(&AuditQuery {
                account_id: 7,
                limit: 100,
                ..AuditQuery::default()
            })
            .unwrap()
            .iter()
            .map(|r| r.row_id)
            .collect();
        assert_eq!(all, (1..=30).rev().collect::<Vec<i64>>());
        let mut paged = Vec::new();
        while paged.len() <= all.len() {
            let page = reader
                .audit(&AuditQuery {
                    account_id: 7,
                    limit: 1,
                    before_row: paged.last().copied(),
                    ..AuditQuery::default()
                })
                .unwrap();
            let Some(row) = page.first() else { break };
            paged.push(row.row_id);
        }
        assert_eq!(paged, all);
    }
}
