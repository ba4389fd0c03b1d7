//! The engine: incremental reindexing, retrieval in three modes, status. Blocking code; the
//! plug-in runs every call on a blocking thread.
//!
//! Consistency model:
//! - Queries read an immutable [`Snapshot`] (a tantivy searcher, the manifest and the vector
//!   matrix of one commit) behind an `Arc`; a reindex builds the next commit on the side and
//!   swaps the snapshot only after it committed, so queries keep answering from the previous
//!   index while it runs.
//! - A reindex makes exactly one tantivy commit, with the new manifest as payload, after the
//!   vector rows it references were fsynced. A crash (or a cancel) before that commit leaves
//!   the previous commit, manifest and vectors in force.
//! - One reindex at a time (a second one gets [`Error::Busy`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tantivy::collector::DocSetCollector;
use tantivy::schema::{TantivyDocument, Value as _};
use tantivy::{DocAddress, IndexWriter, Searcher};

use crate::config::{Fusion, Resolved};
use crate::doc::{self, Prepared, SkipReason};
use crate::embed::{DIM, Embedder};
use crate::error::{Error, Result};
use crate::paths;
use crate::store::{FileEntry, MANIFEST_VERSION, Manifest, NO_VECTOR, Store};
use crate::vectors::{Matrix, VectorFile};

/// Chunks collected before embedding (one `Embedder::embed` call, which batches by length).
const EMBED_BATCH: usize = 64;
/// Longest accepted query, in bytes.
pub const MAX_QUERY_BYTES: usize = 2048;
/// Candidates each leg contributes: max(50, 5·top_k).
fn depth(top_k: usize) -> usize {
    (5 * top_k).max(50)
}

/// Retrieval mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Bm25,
    Vector,
    Hybrid,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "bm25" => Some(Mode::Bm25),
            "vector" => Some(Mode::Vector),
            "hybrid" => Some(Mode::Hybrid),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Bm25 => "bm25",
            Mode::Vector => "vector",
            Mode::Hybrid => "hybrid",
        }
    }
}

/// A validated query.
#[derive(Debug, Clone)]
pub struct Query {
    pub text: String,
    pub top_k: usize,
    pub mode: Mode,
    /// Canonical path prefix (see [`paths::validate_prefix`]).
    pub path_prefix: Option<String>,
    /// Hybrid fusion parameters (from the config; the evaluation harness varies them).
    pub fusion: Fusion,
}

/// Where a result comes from (the daemon reads it back from `rag.query` answers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub path: String,
    pub sha256: String,
    pub chunk_id: String,
    pub start: u64,
    pub end: u64,
}

/// One result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    pub text: String,
    pub score: f32,
    pub source: Source,
    /// The headings the chunk sits under (`H1 › H2`).
    pub heading: String,
}

/// What a reindex did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReindexReport {
    pub full: bool,
    /// Why a full reindex ran (`requested`, `new index`, `parameters changed`, `compaction`).
    pub full_reason: Option<String>,
    pub added: u64,
    pub changed: u64,
    pub deleted: u64,
    pub unchanged: u64,
    pub skipped: u64,
    pub skipped_by_reason: BTreeMap<String, u64>,
    /// Files chunked in this run (added + changed, or everything on a full reindex).
    pub reprocessed: u64,
    pub chunks_added: u64,
    /// Vectors computed by the model in this run.
    pub embedded: u64,
    /// Vectors reused from earlier runs (same text, same model).
    pub vectors_reused: u64,
    pub files: u64,
    pub chunks: u64,
    pub bytes_read: u64,
    pub generation: u64,
    pub duration_ms: u64,
}

/// Progress of the running reindex, for `rag.status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Progress {
    pub phase: &'static str,
    pub started_at_ms: u64,
    pub files_total: u64,
    pub files_done: u64,
    pub chunks_added: u64,
    pub embedded: u64,
}

/// State of the embedding model.
#[derive(Debug, Clone)]
pub enum ModelState {
    Loaded(Arc<Embedder>),
    Disabled,
    Missing(String),
}

/// One commit as queries see it.
pub struct Snapshot {
    pub searcher: Searcher,
    pub manifest: Manifest,
    pub matrix: Matrix,
    pub chunks: u64,
}

