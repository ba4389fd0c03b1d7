//! Registry and config-version queries, and the `plugins.json` mirror they keep in step.
//!
//! Each change commits to SQLite first and then rewrites the mirror atomically (temp file,
//! fsync, rename, fsync of the directory), on the store thread, so mirror writes happen in
//! commit order. After a crash between the two, [`Store::sync_mirror`] at start makes them agree.

use std::io::Write;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::Value;

use super::{Error, Store, now};

/// One stored config version.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigVersion {
    pub version: i64,
    pub config: Value,
    pub actor: String,
    pub created_at: String,
}

const SEEDED: &str = "registry_seeded";

fn registry(conn: &Connection) -> Result<Vec<Value>, Error> {
    let mut stmt = conn.prepare_cached("SELECT spec FROM plugins ORDER BY position, name")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for row in rows {
        let text = row?;
        out.push(serde_json::from_str(&text).map_err(|e| Error::Corrupt(format!("plugins.spec: {e}")))?);
    }
    Ok(out)
}

/// Writes `{"plugins": [...]}` to `path` atomically.
fn write_mirror(path: &Path, plugins: &[Value]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut text = serde_json::to_vec_pretty(&serde_json::json!({ "plugins": plugins }))?;
    text.push(b'\n');
    let tmp: PathBuf = dir.join(format!(".plugins.json.tmp.{}", std::process::id()));
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&text)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

fn mirror(conn: &Connection, path: Option<&Path>) -> Result<(), Error> {
    if let Some(path) = path {
        let plugins = registry(conn)?;
        write_mirror(path, &plugins).map_err(|e| Error::Conflict(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(())
}

fn spec_name(spec: &Value) -> Result<String, Error> {
    spec.get("name")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| Error::Corrupt("spec without a name".into()))
}

fn insert_config_version(conn: &Connection, plugin: &str, config: &Value, actor: &str) -> Result<i64, Error> {
    let version: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) + 1 FROM plugin_config_versions WHERE plugin = ?1",
        [plugin],
        |r| r.get(0),
    )?;
    conn.execute(
        "INSERT INTO plugin_config_versions (plugin, version, config, actor, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![plugin, version, config.to_string(), actor, now()],
    )?;
    Ok(version)
}

impl Store {
    /// The stored registry, or `None` if the database was never seeded.
    pub async fn load_registry(&self) -> Result<Option<Vec<Value>>, Error> {
        self.run(|c| {
            let seeded: Option<String> =
                c.query_row("SELECT value FROM meta WHERE key = ?1", [SEEDED], |r| r.get(0)).optional()?;
            match seeded {
                Some(_) => Ok(Some(registry(c)?)),
                None => Ok(None),
            }
        })
        .await
    }

