//! Settings groups (`settings` table), the audit rows of admin changes, and config-history
//! retention.
//!
//! A group is stored as the JSON the API accepted; the daemon re-validates it at start, so a row
//! written by another version never reaches the running settings unchecked.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::{Value, json};

use super::{Error, Store, now};

/// One stored settings group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredGroup {
    pub group: String,
    pub value: Value,
    pub actor: String,
    pub updated_at: String,
}

/// Appends one row to the audit trail (inside the caller's transaction).
pub(super) fn audit(conn: &Connection, actor: &str, action: &str, target: &str, detail: &Value) -> Result<(), Error> {
    conn.execute(
        "INSERT INTO audit (ts, actor, action, target, outcome, detail) VALUES (?1, ?2, ?3, ?4, 'ok', ?5)",
        params![now(), actor, action, target, detail.to_string()],
    )?;
    Ok(())
}

/// Deletes config versions beyond the newest `keep` of each plug-in (of `plugin` only when
/// given); `keep == 0` keeps everything. The newest version always survives. Returns the number
/// of rows deleted.
pub(super) fn prune_config_versions(conn: &Connection, plugin: Option<&str>, keep: u32) -> Result<usize, Error> {
    if keep == 0 {
        return Ok(0);
    }
    let deleted = conn.execute(
        "DELETE FROM plugin_config_versions AS v
         WHERE (?1 IS NULL OR v.plugin = ?1)
           AND v.version <= (SELECT MAX(version) FROM plugin_config_versions WHERE plugin = v.plugin) - ?2",
        params![plugin, i64::from(keep)],
    )?;
    Ok(deleted)
}

fn read_group(conn: &Connection, group: &str) -> Result<Option<StoredGroup>, Error> {
    let row = conn
        .query_row("SELECT value, actor, updated_at FROM settings WHERE grp = ?1", [group], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
        })
        .optional()?;
    row.map(|(value, actor, updated_at)| {
        let value = serde_json::from_str(&value).map_err(|e| Error::Corrupt(format!("settings.{group}: {e}")))?;
        Ok(StoredGroup { group: group.to_owned(), value, actor, updated_at })
    })
    .transpose()
}

impl Store {
    /// Every stored group (groups never written are absent).
    pub async fn load_settings(&self) -> Result<Vec<StoredGroup>, Error> {
        self.run(|c| {
            let names: Vec<String> = {
                let mut stmt = c.prepare_cached("SELECT grp FROM settings ORDER BY grp")?;
                let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
                rows.collect::<Result<_, _>>()?
            };
            let mut out = Vec::new();
            for name in names {
                out.extend(read_group(c, &name)?);
            }
            Ok(out)
        })
        .await
    }

    /// One stored group, if it was ever written.
    pub async fn settings_group(&self, group: String) -> Result<Option<StoredGroup>, Error> {
        self.run(move |c| read_group(c, &group)).await
    }

    /// Stores `group` with an audit row (old → new), in one transaction. When `prune_keep` is
    /// given, config histories are trimmed to it in the same transaction.
    pub async fn save_settings(
        &self,
        group: String,
        value: Value,
        actor: String,
        prune_keep: Option<u32>,
    ) -> Result<StoredGroup, Error> {
        self.run(move |c| {
            let tx = c.transaction()?;
            let old = read_group(&tx, &group)?.map(|g| g.value);
            let updated_at = now();
            tx.execute(
                "INSERT INTO settings (grp, value, actor, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (grp) DO UPDATE SET value = excluded.value, actor = excluded.actor,
                                                 updated_at = excluded.updated_at",
                params![group, value.to_string(), actor, updated_at],
            )?;
            audit(&tx, &actor, "settings.update", &group, &json!({ "old": old, "new": value }))?;
            if let Some(keep) = prune_keep {
                prune_config_versions(&tx, None, keep)?;
            }
            tx.commit()?;
            Ok(StoredGroup { group, value, actor, updated_at })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn save_load_audit_and_prune() {
        let store = Store::open_in_memory().unwrap();
        assert!(store.load_settings().await.unwrap().is_empty());
        store.save_settings("logging".into(), json!({"level": "debug"}), "t".into(), None).await.unwrap();
        store.save_settings("logging".into(), json!({"level": "warn"}), "u".into(), None).await.unwrap();
        let all = store.load_settings().await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].value, json!({"level": "warn"}));
        assert_eq!(all[0].actor, "u");

        let audit_rows: Vec<String> = store
            .run(|c| {
                let mut stmt = c.prepare("SELECT detail FROM audit WHERE action = 'settings.update' ORDER BY id")?;
                let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
            .unwrap();
        assert_eq!(audit_rows.len(), 2);
        let last: Value = serde_json::from_str(&audit_rows[1]).unwrap();
        assert_eq!(last, json!({"old": {"level": "debug"}, "new": {"level": "warn"}}));

        store
            .run(|c| {
                for plugin in ["a", "b"] {
                    for v in 1..=5 {
                        c.execute(
                            "INSERT INTO plugin_config_versions (plugin, version, config, actor, created_at)
                             VALUES (?1, ?2, '{}', 't', 'now')",
                            params![plugin, v],
                        )?;
                    }
                }
                Ok(())
            })
            .await
            .unwrap();
        store.save_settings("retention".into(), json!({"config_versions_kept": 2}), "t".into(), Some(2)).await.unwrap();
        let left: Vec<(String, i64)> = store
            .run(|c| {
                let mut stmt =
                    c.prepare("SELECT plugin, version FROM plugin_config_versions ORDER BY plugin, version")?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
            .unwrap();
        assert_eq!(left, vec![("a".into(), 4), ("a".into(), 5), ("b".into(), 4), ("b".into(), 5)]);
    }
}
