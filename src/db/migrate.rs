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

/// One migration: SQL, or SQL built from `schema.sql` when it must recreate an object exactly as
/// the canonical schema words it.
enum Migration {
    Sql(&'static str),
    Built(fn() -> String),
}

/// Migration `i + 1` is `MIGRATIONS[i]`. A fresh database runs them all, so a later one must also
/// hold on top of the current `schema.sql` (hence `IF EXISTS`).
const MIGRATIONS: &[Migration] = &[
    Migration::Sql(SCHEMA),
    // 2: the audit index on (resource_type, resource_id) served no query and cost every change
    // a random page write.
    Migration::Sql("DROP INDEX IF EXISTS audit_resource;"),
    // 3: the writer's share of a create, halved. `audit.uid` loses its UNIQUE index (random key, no
    // query; SQLite drops a column constraint only by rebuilding the table), and the user and
    // workspace indexes of sessions skip the rows that have neither.
    Migration::Built(|| {
        [
            "DROP INDEX IF EXISTS sessions_user;",
            statement("CREATE INDEX sessions_user "),
            "DROP INDEX IF EXISTS sessions_workspace;",
            statement("CREATE INDEX sessions_workspace "),
            "ALTER TABLE audit RENAME TO audit_v2;",
            "DROP INDEX IF EXISTS audit_account_time; DROP INDEX IF EXISTS audit_time;",
            statement("CREATE TABLE audit "),
            "INSERT INTO audit SELECT * FROM audit_v2;",
            "DROP TABLE audit_v2;",
            statement("CREATE INDEX audit_account_time "),
            statement("CREATE INDEX audit_time "),
        ]
        .join("\n")
    }),
];

/// The statement of `schema.sql` that starts with `head` (at the start of a line), up to its `;`.
fn statement(head: &str) -> &'static str {
    let start = SCHEMA
        .match_indices(head)
        .map(|(i, _)| i)
        .find(|&i| i == 0 || SCHEMA.as_bytes()[i - 1] == b'\n')
        .unwrap_or_else(|| panic!("schema.sql has no statement starting {head:?}"));
    let end = start + SCHEMA[start..].find(';').expect("a statement ends with ;") + 1;
    &SCHEMA[start..end]
}

/// The schema version this binary writes.
pub const LATEST: i64 = MIGRATIONS.len() as i64;

pub fn version(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

/// Brings the database up to [`LATEST`]; returns the versions it went from and to.
pub fn migrate(conn: &mut Connection) -> Result<(i64, i64)> {
    let from = version(conn)?;
    check_not_newer(from)?;
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        let to = i as i64 + 1;
        let sql = match migration {
            Migration::Sql(sql) => std::borrow::Cow::Borrowed(*sql),
            Migration::Built(build) => std::borrow::Cow::Owned(build()),
        };
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(&sql)
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

    /// `schema.sql` as it was at version 2.
    fn version_2_schema() -> String {
        let edits = [
            (
                "uid           TEXT    NOT NULL,\n    account_id    INTEGER,",
                "uid           TEXT    NOT NULL UNIQUE,\n    account_id    INTEGER,",
            ),
            (
                "ON sessions(user_id, created_at) WHERE user_id IS NOT NULL;",
                "ON sessions(user_id, created_at);",
            ),
            (
                "ON sessions(workspace_id, status) WHERE workspace_id IS NOT NULL;",
                "ON sessions(workspace_id, status);",
            ),
        ];
        edits
            .iter()
            .fold(SCHEMA.to_string(), |schema, (now, then)| {
                assert!(schema.contains(now), "schema.sql no longer has {now:?}");
                schema.replace(now, then)
            })
    }

    #[test]
    fn a_version_2_database_keeps_its_audit_rows_without_the_uid_index() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&version_2_schema()).unwrap();
        conn.execute_batch(
            "PRAGMA user_version = 2;
             INSERT INTO audit (uid, account_id, actor_type, action, status, summary, metadata, ip, created_at)
             VALUES ('u1', 1, 'system', 'session.expired', 'success', 's1', '{\"a\":1}', '10.0.0.1', 5),
                    ('u2', NULL, 'user', 'login', 'failure', '', '{}', NULL, 7);",
        )
        .unwrap();
        let rows = |conn: &Connection| -> Vec<String> {
            crate::db::column(
                conn,
                "SELECT json_array(id, uid, account_id, actor_type, action, status, summary, metadata, ip, created_at) FROM audit ORDER BY id",
                [],
            )
        };
        let before = rows(&conn);
        assert_eq!(migrate(&mut conn).unwrap(), (2, LATEST));
        assert_eq!(schema_of(&conn), canonical());
        assert_eq!(rows(&conn), before);
        // The same uid again is accepted now: uniqueness is the CSPRNG's, not an index's.
        conn.execute(
            "INSERT INTO audit (uid, actor_type, action, status, created_at) VALUES ('u1', 'system', 'x', 'success', 9)",
            [],
        )
        .unwrap();
    }

    /// The partial indexes on sessions still serve the lookups by user and by workspace: SQLite uses
    /// an `x IS NOT NULL` partial index for `x = <value>`, in a join too.
    #[test]
    fn lookups_by_user_and_workspace_use_the_partial_indexes() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let lookups = [
            (
                "SELECT id FROM sessions WHERE user_id = ?1 AND status = 'active' AND ended_at IS NULL",
                "sessions_user",
            ),
            (
                "SELECT (SELECT s.uid FROM sessions s WHERE s.workspace_id = w.id ORDER BY s.id DESC LIMIT 1) FROM workspaces w WHERE w.id = ?1",
                "sessions_workspace",
            ),
            (
                "SELECT count(*) FROM sessions x JOIN runtime_sessions r ON r.session_id = x.id WHERE x.workspace_id = ?1 AND x.ended_at IS NULL AND r.persistent = 1",
                "sessions_workspace",
            ),
            (
                "SELECT EXISTS (SELECT 1 FROM sessions WHERE workspace_id = ?1 AND ended_at IS NULL)",
                "sessions_workspace",
            ),
        ];
        for (sql, index) in lookups {
            let plan = crate::db::query_plan(&conn, sql, [1]);
            assert!(
                plan.contains(&format!("USING INDEX {index}")),
                "{sql}\n{plan}"
            );
        }
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
