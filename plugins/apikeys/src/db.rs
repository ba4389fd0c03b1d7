//! The plug-in's tables in `bkg.db` (users, api_keys, sessions; created by the daemon from
//! `schema.sql` before any plug-in starts). Every function here blocks: callers run them on
//! `spawn_blocking`.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

/// Database failures.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DbError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// A user row (never serialised with its hash).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct User {
    pub(crate) id: i64,
    pub(crate) name: String,
    #[serde(skip)]
    pub(crate) password_hash: String,
    pub(crate) role: String,
    pub(crate) disabled: bool,
    pub(crate) created_at: i64,
}

/// An API key row (never serialised with its hash).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ApiKey {
    pub(crate) id: String,
    pub(crate) name: String,
    #[serde(skip)]
    pub(crate) key_hash: String,
    pub(crate) hint: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) created_by: String,
    pub(crate) created_at: i64,
    pub(crate) expires_at: Option<i64>,
    pub(crate) revoked_at: Option<i64>,
    pub(crate) last_used_at: Option<i64>,
}

/// A session row (never serialised with its digests).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Session {
    pub(crate) sid: String,
    pub(crate) user: String,
    #[serde(skip)]
    pub(crate) user_id: i64,
    #[serde(skip)]
    pub secret_sha256: String,
    #[serde(skip)]
    pub csrf_sha256: String,
    pub(crate) created_at: i64,
    pub(crate) expires_at: i64,
    pub(crate) last_seen_at: i64,
    pub(crate) ip: Option<String>,
    pub(crate) user_agent: Option<String>,
}

