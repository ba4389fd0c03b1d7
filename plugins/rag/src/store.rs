//! The tantivy side: schema, analyzer, opening (and recovering) the index, the manifest that
//! rides in each commit's payload, and the BM25 query.
//!
//! One document per chunk. `body` and `heading` are analysed with `rag_en` (simple tokenizer,
//! lower case, English stop words, English stemmer); `path` is a raw string (delete by path,
//! prefix filter by term range); `vec_row` and `text_hash` are fast fields (the row of the
//! chunk's vector, `u64::MAX` for none, and the hash of the embedded text, the cache key).
//!
//! The manifest (which files are indexed, with size, mtime and sha256) is the commit payload,
//! so it changes atomically with the documents: after a crash, index and manifest agree.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tantivy::collector::TopDocs;
use tantivy::directory::MmapDirectory;
use tantivy::merge_policy::LogMergePolicy;
use tantivy::query::{BooleanQuery, BoostQuery, ConstScoreQuery, Occur, Query, RangeQuery, TermQuery};
use tantivy::schema::{
    FAST, Field, IndexRecordOption, STORED, STRING, Schema, TantivyDocument, TextFieldIndexing, TextOptions,
};
use tantivy::tokenizer::{
    Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer,
};
use tantivy::{DocAddress, Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, Term};

use crate::blocks::Format;
use crate::error::{Error, Result};

/// The analyzer of `body` and `heading`.
pub const ANALYZER: &str = "rag_en";
/// `vec_row` of a chunk without a vector.
pub const NO_VECTOR: u64 = u64::MAX;
/// Manifest format version; a different one forces a full reindex.
pub const MANIFEST_VERSION: u32 = 1;
/// Boost of a match in the heading path over one in the body.
pub const HEADING_BOOST: f32 = 2.0;

/// The schema's fields.
#[derive(Debug, Clone, Copy)]
pub struct Fields {
    pub chunk_id: Field,
    pub path: Field,
    pub sha256: Field,
    pub heading: Field,
    pub body: Field,
    pub start: Field,
    pub end: Field,
    pub ord: Field,
    pub vec_row: Field,
    pub text_hash: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text = TextOptions::default()
        .set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(ANALYZER)
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        )
        .set_stored();
    let fields = Fields {
        chunk_id: b.add_text_field("chunk_id", STRING | STORED),
        path: b.add_text_field("path", STRING | STORED),
        sha256: b.add_text_field("sha256", STRING | STORED),
        heading: b.add_text_field("heading", text.clone()),
        body: b.add_text_field("body", text),
        start: b.add_u64_field("start", STORED),
        end: b.add_u64_field("end", STORED),
        ord: b.add_u64_field("ord", STORED),
        vec_row: b.add_u64_field("vec_row", FAST | STORED),
        text_hash: b.add_u64_field("text_hash", FAST),
    };
    (b.build(), fields)
}

/// Lucene's English stop words plus the function words of questions ("how do I ...").
const STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it", "no", "not", "of",
    "on", "or", "such", "that", "the", "their", "then", "there", "these", "they", "this", "to", "was", "will", "with",
    "what", "how", "do", "does", "did", "i", "you", "we", "can", "why", "when", "which", "who", "where", "should",
    "would", "could", "my", "me", "our", "your", "its", "has", "have", "had", "been", "so", "than", "s",
];

fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(StopWordFilter::remove(STOP_WORDS.iter().map(|w| (*w).to_owned())))
        .filter(Stemmer::new(Language::English))
        .build()
}

/// One indexed file in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub size: u64,
    pub mtime_ns: i64,
    pub sha256: String,
    pub format: Format,
    pub chunks: u64,
    /// True when every chunk has a vector from the model in [`Manifest::model`].
    pub vectors: bool,
}

/// The commit payload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    /// Incremented by every commit.
    pub generation: u64,
    /// Chunking and extraction parameters the index was built with.
    pub fingerprint: String,
    /// Model id of the stored vectors, if any.
    pub model: Option<String>,
    /// The vector file (in the index directory) the chunks' `vec_row`s refer to.
    pub vectors_file: Option<String>,
    /// Row count of that file at commit time.
    pub vector_rows: u64,
    pub files: BTreeMap<String, FileEntry>,
}

