//! The plug-in's configuration (`initialize.config`) and its resolution against the filesystem.
//!
//! ```json
//! {"roots": ["/srv/docs"], "index_dir": "/var/lib/bkg/rag-index", "chunk_target_words": 120,
//!  "chunk_overlap_words": 20, "model_dir": "/opt/models/all-MiniLM-L6-v2",
//!  "max_file_bytes": 4194304, "exclude": ["*.min.js", "print.html"], "max_top_k": 100,
//!  "embeddings": true}
//! ```
//!
//! Only `roots` is required. Roots are canonicalised once (symlinks resolved), so every path the
//! index stores, and every `path_prefix` check, compares canonical absolute paths.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// Default words per chunk (MiniLM truncates at 256 word pieces, about 190 English words).
pub const DEFAULT_TARGET_WORDS: usize = 120;
/// Files larger than this are skipped (and counted).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Default upper bound for `top_k`.
pub const DEFAULT_MAX_TOP_K: usize = 100;
/// Default RRF constant. Tuned with `bkg-rag-eval --grid` on the odd questions of
/// eval/rust-book.jsonl and checked on the even ones (k ∈ {5, 10, 20, 60}; eval/README.md).
pub const DEFAULT_RRF_K: f32 = 10.0;
/// Default weight of the vector leg (the BM25 leg weighs 1); tuned with [`DEFAULT_RRF_K`].
pub const DEFAULT_VECTOR_WEIGHT: f32 = 2.0;
/// The directory name of the model under the model cache (see `scripts/fetch-models.sh`).
pub const MODEL_DIR_NAME: &str = "all-MiniLM-L6-v2";

/// `initialize.config` as sent by the daemon.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RagConfig {
    /// Directories to index (required, at least one). Absolute paths must exist; a relative
    /// path is a directory inside the plug-in's data dir, created when missing.
    #[serde(default)]
    pub roots: Vec<String>,
    /// Where the index lives; default `<data_dir>/rag-index`.
    #[serde(default)]
    pub index_dir: Option<String>,
    /// Target chunk size in words (16..=1000).
    #[serde(default)]
    pub chunk_target_words: Option<usize>,
    /// Words of trailing sentences repeated at the start of the next chunk of the same paragraph.
    #[serde(default)]
    pub chunk_overlap_words: Option<usize>,
    /// Directory with `model.safetensors`, `config.json` and `tokenizer.json` of all-MiniLM-L6-v2.
    #[serde(default)]
    pub model_dir: Option<String>,
    /// Larger files are skipped.
    #[serde(default)]
    pub max_file_bytes: Option<u64>,
    /// Glob patterns (`*`, `?`) matched against each path component and against the path
    /// relative to its root; a match excludes the file or the whole directory.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Largest `top_k` a query may ask for.
    #[serde(default)]
    pub max_top_k: Option<usize>,
    /// Set to false to run BM25 only, without loading the model.
    #[serde(default)]
    pub embeddings: Option<bool>,
    /// Reciprocal rank fusion constant `k` of hybrid mode.
    #[serde(default)]
    pub rrf_k: Option<f32>,
    /// Weight of the vector leg in hybrid mode (the BM25 leg weighs 1).
    #[serde(default)]
    pub vector_weight: Option<f32>,
}

/// Hybrid fusion parameters: `score = 1/(k + rank_bm25) + vector_weight/(k + rank_vector)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fusion {
    pub k: f32,
    pub vector_weight: f32,
}

impl Default for Fusion {
    fn default() -> Self {
        Self { k: DEFAULT_RRF_K, vector_weight: DEFAULT_VECTOR_WEIGHT }
    }
}

/// Chunking parameters (part of the index fingerprint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkParams {
    pub target_words: usize,
    pub overlap_words: usize,
}

impl Default for ChunkParams {
    fn default() -> Self {
        Self { target_words: DEFAULT_TARGET_WORDS, overlap_words: DEFAULT_TARGET_WORDS / 6 }
    }
}

