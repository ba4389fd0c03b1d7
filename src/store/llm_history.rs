//! The LLM request history (`llm_history`): one row per generation, written fire-and-forget
//! from the HTTP layer and pruned to `retention.llm_history_max_rows` and
//! `retention.llm_history_max_age_days` after every insert.
//!
//! A write never makes a request wait or fail: [`Store::record_llm`] only queues a job on the
//! store thread, and a failed insert is logged as a warning there. Rows hold what the client
//! sent in the body and what it was answered, never headers or credentials.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;
use serde_json::Value;

use super::{Error, Job, Store};

/// One history row.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LlmEntry {
    /// Assigned by the database (0 before the insert).
    pub id: i64,
    pub req_id: Option<String>,
    /// `user:<name>` or `key:<id>`.
    pub actor: String,
    /// `/llm/infer`, `/llm/stream`, `/v1/chat/completions` or `replay`.
    pub route: String,
    pub model: Option<String>,
    /// The `llm.generate` params, an `/llm/infer` body without `stream` (what replay re-runs).
    pub request: Value,
    pub stream: bool,
    /// `ok`, `cancelled` or `error`.
    pub outcome: String,
    /// The text the client got (partial when cancelled or failed midway).
    pub output: String,
    pub finish_reason: Option<String>,
    /// `{status, code, message}` of a failed request.
    pub error: Option<Value>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub queue_ms: Option<i64>,
    pub ttft_ms: Option<i64>,
    pub total_ms: Option<i64>,
    pub replay_of: Option<i64>,
    /// Unix seconds, set at insert (when the request ended).
    pub created_at: i64,
}

/// How much history is kept; `max_rows == 0` means history is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LlmHistoryBounds {
    pub max_rows: u32,
    pub max_age_days: u32,
}

/// A page of `GET /llm/history`: newest first, ids below `before`.
#[derive(Debug, Clone, Default)]
pub struct LlmHistoryQuery {
    pub before: Option<i64>,
    pub actor: Option<String>,
    pub route: Option<String>,
    pub limit: u32,
}

const COLUMNS: &str = "id, req_id, actor, route, model, request, stream, outcome, output, finish_reason, error,
     prompt_tokens, completion_tokens, queue_ms, ttft_ms, total_ms, replay_of, created_at";

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn read_row(r: &Row<'_>) -> rusqlite::Result<LlmEntry> {
    let request: String = r.get(5)?;
    let error: Option<String> = r.get(10)?;
    Ok(LlmEntry {
        id: r.get(0)?,
        req_id: r.get(1)?,
        actor: r.get(2)?,
        route: r.get(3)?,
        model: r.get(4)?,
        request: serde_json::from_str(&request).unwrap_or(Value::Null),
        stream: r.get(6)?,
        outcome: r.get(7)?,
        output: r.get(8)?,
        finish_reason: r.get(9)?,
        error: error.and_then(|e| serde_json::from_str(&e).ok()),
        prompt_tokens: r.get(11)?,
        completion_tokens: r.get(12)?,
        queue_ms: r.get(13)?,
        ttft_ms: r.get(14)?,
        total_ms: r.get(15)?,
        replay_of: r.get(16)?,
        created_at: r.get(17)?,
    })
}