/// The engine.
pub struct Engine {
    cfg: Resolved,
    store: Store,
    model: ModelState,
    snapshot: RwLock<Arc<Snapshot>>,
    reindexing: Mutex<()>,
    running: AtomicBool,
    progress: Mutex<Option<Progress>>,
    last_report: Mutex<Option<ReindexReport>>,
    /// Set when the index on disk was unreadable at start and was moved aside.
    recovered: Option<String>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("index_dir", &self.cfg.index_dir).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Fingerprint of everything that decides what a file turns into.
fn fingerprint(cfg: &Resolved) -> String {
    format!(
        "extractor={};chunker=words:{}:{};manifest={}",
        doc::EXTRACTOR_VERSION,
        cfg.chunk.target_words,
        cfg.chunk.overlap_words,
        MANIFEST_VERSION
    )
}

/// Cache key of an embedded text.
fn text_hash(model: &str, input: &str) -> u64 {
    let digest =
        Sha256::new().chain_update(model.as_bytes()).chain_update([0u8]).chain_update(input.as_bytes()).finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    // NO_VECTOR is reserved; a collision with it only costs a cache miss.
    u64::from_le_bytes(b)
}

impl Engine {
    /// Opens (or creates) the index and loads the model.
    pub fn open(cfg: Resolved) -> Result<Engine> {
        let (store, recovered) = match Store::open(&cfg.index_dir) {
            Ok(s) => (s, None),
            Err(e) => {
                // An unreadable index is derived data: keep it for inspection, start over.
                let aside = cfg.index_dir.with_extension(format!("corrupt-{}", now_ms()));
                tracing::error!(error = %e, moved_to = %aside.display(), "the index cannot be opened; starting a new one");
                std::fs::rename(&cfg.index_dir, &aside)
                    .map_err(|err| Error::io(format!("move {} aside", cfg.index_dir.display()), err))?;
                (
                    Store::open(&cfg.index_dir)?,
                    Some(format!(
                        "the previous index was unreadable ({e}) and was moved to {}; run rag.reindex",
                        aside.display()
                    )),
                )
            }
        };
        let model = if !cfg.embeddings {
            ModelState::Disabled
        } else {
            match &cfg.model_dir {
                None => ModelState::Missing(
                    "no model_dir configured and neither BKG_MODEL_CACHE nor HOME is set; run scripts/fetch-models.sh minilm"
                        .into(),
                ),
                Some(dir) => {
                    let started = Instant::now();
                    match Embedder::load(dir) {
                        Ok(m) => {
                            tracing::info!(model = m.id(), ms = started.elapsed().as_millis() as u64, "embedding model loaded");
                            ModelState::Loaded(Arc::new(m))
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "embedding model unavailable; bm25 only");
                            ModelState::Missing(e.to_string())
                        }
                    }
                }
            }
        };
        let manifest = match store.manifest() {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "unreadable manifest; the next reindex rebuilds everything");
                Manifest::default()
            }
        };
        let snapshot = build_snapshot(&store, &cfg.index_dir, manifest)?;
        remove_stray_vector_files(&cfg.index_dir, snapshot.manifest.vectors_file.as_deref());
        tracing::info!(
            generation = snapshot.manifest.generation,
            files = snapshot.manifest.files.len(),
            chunks = snapshot.chunks,
            vectors = snapshot.matrix.len(),
            "index opened"
        );
        Ok(Engine {
            cfg,
            store,
            model,
            snapshot: RwLock::new(Arc::new(snapshot)),
            reindexing: Mutex::new(()),
            running: AtomicBool::new(false),
            progress: Mutex::new(None),
            last_report: Mutex::new(None),
            recovered,
        })
    }

    pub fn config(&self) -> &Resolved {
        &self.cfg
    }

    pub fn model(&self) -> &ModelState {
        &self.model
    }

    /// The snapshot queries read now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshot.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Why the plug-in is not fully healthy, if it is not.
    pub fn degraded_reason(&self) -> Option<String> {
        if let ModelState::Missing(msg) = &self.model {
            return Some(format!("vector and hybrid search unavailable: {msg}"));
        }
        self.recovered.clone()
    }

    /// Validates raw query parameters.
    pub fn validate(&self, text: &str, top_k: usize, mode: Mode, path_prefix: Option<&str>) -> Result<Query> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(Error::invalid("query", "must not be empty"));
        }
        if text.len() > MAX_QUERY_BYTES {
            return Err(Error::invalid("query", format!("must be at most {MAX_QUERY_BYTES} bytes")));
        }
        if top_k == 0 || top_k > self.cfg.max_top_k {
            return Err(Error::invalid("top_k", format!("must be between 1 and {}", self.cfg.max_top_k)));
        }
        let path_prefix = path_prefix.map(|p| paths::validate_prefix(p, &self.cfg.roots)).transpose()?;
        Ok(Query { text: trimmed.to_owned(), top_k, mode, path_prefix, fusion: self.cfg.fusion })
    }

    fn embedder(&self) -> Result<&Arc<Embedder>> {
        match &self.model {
            ModelState::Loaded(m) => Ok(m),
            ModelState::Disabled => Err(Error::ModelUnavailable(
                "embeddings are disabled in the config (embeddings: false); use mode bm25".into(),
            )),
            ModelState::Missing(msg) => Err(Error::ModelUnavailable(msg.clone())),
        }
    }

    /// Runs a query against the current snapshot.
    pub fn query(&self, q: &Query) -> Result<Vec<Hit>> {
        let snap = self.snapshot();
        let depth = depth(q.top_k);
        let prefix = q.path_prefix.as_deref();
        let bm25 = if q.mode == Mode::Vector {
            Vec::new()
        } else {
            self.store.bm25(&snap.searcher, &q.text, depth, prefix)?
        };
        let vector = if q.mode == Mode::Bm25 {
            Vec::new()
        } else {
            let embedder = self.embedder()?;
            let qv = embedder.embed_one(&q.text)?;
            let allowed = match prefix {
                Some(p) => Some(snap.searcher.search(&*self.store.prefix_filter(p), &DocSetCollector)?),
                None => None,
            };
            snap.matrix.search(&qv, depth, allowed.as_ref())
        };
        let ranked: Vec<(f32, DocAddress)> = match q.mode {
            Mode::Bm25 => bm25,
            Mode::Vector => vector,
            Mode::Hybrid => rrf(&[(&bm25, 1.0), (&vector, q.fusion.vector_weight)], q.fusion.k),
        };
        self.collect_hits(&snap.searcher, &ranked, q.top_k)
    }

    /// Fetches stored fields in rank order, dropping hits that mostly repeat a better hit of the
    /// same file (byte ranges overlapping by more than half of the shorter one).
    fn collect_hits(&self, searcher: &Searcher, ranked: &[(f32, DocAddress)], top_k: usize) -> Result<Vec<Hit>> {
        let f = &self.store.fields;
        let mut hits: Vec<Hit> = Vec::with_capacity(top_k);
        for (score, addr) in ranked {
            if hits.len() >= top_k {
                break;
            }
            let d: TantivyDocument = searcher.doc(*addr)?;
            let text_of = |field| d.get_first(field).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
            let u64_of = |field| d.get_first(field).and_then(|v| v.as_u64()).unwrap_or_default();
            let source = Source {
                path: text_of(f.path),
                sha256: text_of(f.sha256),
                chunk_id: text_of(f.chunk_id),
                start: u64_of(f.start),
                end: u64_of(f.end),
            };
            let overlaps = hits.iter().any(|h| {
                h.source.path == source.path && {
                    let lo = h.source.start.max(source.start);
                    let hi = h.source.end.min(source.end);
                    let shorter = (h.source.end - h.source.start).min(source.end - source.start).max(1);
                    hi > lo && (hi - lo) * 2 > shorter
                }
            });
            if overlaps || hits.iter().any(|h| h.source.chunk_id == source.chunk_id) {
                continue;
            }
            hits.push(Hit { text: text_of(f.body), score: *score, source, heading: text_of(f.heading) });
        }
        Ok(hits)
    }

    /// Status for `rag.status`.
    pub fn status(&self) -> Value {
        let snap = self.snapshot();
        let model = match &self.model {
            ModelState::Loaded(m) => json!({"state": "loaded", "id": m.id()}),
            ModelState::Disabled => json!({"state": "disabled"}),
            ModelState::Missing(msg) => json!({"state": "missing", "detail": msg}),
        };
        let chunks = snap.chunks;
        let coverage = if chunks == 0 { 1.0 } else { snap.matrix.len() as f64 / chunks as f64 };
        let mut formats: BTreeMap<String, u64> = BTreeMap::new();
        for entry in snap.manifest.files.values() {
            let key =
                serde_json::to_value(entry.format).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
            *formats.entry(key).or_default() += 1;
        }
        json!({
            "state": if self.running.load(Ordering::Acquire) { "indexing" } else { "idle" },
            "generation": snap.manifest.generation,
            "files": snap.manifest.files.len(),
            "files_by_format": formats,
            "chunks": chunks,
            "vectors": snap.matrix.len(),
            "vector_coverage": coverage,
            "vector_memory_bytes": snap.matrix.bytes(),
            "model": model,
            "roots": self.cfg.roots,
            "index_dir": self.cfg.index_dir,
            "chunk_target_words": self.cfg.chunk.target_words,
            "progress": *lock(&self.progress),
            "last_reindex": *lock(&self.last_report),
            "degraded": self.degraded_reason(),
        })
    }

    /// Reindexes the roots: incremental by content hash, or everything when `full`.
    /// `cancelled` is polled between files; a cancelled reindex commits nothing.
    pub fn reindex(&self, full: bool, cancelled: &dyn Fn() -> bool) -> Result<ReindexReport> {
        let Ok(_guard) = self.reindexing.try_lock() else {
            return Err(Error::Busy);
        };
        self.running.store(true, Ordering::Release);
        *lock(&self.progress) = Some(Progress { phase: "scanning", started_at_ms: now_ms(), ..Default::default() });
        let result = self.reindex_locked(full, cancelled);
        *lock(&self.progress) = None;
        self.running.store(false, Ordering::Release);
        match &result {
            Ok(report) => {
                tracing::info!(
                    full = report.full,
                    added = report.added,
                    changed = report.changed,
                    deleted = report.deleted,
                    unchanged = report.unchanged,
                    skipped = report.skipped,
                    chunks_added = report.chunks_added,
                    embedded = report.embedded,
                    generation = report.generation,
                    ms = report.duration_ms,
                    "reindex committed: {} added, {} changed, {} deleted, {} unchanged, {} skipped; {} chunks, {} embedded, in {} ms",
                    report.added,
                    report.changed,
                    report.deleted,
                    report.unchanged,
                    report.skipped,
                    report.chunks_added,
                    report.embedded,
                    report.duration_ms
                );
                *lock(&self.last_report) = Some(report.clone());
            }
            Err(Error::Cancelled) => tracing::warn!("reindex cancelled; the previous index stays in force"),
            Err(e) => tracing::error!(error = %e, "reindex failed; the previous index stays in force"),
        }
        result
    }

    fn set_progress(&self, f: impl FnOnce(&mut Progress)) {
        if let Some(p) = lock(&self.progress).as_mut() {
            f(p);
        }
    }

    fn reindex_locked(&self, requested_full: bool, cancelled: &dyn Fn() -> bool) -> Result<ReindexReport> {
        let started = Instant::now();
        let snap = self.snapshot();
        let old = &snap.manifest;
        let fp = fingerprint(&self.cfg);
        let embedder = match &self.model {
            ModelState::Loaded(m) => Some(Arc::clone(m)),
            _ => None,
        };
        let model_id = embedder.as_ref().map(|m| m.id().to_owned());
        let old_rows = old.vector_rows;
        let full_reason = if requested_full {
            Some("requested")
        } else if old.generation == 0 {
            Some("new index")
        } else if old.fingerprint != fp || old.version != MANIFEST_VERSION {
            Some("parameters changed")
        } else if old_rows > 1024 && old_rows > 2 * snap.matrix.len() as u64 {
            Some("compaction")
        } else {
            None
        };
        let full = full_reason.is_some();
        let generation = old.generation + 1;
        // Vectors of the old commit can be reused only if they come from the same model.
        let reuse = model_id.is_some() && old.model == model_id;
        let old_vectors = match (&old.vectors_file, reuse) {
            (Some(name), true) => Some(VectorFile::open(&self.cfg.index_dir.join(name))?),
            _ => None,
        };
        let cache: HashMap<u64, u64> = if reuse { vector_cache(&snap)? } else { HashMap::new() };
        // Where new rows go: a fresh file on a full reindex (or when there is none yet).
        let (mut vectors, vectors_name, fresh_file) = match (&old.vectors_file, full) {
            (Some(name), false) if old_vectors.is_some() || model_id.is_none() => {
                (VectorFile::open(&self.cfg.index_dir.join(name))?, name.clone(), false)
            }
            _ => {
                let name = format!("vectors-{generation}.f32");
                (VectorFile::create(&self.cfg.index_dir.join(&name))?, name, true)
            }
        };
        let mut report =
            ReindexReport { full, full_reason: full_reason.map(str::to_owned), generation, ..Default::default() };

        let (found, walk_skips) = paths::walk(&self.cfg.roots, &self.cfg.exclude, &self.cfg.index_dir);
        for (reason, n) in [
            ("symlink", walk_skips.symlink),
            ("non_utf8_name", walk_skips.non_utf8_name),
            ("unreadable", walk_skips.unreadable),
            ("special", walk_skips.special),
        ] {
            if n > 0 {
                report.skipped += n;
                *report.skipped_by_reason.entry(reason.into()).or_default() += n;
            }
        }
        self.set_progress(|p| {
            p.phase = "indexing";
            p.files_total = found.len() as u64;
        });

        let mut writer = self.store.writer()?;
        let outcome = (|| -> Result<BTreeMap<String, FileEntry>> {
            if full {
                writer.delete_all_documents()?;
            }
            let mut batch = EmbedBatch::default();
            // text hash → row of vectors written by this run (identical texts embed once).
            let mut fresh: HashMap<u64, u64> = HashMap::new();
            let mut files: BTreeMap<String, FileEntry> = BTreeMap::new();
            let mut last_log = Instant::now();
            let seen: HashSet<&str> = found.iter().map(|f| f.path.as_str()).collect();
            for (n, file) in found.iter().enumerate() {
                if cancelled() {
                    return Err(Error::Cancelled);
                }
                if last_log.elapsed() > Duration::from_secs(2) {
                    tracing::info!(
                        done = n,
                        total = found.len(),
                        chunks = report.chunks_added,
                        embedded = report.embedded,
                        "reindex progress: {n}/{} files, {} chunks, {} embedded",
                        found.len(),
                        report.chunks_added,
                        report.embedded
                    );
                    last_log = Instant::now();
                }
                let (chunks_added, embedded) = (report.chunks_added, report.embedded);
                self.set_progress(|p| {
                    p.files_done = n as u64;
                    p.chunks_added = chunks_added;
                    p.embedded = embedded;
                });
                let previous = old.files.get(&file.path);
                // A file needs its vectors (re)computed when the model changed or appeared.
                let stale_vectors =
                    |e: &FileEntry| model_id.is_some() && e.chunks > 0 && (!e.vectors || old.model != model_id);
                let mtime_ns = i64::try_from(file.mtime_ns).unwrap_or(i64::MAX);
                if !full
                    && let Some(prev) = previous
                    && prev.size == file.size
                    && prev.mtime_ns == mtime_ns
                    && !stale_vectors(prev)
                {
                    report.unchanged += 1;
                    files.insert(file.path.clone(), prev.clone());
                    continue;
                }
                let skip = |report: &mut ReindexReport, reason: SkipReason, writer: &IndexWriter| {
                    report.skipped += 1;
                    let key = serde_json::to_value(reason)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    *report.skipped_by_reason.entry(key).or_default() += 1;
                    if previous.is_some() && !full {
                        writer.delete_term(self.store.path_term(&file.path));
                    }
                };
                if file.size > self.cfg.max_file_bytes {
                    skip(&mut report, SkipReason::Oversized, &writer);
                    continue;
                }
                let bytes = match std::fs::read(&file.path) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(path = %file.path, error = %e, "unreadable file skipped");
                        skip(&mut report, SkipReason::Unreadable, &writer);
                        continue;
                    }
                };
                if bytes.len() as u64 > self.cfg.max_file_bytes {
                    skip(&mut report, SkipReason::Oversized, &writer);
                    continue;
                }
                report.bytes_read += bytes.len() as u64;
                let sha = doc::sha256_hex(&bytes);
                if !full
                    && let Some(prev) = previous
                    && prev.sha256 == sha
                    && !stale_vectors(prev)
                {
                    // Touched but not changed: only the cheap check data moves.
                    report.unchanged += 1;
                    files.insert(file.path.clone(), FileEntry { size: bytes.len() as u64, mtime_ns, ..prev.clone() });
                    continue;
                }
                let (format, chunks) = match doc::prepare(&file.path, &bytes, &sha, self.cfg.chunk) {
                    Prepared::Skipped(reason) => {
                        skip(&mut report, reason, &writer);
                        continue;
                    }
                    Prepared::Indexed { format, chunks } => (format, chunks),
                };
                match previous {
                    Some(prev) if prev.sha256 == sha => report.unchanged += 1,
                    Some(_) => report.changed += 1,
                    None => report.added += 1,
                }
                if previous.is_some() && !full {
                    writer.delete_term(self.store.path_term(&file.path));
                }
                report.reprocessed += 1;
                let chunk_count = chunks.len() as u64;
                report.chunks_added += chunk_count;
                for chunk in chunks {
                    match (&embedder, &model_id) {
                        (Some(_), Some(model)) => {
                            let hash = text_hash(model, &chunk.embed_input(&file.path));
                            // Same text already embedded in this run (vectors in the current file)?
                            if let Some(&row) = fresh.get(&hash) {
                                report.vectors_reused += 1;
                                writer.add_document(self.store.doc(&file.path, &sha, &chunk, row, hash))?;
                            } else if let Some(&row) = cache.get(&hash) {
                                report.vectors_reused += 1;
                                let row = match (&old_vectors, fresh_file) {
                                    // Same file: the row stays where it is.
                                    (_, false) => row,
                                    // New file: copy the vector over.
                                    (Some(src), true) => {
                                        let mut v = [0f32; DIM];
                                        src.read_row(row, &mut v)?;
                                        let copied = vectors.append(&v)?;
                                        fresh.insert(hash, copied);
                                        copied
                                    }
                                    (None, true) => {
                                        batch.push(file.path.clone(), sha.clone(), chunk, hash);
                                        continue;
                                    }
                                };
                                writer.add_document(self.store.doc(&file.path, &sha, &chunk, row, hash))?;
                            } else {
                                batch.push(file.path.clone(), sha.clone(), chunk, hash);
                            }
                        }
                        _ => {
                            writer.add_document(self.store.doc(&file.path, &sha, &chunk, NO_VECTOR, 0))?;
                        }
                    }
                    if batch.len() >= EMBED_BATCH
                        && let Some(m) = &embedder
                    {
                        report.embedded += batch.flush(m, &mut vectors, &self.store, &writer, &mut fresh)?;
                    }
                }
                files.insert(
                    file.path.clone(),
                    FileEntry {
                        size: bytes.len() as u64,
                        mtime_ns,
                        sha256: sha,
                        format,
                        chunks: chunk_count,
                        vectors: embedder.is_some(),
                    },
                );
            }
            if let Some(m) = &embedder {
                report.embedded += batch.flush(m, &mut vectors, &self.store, &writer, &mut fresh)?;
            }
            // Files that are gone.
            for path in old.files.keys() {
                if !seen.contains(path.as_str()) {
                    report.deleted += 1;
                    if !full {
                        writer.delete_term(self.store.path_term(path));
                    }
                }
            }
            Ok(files)
        })();
        let files = match outcome {
            Ok(f) => f,
            Err(e) => {
                // Nothing was committed: drop the pending documents and any new vector file.
                let _ = writer.rollback();
                drop(writer);
                if fresh_file {
                    let _ = std::fs::remove_file(vectors.path());
                }
                return Err(e);
            }
        };
        if cancelled() {
            let _ = writer.rollback();
            drop(writer);
            if fresh_file {
                let _ = std::fs::remove_file(vectors.path());
            }
            return Err(Error::Cancelled);
        }
        self.set_progress(|p| p.phase = "committing");
        vectors.sync()?;
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            generation,
            fingerprint: fp,
            model: model_id.clone().or_else(|| old.model.clone().filter(|_| !full)),
            vectors_file: Some(vectors_name.clone()),
            vector_rows: vectors.rows(),
            files,
        };
        let payload = serde_json::to_string(&manifest).map_err(|e| Error::Manifest(e.to_string()))?;
        let mut prepared = writer.prepare_commit()?;
        prepared.set_payload(&payload);
        prepared.commit()?;
        // Let merges (which also drop deleted documents) finish before the next snapshot.
        if let Err(e) = writer.wait_merging_threads() {
            tracing::warn!(error = %e, "merge after commit failed; the commit stands");
        }
        let next = build_snapshot(&self.store, &self.cfg.index_dir, manifest)?;
        report.files = next.manifest.files.len() as u64;
        report.chunks = next.chunks;
        *self.snapshot.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(next);
        drop(snap);
        remove_stray_vector_files(&self.cfg.index_dir, Some(&vectors_name));
        report.duration_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }

    /// Bytes of the index directory on disk.
    pub fn index_bytes(&self) -> u64 {
        dir_size(&self.cfg.index_dir)
    }
}

