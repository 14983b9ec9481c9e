//! Schema versions: ordered migrations keyed by `PRAGMA user_version`, each in its own transaction.
//!
//! Migration 1 is `schema.sql` itself. A later change appends a migration here *and* edits `schema.sql`
//! so that a fresh database and a migrated one end up identical (a test compares them). A database
//! whose version is newer than [`LATEST`] is refused: an older binary must not write into a schema it
//! does not know.

use rusqlite::{Connection, Transaction, params};

use crate::error::{Error, Result};

/// The canonical schema, applied to a fresh database.
pub const SCHEMA: &str = include_str!("../../schema.sql");

/// One migration: SQL, SQL built from `schema.sql` when it must recreate an object exactly as the
/// canonical schema words it, or code for what SQL alone cannot say.
enum Migration {
    Sql(&'static str),
    Built(fn() -> String),
    Code(fn(&Transaction) -> rusqlite::Result<()>),
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
    // 4: CHECK constraints name their values in OR chains instead of `IN` lists (see
    // `rewrite_checks`); a fifth of the writer's CPU on creates.
    Migration::Code(rewrite_checks),
];

/// The tables whose CHECK constraints migration 4 rewrote.
const REWRITTEN_CHECKS: &[&str] = &[
    "accounts",
    "memberships",
    "credentials",
    "sessions",
    "audit",
];

/// Migration 4. SQLite checks `x IN ('a', 'b', 'c')` (a list of more than two values) in a CHECK
/// constraint by building a temporary B-tree of the list, with its own pager, on every INSERT: three
/// of them per created share session (`sessions.dialect`, `sessions.end_reason` and
/// `audit.actor_type`), a fifth of the writer's CPU. An OR chain of comparisons means the same
/// (NULL included) and costs a few instructions.
///
/// The rows already stored satisfy the new constraints, so only the tables' text changes. This is
/// SQLite's documented procedure for such changes (`lang_altertable.html`, "Making Other Kinds Of
/// Table Schema Changes"): rewrite `sqlite_schema` and bump `schema_version`, without copying the
/// tables, which could hold millions of rows.
fn rewrite_checks(tx: &Transaction) -> rusqlite::Result<()> {
    let version: i64 = tx.query_row("PRAGMA schema_version", [], |r| r.get(0))?;
    tx.pragma_update(None, "writable_schema", true)?;
    for table in REWRITTEN_CHECKS {
        let sql = statement(&format!("CREATE TABLE {table} "));
        tx.execute(
            "UPDATE sqlite_schema SET sql = ?1 WHERE type = 'table' AND name = ?2",
            params![sql.trim_end_matches(';'), table],
        )?;
    }
    // The new version makes other connections read the schema again; RESET makes this one.
    tx.pragma_update(None, "schema_version", version + 1)?;
    tx.execute_batch("PRAGMA writable_schema = RESET")
}

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
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        match migration {
            Migration::Sql(sql) => tx.execute_batch(sql),
            Migration::Built(build) => tx.execute_batch(&build()),
            Migration::Code(run) => run(&tx),
        }
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

    /// `schema.sql` with `edits` (what it says now, what it said then) undone, in order.
    fn schema_before(base: String, edits: &[(&str, &str)]) -> String {
        edits.iter().fold(base, |schema, (now, then)| {
            assert!(schema.contains(now), "schema.sql no longer has {now:?}");
            schema.replace(now, then)
        })
    }

