//! `rag`: the retrieval plug-in of bkg.
//!
//! It indexes the configured roots (Markdown, reStructuredText, HTML, plain text and source
//! code) into a tantivy index on disk plus a file of MiniLM sentence embeddings, and answers
//! queries in three modes: `bm25`, `vector` and `hybrid` (reciprocal rank fusion of the two).
//! Every result cites its source exactly: `{path, sha256, chunk_id, start, end}`, where
//! `file[start..end]` is the chunk text for text formats, and the markup the text was extracted
//! from for HTML.
//!
//! | Method | Params | Result |
//! |---|---|---|
//! | `rag.query` | `{query, top_k, mode?: bm25\|vector\|hybrid, path_prefix?}` | `{results: [{text, score, source, heading}], mode, took_ms}` |
//! | `rag.reindex` | `{full?: bool}` | counts: `added`, `changed`, `deleted`, `unchanged`, `skipped`, … |
//! | `rag.status` | `{}` | index size, model state, progress of a running reindex |
//!
//! Config: see [`config::RagConfig`]. Bad input is `-32602` with `data.field`. All index and
//! model work runs on blocking threads (`spawn_blocking`), never on the async workers.
//!
//! Modules: [`config`] (configuration), [`paths`] (walk, exclusion, `path_prefix` checks),
//! [`html`] (text extraction with a source map), [`blocks`] and [`chunk`] (structure and
//! chunking), [`doc`] (one file → chunks), [`embed`] (candle MiniLM), [`vectors`] (vector file
//! and brute-force search), [`store`] (tantivy), [`engine`] (reindex, query, status).

pub mod blocks;
pub mod chunk;
pub mod config;
pub mod doc;
pub mod embed;
pub mod engine;
pub mod error;
pub mod html;
pub mod paths;
pub mod store;
pub mod vectors;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bkg_plugin_sdk::{CallContext, Health, HealthStatus, InitializeParams, MethodInfo, Plugin, PluginInfo, RpcError};
use serde_json::{Value, json};

use crate::config::RagConfig;
use crate::engine::{Engine, Mode};
use crate::error::Error;

/// Runs the rag plug-in on this process's stdin/stdout (`bkg plugin rag`).
pub fn run() -> ExitCode {
    bkg_plugin_sdk::run(Rag::default())
}

/// The plug-in: an engine, created in `initialize`.
#[derive(Debug, Default)]
pub struct Rag {
    engine: OnceLock<Arc<Engine>>,
}

/// Runs blocking engine work off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, RpcError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(RpcError::from),
        Err(e) => Err(RpcError::internal(format!("rag worker failed: {e}"))),
    }
}

fn field<'a>(params: &'a Value, name: &str) -> Option<&'a Value> {
    params.get(name).filter(|v| !v.is_null())
}

/// Parses `rag.query` params.
fn query_params(params: &Value) -> Result<(String, usize, Mode, Option<String>), Error> {
    let text = match field(params, "query") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(Error::invalid("query", "must be a string")),
        None => return Err(Error::invalid("query", "is required")),
    };
    let top_k = match field(params, "top_k") {
        None => 5,
        Some(v) => match v.as_u64() {
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
            None => return Err(Error::invalid("top_k", "must be a positive integer")),
        },
    };
    let mode = match field(params, "mode") {
        None => Mode::Hybrid,
        Some(Value::String(s)) => Mode::parse(s)
            .ok_or_else(|| Error::invalid("mode", format!("must be bm25, vector or hybrid, got {s:?}")))?,
        Some(_) => return Err(Error::invalid("mode", "must be bm25, vector or hybrid")),
    };
    let prefix = match field(params, "path_prefix") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(Error::invalid("path_prefix", "must be a string")),
    };
    for key in params.as_object().map(|m| m.keys().collect::<Vec<_>>()).unwrap_or_default() {
        if !matches!(key.as_str(), "query" | "top_k" | "mode" | "path_prefix" | "_meta" | "stream") {
            return Err(Error::invalid("params", format!("unknown field {key:?}")));
        }
    }
    Ok((text, top_k, mode, prefix))
}

fn full_param(params: &Value) -> Result<bool, Error> {
    for key in params.as_object().map(|m| m.keys().collect::<Vec<_>>()).unwrap_or_default() {
        if !matches!(key.as_str(), "full" | "_meta" | "stream") {
            return Err(Error::invalid("params", format!("unknown field {key:?}")));
        }
    }
    match field(params, "full") {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(Error::invalid("full", "must be a boolean")),
    }
}

impl Rag {
    fn engine(&self) -> Result<Arc<Engine>, RpcError> {
        self.engine.get().cloned().ok_or_else(|| RpcError::internal("not initialized"))
    }
}

impl Plugin for Rag {
    fn info(&self) -> PluginInfo {
        PluginInfo { name: "rag".into(), version: env!("CARGO_PKG_VERSION").into(), sdk: None }
    }

