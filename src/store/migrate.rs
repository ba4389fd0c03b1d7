//! Schema migrations keyed on `PRAGMA user_version`.
//!
//! Version 1 is `schema.sql` itself. A later change appends a step here (an `ALTER`, a backfill)
//! and updates `schema.sql` to the resulting schema; released steps are never edited.

use rusqlite::Connection;

use super::Error;

/// The canonical schema, embedded.
pub(super) const SCHEMA: &str = include_str!("../../schema.sql");

/// Steps after version 1, in order; step `i` brings the schema to version `i + 2`.
const STEPS: &[&str] = &[];

/// The schema version this build writes.
pub(super) const CURRENT_VERSION: i64 = 1 + STEPS.len() as i64;

pub(super) fn migrate(conn: &mut Connection) -> Result<(), Error> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > CURRENT_VERSION {
        return Err(Error::Corrupt(format!(
            "database schema version {version} is newer than this build supports ({CURRENT_VERSION})"
        )));
    }
    let tx = conn.transaction()?;
    if version == 0 {
        tx.execute_batch(SCHEMA)?;
    } else {
        for step in &STEPS[(version - 1) as usize..] {
            tx.execute_batch(step)?;
        }
    }
    tx.pragma_update(None, "user_version", CURRENT_VERSION)?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_database_gets_the_current_version_and_migrating_twice_is_a_no_op() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let v: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(v, CURRENT_VERSION);
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'plugins'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tables, 1);
    }

    #[test]
    fn refuses_a_newer_database() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", CURRENT_VERSION + 1).unwrap();
        assert!(matches!(migrate(&mut conn), Err(Error::Corrupt(_))));
    }
}