/// The index, its reader (reloaded by hand after each commit) and the fields.
pub struct Store {
    pub index: Index,
    pub reader: IndexReader,
    pub fields: Fields,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the index in `dir` (creating it when empty). `Err` when it exists but cannot be
    /// opened; the engine then moves it aside and starts over.
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let (schema, fields) = schema();
        let directory = MmapDirectory::open(dir).map_err(|e| Error::Index(tantivy::TantivyError::from(e)))?;
        let index = Index::open_or_create(directory, schema.clone())?;
        if index.schema() != schema {
            return Err(Error::Manifest("the index on disk has a different schema".into()));
        }
        index.tokenizers().register(ANALYZER, analyzer());
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        Ok(Store { index, reader, fields })
    }

    /// The manifest of the last commit (empty for a new index).
    pub fn manifest(&self) -> Result<Manifest> {
        let metas = self.index.load_metas()?;
        match metas.payload {
            None => Ok(Manifest { version: MANIFEST_VERSION, ..Default::default() }),
            Some(p) => serde_json::from_str(&p).map_err(|e| Error::Manifest(e.to_string())),
        }
    }

    /// A writer: one indexing thread (the other core keeps serving queries), and merges that
    /// also reclaim deleted documents (tantivy's default never merges for deletes alone).
    pub fn writer(&self) -> Result<IndexWriter> {
        let writer: IndexWriter = self.index.writer_with_num_threads(1, 64 * 1024 * 1024)?;
        let mut policy = LogMergePolicy::default();
        policy.set_del_docs_ratio_before_merge(0.2);
        writer.set_merge_policy(Box::new(policy));
        Ok(writer)
    }

    /// A document for one chunk.
    pub fn doc(
        &self,
        path: &str,
        file_sha: &str,
        chunk: &crate::doc::Chunk,
        vec_row: u64,
        text_hash: u64,
    ) -> TantivyDocument {
        let f = &self.fields;
        let mut d = TantivyDocument::default();
        d.add_text(f.chunk_id, &chunk.chunk_id);
        d.add_text(f.path, path);
        d.add_text(f.sha256, file_sha);
        d.add_text(f.heading, &chunk.heading);
        d.add_text(f.body, &chunk.text);
        d.add_u64(f.start, chunk.start);
        d.add_u64(f.end, chunk.end);
        d.add_u64(f.ord, chunk.ord);
        d.add_u64(f.vec_row, vec_row);
        d.add_u64(f.text_hash, text_hash);
        d
    }

    /// The term that deletes every chunk of a file.
    pub fn path_term(&self, path: &str) -> Term {
        Term::from_field_text(self.fields.path, path)
    }

    /// Documents whose path starts with `prefix` (score 0, for use as a filter).
    pub fn prefix_filter(&self, prefix: &str) -> Box<dyn Query> {
        let lower = Term::from_field_text(self.fields.path, prefix);
        let upper = Term::from_field_text(self.fields.path, &format!("{prefix}\u{10FFFF}"));
        Box::new(ConstScoreQuery::new(Box::new(RangeQuery::new(Bound::Included(lower), Bound::Excluded(upper))), 0.0))
    }

    /// The query's analysed terms (deduplicated, in order).
    pub fn terms(&self, text: &str) -> Vec<String> {
        let mut analyzer = self.index.tokenizers().get(ANALYZER).unwrap_or_else(analyzer);
        let mut stream = analyzer.token_stream(text);
        let mut out: Vec<String> = Vec::new();
        while stream.advance() {
            let t = stream.token().text.clone();
            if !out.contains(&t) {
                out.push(t);
            }
        }
        out
    }

    /// BM25 over body and (boosted) heading, optionally restricted to a path prefix.
    pub fn bm25(
        &self,
        searcher: &Searcher,
        text: &str,
        depth: usize,
        prefix: Option<&str>,
    ) -> Result<Vec<(f32, DocAddress)>> {
        let terms = self.terms(text);
        if terms.is_empty() || depth == 0 {
            return Ok(Vec::new());
        }
        let mut should: Vec<(Occur, Box<dyn Query>)> = Vec::with_capacity(terms.len() * 2);
        for t in &terms {
            let body = Term::from_field_text(self.fields.body, t);
            let heading = Term::from_field_text(self.fields.heading, t);
            should.push((Occur::Should, Box::new(TermQuery::new(body, IndexRecordOption::WithFreqs))));
            should.push((
                Occur::Should,
                Box::new(BoostQuery::new(
                    Box::new(TermQuery::new(heading, IndexRecordOption::WithFreqs)),
                    HEADING_BOOST,
                )),
            ));
        }
        let terms_query: Box<dyn Query> = Box::new(BooleanQuery::new(should));
        let query: Box<dyn Query> = match prefix {
            Some(p) => {
                Box::new(BooleanQuery::new(vec![(Occur::Must, terms_query), (Occur::Must, self.prefix_filter(p))]))
            }
            None => terms_query,
        };
        Ok(searcher.search(&query, &TopDocs::with_limit(depth).order_by_score())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analyzer_stems_and_drops_stop_words() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        assert_eq!(store.terms("How are the Borrowed references checked?"), vec!["borrow", "refer", "check"]);
        assert!(store.manifest().unwrap().files.is_empty());
    }
}