    /// Stores the initial registry (first start) with version 1 of every config.
    pub async fn seed_registry(&self, specs: Vec<Value>, source: String) -> Result<(), Error> {
        self.run(move |c| {
            let tx = c.transaction()?;
            for (position, spec) in specs.iter().enumerate() {
                let name = spec_name(spec)?;
                tx.execute(
                    "INSERT INTO plugins (name, position, spec, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)",
                    params![name, position as i64, spec.to_string(), now()],
                )?;
                let config = spec.get("config").cloned().unwrap_or(Value::Object(Default::default()));
                insert_config_version(&tx, &name, &config, &source)?;
            }
            tx.execute("INSERT INTO meta (key, value) VALUES (?1, ?2)", params![SEEDED, now()])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Rewrites the mirror from the database.
    pub async fn sync_mirror(&self, path: PathBuf) -> Result<(), Error> {
        self.run(move |c| mirror(c, Some(&path))).await
    }

    /// Adds a plug-in at the end of the start order.
    pub async fn insert_plugin(&self, spec: Value, actor: String, mirror_path: Option<PathBuf>) -> Result<(), Error> {
        self.run(move |c| {
            let name = spec_name(&spec)?;
            let tx = c.transaction()?;
            let exists: bool =
                tx.query_row("SELECT EXISTS(SELECT 1 FROM plugins WHERE name = ?1)", [&name], |r| r.get(0))?;
            if exists {
                return Err(Error::Conflict(format!("a plug-in named {name:?} already exists")));
            }
            tx.execute(
                "INSERT INTO plugins (name, position, spec, created_at, updated_at)
                 VALUES (?1, (SELECT COALESCE(MAX(position), -1) + 1 FROM plugins), ?2, ?3, ?3)",
                params![name, spec.to_string(), now()],
            )?;
            let config = spec.get("config").cloned().unwrap_or(Value::Object(Default::default()));
            insert_config_version(&tx, &name, &config, &actor)?;
            tx.commit()?;
            mirror(c, mirror_path.as_deref())
        })
        .await
    }

    /// Removes a plug-in (its config history is kept for the audit trail).
    pub async fn delete_plugin(&self, name: String, mirror_path: Option<PathBuf>) -> Result<(), Error> {
        self.run(move |c| {
            if c.execute("DELETE FROM plugins WHERE name = ?1", [&name])? == 0 {
                return Err(Error::NotFound);
            }
            mirror(c, mirror_path.as_deref())
        })
        .await
    }

    /// Replaces a plug-in's stored spec (for example `enabled`), keeping its position.
    pub async fn replace_spec(&self, spec: Value, mirror_path: Option<PathBuf>) -> Result<(), Error> {
        self.run(move |c| {
            let name = spec_name(&spec)?;
            let changed = c.execute(
                "UPDATE plugins SET spec = ?2, updated_at = ?3 WHERE name = ?1",
                params![name, spec.to_string(), now()],
            )?;
            if changed == 0 {
                return Err(Error::NotFound);
            }
            mirror(c, mirror_path.as_deref())
        })
        .await
    }

    /// Stores a new spec whose config changed, as a new config version; returns the version.
    pub async fn update_config(&self, spec: Value, actor: String, mirror_path: Option<PathBuf>) -> Result<i64, Error> {
        self.run(move |c| {
            let name = spec_name(&spec)?;
            let config = spec.get("config").cloned().unwrap_or(Value::Object(Default::default()));
            let tx = c.transaction()?;
            let changed = tx.execute(
                "UPDATE plugins SET spec = ?2, updated_at = ?3 WHERE name = ?1",
                params![name, spec.to_string(), now()],
            )?;
            if changed == 0 {
                return Err(Error::NotFound);
            }
            let version = insert_config_version(&tx, &name, &config, &actor)?;
            tx.commit()?;
            mirror(c, mirror_path.as_deref())?;
            Ok(version)
        })
        .await
    }

    /// Every config version of a plug-in, newest first.
    pub async fn config_history(&self, name: String) -> Result<Vec<ConfigVersion>, Error> {
        self.run(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT version, config, actor, created_at FROM plugin_config_versions
                 WHERE plugin = ?1 ORDER BY version DESC",
            )?;
            let rows = stmt.query_map([&name], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (version, config, actor, created_at) = row?;
                let config = serde_json::from_str(&config).map_err(|e| Error::Corrupt(e.to_string()))?;
                out.push(ConfigVersion { version, config, actor, created_at });
            }
            Ok(out)
        })
        .await
    }
}

/// The config a plug-in runs with now and the version that introduced it.
#[derive(Debug, Clone, Serialize)]
pub struct CurrentConfig {
    pub version: i64,
    pub config: Value,
    /// The whole stored registry entry (config included).
    pub spec: Value,
}

fn stored_spec(conn: &Connection, name: &str) -> Result<Value, Error> {
    let text: Option<String> =
        conn.query_row("SELECT spec FROM plugins WHERE name = ?1", [name], |r| r.get(0)).optional()?;
    let text = text.ok_or(Error::NotFound)?;
    serde_json::from_str(&text).map_err(|e| Error::Corrupt(format!("plugins.spec of {name}: {e}")))
}

impl Store {
    /// A registered plug-in's config and its newest version number (`NotFound` if unknown).
    pub async fn current_config(&self, name: String) -> Result<CurrentConfig, Error> {
        self.run(move |c| {
            let spec = stored_spec(c, &name)?;
            let version: i64 = c.query_row(
                "SELECT COALESCE(MAX(version), 0) FROM plugin_config_versions WHERE plugin = ?1",
                [&name],
                |r| r.get(0),
            )?;
            let config = spec.get("config").cloned().unwrap_or(Value::Object(Default::default()));
            Ok(CurrentConfig { version, config, spec })
        })
        .await
    }