/// The configuration after validation, with canonical paths.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub roots: Vec<PathBuf>,
    pub index_dir: PathBuf,
    pub chunk: ChunkParams,
    pub model_dir: Option<PathBuf>,
    pub max_file_bytes: u64,
    pub exclude: Vec<String>,
    pub max_top_k: usize,
    pub embeddings: bool,
    pub fusion: Fusion,
}

impl RagConfig {
    /// Parses `initialize.config` (`null` is not enough: `roots` is required).
    pub fn from_value(value: &serde_json::Value) -> Result<Self> {
        match value {
            serde_json::Value::Object(_) => {
                RagConfig::deserialize(value).map_err(|e| Error::invalid("config", e.to_string()))
            }
            serde_json::Value::Null => Err(Error::invalid("config.roots", "is required (a list of directories)")),
            other => Err(Error::invalid("config", format!("expected an object, got {other}"))),
        }
    }

    /// Validates every value and resolves paths. `data_dir` is the daemon's per-plug-in data dir.
    pub fn resolve(&self, data_dir: Option<&Path>) -> Result<Resolved> {
        if self.roots.is_empty() {
            return Err(Error::invalid("config.roots", "is required (a list of directories)"));
        }
        let mut roots = Vec::with_capacity(self.roots.len());
        for root in &self.roots {
            let given = Path::new(root);
            let path = if given.is_absolute() {
                given.to_path_buf()
            } else {
                // Relative roots live in the plug-in's data dir and are created on demand, so the
                // shipped registry can point at `docs` and work on a fresh machine.
                let Some(data) = data_dir else {
                    return Err(Error::invalid("config.roots", format!("{root:?} is not an absolute path")));
                };
                if root.is_empty() || given.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
                    return Err(Error::invalid("config.roots", format!("{root:?} must stay inside the data dir")));
                }
                let path = data.join(given);
                std::fs::create_dir_all(&path)
                    .map_err(|e| Error::invalid("config.roots", format!("cannot create {}: {e}", path.display())))?;
                path
            };
            let canonical = path
                .canonicalize()
                .map_err(|e| Error::invalid("config.roots", format!("{root:?} cannot be resolved: {e}")))?;
            if !canonical.is_dir() {
                return Err(Error::invalid("config.roots", format!("{root:?} is not a directory")));
            }
            if canonical.to_str().is_none() {
                return Err(Error::invalid("config.roots", format!("{root:?} is not valid UTF-8")));
            }
            if !roots.contains(&canonical) {
                roots.push(canonical);
            }
        }
        let index_dir = match (&self.index_dir, data_dir) {
            (Some(dir), _) => {
                let p = PathBuf::from(dir);
                if !p.is_absolute() {
                    return Err(Error::invalid("config.index_dir", format!("{dir:?} is not an absolute path")));
                }
                p
            }
            (None, Some(data)) => data.join("rag-index"),
            (None, None) => {
                return Err(Error::invalid("config.index_dir", "is required when the daemon gives no data dir"));
            }
        };
        let target_words = self.chunk_target_words.unwrap_or(DEFAULT_TARGET_WORDS);
        if !(16..=1000).contains(&target_words) {
            return Err(Error::invalid("config.chunk_target_words", "must be between 16 and 1000"));
        }
        let overlap_words = self.chunk_overlap_words.unwrap_or(target_words / 6);
        if overlap_words > target_words / 2 {
            return Err(Error::invalid("config.chunk_overlap_words", "must be at most half of chunk_target_words"));
        }
        let model_dir = match &self.model_dir {
            Some(dir) => Some(PathBuf::from(dir)),
            None => default_model_dir(),
        };
        let max_file_bytes = self.max_file_bytes.unwrap_or(DEFAULT_MAX_FILE_BYTES);
        if max_file_bytes == 0 {
            return Err(Error::invalid("config.max_file_bytes", "must be positive"));
        }
        let max_top_k = self.max_top_k.unwrap_or(DEFAULT_MAX_TOP_K);
        if !(1..=1000).contains(&max_top_k) {
            return Err(Error::invalid("config.max_top_k", "must be between 1 and 1000"));
        }
        let fusion = Fusion {
            k: self.rrf_k.unwrap_or(DEFAULT_RRF_K),
            vector_weight: self.vector_weight.unwrap_or(DEFAULT_VECTOR_WEIGHT),
        };
        if !(fusion.k.is_finite() && (0.0..=1000.0).contains(&fusion.k)) {
            return Err(Error::invalid("config.rrf_k", "must be between 0 and 1000"));
        }
        if !(fusion.vector_weight.is_finite() && (0.0..=100.0).contains(&fusion.vector_weight)) {
            return Err(Error::invalid("config.vector_weight", "must be between 0 and 100"));
        }
        for pattern in &self.exclude {
            if pattern.is_empty() {
                return Err(Error::invalid("config.exclude", "patterns must not be empty"));
            }
        }
        Ok(Resolved {
            roots,
            index_dir,
            chunk: ChunkParams { target_words, overlap_words },
            model_dir,
            max_file_bytes,
            exclude: self.exclude.clone(),
            max_top_k,
            embeddings: self.embeddings.unwrap_or(true),
            fusion,
        })
    }
}

