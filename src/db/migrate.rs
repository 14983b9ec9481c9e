//! Schema versions: ordered migrations keyed by `PRAGMA user_version`, each in its own transaction.
//!
//! Migration 1 is `schema.sql` itself. A later change appends a migration here *and* edits `schema.sql`
//! so that a fresh database and a migrated one end up identical (a test compares them). A database
//! whose version is newer than [`LATEST`] is refused: an older binary must not write into a schema it
//! does not know.

use rusqlite::Connection;

use crate::error::{Error, Result};

/// The canonical schema, applied to a fresh database.
pub const SCHEMA: &str = include_str!("../../schema.sql");

/// Migration `i + 1` is `MIGRATIONS[i]`. A fresh database runs them all, so a later one must also
/// hold on top of the current `schema.sql` (hence `IF EXISTS`).
const MIGRATIONS: &[&str] = &[
    SCHEMA,
    // 2: the audit index on (resource_type, resource_id) served no query and cost every change
    // a random page write.
    "DROP INDEX IF EXISTS audit_resource;",
];

/// The schema version this binary writes.
pub const LATEST: i64 = MIGRATIONS.len() as i64;

pub fn version(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

/// Brings the database up to [`LATEST`]; returns the versions it went from and to.
pub fn migrate(conn: &mut Connection) -> Result<(i64, i64)> {
    let from = version(conn)?;
    check_not_newer(from)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        let to = i as i64 + 1;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)
            .map_err(|e| Error::Internal(format!("migration {to} failed: {e}")))?;
        tx.pragma_update(None, "user_version", to)?;
        tx.commit()?;
        log::info!("database migrated to schema version {to}");
    }
    Ok((from, LATEST))
}

/// Refuses a database written by a newer sessiond.
pub fn check_not_newer(found: i64) -> Result<()> {
    if found > LATEST {
        return Err(Error::Internal(format!(
            "the database has schema version {found}, newer than this binary's {LATEST}; \
             run a sessiond at least as new as the one that wrote it"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema_of(conn: &Connection) -> Vec<(String, String)> {
        conn.prepare("SELECT name, sql FROM sqlite_schema WHERE sql IS NOT NULL ORDER BY name")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap()
    }

    /// The schema of a database made from `schema.sql` alone.
    fn canonical() -> Vec<(String, String)> {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        schema_of(&conn)
    }

    #[test]
    fn migrations_build_the_canonical_schema() {
        let mut migrated = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut migrated).unwrap(), (0, LATEST));
        assert_eq!(schema_of(&migrated), canonical());
        assert_eq!(migrate(&mut migrated).unwrap(), (LATEST, LATEST));
    }

    #[test]
    fn a_version_1_database_loses_the_unused_audit_index() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn.execute_batch(
            "CREATE INDEX audit_resource ON audit(resource_type, resource_id); PRAGMA user_version = 1;",
        )
        .unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), (1, LATEST));
        assert_eq!(schema_of(&conn), canonical());
    }

    #[test]
    fn newer_database_is_refused_naming_both_versions() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", LATEST + 5)
            .unwrap();
        let err = migrate(&mut conn).unwrap_err().to_string();
        assert!(
            err.contains(&format!("schema version {}", LATEST + 5)),
            "{err}"
        );
        assert!(err.contains(&format!("this binary's {LATEST}")), "{err}");
    }
}
