//! Embedding throughput of the rag plug-in: chunks the Rust book (or any corpus) exactly as a
//! reindex does, embeds a sample of the chunks with the real MiniLM model, and prints chunks/s and
//! the latency of embedding a query (the questions of `eval/rust-book.jsonl`).
//!
//! ```sh
//! cargo build --release -p bkg-plugin-rag --example embed_bench
//! target/release/examples/embed_bench                        # 512 chunks, the engine's path
//! target/release/examples/embed_bench --strategy alone       # one chunk per model call
//! target/release/examples/embed_bench --chunks 0 --dump /tmp/v.f32       # every chunk, saved
//! target/release/examples/embed_bench --chunks 0 --compare /tmp/v.f32    # cosine against them
//! ```
//!
//! Threads: `RAYON_NUM_THREADS` (candle's gemm reads it too). Prints numbers, asserts nothing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bkg_plugin_rag::config::{ChunkParams, default_model_dir};
use bkg_plugin_rag::doc::{self, Prepared};
use bkg_plugin_rag::embed::{DIM, Embedder, dot};
use clap::Parser;

/// Chunks per engine flush (`engine::EMBED_BATCH`).
const ENGINE_BATCH: usize = 64;

#[derive(Parser, Debug)]
#[command(about = "Embedding throughput of the rag plug-in (prints chunks/s)")]
struct Args {
    /// Corpus directory (default: the Rust book of the toolchain, with eval/run.sh's exclusions).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Chunks to embed, spread evenly over the corpus (0: all).
    #[arg(long, default_value_t = 512)]
    chunks: usize,
    /// `engine`: 64 chunks per `Embedder::embed` call, as a reindex flushes them;
    /// `alone`: one chunk per call.
    #[arg(long, default_value = "engine")]
    strategy: String,
    /// With `engine`: sort each 64-chunk batch by byte length and make one model call per `call`
    /// chunks, as the engine did before the embedder batched by token count itself (`--call 16`).
    #[arg(long, default_value_t = 0)]
    call: usize,
    /// Model directory (default: ~/.cache/bkg/models/all-MiniLM-L6-v2).
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Question file whose questions time query embedding.
    #[arg(long, default_value = "eval/rust-book.jsonl")]
    questions: PathBuf,
    /// Writes the vectors (f32 little endian, DIM per chunk, in sample order) to this file.
    #[arg(long)]
    dump: Option<PathBuf>,
    /// Compares the vectors with a file written by `--dump` (same corpus and sample).
    #[arg(long)]
    compare: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    match run(&Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("embed_bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The embedding inputs of every chunk of the corpus, in path order.
fn corpus_inputs(corpus: &Path) -> Result<Vec<String>, String> {
    let exclude: Vec<String> =
        ["print.html", "toc.html", "2018-edition", "first-edition", "second-edition", "*.js", "*.css"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
    let root = corpus.canonicalize().map_err(|e| format!("{}: {e}", corpus.display()))?;
    let scratch = std::env::temp_dir().join("embed-bench-no-index");
    let (mut found, _) = bkg_plugin_rag::paths::walk(&[root], &exclude, &scratch);
    found.sort_by(|a, b| a.path.cmp(&b.path));
    let mut out = Vec::new();
    for f in &found {
        let bytes = std::fs::read(&f.path).map_err(|e| format!("{}: {e}", f.path))?;
        let sha = doc::sha256_hex(&bytes);
        if let Prepared::Indexed { chunks, .. } = doc::prepare(&f.path, &bytes, &sha, ChunkParams::default()) {
            out.extend(chunks.iter().map(|c| c.embed_input(&f.path)));
        }
    }
    Ok(out)
}

/// CPU seconds (user + system) this process has used so far (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest.split_whitespace().skip(11).take(2).filter_map(|x| x.parse().ok()).collect();
    f.iter().sum::<f64>() / 100.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn run(args: &Args) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    let mut say = |s: String| writeln!(out, "{s}").map_err(|e| e.to_string());
    let corpus = match &args.corpus {
        Some(c) => c.clone(),
        None => {
            let sysroot = std::process::Command::new("rustc")
                .args(["--print", "sysroot"])
                .output()
                .map_err(|e| format!("rustc --print sysroot: {e}"))?;
            PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim()).join("share/doc/rust/html/book")
        }
    };
    let all = corpus_inputs(&corpus)?;
    if all.is_empty() {
        return Err(format!("no chunks in {}", corpus.display()));
    }
    let n = if args.chunks == 0 { all.len() } else { args.chunks.min(all.len()) };
    // Evenly spaced, so that the sample has the corpus's mix of lengths.
    let sample: Vec<&str> = (0..n).map(|i| all[i * all.len() / n].as_str()).collect();
    let words: usize = sample.iter().map(|s| s.split_whitespace().count()).sum();
    let dir = args.model_dir.clone().or_else(default_model_dir).ok_or("no model directory (set --model-dir)")?;
    let loaded = Instant::now();
    let model = Embedder::load(&dir).map_err(|e| e.to_string())?;
    let load_ms = loaded.elapsed().as_secs_f64() * 1e3;
    let tokens: Vec<usize> =
        sample.iter().map(|s| model.token_count(s)).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    let mut sorted_tokens = tokens.clone();
    sorted_tokens.sort_unstable();
    say(format!(
        "corpus {}: {} chunks, sample {n} ({:.0} words, {:.0} word pieces per chunk on average; \
         word pieces p50 {} p90 {} max {}, truncated at {}); model loaded in {load_ms:.0} ms; threads {}",
        corpus.display(),
        all.len(),
        words as f64 / n as f64,
        tokens.iter().sum::<usize>() as f64 / n as f64,
        sorted_tokens[n / 2],
        sorted_tokens[(n - 1) * 9 / 10],
        sorted_tokens[n - 1],
        bkg_plugin_rag::embed::MAX_TOKENS,
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into()),
    ))?;

    // Warm-up: first calls allocate and spin up the thread pool.
    model.embed(&sample[..n.min(8)]).map_err(|e| e.to_string())?;

    let (started, cpu_before) = (Instant::now(), cpu_seconds());
    let mut vectors = Vec::with_capacity(n * DIM);
    match args.strategy.as_str() {
        "engine" => {
            for batch in sample.chunks(ENGINE_BATCH) {
                if args.call == 0 {
                    vectors.extend(model.embed(batch).map_err(|e| e.to_string())?);
                    continue;
                }
                let mut order: Vec<usize> = (0..batch.len()).collect();
                order.sort_by_key(|&i| batch[i].len());
                let mut rows = vec![0f32; batch.len() * DIM];
                for group in order.chunks(args.call) {
                    let texts: Vec<&str> = group.iter().map(|&i| batch[i]).collect();
                    let v = model.embed(&texts).map_err(|e| e.to_string())?;
                    for (k, &i) in group.iter().enumerate() {
                        rows[i * DIM..(i + 1) * DIM].copy_from_slice(&v[k * DIM..(k + 1) * DIM]);
                    }
                }
                vectors.extend(rows);
            }
        }
        "alone" => {
            for s in &sample {
                vectors.extend(model.embed_one(s).map_err(|e| e.to_string())?);
            }
        }
        other => return Err(format!("unknown strategy {other:?} (engine, alone)")),
    }
    let (secs, cpu) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu_before);
    say(format!(
        "strategy {}{}: {n} chunks in {secs:.2} s = {:.1} chunks/s ({:.0} word pieces/s); \
         {cpu:.1} CPU s = {:.1} chunks per CPU second; load average {}",
        args.strategy,
        if args.call > 0 { format!(" (calls of {})", args.call) } else { String::new() },
        n as f64 / secs,
        tokens.iter().sum::<usize>() as f64 / secs,
        n as f64 / cpu.max(1e-9),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    ))?;