    /// Replaces the config inside the stored spec (every other field as stored), adds it as a new
    /// version with an audit row, trims the history to `keep` versions (0 = all), commits, then
    /// rewrites the mirror. Returns the new version and the stored spec.
    pub async fn set_config(
        &self,
        name: String,
        config: Value,
        actor: String,
        mirror_path: Option<PathBuf>,
        keep: u32,
    ) -> Result<(i64, Value), Error> {
        self.run(move |c| {
            let tx = c.transaction()?;
            let mut spec = stored_spec(&tx, &name)?;
            let Some(fields) = spec.as_object_mut() else {
                return Err(Error::Corrupt(format!("plugins.spec of {name} is not an object")));
            };
            fields.insert("config".into(), config.clone());
            tx.execute(
                "UPDATE plugins SET spec = ?2, updated_at = ?3 WHERE name = ?1",
                params![name, spec.to_string(), now()],
            )?;
            let version = insert_config_version(&tx, &name, &config, &actor)?;
            // The audit row says who changed what; the config itself (secrets) stays out of it.
            super::settings::audit(&tx, &actor, "config.update", &name, &serde_json::json!({ "version": version }))?;
            super::settings::prune_config_versions(&tx, Some(&name), keep)?;
            tx.commit()?;
            mirror(c, mirror_path.as_deref())?;
            Ok((version, spec))
        })
        .await
    }

    /// Sets only `enabled` in the stored spec, so a concurrent config change is never overwritten
    /// by an older copy of the spec.
    pub async fn set_enabled(&self, name: String, enabled: bool, mirror_path: Option<PathBuf>) -> Result<(), Error> {
        self.run(move |c| {
            let tx = c.transaction()?;
            let mut spec = stored_spec(&tx, &name)?;
            let Some(fields) = spec.as_object_mut() else {
                return Err(Error::Corrupt(format!("plugins.spec of {name} is not an object")));
            };
            fields.insert("enabled".into(), Value::Bool(enabled));
            tx.execute(
                "UPDATE plugins SET spec = ?2, updated_at = ?3 WHERE name = ?1",
                params![name, spec.to_string(), now()],
            )?;
            tx.commit()?;
            mirror(c, mirror_path.as_deref())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn seed_update_history_and_mirror() {
        let dir = tempfile::tempdir().unwrap();
        let mirror_path = dir.path().join("plugins.json");
        let store = Store::open(&dir.path().join("bkg.db")).unwrap();
        assert!(store.load_registry().await.unwrap().is_none());
        let a = json!({"name": "a", "builtin": "echo", "config": {"x": 1}});
        let b = json!({"name": "b", "builtin": "echo", "config": {}});
        store.seed_registry(vec![a.clone(), b.clone()], "plugins.json".into()).await.unwrap();
        assert_eq!(store.load_registry().await.unwrap().unwrap(), vec![a.clone(), b.clone()]);

        let a2 = json!({"name": "a", "builtin": "echo", "config": {"x": 2}});
        let v = store.update_config(a2.clone(), "tester".into(), Some(mirror_path.clone())).await.unwrap();
        assert_eq!(v, 2);
        let history = store.config_history("a".into()).await.unwrap();
        assert_eq!(history.iter().map(|h| h.version).collect::<Vec<_>>(), vec![2, 1]);
        assert_eq!(history[0].config, json!({"x": 2}));
        assert_eq!(history[0].actor, "tester");

        let on_disk: Value = serde_json::from_slice(&std::fs::read(&mirror_path).unwrap()).unwrap();
        assert_eq!(on_disk, json!({"plugins": [a2, b]}));

        let dup = store.insert_plugin(json!({"name": "b", "builtin": "echo"}), "t".into(), None).await;
        assert!(matches!(dup, Err(Error::Conflict(_))));
        store.delete_plugin("b".into(), Some(mirror_path.clone())).await.unwrap();
        assert!(matches!(store.delete_plugin("b".into(), None).await, Err(Error::NotFound)));
        let on_disk: Value = serde_json::from_slice(&std::fs::read(&mirror_path).unwrap()).unwrap();
        assert_eq!(on_disk["plugins"].as_array().unwrap().len(), 1);
    }
}