/// Chunks waiting for their vectors, flushed as one model call.
#[derive(Default)]
struct EmbedBatch {
    items: Vec<(String, String, doc::Chunk, u64)>,
}

impl EmbedBatch {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn push(&mut self, path: String, sha: String, chunk: doc::Chunk, hash: u64) {
        self.items.push((path, sha, chunk, hash));
    }

    /// Embeds, appends the vectors, and adds the documents; returns how many were embedded.
    fn flush(
        &mut self,
        model: &Embedder,
        vectors: &mut VectorFile,
        store: &Store,
        writer: &IndexWriter,
        fresh: &mut HashMap<u64, u64>,
    ) -> Result<u64> {
        if self.items.is_empty() {
            return Ok(0);
        }
        // One call for the whole batch: the embedder sorts by token count and pads per call.
        let inputs: Vec<String> = self.items.iter().map(|(path, _, chunk, _)| chunk.embed_input(path)).collect();
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let data = model.embed(&refs)?;
        let first = vectors.append(&data)?;
        for (i, (path, sha, chunk, hash)) in self.items.drain(..).enumerate() {
            let row = first + i as u64;
            fresh.insert(hash, row);
            writer.add_document(store.doc(&path, &sha, &chunk, row, hash))?;
        }
        Ok(refs.len() as u64)
    }
}