    if let Ok(text) = std::fs::read_to_string(&args.questions) {
        let questions: Vec<String> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v.get("question").and_then(|q| q.as_str()).map(str::to_owned))
            .collect();
        let mut ms = Vec::with_capacity(questions.len());
        for q in &questions {
            let t = Instant::now();
            model.embed_one(q).map_err(|e| e.to_string())?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        ms.sort_by(f64::total_cmp);
        say(format!(
            "query embedding: {} questions, p50 {:.2} ms, p99 {:.2} ms",
            ms.len(),
            percentile(&ms, 0.5),
            percentile(&ms, 0.99)
        ))?;
    }

    if let Some(path) = &args.dump {
        let bytes: Vec<u8> = vectors.iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        say(format!("wrote {n} vectors to {}", path.display()))?;
    }
    if let Some(path) = &args.compare {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let old: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        if old.len() != vectors.len() {
            return Err(format!("{} holds {} vectors, this run made {n}", path.display(), old.len() / DIM));
        }
        let mut cos: Vec<f32> = old.chunks_exact(DIM).zip(vectors.chunks_exact(DIM)).map(|(a, b)| dot(a, b)).collect();
        cos.sort_by(f32::total_cmp);
        say(format!(
            "cosine old vs new over {n} chunks: min {:.6}, p1 {:.6}, mean {:.6}",
            cos[0],
            cos[(n - 1) / 100],
            cos.iter().map(|c| f64::from(*c)).sum::<f64>() / n as f64
        ))?;
    }
    Ok(())
}