/// `$BKG_MODEL_CACHE/all-MiniLM-L6-v2`, else `$HOME/.cache/bkg/models/all-MiniLM-L6-v2`: where
/// `scripts/fetch-models.sh minilm` puts the model.
pub fn default_model_dir() -> Option<PathBuf> {
    if let Some(cache) = std::env::var_os("BKG_MODEL_CACHE").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(cache).join(MODEL_DIR_NAME));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|home| PathBuf::from(home).join(".cache/bkg/models").join(MODEL_DIR_NAME))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn roots_are_required_absolute_existing_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f.txt");
        std::fs::write(&file, "x").unwrap();
        let cases = [
            (json!({}), "config.roots"),
            (json!({"roots": []}), "config.roots"),
            (json!({"roots": ["../escape"]}), "config.roots"),
            (json!({"roots": [""]}), "config.roots"),
            (json!({"roots": [tmp.path().join("missing")]}), "config.roots"),
            (json!({"roots": [file]}), "config.roots"),
            (json!({"roots": [tmp.path()], "chunk_target_words": 3}), "config.chunk_target_words"),
            (
                json!({"roots": [tmp.path()], "chunk_target_words": 100, "chunk_overlap_words": 60}),
                "config.chunk_overlap_words",
            ),
            (json!({"roots": [tmp.path()], "max_top_k": 0}), "config.max_top_k"),
            (json!({"roots": [tmp.path()], "rrf_k": -1.0}), "config.rrf_k"),
            (json!({"roots": [tmp.path()], "vector_weight": 1e9}), "config.vector_weight"),
            (json!({"roots": [tmp.path()], "index_dir": "rel"}), "config.index_dir"),
        ];
        for (value, field) in cases {
            let err = RagConfig::from_value(&value).and_then(|c| c.resolve(Some(tmp.path()))).unwrap_err();
            match err {
                Error::InvalidInput { field: f, .. } => assert_eq!(f, field, "{value}"),
                other => panic!("{value}: {other}"),
            }
        }
        let err = RagConfig::from_value(&json!({"roots": [tmp.path()], "rots": 1})).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn resolution_canonicalises_roots_and_defaults_the_index_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let cfg = RagConfig::from_value(&json!({"roots": [link, real]})).unwrap();
        let resolved = cfg.resolve(Some(Path::new("/data/rag"))).unwrap();
        assert_eq!(resolved.roots, vec![real.canonicalize().unwrap()], "duplicates collapse");
        assert_eq!(resolved.index_dir, Path::new("/data/rag/rag-index"));
        assert_eq!(resolved.chunk, ChunkParams { target_words: 120, overlap_words: 20 });
        assert_eq!(resolved.max_top_k, DEFAULT_MAX_TOP_K);

        // Relative roots are created inside the data dir; without a data dir they are refused.
        let data = tmp.path().join("data");
        let cfg = RagConfig::from_value(&json!({"roots": ["docs/inbox"]})).unwrap();
        let resolved = cfg.resolve(Some(&data)).unwrap();
        assert_eq!(resolved.roots, vec![data.join("docs/inbox").canonicalize().unwrap()]);
        assert!(cfg.resolve(None).is_err());
    }
}
