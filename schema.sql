-- sessiond canonical schema (user_version 4).
--
-- This file is the schema a fresh database gets, applied by migration 1. Every later migration must
-- leave a database whose schema equals this file at the new version (a test checks it). Times are
-- INTEGER milliseconds since the Unix epoch (UTC); secrets are stored only as hashes (BLAKE2b-256 for
-- high-entropy tokens, argon2id PHC strings for human passwords). A CHECK on more than two values is an
-- OR chain, never `IN (...)`: SQLite checks such a list by building a temporary B-tree of it on every
-- INSERT (migration 4).

-- Tenants. `anonymous` (kind 'system') owns anonymously created share sessions.
CREATE TABLE accounts (
    id          INTEGER PRIMARY KEY,
    uid         TEXT    NOT NULL UNIQUE,
    name        TEXT    NOT NULL UNIQUE,
    kind        TEXT    NOT NULL CHECK (kind = 'personal' OR kind = 'team' OR kind = 'system'),
    default_ttl_seconds INTEGER,
    created_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    uid           TEXT    NOT NULL UNIQUE,
    email         TEXT    NOT NULL UNIQUE COLLATE NOCASE,
    name          TEXT    NOT NULL,
    password_hash TEXT    NOT NULL,
    totp_secret   TEXT,
    totp_pending  TEXT,
    disabled      INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    created_at    INTEGER NOT NULL
) STRICT;

