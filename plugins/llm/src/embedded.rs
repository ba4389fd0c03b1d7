//! The embedded backend: a quantized llama-family GGUF model run by candle on the CPU.
//!
//! The weights are loaded once and shared; every generation clones the model (the tensors are
//! reference-counted, so only the KV cache is per request) and runs on its own thread. The loop
//! checks the cancellation token before every forward pass, so a cancelled request stops within
//! one pass: one decode step, or one prefill chunk of `prefill_chunk` tokens.

use std::fs::File;
use std::path::Path;
use std::time::Instant;

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::quantized_llama::{MAX_SEQ_LEN, ModelWeights};
use tokenizers::Tokenizer;
use tokio_util::sync::CancellationToken;

use crate::error::LlmError;
use crate::params::Input;
use crate::stops::{Step, StopMatcher};
use crate::template::ChatTemplate;

/// A loaded model, shared by every generation.
pub struct EmbeddedModel {
    weights: ModelWeights,
    tokenizer: Tokenizer,
    eos: Vec<u32>,
    template: ChatTemplate,
    device: Device,
    prefill_chunk: usize,
    /// Tokens of context a request may use (prompt plus completion).
    pub context: usize,
    /// The id clients use in `model`.
    pub id: String,
    /// Metadata shown by `llm.models`.
    pub info: ModelInfo,
}

/// What is known about the loaded model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    pub path: String,
    pub name: Option<String>,
    pub architecture: String,
    pub context_length: usize,
    pub vocab_size: usize,
    pub license: Option<String>,
    pub chat_template: &'static str,
    pub load_ms: u64,
    /// Whether candle found AVX2 on this CPU (it picks its kernels at run time).
    pub avx: bool,
    pub weights: Weights,
}

/// One generation's settings.
#[derive(Debug, Clone)]
pub struct Job {
    pub prompt: Vec<u32>,
    pub max_tokens: u32,
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
    pub stop: Vec<String>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// End of turn or a stop string.
    Stop,
    /// `max_tokens` or the end of the context.
    Length,
    /// The token was cancelled or nobody listens any more.
    Cancelled,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::Cancelled => "cancelled",
        }
    }
}

/// The summary of one generation.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub finish: Finish,
    pub prompt_tokens: usize,
    pub completion_tokens: u32,
    pub prefill_ms: u64,
    pub decode_ms: u64,
    /// Forward passes after which generation stopped (for the cancellation counters).
    pub forward_passes: u64,
}

fn candle(e: candle_core::Error) -> LlmError {
    LlmError::Generation(short(&e))
}

/// A candle error's message without the backtrace candle appends when `RUST_BACKTRACE` is set.
fn short(e: &candle_core::Error) -> String {
    let text = e.to_string();
    text.split("\n   0: ").next().unwrap_or_default().trim_end().to_owned()
}