/// One connection, shared by the plug-in's blocking tasks.
pub(crate) struct Db {
    conn: Mutex<Connection>,
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl Db {
    /// Opens `bkg.db`; the daemon has already applied the schema.
    pub(crate) fn open(path: &Path) -> Result<Self, DbError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let has_tables: bool = conn.query_row(
            "SELECT count(*) = 3 FROM sqlite_master WHERE type = 'table' AND name IN ('users', 'api_keys', 'sessions')",
            [],
            |r| r.get(0),
        )?;
        if !has_tables {
            return Err(DbError::Corrupt(format!("{} has no users/api_keys/sessions tables", path.display())));
        }
        Ok(Self { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // Queries never panic half-way; a poisoned lock still guards a usable connection.
        self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    // ---- users ----

    pub(crate) fn user_by_name(&self, name: &str) -> Result<Option<User>, DbError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT id, name, password_hash, role, disabled, created_at FROM users WHERE name = ?1")?;
        Ok(stmt.query_row([name], user_row).optional()?)
    }

    pub(crate) fn user_by_id(&self, id: i64) -> Result<Option<User>, DbError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT id, name, password_hash, role, disabled, created_at FROM users WHERE id = ?1")?;
        Ok(stmt.query_row([id], user_row).optional()?)
    }

    pub(crate) fn list_users(&self) -> Result<Vec<User>, DbError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT id, name, password_hash, role, disabled, created_at FROM users ORDER BY id")?;
        let rows = stmt.query_map([], user_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Inserts a user; `Ok(None)` when the name is taken.
    pub(crate) fn create_user(&self, name: &str, hash: &str, role: &str) -> Result<Option<User>, DbError> {
        let changed = self.conn().execute(
            "INSERT OR IGNORE INTO users (name, password_hash, role, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)",
            params![name, hash, role, unix_now()],
        )?;
        if changed == 0 {
            return Ok(None);
        }
        self.user_by_name(name)
    }

    /// Updates role, password hash or disabled flag; `false` when there is no such user.
    /// Changing the password or disabling a user ends that user's sessions in the same
    /// transaction.
    pub(crate) fn update_user(
        &self,
        name: &str,
        role: Option<&str>,
        hash: Option<&str>,
        disabled: Option<bool>,
    ) -> Result<bool, DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let Some(id) =
            tx.query_row("SELECT id FROM users WHERE name = ?1", [name], |r| r.get::<_, i64>(0)).optional()?
        else {
            return Ok(false);
        };
        if let Some(role) = role {
            tx.execute("UPDATE users SET role = ?2, updated_at = ?3 WHERE id = ?1", params![id, role, unix_now()])?;
        }
        if let Some(hash) = hash {
            tx.execute(
                "UPDATE users SET password_hash = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, hash, unix_now()],
            )?;
        }
        if let Some(disabled) = disabled {
            tx.execute(
                "UPDATE users SET disabled = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, disabled, unix_now()],
            )?;
        }
        if hash.is_some() || disabled == Some(true) {
            tx.execute("DELETE FROM sessions WHERE user_id = ?1", [id])?;
        }
        tx.commit()?;
        Ok(true)
    }

    pub(crate) fn count_admins(&self) -> Result<i64, DbError> {
        Ok(self
            .conn()
            .query_row("SELECT count(*) FROM users WHERE role = 'admin' AND disabled = 0", [], |r| r.get(0))?)
    }

    // ---- api keys ----

    pub(crate) fn insert_key(&self, key: &ApiKey) -> Result<bool, DbError> {
        let scopes = serde_json::to_string(&key.scopes).map_err(|e| DbError::Corrupt(e.to_string()))?;
        let changed = self.conn().execute(
            "INSERT OR IGNORE INTO api_keys (id, name, key_hash, hint, scopes, created_by, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![key.id, key.name, key.key_hash, key.hint, scopes, key.created_by, key.created_at, key.expires_at],
        )?;
        Ok(changed == 1)
    }

    pub(crate) fn key(&self, id: &str) -> Result<Option<ApiKey>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, name, key_hash, hint, scopes, created_by, created_at, expires_at, revoked_at, last_used_at
             FROM api_keys WHERE id = ?1",
        )?;
        stmt.query_row([id], key_row).optional()?.transpose()
    }

    pub(crate) fn list_keys(&self) -> Result<Vec<ApiKey>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, name, key_hash, hint, scopes, created_by, created_at, expires_at, revoked_at, last_used_at
             FROM api_keys ORDER BY created_at, id",
        )?;
        let rows = stmt.query_map([], key_row)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row??);
        }
        Ok(out)
    }

    /// Marks a key revoked (idempotent); `None` when there is no such key.
    pub(crate) fn revoke_key(&self, id: &str) -> Result<Option<i64>, DbError> {
        let conn = self.conn();
        conn.execute(
            "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            params![id, unix_now()],
        )?;
        Ok(conn.query_row("SELECT revoked_at FROM api_keys WHERE id = ?1", [id], |r| r.get(0)).optional()?.flatten())
    }

    pub(crate) fn touch_key(&self, id: &str) -> Result<(), DbError> {
        self.conn().execute("UPDATE api_keys SET last_used_at = ?2 WHERE id = ?1", params![id, unix_now()])?;
        Ok(())
    }

    // ---- sessions ----

    pub(crate) fn insert_session(&self, s: &Session) -> Result<(), DbError> {
        self.conn().execute(
            "INSERT INTO sessions (sid, user_id, secret_sha256, csrf_sha256, created_at, expires_at, last_seen_at, ip, user_agent)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?5, ?7, ?8)",
            params![s.sid, s.user_id, s.secret_sha256, s.csrf_sha256, s.created_at, s.expires_at, s.ip, s.user_agent],
        )?;
        Ok(())
    }

    pub(crate) fn session(&self, sid: &str) -> Result<Option<Session>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT s.sid, u.name, s.user_id, s.secret_sha256, s.csrf_sha256, s.created_at, s.expires_at,
                    s.last_seen_at, s.ip, s.user_agent
             FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.sid = ?1",
        )?;
        Ok(stmt.query_row([sid], session_row).optional()?)
    }

    pub(crate) fn list_sessions(&self) -> Result<Vec<Session>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT s.sid, u.name, s.user_id, s.secret_sha256, s.csrf_sha256, s.created_at, s.expires_at,
                    s.last_seen_at, s.ip, s.user_agent
             FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.expires_at > ?1 ORDER BY s.created_at",
        )?;
        let rows = stmt.query_map([unix_now()], session_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes a session; `false` when it did not exist.
    pub(crate) fn delete_session(&self, sid: &str) -> Result<bool, DbError> {
        Ok(self.conn().execute("DELETE FROM sessions WHERE sid = ?1", [sid])? == 1)
    }

    pub(crate) fn touch_session(&self, sid: &str) -> Result<(), DbError> {
        self.conn().execute("UPDATE sessions SET last_seen_at = ?2 WHERE sid = ?1", params![sid, unix_now()])?;
        Ok(())
    }

    /// Removes expired sessions; returns how many.
    pub(crate) fn purge_expired_sessions(&self) -> Result<usize, DbError> {
        Ok(self.conn().execute("DELETE FROM sessions WHERE expires_at <= ?1", [unix_now()])?)
    }
}

fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        name: r.get(1)?,
        password_hash: r.get(2)?,
        role: r.get(3)?,
        disabled: r.get(4)?,
        created_at: r.get(5)?,
    })
}

fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<ApiKey, DbError>> {
    let scopes: String = r.get(4)?;
    let key = ApiKey {
        id: r.get(0)?,
        name: r.get(1)?,
        key_hash: r.get(2)?,
        hint: r.get(3)?,
        scopes: vec![],
        created_by: r.get(5)?,
        created_at: r.get(6)?,
        expires_at: r.get(7)?,
        revoked_at: r.get(8)?,
        last_used_at: r.get(9)?,
    };
    Ok(serde_json::from_str(&scopes)
        .map(|scopes| ApiKey { scopes, ..key })
        .map_err(|e| DbError::Corrupt(format!("api_keys.scopes: {e}"))))
}

fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Session> {
    Ok(Session {
        sid: r.get(0)?,
        user: r.get(1)?,
        user_id: r.get(2)?,
        secret_sha256: r.get(3)?,
        csrf_sha256: r.get(4)?,
        created_at: r.get(5)?,
        expires_at: r.get(6)?,
        last_seen_at: r.get(7)?,
        ip: r.get(8)?,
        user_agent: r.get(9)?,
    })
}
