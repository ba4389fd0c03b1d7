//! The append-only audit trail: every admin action and every login attempt, with actor, IP,
//! request id, target and outcome. Never a token, password or cookie.

use rusqlite::params_from_iter;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Error, Store, now};

/// One audit entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEvent {
    #[serde(default)]
    pub id: i64,
    #[serde(default)]
    pub ts: String,
    /// `user:<name>`, `key:<id>` or `anonymous`.
    pub actor: String,
    pub ip: Option<String>,
    pub request_id: Option<String>,
    /// Dotted event name, e.g. `plugin.stopped`, `auth.login.failed`, `key.created`.
    pub action: String,
    pub target: Option<String>,
    /// `success`, `failure` or `denied`.
    pub outcome: String,
    pub detail: Option<Value>,
}

/// Filters of `GET /admin/audit`; time bounds are RFC 3339 and compared as text (same format).
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub from: Option<String>,
    pub to: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub limit: u32,
    pub offset: u64,
}

impl Store {
    /// Appends an entry (its `id` and `ts` are assigned here).
    pub async fn audit(&self, event: AuditEvent) -> Result<(), Error> {
        self.run(move |c| {
            let detail = event.detail.as_ref().map(Value::to_string);
            c.execute(
                "INSERT INTO audit (ts, actor, ip, request_id, action, target, outcome, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                rusqlite::params![
                    now(),
                    event.actor,
                    event.ip,
                    event.request_id,
                    event.action,
                    event.target,
                    event.outcome,
                    detail
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// Entries matching `q`, newest first.
    pub async fn audit_query(&self, q: AuditQuery) -> Result<Vec<AuditEvent>, Error> {
        self.run(move |c| {
            let mut sql = String::from(
                "SELECT id, ts, actor, ip, request_id, action, target, outcome, detail FROM audit WHERE 1 = 1",
            );
            let mut args: Vec<String> = Vec::new();
            for (clause, value) in [
                (" AND ts >= ?", &q.from),
                (" AND ts <= ?", &q.to),
                (" AND actor = ?", &q.actor),
                (" AND action = ?", &q.action),
                (" AND target = ?", &q.target),
            ] {
                if let Some(v) = value {
                    sql.push_str(clause);
                    args.push(v.clone());
                }
            }
            sql.push_str(&format!(" ORDER BY id DESC LIMIT {} OFFSET {}", q.limit, q.offset));
            let mut stmt = c.prepare(&sql)?;
            let rows = stmt.query_map(params_from_iter(args.iter()), |r| {
                let detail: Option<String> = r.get(8)?;
                Ok(AuditEvent {
                    id: r.get(0)?,
                    ts: r.get(1)?,
                    actor: r.get(2)?,
                    ip: r.get(3)?,
                    request_id: r.get(4)?,
                    action: r.get(5)?,
                    target: r.get(6)?,
                    outcome: r.get(7)?,
                    detail: detail.and_then(|d| serde_json::from_str(&d).ok()),
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// Whether an admin user exists (first-start password generation).
    pub async fn has_admin_user(&self) -> Result<bool, Error> {
        self.run(|c| Ok(c.query_row("SELECT EXISTS(SELECT 1 FROM users WHERE role = 'admin')", [], |r| r.get(0))?))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(actor: &str, action: &str) -> AuditEvent {
        AuditEvent {
            id: 0,
            ts: String::new(),
            actor: actor.into(),
            ip: Some("127.0.0.1".into()),
            request_id: Some("r1".into()),
            action: action.into(),
            target: Some("plugin:echo".into()),
            outcome: "success".into(),
            detail: None,
        }
    }

    #[tokio::test]
    async fn append_and_filter() {
        let store = Store::open_in_memory().unwrap();
        store.audit(event("user:admin", "plugin.stopped")).await.unwrap();
        store.audit(event("key:abc", "plugin.started")).await.unwrap();
        store.audit(event("user:admin", "auth.login.failed")).await.unwrap();
        let all = store.audit_query(AuditQuery { limit: 10, ..AuditQuery::default() }).await.unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].action, "auth.login.failed", "newest first");
        let q = AuditQuery { actor: Some("user:admin".into()), limit: 10, ..AuditQuery::default() };
        assert_eq!(store.audit_query(q).await.unwrap().len(), 2);
        let page = AuditQuery { limit: 1, offset: 1, ..AuditQuery::default() };
        assert_eq!(store.audit_query(page).await.unwrap()[0].action, "plugin.started");
        assert!(!store.has_admin_user().await.unwrap());
    }
}