impl EmbeddedModel {
    /// Loads a GGUF file: header and tokenizer first (cheap, with precise errors), then weights.
    pub fn load(
        path: &Path,
        id_override: Option<&str>,
        prefill_chunk: usize,
        weights: Weights,
    ) -> Result<Self, String> {
        let started = Instant::now();
        let shown = path.display();
        let mut file = File::open(path).map_err(|e| format!("cannot open the model file {shown}: {e}"))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| format!("{shown} is not a valid GGUF file ({}); it may be truncated or corrupt", short(&e)))?;
        let md = &content.metadata;
        let text = |key: &str| md.get(key).and_then(|v| v.to_string().ok()).cloned();
        let architecture = text("general.architecture").unwrap_or_default();
        if architecture != "llama" {
            return Err(format!(
                "{shown} is a {architecture:?} model; the embedded backend runs llama-architecture GGUF files \
                 (SmolLM, Llama, Mistral, TinyLlama)"
            ));
        }
        let tok = crate::tokenizer::from_gguf(&content).map_err(|e| format!("{shown}: {e}"))?;
        let template = ChatTemplate::from_gguf(text("tokenizer.chat_template").as_deref());
        let declared_context =
            md.get("llama.context_length").and_then(|v| v.to_u32().ok()).map_or(MAX_SEQ_LEN, |n| n as usize);
        let context = declared_context.min(MAX_SEQ_LEN);
        let name = text("general.name");
        let id = match id_override {
            Some(id) => id.to_owned(),
            None => model_id(name.as_deref(), path),
        };
        let vocab_size = tok.tokenizer.get_vocab_size(true);
        let license = text("general.license");
        let device = Device::Cpu;
        let corrupt = |e: candle_core::Error| {
            format!("cannot load the weights of {shown} ({}); the file may be truncated or corrupt", short(&e))
        };
        let target = match weights {
            Weights::Quantized => None,
            Weights::F32 => Some(GgmlDType::F32),
            Weights::F16 => Some(GgmlDType::F16),
        };
        let model_weights = match target {
            None => ModelWeights::from_gguf(content, &mut file, &device).map_err(corrupt)?,
            Some(to) => {
                let (content, mut converted) = dequantize_all(content, &mut file, to, &device).map_err(corrupt)?;
                ModelWeights::from_gguf(content, &mut converted, &device).map_err(corrupt)?
            }
        };
        let info = ModelInfo {
            path: shown.to_string(),
            name,
            architecture,
            context_length: context,
            vocab_size,
            license,
            chat_template: match template {
                ChatTemplate::ChatMl { .. } => "chatml",
                ChatTemplate::Unsupported { .. } => "unsupported",
            },
            load_ms: started.elapsed().as_millis() as u64,
            avx: candle_core::utils::with_avx(),
            weights,
        };
        Ok(Self {
            weights: model_weights,
            tokenizer: tok.tokenizer,
            eos: tok.eos,
            template,
            device,
            prefill_chunk,
            context,
            id,
            info,
        })
    }

    /// The prompt's token ids: the chat template applied (unless raw), special tokens parsed,
    /// no BOS added.
    pub fn prompt_tokens(&self, input: &Input, system_override: Option<&str>) -> Result<Vec<u32>, LlmError> {
        let text = match input {
            Input::Prompt { text, raw: true } => text.clone(),
            Input::Prompt { text, raw: false } => {
                let user = crate::params::ChatMessage { role: crate::params::Role::User, content: text.clone() };
                self.template.render(&[user], system_override).map_err(|e| LlmError::invalid("messages", e))?
            }
            Input::Messages(messages) => {
                self.template.render(messages, system_override).map_err(|e| LlmError::invalid("messages", e))?
            }
        };
        let encoding = self
            .tokenizer
            .encode_fast(text.as_str(), false)
            .map_err(|e| LlmError::Generation(format!("tokenizing the prompt failed: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Runs one generation on the calling thread. `emit` gets each piece of text as soon as it
    /// is safe to show (no partial stop string, no split UTF-8 character) and returns false when
    /// nobody listens any more, which stops generation like a cancel.
    pub fn generate(
        &self,
        job: &Job,
        cancel: &CancellationToken,
        emit: &mut (dyn FnMut(String) -> bool + Send),
    ) -> Result<Outcome, LlmError> {
        self.device.with_context(|| self.generate_inner(job, cancel, emit))
    }

    fn generate_inner(
        &self,
        job: &Job,
        cancel: &CancellationToken,
        emit: &mut (dyn FnMut(String) -> bool + Send),
    ) -> Result<Outcome, LlmError> {
        let mut outcome = Outcome {
            finish: Finish::Cancelled,
            prompt_tokens: job.prompt.len(),
            completion_tokens: 0,
            prefill_ms: 0,
            decode_ms: 0,
            forward_passes: 0,
        };
        if job.prompt.is_empty() {
            return Err(LlmError::invalid("prompt", "the prompt has no tokens"));
        }
        let mut model = self.weights.clone();
        let sampling = if job.temperature < 1e-7 {
            Sampling::ArgMax
        } else if job.top_p >= 1.0 {
            Sampling::All { temperature: job.temperature }
        } else {
            Sampling::TopP { p: job.top_p, temperature: job.temperature }
        };
        let mut sampler = LogitsProcessor::from_sampling(job.seed, sampling);
        let mut decoder = self.tokenizer.decode_stream(true);
        let mut stops = StopMatcher::new(job.stop.clone());

        let started = Instant::now();
        let mut pos = 0usize;
        let mut logits = None;
        for chunk in job.prompt.chunks(self.prefill_chunk) {
            if cancel.is_cancelled() {
                return Ok(outcome);
            }
            let input = Tensor::new(chunk, &self.device).and_then(|t| t.unsqueeze(0)).map_err(candle)?;
            logits = Some(model.forward(&input, pos).map_err(candle)?);
            outcome.forward_passes += 1;
            pos += chunk.len();
        }
        outcome.prefill_ms = started.elapsed().as_millis() as u64;
        let decode_started = Instant::now();
        let Some(mut logits) = logits else { return Ok(outcome) };
        loop {
            let next = logits.squeeze(0).and_then(|l| sampler.sample(&l)).map_err(candle)?;
            if self.eos.contains(&next) {
                outcome.finish = Finish::Stop;
                break;
            }
            outcome.completion_tokens += 1;
            let piece = decoder.step(next).map_err(|e| LlmError::Generation(format!("detokenizing failed: {e}")))?;
            if let Some(piece) = piece {
                match stops.push(&piece) {
                    Step::Emit(text) => {
                        if !text.is_empty() && !emit(text) {
                            outcome.decode_ms = decode_started.elapsed().as_millis() as u64;
                            return Ok(outcome);
                        }
                    }
                    Step::Stop(text) => {
                        if !text.is_empty() {
                            emit(text);
                        }
                        outcome.finish = Finish::Stop;
                        break;
                    }
                }
            }
            if outcome.completion_tokens >= job.max_tokens || pos + 1 >= self.context {
                outcome.finish = Finish::Length;
                break;
            }
            if cancel.is_cancelled() {
                outcome.decode_ms = decode_started.elapsed().as_millis() as u64;
                return Ok(outcome);
            }
            let input = Tensor::new(&[next], &self.device).and_then(|t| t.unsqueeze(0)).map_err(candle)?;
            logits = model.forward(&input, pos).map_err(candle)?;
            outcome.forward_passes += 1;
            pos += 1;
        }
        let rest = stops.flush();
        if !rest.is_empty() {
            emit(rest);
        }
        outcome.decode_ms = decode_started.elapsed().as_millis() as u64;
        Ok(outcome)
    }
}

/// How the weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Weights {
    /// Every matrix dequantized to f32 once, at load (the default; see `dequantize_all`).
    #[default]
    F32,
    /// Every matrix dequantized to f16 (half the memory of f32, about the same speed here).
    F16,
    /// As stored in the file, multiplied by candle's quantized kernels with 8-bit activations
    /// (the least memory; SmolLM2 Q4_1 then gets simple questions wrong, as it does in llama.cpp).
    Quantized,
}

/// Rewrites the model in memory with every quantized matrix dequantized to `to`, as a GGUF that
/// `ModelWeights::from_gguf` reads like the original.
///
/// Why: quantized matmuls (candle's, and llama.cpp's alike) also quantize the activations to
/// 8 bits, and with this small Q4_1 model that costs the right answer: greedy SmolLM2 answers
/// "L'Étoile, la Marseillaise, la femme…" to "What is the capital of France?" through candle's
/// quantized kernels and through llama.cpp (llama-cpp-python 0.3, same file), and "The capital
/// of France is Paris." with the weights dequantized (activations stay f32). Measured on 2 cores
/// (release): f32 weights decode 26 tok/s and prefill 39 tokens in 0.24 s, candle's quantized
/// path 17 tok/s and 1.9 s, so the dequantized default is also the faster one here; it takes
/// about 4 bytes per weight (f16: 2).
fn dequantize_all(
    content: gguf_file::Content,
    file: &mut File,
    to: GgmlDType,
    device: &Device,
) -> candle_core::Result<(gguf_file::Content, std::io::Cursor<Vec<u8>>)> {
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let tensor = content.tensor(file, name, device)?;
        let quantized = !matches!(tensor.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        let tensor = if quantized || tensor.dtype() != to && tensor.shape().dims().len() == 2 {
            QTensor::quantize(&tensor.dequantize(device)?, to)?
        } else {
            tensor
        };
        tensors.push((name.as_str(), tensor));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    let mut buffer = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut buffer, &metadata, &refs)?;
    buffer.set_position(0);
    let converted = gguf_file::Content::read(&mut buffer)?;
    Ok((converted, buffer))
}

/// A stable id from the file name without its quantization suffix
/// ("SmolLM2-135M-Instruct.Q4_1.gguf" → "smollm2-135m-instruct"), else the GGUF's `general.name`.
fn model_id(name: Option<&str>, path: &Path) -> String {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = match stem.rsplit_once('.') {
        Some((base, quant)) if quant.len() <= 8 && quant.chars().any(|c| c.is_ascii_digit()) => base.to_owned(),
        _ => stem,
    };
    let base = if stem.trim().is_empty() { name.unwrap_or("model").to_owned() } else { stem };
    let mut id = String::new();
    for c in base.trim().chars() {
        if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
            id.push(c.to_ascii_lowercase());
        } else if !id.ends_with('-') {
            id.push('-');
        }
    }
    let id = id.trim_matches('-').to_owned();
    if id.is_empty() { "model".into() } else { id }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_are_slugs() {
        let p = Path::new("/m/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert_eq!(model_id(Some("Smollm2 135M 8k Lc100K Mix1 Ep2"), p), "smollm2-135m-instruct");
        assert_eq!(model_id(None, Path::new("/x/a b.gguf")), "a-b");
        assert_eq!(model_id(None, Path::new("/x/tinyllama-1.1b-chat.Q8_0.gguf")), "tinyllama-1.1b-chat");
    }
}
