//! `bkg-rag-eval`: the retrieval evaluation harness.
//!
//! Indexes a corpus with the real engine (the same code the plug-in runs), asks every question
//! of a question file in each mode, and reports recall@5 and MRR@10 per mode, plus indexing
//! throughput and query latency.
//!
//! ```text
//! bkg-rag-eval --questions eval/rust-book.jsonl --corpus "$(rustc --print sysroot)/share/doc/rust/html/book" \
//!     --exclude print.html --exclude 2018-edition ...
//! ```
//!
//! Question file: JSON Lines, one object per line:
//! `{"id": "q1", "question": "…", "expected": ["ch04-01-what-is-ownership.html"]}`; `expected`
//! lists the relevant source documents as paths relative to the corpus root (one suffices to
//! count a hit). Blank lines and lines starting with `#` are ignored.
//!
//! Metrics, per mode, averaged over questions:
//! - recall@5: the fraction of a question's expected documents that appear among the top 5
//!   results (chunks mapped to their documents);
//! - MRR@10: 1/rank of the first result (among the top 10) from an expected document, else 0.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use bkg_plugin_rag::config::RagConfig;
use bkg_plugin_rag::engine::{Engine, Mode, ModelState};
use clap::Parser;
use serde::Deserialize;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(name = "bkg-rag-eval", about = "recall@5 and MRR@10 of the rag plug-in's retrieval modes")]
struct Args {
    /// Question file (JSON Lines: {"id", "question", "expected": [paths relative to the corpus]}).
    #[arg(long)]
    questions: PathBuf,
    /// Corpus directory (the plug-in's single root).
    #[arg(long)]
    corpus: PathBuf,
    /// Exclusion glob (repeatable), as in the plug-in's `exclude` config.
    #[arg(long)]
    exclude: Vec<String>,
    /// Index directory (default: a fresh temporary one, removed at the end).
    #[arg(long)]
    index_dir: Option<PathBuf>,
    /// Model directory (default: the plug-in's default).
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Modes to evaluate, comma separated.
    #[arg(long, default_value = "bm25,vector,hybrid")]
    modes: String,
    /// Chunk size in words (the plug-in's chunk_target_words).
    #[arg(long)]
    chunk_target_words: Option<usize>,
    /// Write the full report (per-question ranks too) as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Force a full reindex of an existing index dir.
    #[arg(long)]
    full: bool,
    /// Scale test: index this many copies of the corpus (hard links under a temporary
    /// directory, `c000/`, `c001/`, ...). Identical texts are embedded once, so this measures
    /// query latency and memory at N times the chunks without N times the embedding work.
    #[arg(long, default_value_t = 1)]
    copies: usize,
    /// Hybrid fusion constant k (default: the plug-in's default).
    #[arg(long)]
    rrf_k: Option<f32>,
    /// Hybrid weight of the vector leg (default: the plug-in's default).
    #[arg(long)]
    vector_weight: Option<f32>,
    /// Index without the embedding model (BM25 only; for BM25 indexing throughput).
    #[arg(long)]
    no_embeddings: bool,
    /// Also grid-search the hybrid fusion (k × vector weight), reporting each setting on the
    /// odd and the even questions separately (tune on one half, check on the other).
    #[arg(long)]
    grid: bool,
}

#[derive(Debug, Deserialize)]
struct Question {
    #[serde(default)]
    id: Option<String>,
    question: String,
    expected: Vec<String>,
}

fn load_questions(path: &Path, corpus: &Path) -> Result<Vec<Question>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let q: Question = serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
        if q.question.trim().is_empty() || q.expected.is_empty() {
            return Err(format!("{}:{}: empty question or no expected document", path.display(), n + 1));
        }
        for e in &q.expected {
            if !corpus.join(e).is_file() {
                return Err(format!("{}:{}: expected document {e:?} is not in the corpus", path.display(), n + 1));
            }
        }
        out.push(q);
    }
    if out.is_empty() {
        return Err(format!("{}: no questions", path.display()));
    }
    Ok(out)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bkg-rag-eval: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let corpus = args.corpus.canonicalize().map_err(|e| format!("{}: {e}", args.corpus.display()))?;
    let corpus_str = corpus.to_str().ok_or("the corpus path is not UTF-8")?.to_owned();
    let questions = load_questions(&args.questions, &corpus)?;
    let modes: Vec<Mode> = args
        .modes
        .split(',')
        .map(|m| Mode::parse(m.trim()).ok_or_else(|| format!("unknown mode {m:?}")))
        .collect::<Result<_, _>>()?;
    let scratch = std::env::temp_dir().join(format!("bkg-rag-eval-{}", std::process::id()));
    let root = if args.copies > 1 {
        make_copies(&corpus, &args.exclude, args.copies, &scratch.join("corpus"))?
    } else {
        corpus.clone()
    };
    let root_str = root.to_str().ok_or("the corpus path is not UTF-8")?.to_owned();
    let (index_dir, temporary) = match &args.index_dir {
        Some(d) => (d.clone(), false),
        None => (scratch.join("index"), true),
    };
    let mut config = json!({"roots": [root_str], "index_dir": index_dir, "exclude": args.exclude});
    if let Some(m) = &args.model_dir {
        config["model_dir"] = json!(m);
    }
    if let Some(w) = args.chunk_target_words {
        config["chunk_target_words"] = json!(w);
    }
    if args.no_embeddings {
        config["embeddings"] = json!(false);
    }
    if let Some(k) = args.rrf_k {
        config["rrf_k"] = json!(k);
    }
    if let Some(w) = args.vector_weight {
        config["vector_weight"] = json!(w);
    }
    let resolved = RagConfig::from_value(&config).and_then(|c| c.resolve(None)).map_err(|e| e.to_string())?;
    let result = evaluate(args, resolved, &questions, &modes, &root_str, &corpus_str);
    if temporary {
        let _ = std::fs::remove_dir_all(&index_dir);
    }
    if args.copies > 1 {
        let _ = std::fs::remove_dir_all(scratch.join("corpus"));
    }
    let _ = std::fs::remove_dir(&scratch);
    result
}