/// `text_hash → vec_row` of every live chunk with a vector.
fn vector_cache(snap: &Snapshot) -> Result<HashMap<u64, u64>> {
    let mut out = HashMap::new();
    for seg in snap.searcher.segment_readers() {
        let rows = seg.fast_fields().u64("vec_row")?;
        let hashes = seg.fast_fields().u64("text_hash")?;
        for doc in seg.doc_ids_alive() {
            if let (Some(row), Some(hash)) = (rows.first(doc), hashes.first(doc))
                && row != NO_VECTOR
            {
                out.insert(hash, row);
            }
        }
    }
    Ok(out)
}

/// Reloads the reader and loads the vectors of the new commit.
fn build_snapshot(store: &Store, dir: &Path, manifest: Manifest) -> Result<Snapshot> {
    store.reader.reload()?;
    let searcher = store.reader.searcher();
    let mut entries = Vec::new();
    for (ord, seg) in searcher.segment_readers().iter().enumerate() {
        let rows = seg.fast_fields().u64("vec_row")?;
        for doc in seg.doc_ids_alive() {
            if let Some(row) = rows.first(doc)
                && row != NO_VECTOR
            {
                entries.push((row, DocAddress::new(ord as u32, doc)));
            }
        }
    }
    let mut manifest = manifest;
    let matrix = match (&manifest.vectors_file, entries.is_empty()) {
        (_, true) | (None, _) => Matrix::default(),
        (Some(name), false) => match Matrix::load(&dir.join(name), entries) {
            Ok(m) => m,
            Err(e) => {
                // Vectors lost (a deleted or truncated file): serve BM25, and forget the model so
                // that the next reindex recomputes every vector into a new file.
                tracing::error!(error = %e, "vector file unusable; vectors will be rebuilt by the next reindex");
                manifest.model = None;
                Matrix::default()
            }
        },
    };
    let chunks = searcher.num_docs();
    Ok(Snapshot { searcher, manifest, matrix, chunks })
}