    fn methods(&self) -> BTreeMap<String, MethodInfo> {
        BTreeMap::from([
            ("rag.query".to_string(), MethodInfo { timeout_ms: Some(30_000), idempotent: true, stream: false }),
            // A reindex of a large corpus embeds for a long time; callers pass their own deadline.
            (
                "rag.reindex".to_string(),
                MethodInfo { timeout_ms: Some(6 * 3_600_000), idempotent: true, stream: false },
            ),
            ("rag.status".to_string(), MethodInfo { timeout_ms: Some(5_000), idempotent: true, stream: false }),
        ])
    }

    fn config_schema(&self) -> Option<Value> {
        Some(json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "rag plug-in config",
            "type": "object",
            "required": ["roots"],
            "properties": {
                "roots": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                          "description": "Directories to index: absolute, or relative to the plug-in data dir (created when missing)."},
                "index_dir": {"type": "string", "description": "Default <data_dir>/rag-index."},
                "chunk_target_words": {"type": "integer", "minimum": 16, "maximum": 1000, "default": config::DEFAULT_TARGET_WORDS},
                "chunk_overlap_words": {"type": "integer", "minimum": 0},
                "model_dir": {"type": "string", "description": "all-MiniLM-L6-v2 files; default $BKG_MODEL_CACHE or ~/.cache/bkg/models, then all-MiniLM-L6-v2"},
                "max_file_bytes": {"type": "integer", "minimum": 1, "default": config::DEFAULT_MAX_FILE_BYTES},
                "exclude": {"type": "array", "items": {"type": "string"}},
                "max_top_k": {"type": "integer", "minimum": 1, "maximum": 1000, "default": config::DEFAULT_MAX_TOP_K},
                "embeddings": {"type": "boolean", "default": true},
                "rrf_k": {"type": "number", "minimum": 0, "maximum": 1000, "default": config::DEFAULT_RRF_K},
                "vector_weight": {"type": "number", "minimum": 0, "maximum": 100, "default": config::DEFAULT_VECTOR_WEIGHT}
            },
            "additionalProperties": false
        }))
    }

    async fn initialize(&self, params: &InitializeParams) -> Result<(), RpcError> {
        let cfg = RagConfig::from_value(&params.config)?;
        let data_dir = params.data_dir.as_ref().map(PathBuf::from);
        let resolved = cfg.resolve(data_dir.as_deref())?;
        tracing::info!(roots = ?resolved.roots, index_dir = %resolved.index_dir.display(), "rag starting");
        let engine = blocking(move || Engine::open(resolved)).await?;
        let _ = self.engine.set(Arc::new(engine));
        Ok(())
    }

    async fn health(&self) -> Health {
        match self.engine.get() {
            None => Health::with_status(HealthStatus::Starting, "not initialized"),
            Some(engine) => match engine.degraded_reason() {
                Some(reason) => Health::with_status(HealthStatus::Degraded, reason),
                None => Health::serving(),
            },
        }
    }

    async fn call(&self, method: &str, params: Value, ctx: CallContext) -> Result<Value, RpcError> {
        let engine = self.engine()?;
        match method {
            "rag.query" => {
                let (text, top_k, mode, prefix) = query_params(&params)?;
                blocking(move || {
                    let started = Instant::now();
                    let q = engine.validate(&text, top_k, mode, prefix.as_deref())?;
                    let results = engine.query(&q)?;
                    Ok(json!({
                        "results": results,
                        "mode": mode.as_str(),
                        "took_ms": started.elapsed().as_secs_f64() * 1000.0,
                    }))
                })
                .await
            }
            "rag.reindex" => {
                let full = full_param(&params)?;
                let token = ctx.cancellation_token();
                blocking(move || {
                    let report = engine.reindex(full, &|| token.is_cancelled())?;
                    serde_json::to_value(report).map_err(|e| Error::Manifest(e.to_string()))
                })
                .await
            }
            "rag.status" => {
                blocking(move || {
                    let mut status = engine.status();
                    status["index_bytes"] = json!(engine.index_bytes());
                    Ok(status)
                })
                .await
            }
            other => Err(RpcError::method_not_found(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_checked_field_by_field() {
        let ok = query_params(&json!({"query": "x", "top_k": 3, "mode": "bm25", "path_prefix": "/a"})).unwrap();
        assert_eq!(ok, ("x".into(), 3, Mode::Bm25, Some("/a".into())));
        assert_eq!(query_params(&json!({"query": "x"})).unwrap().2, Mode::Hybrid);
        for (params, field) in [
            (json!({}), "query"),
            (json!({"query": 3}), "query"),
            (json!({"query": "x", "top_k": -1}), "top_k"),
            (json!({"query": "x", "top_k": 1.5}), "top_k"),
            (json!({"query": "x", "mode": "fuzzy"}), "mode"),
            (json!({"query": "x", "path_prefix": 7}), "path_prefix"),
            (json!({"query": "x", "topk": 7}), "params"),
        ] {
            match query_params(&params) {
                Err(Error::InvalidInput { field: f, .. }) => assert_eq!(f, field, "{params}"),
                other => panic!("{params}: {other:?}"),
            }
        }
        assert!(full_param(&json!({"full": "yes"})).is_err());
        assert!(full_param(&json!({"full": true, "_meta": {}})).unwrap());
    }
}