/// Hard-links (or copies) every indexable file of `corpus` into `copies` subdirectories of `out`.
fn make_copies(corpus: &Path, exclude: &[String], copies: usize, out: &Path) -> Result<PathBuf, String> {
    let (found, _) = bkg_plugin_rag::paths::walk(&[corpus.to_owned()], exclude, out);
    for k in 0..copies {
        for f in &found {
            let rel = Path::new(&f.path).strip_prefix(corpus).map_err(|e| e.to_string())?;
            let dest = out.join(format!("c{k:03}")).join(rel);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
            }
            if std::fs::hard_link(&f.path, &dest).is_err() {
                std::fs::copy(&f.path, &dest).map_err(|e| format!("{}: {e}", dest.display()))?;
            }
        }
    }
    out.canonicalize().map_err(|e| format!("{}: {e}", out.display()))
}

/// recall@5 and reciprocal rank (within the top 10) of one question's result documents.
fn score(docs: &[String], expected: &[String]) -> (f64, f64) {
    let top5 = &docs[..docs.len().min(5)];
    let found = expected.iter().filter(|e| top5.contains(e)).count();
    let rr = docs.iter().take(10).position(|d| expected.contains(d)).map_or(0.0, |r| 1.0 / (r as f64 + 1.0));
    (found as f64 / expected.len() as f64, rr)
}