/// Removes `vectors-*.f32` files other than `keep` (left by a full reindex or a crash).
fn remove_stray_vector_files(dir: &Path, keep: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("vectors-")
            && name.ends_with(".f32")
            && Some(name) != keep
            && let Err(err) = std::fs::remove_file(e.path())
        {
            tracing::warn!(file = name, error = %err, "cannot remove an old vector file");
        }
    }
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack: Vec<PathBuf> = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    total
}

/// Weighted reciprocal rank fusion: `Σ w/(k + rank)` over the (list, weight) pairs, ranks from
/// 1; a document absent from a list gets nothing from it. Ties break by the first list's rank,
/// then by document address, so the order is deterministic.
pub fn rrf(lists: &[(&[(f32, DocAddress)], f32)], k: f32) -> Vec<(f32, DocAddress)> {
    let mut fused: HashMap<DocAddress, (f32, usize)> = HashMap::new();
    for (li, (list, weight)) in lists.iter().enumerate() {
        for (rank0, (_, addr)) in list.iter().enumerate() {
            let e = fused.entry(*addr).or_insert((0.0, usize::MAX));
            e.0 += weight / (k + rank0 as f32 + 1.0);
            if li == 0 {
                e.1 = rank0;
            }
        }
    }
    let mut out: Vec<(f32, usize, DocAddress)> = fused.into_iter().map(|(a, (s, r))| (s, r, a)).collect();
    out.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    out.into_iter().map(|(s, _, a)| (s, a)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RagConfig;
    use std::sync::mpsc;

    struct Corpus {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        index: PathBuf,
    }

    fn corpus() -> Corpus {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let root = base.join("docs");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(
            root.join("alpha.md"),
            "# Alpha\n\nThe alpha document talks about ownership and borrowing rules.\n",
        )
        .unwrap();
        std::fs::write(root.join("beta.txt"), "Beta explains lifetimes of references in plain text.\n").unwrap();
        std::fs::write(
            root.join("sub/page.html"),
            "<html><head><title>x</title><script>var hidden = 'zebra';</script></head><body><main><h1>Closures</h1>\
             <p>Closures &amp; iterators capture their environment.</p></main></body></html>",
        )
        .unwrap();
        std::fs::write(root.join("sub/code.rs"), "/// Adds numbers.\nfn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n")
            .unwrap();
        std::fs::write(root.join("image.png"), [0x89u8, b'P', b'N', b'G', 0, 1, 2]).unwrap();
        std::fs::write(root.join("blob.txt"), b"text\0with nul").unwrap();
        std::fs::write(root.join("huge.txt"), "big ".repeat(5000)).unwrap();
        Corpus { index: base.join("index"), root, _tmp: tmp }
    }

    fn engine(c: &Corpus, embeddings: bool) -> Engine {
        let cfg = RagConfig::from_value(&json!({
            "roots": [c.root], "index_dir": c.index, "max_file_bytes": 10_000, "embeddings": embeddings,
            "chunk_target_words": 40,
        }))
        .unwrap();
        Engine::open(cfg.resolve(None).unwrap()).unwrap()
    }

    fn search(e: &Engine, text: &str, mode: Mode) -> Vec<Hit> {
        e.query(&e.validate(text, 5, mode, None).unwrap()).unwrap()
    }

    fn paths(hits: &[Hit]) -> Vec<String> {
        hits.iter().map(|h| h.source.path.rsplit('/').next().unwrap().to_owned()).collect()
    }

    fn never() -> bool {
        false
    }

    #[test]
    fn incremental_reindex_touches_only_what_changed() {
        let c = corpus();
        let e = engine(&c, false);
        let r = e.reindex(false, &never).unwrap();
        assert!(r.full && r.full_reason.as_deref() == Some("new index"));
        assert_eq!((r.added, r.changed, r.deleted, r.unchanged), (4, 0, 0, 0));
        assert_eq!(r.skipped, 3, "{:?}", r.skipped_by_reason);
        assert_eq!(r.skipped_by_reason.get("binary"), Some(&2));
        assert_eq!(r.skipped_by_reason.get("oversized"), Some(&1));

        let again = e.reindex(false, &never).unwrap();
        assert!(!again.full);
        assert_eq!((again.added, again.changed, again.deleted, again.unchanged, again.reprocessed), (0, 0, 0, 4, 0));

        // A touch without a content change is caught by the hash.
        let beta = c.root.join("beta.txt");
        let content = std::fs::read(&beta).unwrap();
        std::fs::write(&beta, &content).unwrap();
        let f = std::fs::File::options().write(true).open(&beta).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(5)).unwrap();
        let touched = e.reindex(false, &never).unwrap();
        assert_eq!((touched.changed, touched.unchanged, touched.reprocessed), (0, 4, 0));

        // Change one, delete one, add one.
        std::fs::write(c.root.join("alpha.md"), "# Alpha\n\nNow the alpha document covers smart pointers instead.\n")
            .unwrap();
        std::fs::remove_file(c.root.join("sub/code.rs")).unwrap();
        std::fs::write(c.root.join("sub/gamma.md"), "Gamma is about fearless concurrency with threads.\n").unwrap();
        let r = e.reindex(false, &never).unwrap();
        assert_eq!((r.added, r.changed, r.deleted, r.unchanged, r.reprocessed), (1, 1, 1, 2, 2));
        assert_eq!(paths(&search(&e, "smart pointers", Mode::Bm25)), vec!["alpha.md"]);
        assert!(search(&e, "ownership borrowing", Mode::Bm25).is_empty(), "old text is gone");
        assert!(search(&e, "add numbers", Mode::Bm25).is_empty(), "deleted file is gone");
        assert_eq!(paths(&search(&e, "fearless concurrency", Mode::Bm25)), vec!["gamma.md"]);
        assert_eq!(r.files, 4);

        // A full reindex rebuilds everything and finds the same.
        let full = e.reindex(true, &never).unwrap();
        assert!(full.full && full.reprocessed == 4);
        assert_eq!(paths(&search(&e, "smart pointers", Mode::Bm25)), vec!["alpha.md"]);

        // Reopening reads the committed manifest.
        drop(e);
        let e = engine(&c, false);
        let r = e.reindex(false, &never).unwrap();
        assert_eq!((r.added, r.changed, r.deleted, r.unchanged), (0, 0, 0, 4));
    }

    #[test]
    fn results_cite_exact_sources() {
        let c = corpus();
        let e = engine(&c, false);
        e.reindex(false, &never).unwrap();
        for q in ["alpha ownership", "lifetimes references", "closures iterators environment", "add numbers"] {
            let hits = search(&e, q, Mode::Bm25);
            assert!(!hits.is_empty(), "{q}");
            for h in hits {
                let bytes = std::fs::read(&h.source.path).unwrap();
                assert_eq!(doc::sha256_hex(&bytes), h.source.sha256);
                let slice = std::str::from_utf8(&bytes[h.source.start as usize..h.source.end as usize]).unwrap();
                if h.source.path.ends_with(".html") {
                    assert_eq!(
                        crate::html::normalize_ws(&crate::html::extract(slice).text),
                        crate::html::normalize_ws(&h.text)
                    );
                    assert!(!h.text.contains("zebra"), "scripts are dropped");
                } else {
                    assert_eq!(slice, h.text);
                }
                assert_eq!(h.source.chunk_id.len(), 16);
            }
        }
        assert!(search(&e, "zebra", Mode::Bm25).is_empty());
        // The prefix filter.
        let sub = format!("{}/sub", c.root.display());
        let q = e.validate("closures add", 5, Mode::Bm25, Some(&sub)).unwrap();
        let hits = e.query(&q).unwrap();
        assert_eq!(hits.len(), 2);
        assert!(hits.iter().all(|h| h.source.path.starts_with(&sub)));
        let q = e.validate("closures add", 5, Mode::Bm25, Some(&format!("{}/alpha", c.root.display()))).unwrap();
        assert!(e.query(&q).unwrap().is_empty());
    }

    #[test]
    fn bad_queries_are_rejected_with_the_field() {
        let c = corpus();
        let e = engine(&c, false);
        let field_of = |r: Result<Query>| match r {
            Err(Error::InvalidInput { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field_of(e.validate("  ", 5, Mode::Bm25, None)), "query");
        assert_eq!(field_of(e.validate(&"x".repeat(MAX_QUERY_BYTES + 1), 5, Mode::Bm25, None)), "query");
        assert_eq!(field_of(e.validate("x", 0, Mode::Bm25, None)), "top_k");
        assert_eq!(field_of(e.validate("x", 101, Mode::Bm25, None)), "top_k");
        let up = format!("{}/../", c.root.display());
        assert_eq!(field_of(e.validate("x", 5, Mode::Bm25, Some(&up))), "path_prefix");
        // Without the model, vector modes explain what to do; bm25 still works.
        let q = e.validate("x", 5, Mode::Hybrid, None).unwrap();
        assert!(matches!(e.query(&q), Err(Error::ModelUnavailable(_))));
    }

    #[test]
    fn a_cancelled_reindex_commits_nothing_and_a_second_one_is_busy() {
        let c = corpus();
        let e = Arc::new(engine(&c, false));
        e.reindex(false, &never).unwrap();
        std::fs::write(c.root.join("alpha.md"), "# Alpha\n\nReplaced by something about traits.\n").unwrap();
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let cancel_on_second = || calls.fetch_add(1, Ordering::SeqCst) >= 1;
        assert!(matches!(e.reindex(false, &cancel_on_second), Err(Error::Cancelled)));
        assert_eq!(paths(&search(&e, "ownership", Mode::Bm25)), vec!["alpha.md"], "previous index still serves");
        assert_eq!(e.snapshot().manifest.generation, 1);

        // While one reindex runs (held inside its cancel check), another is refused and queries
        // answer from the previous commit.
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let e2 = Arc::clone(&e);
        let worker = std::thread::spawn(move || {
            let first = AtomicBool::new(true);
            e2.reindex(false, &|| {
                if first.swap(false, Ordering::SeqCst) {
                    let _ = entered_tx.send(());
                    let _ = release_rx.recv();
                }
                false
            })
        });
        entered_rx.recv().unwrap();
        assert!(matches!(e.reindex(false, &never), Err(Error::Busy)));
        assert_eq!(e.status()["state"], "indexing");
        assert_eq!(paths(&search(&e, "ownership", Mode::Bm25)), vec!["alpha.md"]);
        release_tx.send(()).unwrap();
        let r = worker.join().unwrap().unwrap();
        assert_eq!(r.changed, 1);
        assert_eq!(paths(&search(&e, "traits", Mode::Bm25)), vec!["alpha.md"]);
        assert_eq!(e.status()["state"], "idle");
    }

    /// Vector and hybrid search with the real model (fetched by scripts/fetch-models.sh).
    #[test]
    fn vector_and_hybrid_search_with_the_real_model() {
        let c = corpus();
        std::fs::write(c.root.join("cats.md"), "Felines are small domesticated carnivores that purr and hunt mice.\n")
            .unwrap();
        let e = engine(&c, true);
        assert!(matches!(e.model(), ModelState::Loaded(_)), "model missing: run scripts/fetch-models.sh minilm");
        let r = e.reindex(false, &never).unwrap();
        assert_eq!(r.embedded, r.chunks_added);
        assert_eq!(e.status()["vector_coverage"], 1.0);
        // No shared words with the text: only the vector leg can find it.
        let hits = search(&e, "kitten pet", Mode::Vector);
        assert_eq!(paths(&hits)[0], "cats.md", "{hits:?}");
        assert!(search(&e, "kitten pet", Mode::Bm25).is_empty());
        let hybrid = search(&e, "functions that capture variables from their scope", Mode::Hybrid);
        assert_eq!(paths(&hybrid)[0], "page.html");
        // An unchanged corpus reuses every vector; a changed file re-embeds only its chunks.
        std::fs::write(c.root.join("beta.txt"), "Beta now explains generic type parameters.\n").unwrap();
        let r = e.reindex(false, &never).unwrap();
        assert_eq!((r.changed, r.embedded), (1, 1));
        let full = e.reindex(true, &never).unwrap();
        assert_eq!(full.embedded, 0, "a full reindex reuses cached vectors");
        assert_eq!(full.vectors_reused, full.chunks_added);
        assert_eq!(paths(&search(&e, "kitten pet", Mode::Vector))[0], "cats.md");
    }

    #[test]
    fn rrf_rewards_agreement_and_is_deterministic() {
        let a = |d| DocAddress::new(0, d);
        let bm25 = vec![(9.0, a(1)), (8.0, a(2)), (7.0, a(3))];
        let vec = vec![(0.9, a(3)), (0.8, a(4)), (0.7, a(1))];
        let fused = rrf(&[(&bm25, 1.0), (&vec, 1.0)], 60.0);
        let order: Vec<u32> = fused.iter().map(|(_, d)| d.doc_id).collect();
        assert_eq!(order, vec![1, 3, 2, 4]);
        assert!((fused[0].0 - (1.0 / 61.0 + 1.0 / 63.0)).abs() < 1e-6);
        assert_eq!(rrf(&[(&bm25, 1.0), (&vec, 1.0)], 60.0), fused);
        // A heavier vector leg lets its top document win.
        let weighted = rrf(&[(&bm25, 1.0), (&vec, 2.0)], 60.0);
        assert_eq!(weighted[0].1, a(3));
    }
}