    /// `schema.sql` as it was at version 3: CHECK constraints with `IN` lists.
    fn version_3_schema() -> String {
        let end_reason = "end_reason = 'closed' OR end_reason = 'deleted'
                                    OR end_reason = 'disconnected' OR end_reason = 'stopped'
                                    OR end_reason = 'logout' OR end_reason = 'logoff'
                                    OR end_reason = 'expired' OR end_reason = 'idle'
                                    OR end_reason = 'admin' OR end_reason = 'lost'
                                    OR end_reason = 'failed'";
        let actor_type =
            "actor_type = 'user' OR actor_type = 'api_key' OR actor_type = 'owner_token'
                                          OR actor_type = 'service' OR actor_type = 'system'";
        schema_before(
            SCHEMA.to_string(),
            &[
                (
                    "kind = 'personal' OR kind = 'team' OR kind = 'system'",
                    "kind IN ('personal', 'team', 'system')",
                ),
                (
                    "role = 'owner' OR role = 'admin' OR role = 'member'",
                    "role IN ('owner', 'admin', 'member')",
                ),
                (
                    "kind = 'login' OR kind = 'api_key' OR kind = 'service_key'",
                    "kind IN ('login', 'api_key', 'service_key')",
                ),
                (
                    "dialect = 'share' OR dialect = 'workspace' OR dialect = 'runtime'",
                    "dialect IN ('share', 'workspace', 'runtime')",
                ),
                (
                    end_reason,
                    "end_reason IN ('closed', 'deleted', 'disconnected', 'stopped', 'logout',
                                     'logoff', 'expired', 'idle', 'admin', 'lost', 'failed')",
                ),
                (
                    actor_type,
                    "actor_type IN ('user', 'api_key', 'owner_token', 'service', 'system')",
                ),
            ],
        )
    }

    /// `schema.sql` as it was at version 2.
    fn version_2_schema() -> String {
        schema_before(
            version_3_schema(),
            &[
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
            ],
        )
    }

    /// How many temporary B-trees a statement's program opens.
    fn ephemeral_tables(conn: &Connection, sql: &str) -> usize {
        let mut program = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
        let opcodes = program.query_map([], |r| r.get::<_, String>(1)).unwrap();
        opcodes
            .filter(|op| op.as_deref() == Ok("OpenEphemeral"))
            .count()
    }

    #[test]
    fn a_version_3_database_checks_without_temporary_tables_and_keeps_its_rows() {
        let dir = crate::db::TestDir::new("migrate-v3");
        let path = dir.join("v3.db");
        let mut conn = Connection::open(&path).unwrap();
        conn.execute_batch(&version_3_schema()).unwrap();
        conn.execute_batch(
            "PRAGMA user_version = 3;
             INSERT INTO accounts (id, uid, name, kind, created_at) VALUES (1, 'a1', 'anonymous', 'system', 1);
             INSERT INTO sessions (uid, dialect, account_id, status, end_reason, created_at)
             VALUES ('s1', 'share', 1, 'closed', 'expired', 2), ('s2', 'runtime', 1, 'active', NULL, 3);
             INSERT INTO audit (uid, account_id, actor_type, action, status, created_at)
             VALUES ('u1', 1, 'owner_token', 'session.create', 'success', 4);",
        )
        .unwrap();
        let insert_session = "INSERT INTO sessions (uid, dialect, account_id, status, created_at) VALUES ('s3', 'share', 1, 'active', 5)";
        let insert_audit = "INSERT INTO audit (uid, actor_type, action, status, created_at) VALUES ('u2', 'system', 'x', 'success', 6)";
        assert_eq!(ephemeral_tables(&conn, insert_audit), 1);
        let rows = |conn: &Connection| -> Vec<String> {
            crate::db::column(
                conn,
                "SELECT json_array(uid, dialect, status, end_reason) FROM sessions
                 UNION ALL SELECT json_array(uid, actor_type, action) FROM audit",
                [],
            )
        };
        let before = rows(&conn);
        // A connection open across the migration sees the new schema too (`schema_version` moved).
        let other = Connection::open(&path).unwrap();
        assert_eq!(ephemeral_tables(&other, insert_session), 2);

        assert_eq!(migrate(&mut conn).unwrap(), (3, LATEST));
        assert_eq!(schema_of(&conn), canonical());
        assert_eq!(rows(&conn), before);
        // EXPLAIN compiles against the schema a connection has; a statement that reads checks the
        // version first.
        let _: Vec<i64> = crate::db::column(&other, "SELECT count(*) FROM sessions", []);
        for c in [&conn, &other] {
            assert_eq!(ephemeral_tables(c, insert_session), 0);
            assert_eq!(ephemeral_tables(c, insert_audit), 0);
        }
        assert_eq!(
            crate::db::column::<String>(&conn, "PRAGMA integrity_check", []),
            ["ok"]
        );
        // The constraints still hold: a value outside the list is refused, NULL passes as before.
        conn.execute(insert_session, []).unwrap();
        other.execute(insert_audit, []).unwrap();
        for bad in [
            "INSERT INTO sessions (uid, dialect, account_id, status, created_at) VALUES ('s4', 'other', 1, 'active', 7)",
            "UPDATE sessions SET end_reason = 'bored' WHERE uid = 's2'",
            "INSERT INTO audit (uid, actor_type, action, status, created_at) VALUES ('u3', 'robot', 'x', 'success', 8)",
            "INSERT INTO accounts (uid, name, kind, created_at) VALUES ('a2', 'b', 'club', 9)",
        ] {
            let err = other.execute(bad, []).unwrap_err().to_string();
            assert!(err.contains("CHECK constraint failed"), "{bad}: {err}");
        }
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