/// Resident memory of this process in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn evaluate(
    args: &Args,
    resolved: bkg_plugin_rag::config::Resolved,
    questions: &[Question],
    modes: &[Mode],
    root: &str,
    corpus: &str,
) -> Result<(), String> {
    let opened = Instant::now();
    let engine = Engine::open(resolved).map_err(|e| e.to_string())?;
    let open_s = opened.elapsed().as_secs_f64();
    if let ModelState::Missing(msg) = engine.model()
        && modes.iter().any(|m| *m != Mode::Bm25)
    {
        return Err(format!("vector modes need the model: {msg}"));
    }
    let started = Instant::now();
    let report = engine.reindex(args.full, &|| false).map_err(|e| e.to_string())?;
    let index_s = started.elapsed().as_secs_f64();
    let mb = report.bytes_read as f64 / 1_048_576.0;
    let mut out = std::io::stdout().lock();
    let w = |out: &mut std::io::StdoutLock<'_>, s: String| writeln!(out, "{s}").map_err(|e| e.to_string());
    w(
        &mut out,
        format!(
            "indexed {} files ({} skipped), {:.1} MiB read, {} chunks, {} embedded, in {:.1} s \
             ({:.2} MiB/s, {:.0} chunks/s; model load + open {:.1} s); index on disk {:.1} MiB",
            report.files,
            report.skipped,
            mb,
            report.chunks,
            report.embedded,
            index_s,
            if index_s > 0.0 { mb / index_s } else { 0.0 },
            if index_s > 0.0 { report.chunks_added as f64 / index_s } else { 0.0 },
            open_s,
            engine.index_bytes() as f64 / 1_048_576.0
        ),
    )?;
    let status = engine.status();
    w(
        &mut out,
        format!(
            "memory: process RSS {:.0} MiB, vectors in RAM {:.1} MiB ({} vectors)",
            rss_mib(),
            status["vector_memory_bytes"].as_f64().unwrap_or(0.0) / 1_048_576.0,
            status["vectors"]
        ),
    )?;
    let prefix = format!("{root}/");
    // With copies, results live under `cNNN/`; every copy of an expected document counts.
    let relative = |path: &str| -> String {
        let rel = path.strip_prefix(&prefix).unwrap_or(path);
        if args.copies > 1 { rel.split_once('/').map_or(rel, |(_, r)| r).to_owned() } else { rel.to_owned() }
    };
    let mut summary = BTreeMap::new();
    let mut per_question = Vec::new();
    w(&mut out, format!("{} questions from {}", questions.len(), args.questions.display()))?;
    w(
        &mut out,
        format!("{:<8} {:>9} {:>8} {:>7} {:>9} {:>9}", "mode", "recall@5", "MRR@10", "hit@1", "p50 ms", "p99 ms"),
    )?;
    for &mode in modes {
        let mut recall_sum = 0.0;
        let mut mrr_sum = 0.0;
        let mut hit1 = 0usize;
        let mut latencies = Vec::with_capacity(questions.len());
        for (qi, q) in questions.iter().enumerate() {
            let query = engine.validate(&q.question, 10, mode, None).map_err(|e| e.to_string())?;
            let t = Instant::now();
            let hits = engine.query(&query).map_err(|e| e.to_string())?;
            latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            let docs: Vec<String> = hits.iter().map(|h| relative(&h.source.path)).collect();
            let top5: Vec<&str> = docs.iter().take(5).map(String::as_str).collect();
            let (recall, rr) = score(&docs, &q.expected);
            recall_sum += recall;
            mrr_sum += rr;
            let first = docs.iter().position(|d| q.expected.iter().any(|e| e == d));
            if first == Some(0) {
                hit1 += 1;
            }
            per_question.push(json!({
                "id": q.id.clone().unwrap_or_else(|| format!("q{}", qi + 1)),
                "mode": mode.as_str(),
                "first_relevant_rank": first.map(|r| r + 1),
                "top5": top5,
            }));
        }
        latencies.sort_by(f64::total_cmp);
        let n = questions.len() as f64;
        let (recall, mrr) = (recall_sum / n, mrr_sum / n);
        let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
        w(
            &mut out,
            format!(
                "{:<8} {:>9.3} {:>8.3} {:>7.3} {:>9.2} {:>9.2}",
                mode.as_str(),
                recall,
                mrr,
                hit1 as f64 / n,
                p50,
                p99
            ),
        )?;
        summary.insert(
            mode.as_str(),
            json!({"recall@5": recall, "mrr@10": mrr, "hit@1": hit1 as f64 / n, "p50_ms": p50, "p99_ms": p99}),
        );
    }
    // Where vector time goes: the query embedding alone.
    if let ModelState::Loaded(model) = engine.model() {
        let mut times = Vec::with_capacity(questions.len());
        for q in questions {
            let t = Instant::now();
            model.embed_one(&q.question).map_err(|e| e.to_string())?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        w(
            &mut out,
            format!(
                "query embedding alone: p50 {:.2} ms, p99 {:.2} ms",
                percentile(&times, 0.5),
                percentile(&times, 0.99)
            ),
        )?;
    }
    if args.grid && modes.contains(&Mode::Hybrid) {
        w(&mut out, "hybrid fusion grid (recall@5 / MRR@10 on odd | even questions):".to_owned())?;
        for k in [5.0f32, 10.0, 20.0, 60.0] {
            for weight in [0.5f32, 1.0, 1.5, 2.0, 3.0] {
                let mut sums = [[0.0f64; 2]; 2];
                let mut counts = [0usize; 2];
                for (qi, q) in questions.iter().enumerate() {
                    let mut query = engine.validate(&q.question, 10, Mode::Hybrid, None).map_err(|e| e.to_string())?;
                    query.fusion = bkg_plugin_rag::config::Fusion { k, vector_weight: weight };
                    let hits = engine.query(&query).map_err(|e| e.to_string())?;
                    let docs: Vec<String> = hits.iter().map(|h| relative(&h.source.path)).collect();
                    let (recall, rr) = score(&docs, &q.expected);
                    let half = qi % 2;
                    sums[half][0] += recall;
                    sums[half][1] += rr;
                    counts[half] += 1;
                }
                let avg = |h: usize, m: usize| sums[h][m] / counts[h].max(1) as f64;
                w(
                    &mut out,
                    format!(
                        "  k={k:<4} w_vec={weight:<4} odd {:.3} / {:.3} | even {:.3} / {:.3}",
                        avg(0, 0),
                        avg(0, 1),
                        avg(1, 0),
                        avg(1, 1)
                    ),
                )?;
            }
        }
    }
    if let Some(path) = &args.json {
        let body = json!({
            "questions": questions.len(),
            "corpus": corpus,
            "index": report,
            "index_seconds": index_s,
            "copies": args.copies,
            "rss_mib": rss_mib(),
            "modes": summary,
            "per_question": per_question,
        });
        let text = serde_json::to_string_pretty(&body).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
