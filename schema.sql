-- bkg.db: the canonical current schema. The daemon applies it to a new database and records
-- the version in PRAGMA user_version; later versions add numbered steps in src/store/migrate.rs.
-- Never edit a released step; add a new one.

-- The plug-in registry (source of truth after first start; mirrored to <data>/plugins.json).
CREATE TABLE IF NOT EXISTS plugins (
    name        TEXT PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 32),
    position    INTEGER NOT NULL,          -- start order
    spec        TEXT NOT NULL,             -- the registry entry as JSON (config included)
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

-- Every config a plug-in ever had, newest = highest version.
CREATE TABLE IF NOT EXISTS plugin_config_versions (
    plugin      TEXT NOT NULL,
    version     INTEGER NOT NULL,
    config      TEXT NOT NULL,             -- JSON object
    actor       TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (plugin, version)
);

-- Daemon settings groups (logging, security, plugins, retention) as JSON objects.
CREATE TABLE IF NOT EXISTS settings (
    grp         TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    actor       TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

-- Append-only audit trail of admin actions.
CREATE TABLE IF NOT EXISTS audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    ts          TEXT NOT NULL,
    actor       TEXT NOT NULL,
    ip          TEXT,
    request_id  TEXT,
    action      TEXT NOT NULL,
    target      TEXT,
    outcome     TEXT NOT NULL,
    detail      TEXT
);
CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts);

-- LLM request history: one row per generation through /llm/infer, /llm/stream,
-- /v1/chat/completions or a replay, bounded by retention.llm_history_max_rows and
-- retention.llm_history_max_age_days. Never headers or credentials.
CREATE TABLE IF NOT EXISTS llm_history (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused: the paging cursor
    req_id            TEXT,
    actor             TEXT NOT NULL,
    route             TEXT NOT NULL,         -- /llm/infer, /llm/stream, /v1/chat/completions, replay
    model             TEXT,
    request           TEXT NOT NULL,         -- the llm.generate params as JSON (an /llm/infer body)
    stream            INTEGER NOT NULL,
    outcome           TEXT NOT NULL CHECK (outcome IN ('ok', 'cancelled', 'error')),
    output            TEXT NOT NULL,         -- the text sent to the client (partial if cut short)
    finish_reason     TEXT,
    error             TEXT,                  -- JSON {status, code, message}
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    queue_ms          INTEGER,
    ttft_ms           INTEGER,
    total_ms          INTEGER,
    replay_of         INTEGER,               -- the row this one re-ran (may be pruned since)
    created_at        INTEGER NOT NULL       -- unix seconds, when the request ended
);
CREATE INDEX IF NOT EXISTS llm_history_created ON llm_history (created_at);
CREATE INDEX IF NOT EXISTS llm_history_actor ON llm_history (actor, id);

-- Small facts about the database itself (for example whether the registry was seeded).
CREATE TABLE IF NOT EXISTS meta (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL
);

-- apikeys plug-in: users, API keys, sessions. Secrets are never stored in plain text:
-- passwords and keys as bcrypt, session tokens and CSRF tokens as SHA-256.
CREATE TABLE IF NOT EXISTS users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,            -- unix seconds
    updated_at    INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS api_keys (
    id            TEXT PRIMARY KEY,            -- public 12-char base62 id
    name          TEXT NOT NULL,
    key_hash      TEXT NOT NULL,               -- bcrypt of bkg_<id>_<secret>
    hint          TEXT NOT NULL,
    scopes        TEXT NOT NULL,               -- JSON array, expanded
    created_by    TEXT NOT NULL,
    created_at    INTEGER NOT NULL,            -- unix seconds
    expires_at    INTEGER,
    revoked_at    INTEGER,
    last_used_at  INTEGER
);

CREATE TABLE IF NOT EXISTS sessions (
    sid           TEXT PRIMARY KEY,            -- public 12-char base62 id
    user_id       INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    secret_sha256 TEXT NOT NULL,
    csrf_sha256   TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,            -- absolute, never extended
    last_seen_at  INTEGER NOT NULL,
    ip            TEXT,
    user_agent    TEXT
);
CREATE INDEX IF NOT EXISTS sessions_user ON sessions (user_id);