CREATE TABLE memberships (
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    user_id    INTEGER NOT NULL REFERENCES users(id),
    role       TEXT    NOT NULL CHECK (role = 'owner' OR role = 'admin' OR role = 'member'),
    created_at INTEGER NOT NULL,
    PRIMARY KEY (account_id, user_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX memberships_user ON memberships(user_id);

-- Login tokens, API keys and service keys: one table, looked up by the hash of the presented value.
CREATE TABLE credentials (
    id           INTEGER PRIMARY KEY,
    uid          TEXT    NOT NULL UNIQUE,
    kind         TEXT    NOT NULL CHECK (kind = 'login' OR kind = 'api_key' OR kind = 'service_key'),
    token_hash   BLOB    NOT NULL UNIQUE,
    prefix       TEXT    NOT NULL,
    name         TEXT    NOT NULL DEFAULT '',
    account_id   INTEGER REFERENCES accounts(id),
    user_id      INTEGER REFERENCES users(id),
    scopes       TEXT    NOT NULL DEFAULT '[]',
    service_role TEXT    CHECK (service_role IN ('gateway', 'daemon')),
    mfa_verified INTEGER NOT NULL DEFAULT 0 CHECK (mfa_verified IN (0, 1)),
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    idle_expires_at INTEGER,
    last_used_at INTEGER,
    revoked_at   INTEGER
) STRICT;

CREATE INDEX credentials_account ON credentials(account_id, kind);
CREATE INDEX credentials_user ON credentials(user_id, kind);
CREATE INDEX credentials_expiry ON credentials(expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE workspaces (
    id                   INTEGER PRIMARY KEY,
    uid                  TEXT    NOT NULL,
    account_id           INTEGER NOT NULL REFERENCES accounts(id),
    name                 TEXT    NOT NULL,
    type                 TEXT    NOT NULL,
    description          TEXT    NOT NULL DEFAULT '',
    image_url            TEXT,
    cpu                  INTEGER,
    memory               TEXT,
    storage              TEXT,
    url                  TEXT,
    connection_type      TEXT,
    requires_netbird     INTEGER NOT NULL DEFAULT 0,
    clientless           INTEGER NOT NULL DEFAULT 1,
    launch_mode          TEXT    NOT NULL DEFAULT 'iframe',
    icon                 TEXT,
    image                TEXT,
    template             INTEGER NOT NULL DEFAULT 0 CHECK (template IN (0, 1)),
    max_session_duration INTEGER,
    idle_timeout         INTEGER,
    created_at           INTEGER NOT NULL,
    deleted_at           INTEGER
) STRICT;

-- A deleted workspace keeps its row (its sessions still name it); its id may be used again.
CREATE UNIQUE INDEX workspaces_live_uid ON workspaces(account_id, uid) WHERE deleted_at IS NULL;

-- One row per session of any dialect. Dialect-specific data hangs off it in side tables.
-- status: share 'active'|'closed'; workspace 'active'|'disconnected'|'terminated';
-- runtime 'active'|'starting'|'running'|'stopping'|'terminated'|'failed'.
CREATE TABLE sessions (
    id               INTEGER PRIMARY KEY,
    uid              TEXT    NOT NULL UNIQUE,
    dialect          TEXT    NOT NULL CHECK (dialect = 'share' OR dialect = 'workspace' OR dialect = 'runtime'),
    account_id       INTEGER NOT NULL REFERENCES accounts(id),
    user_id          INTEGER REFERENCES users(id),
    workspace_id     INTEGER REFERENCES workspaces(id),
    credential_id    INTEGER REFERENCES credentials(id) ON DELETE SET NULL,
    session_type     TEXT,
    status           TEXT    NOT NULL,
    end_reason       TEXT    CHECK (end_reason = 'closed' OR end_reason = 'deleted'
                                    OR end_reason = 'disconnected' OR end_reason = 'stopped'
                                    OR end_reason = 'logout' OR end_reason = 'logoff'
                                    OR end_reason = 'expired' OR end_reason = 'idle'
                                    OR end_reason = 'admin' OR end_reason = 'lost'
                                    OR end_reason = 'failed'),
    mfa_verified     INTEGER NOT NULL DEFAULT 0 CHECK (mfa_verified IN (0, 1)),
    ip_address       TEXT,
    created_at       INTEGER NOT NULL,
    expires_at       INTEGER,
    ended_at         INTEGER,
    last_activity_at INTEGER
) STRICT;

-- The reaper's sweep: live sessions by expiry.
CREATE INDEX sessions_live_expiry ON sessions(expires_at) WHERE ended_at IS NULL AND expires_at IS NOT NULL;
CREATE INDEX sessions_account ON sessions(account_id, dialect, created_at);
-- Partial: share sessions have neither a user nor a workspace, and every query on these columns
-- compares them to a value, which implies NOT NULL.
CREATE INDEX sessions_user ON sessions(user_id, created_at) WHERE user_id IS NOT NULL;
CREATE INDEX sessions_workspace ON sessions(workspace_id, status) WHERE workspace_id IS NOT NULL;
-- The reaper's idle sweep: live sessions by last activity.
CREATE INDEX sessions_live_activity ON sessions(last_activity_at) WHERE ended_at IS NULL AND last_activity_at IS NOT NULL;

-- Share sessions (Wormkey dialect).
CREATE TABLE shares (
    session_id          INTEGER PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
    slug                TEXT    NOT NULL UNIQUE,
    -- Compared on the row found by id or slug, never looked up: no index (it would cost a random
    -- page write per created session).
    owner_token_hash    BLOB    NOT NULL,
    port                INTEGER,
    auth_mode           TEXT    NOT NULL CHECK (auth_mode IN ('none', 'basic')),
    basic_password_hash TEXT,
    policy_public       INTEGER NOT NULL DEFAULT 1 CHECK (policy_public IN (0, 1)),
    policy_max_viewers  INTEGER NOT NULL DEFAULT 20,
    policy_block_paths  TEXT    NOT NULL DEFAULT '[]',
    policy_password_hash TEXT
) STRICT;

-- Scoped tunnel tokens of a share session.
CREATE TABLE share_tokens (
    id         INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    token_hash BLOB    NOT NULL UNIQUE,
    name       TEXT    NOT NULL,
    scopes     TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;

CREATE INDEX share_tokens_session ON share_tokens(session_id);
CREATE INDEX share_tokens_expiry ON share_tokens(expires_at);

-- Viewers of a share session. Activity is absorbed in memory and flushed here in batches.
CREATE TABLE viewers (
    session_id   INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    viewer_id    TEXT    NOT NULL,
    last_seen_at INTEGER NOT NULL,
    requests     INTEGER NOT NULL DEFAULT 0,
    ip           TEXT,
    password_ok  INTEGER NOT NULL DEFAULT 0 CHECK (password_ok IN (0, 1)),
    PRIMARY KEY (session_id, viewer_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX viewers_last_seen ON viewers(last_seen_at);

-- Kicked viewer ids of a share session, in kick order.
CREATE TABLE kicked_viewers (
    id         INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    viewer_id  TEXT    NOT NULL,
    kicked_at  INTEGER NOT NULL,
    UNIQUE (session_id, viewer_id)
) STRICT;

-- Runtime session details (Chaser dialect), including the latest daemon snapshot.
-- Environment values may be secrets and belong to the data plane: only their names are kept.
CREATE TABLE runtime_sessions (
    session_id         INTEGER PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
    persistent         INTEGER NOT NULL DEFAULT 0 CHECK (persistent IN (0, 1)),
    image              TEXT,
    proxy              TEXT,
    env_names          TEXT    NOT NULL DEFAULT '[]',
    ttl_seconds        INTEGER,
    node_id            TEXT,
    snapshot_status    TEXT,
    snapshot_leases    INTEGER,
    snapshot_endpoints TEXT,
    snapshot_at        INTEGER,
    active_leases      INTEGER NOT NULL DEFAULT 0,
    endpoints          TEXT
) STRICT;

CREATE INDEX runtime_sessions_snapshot ON runtime_sessions(snapshot_at) WHERE snapshot_at IS NOT NULL;

-- Replayed answers to requests that carried an Idempotency-Key.
CREATE TABLE idempotency (
    account_id  INTEGER NOT NULL REFERENCES accounts(id),
    key         TEXT    NOT NULL,
    status      INTEGER NOT NULL,
    body        BLOB    NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (account_id, key)
) STRICT, WITHOUT ROWID;

CREATE INDEX idempotency_expiry ON idempotency(expires_at);

-- Every change from every dialect, the CLI and the reaper, written in the same transaction as the change.
-- `uid` (UUID v4 from the OS CSPRNG) has no UNIQUE index: no query looks a row up by it, and an index
-- on a random key cost every change a random page write (a sixth of the writer's time on creates).
CREATE TABLE audit (
    id            INTEGER PRIMARY KEY,
    uid           TEXT    NOT NULL,
    account_id    INTEGER,
    actor_type    TEXT    NOT NULL CHECK (actor_type = 'user' OR actor_type = 'api_key' OR actor_type = 'owner_token'
                                          OR actor_type = 'service' OR actor_type = 'system'),
    actor_id      TEXT,
    actor_email   TEXT,
    action        TEXT    NOT NULL,
    resource_type TEXT,
    resource_id   TEXT,
    status        TEXT    NOT NULL CHECK (status IN ('success', 'failure')),
    summary       TEXT    NOT NULL DEFAULT '',
    metadata      TEXT    NOT NULL DEFAULT '{}',
    ip            TEXT,
    created_at    INTEGER NOT NULL
) STRICT;

-- No index on resource_id: rows are listed per account (audit_account_time), and an index on a random
-- id cost one random page write per change for a lookup no query makes.
CREATE INDEX audit_account_time ON audit(account_id, created_at);
CREATE INDEX audit_time ON audit(created_at);