fn insert(conn: &Connection, e: &LlmEntry, now: i64) -> Result<i64, Error> {
    conn.execute(
        "INSERT INTO llm_history (req_id, actor, route, model, request, stream, outcome, output, finish_reason,
                                  error, prompt_tokens, completion_tokens, queue_ms, ttft_ms, total_ms,
                                  replay_of, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
        params![
            e.req_id,
            e.actor,
            e.route,
            e.model,
            e.request.to_string(),
            e.stream,
            e.outcome,
            e.output,
            e.finish_reason,
            e.error.as_ref().map(Value::to_string),
            e.prompt_tokens,
            e.completion_tokens,
            e.queue_ms,
            e.ttft_ms,
            e.total_ms,
            e.replay_of,
            now,
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Deletes rows beyond the newest `max_rows` and rows older than `max_age_days`; returns how
/// many. Both deletes are range scans (ids only grow, `created_at` is indexed), so running this
/// after every insert costs next to nothing when there is nothing to delete. `max_rows == 0`
/// (history off) deletes nothing by count.
fn prune(conn: &Connection, bounds: LlmHistoryBounds, now: i64) -> Result<usize, Error> {
    let mut deleted = 0;
    if bounds.max_rows > 0 {
        deleted += conn.execute(
            "DELETE FROM llm_history WHERE id <= (SELECT MAX(id) FROM llm_history) - ?1",
            [i64::from(bounds.max_rows)],
        )?;
    }
    let cutoff = now - i64::from(bounds.max_age_days) * 86_400;
    deleted += conn.execute("DELETE FROM llm_history WHERE created_at < ?1", [cutoff])?;
    Ok(deleted)
}

impl Store {
    /// Queues `entry` for insertion followed by a prune to `bounds`, without waiting. Failures
    /// are logged on the store thread; the caller never sees them.
    pub fn record_llm(&self, entry: LlmEntry, bounds: LlmHistoryBounds) {
        let job: Job = Box::new(move |conn| {
            let now = unix_now();
            let result = insert(conn, &entry, now).and_then(|_| prune(conn, bounds, now));
            if let Err(e) = result {
                tracing::warn!(error = %e, route = %entry.route, req_id = ?entry.req_id, "cannot record llm history");
            }
        });
        if self.jobs.send(job).is_err() {
            tracing::warn!("cannot record llm history: the store thread has stopped");
        }
    }

    /// One page of history, newest first.
    pub async fn llm_history(&self, q: LlmHistoryQuery) -> Result<Vec<LlmEntry>, Error> {
        self.run(move |c| {
            let sql = format!(
                "SELECT {COLUMNS} FROM llm_history
                 WHERE (?1 IS NULL OR id < ?1) AND (?2 IS NULL OR actor = ?2) AND (?3 IS NULL OR route = ?3)
                 ORDER BY id DESC LIMIT ?4"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![q.before, q.actor, q.route, i64::from(q.limit)], read_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// One row; [`Error::NotFound`] when there is none with this id.
    pub async fn llm_history_entry(&self, id: i64) -> Result<LlmEntry, Error> {
        self.run(move |c| {
            let sql = format!("SELECT {COLUMNS} FROM llm_history WHERE id = ?1");
            c.query_row(&sql, [id], read_row).optional()?.ok_or(Error::NotFound)
        })
        .await
    }

    /// Applies `bounds` now (after the retention settings changed); returns the rows deleted.
    pub async fn prune_llm_history(&self, bounds: LlmHistoryBounds) -> Result<usize, Error> {
        self.run(move |c| prune(c, bounds, unix_now())).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(actor: &str, route: &str) -> LlmEntry {
        LlmEntry {
            actor: actor.into(),
            route: route.into(),
            request: json!({"prompt": "hi"}),
            outcome: "ok".into(),
            output: "hello".into(),
            prompt_tokens: Some(3),
            ..LlmEntry::default()
        }
    }

    const BOUNDS: LlmHistoryBounds = LlmHistoryBounds { max_rows: 3, max_age_days: 30 };

    /// Waits for the fire-and-forget writes queued before it (the store runs jobs in order).
    async fn flush(store: &Store) {
        store.ping().await;
    }

    #[tokio::test]
    async fn insert_page_and_prune_by_count() {
        let store = Store::open_in_memory().unwrap();
        for i in 0..5 {
            store.record_llm(entry(if i % 2 == 0 { "user:a" } else { "key:b" }, "/llm/infer"), BOUNDS);
        }
        flush(&store).await;
        let all = store.llm_history(LlmHistoryQuery { limit: 10, ..Default::default() }).await.unwrap();
        assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), vec![5, 4, 3], "newest three kept");
        assert_eq!(all[0].request, json!({"prompt": "hi"}));
        assert!(all[0].created_at > 0);
        let page =
            store.llm_history(LlmHistoryQuery { before: Some(5), limit: 1, ..Default::default() }).await.unwrap();
        assert_eq!(page[0].id, 4);
        let mine = store.llm_history(LlmHistoryQuery { actor: Some("user:a".into()), limit: 10, ..Default::default() });
        assert_eq!(mine.await.unwrap().iter().map(|e| e.id).collect::<Vec<_>>(), vec![5, 3]);
        assert_eq!(store.llm_history_entry(4).await.unwrap().actor, "key:b");
        assert!(matches!(store.llm_history_entry(1).await, Err(Error::NotFound)));
        assert_eq!(store.prune_llm_history(LlmHistoryBounds { max_rows: 1, max_age_days: 30 }).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn prune_by_age() {
        let store = Store::open_in_memory().unwrap();
        store.record_llm(entry("user:a", "/llm/infer"), BOUNDS);
        flush(&store).await;
        store.run(|c| Ok(c.execute("UPDATE llm_history SET created_at = created_at - 31 * 86400", [])?)).await.unwrap();
        store.record_llm(entry("user:a", "/llm/infer"), BOUNDS);
        flush(&store).await;
        let all = store.llm_history(LlmHistoryQuery { limit: 10, ..Default::default() }).await.unwrap();
        assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), vec![2]);
    }
}
