//! Params of `llm.generate`, parsed and checked before any work is admitted.
//!
//! Ranges follow OpenAI and vLLM: `temperature` in [0, 2], `top_p` in (0, 1], `max_tokens` ≥ 1
//! and at most the configured limit, at most 4 stop strings. Unknown fields are errors (`-32602`),
//! except the protocol's own `_meta` and `stream`.

use serde::Deserialize;
use serde_json::Value;

use crate::config::LlmConfig;
use crate::error::LlmError;

/// Most stop strings a request may give (OpenAI's limit).
pub const MAX_STOP: usize = 4;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 256;

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

/// What to continue: a conversation, or a single prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A prompt; with `raw` it is fed to the model as is, else as one user message.
    Prompt {
        text: String,
        raw: bool,
    },
    Messages(Vec<ChatMessage>),
}

/// Checked params of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    pub input: Input,
    pub max_tokens: u32,
    pub temperature: f64,
    pub top_p: f64,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
    pub model: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParams {
    prompt: Option<String>,
    messages: Option<Vec<RawMessage>>,
    raw: Option<bool>,
    max_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    stop: Option<RawStop>,
    seed: Option<u64>,
    model: Option<String>,
    // The protocol's keys: the deadline and the stream opt-in (handled by the SDK).
    #[serde(rename = "_meta")]
    _meta: Option<Value>,
    #[allow(dead_code)]
    stream: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMessage {
    role: String,
    content: Option<RawContent>,
    #[allow(dead_code)]
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawContent {
    Text(String),
    Parts(Vec<RawPart>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawStop {
    One(String),
    Many(Vec<String>),
}

/// Parses and checks the params of `llm.generate`.
pub fn parse(params: Value, config: &LlmConfig) -> Result<GenerateParams, LlmError> {
    let raw: RawParams = serde_json::from_value(params)
        .map_err(|e| LlmError::InvalidParams { param: None, message: format!("invalid params: {e}") })?;
    let input = match (raw.prompt, raw.messages) {
        (Some(_), Some(_)) => return Err(LlmError::invalid("prompt", "give either `prompt` or `messages`, not both")),
        (None, None) => return Err(LlmError::invalid("prompt", "missing `prompt` or `messages`")),
        (Some(text), None) => {
            if text.trim().is_empty() {
                return Err(LlmError::invalid("prompt", "`prompt` must not be empty"));
            }
            Input::Prompt { text, raw: raw.raw.unwrap_or(false) }
        }
        (None, Some(messages)) => {
            if raw.raw.is_some() {
                return Err(LlmError::invalid("raw", "`raw` applies to `prompt` only"));
            }
            Input::Messages(parse_messages(messages)?)
        }
    };
    let bytes = match &input {
        Input::Prompt { text, .. } => text.len(),
        Input::Messages(m) => m.iter().map(|m| m.content.len()).sum(),
    };
    if bytes > config.max_prompt_bytes {
        return Err(LlmError::ContextLength(format!(
            "the prompt is {bytes} bytes; this model accepts at most {} bytes",
            config.max_prompt_bytes
        )));
    }
    let max_tokens = match raw.max_tokens {
        None => config.default_max_tokens,
        Some(n) if n < 1 => {
            return Err(LlmError::invalid("max_tokens", format!("max_tokens must be at least 1, got {n}")));
        }
        Some(n) if n > i64::from(config.max_tokens_limit) => {
            return Err(LlmError::invalid(
                "max_tokens",
                format!("max_tokens must be at most {}, got {n}", config.max_tokens_limit),
            ));
        }
        Some(n) => u32::try_from(n).map_err(|_| LlmError::invalid("max_tokens", "max_tokens is out of range"))?,
    };
    let temperature = raw.temperature.unwrap_or(config.default_temperature);
    if !temperature.is_finite() || !(0.0..=2.0).contains(&temperature) {
        return Err(LlmError::invalid("temperature", format!("temperature must be in [0, 2], got {temperature}")));
    }
    let top_p = raw.top_p.unwrap_or(config.default_top_p);
    if !top_p.is_finite() || top_p <= 0.0 || top_p > 1.0 {
        return Err(LlmError::invalid("top_p", format!("top_p must be in (0, 1], got {top_p}")));
    }
    let stop = match raw.stop {
        None => vec![],
        Some(RawStop::One(s)) => vec![s],
        Some(RawStop::Many(v)) => v,
    };
    if stop.len() > MAX_STOP {
        return Err(LlmError::invalid("stop", format!("at most {MAX_STOP} stop strings, got {}", stop.len())));
    }
    if let Some(s) = stop.iter().find(|s| s.is_empty() || s.len() > MAX_STOP_BYTES) {
        return Err(LlmError::invalid(
            "stop",
            format!("stop strings must be 1 to {MAX_STOP_BYTES} bytes, got {} bytes", s.len()),
        ));
    }
    Ok(GenerateParams { input, max_tokens, temperature, top_p, stop, seed: raw.seed, model: raw.model })
}

fn parse_messages(messages: Vec<RawMessage>) -> Result<Vec<ChatMessage>, LlmError> {
    if messages.is_empty() {
        return Err(LlmError::invalid("messages", "`messages` must not be empty"));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(LlmError::invalid(
                    "messages",
                    format!("messages[{i}].role {other:?} is not one of system, developer, user, assistant"),
                ));
            }
        };
        let content = match m.content {
            None => String::new(),
            Some(RawContent::Text(t)) => t,
            Some(RawContent::Parts(parts)) => {
                let mut text = String::new();
                for part in parts {
                    match (part.kind.as_str(), part.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        (kind, _) => {
                            return Err(LlmError::invalid(
                                "messages",
                                format!("messages[{i}]: content parts of type {kind:?} are not supported (only text)"),
                            ));
                        }
                    }
                }
                text
            }
        };
        out.push(ChatMessage { role, content });
    }
    if !out.iter().any(|m| m.role != Role::System && !m.content.trim().is_empty()) {
        return Err(LlmError::invalid("messages", "`messages` needs at least one non-empty user or assistant message"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> LlmConfig {
        LlmConfig::default()
    }

    fn err(params: Value) -> LlmError {
        parse(params, &config()).unwrap_err()
    }

    #[test]
    fn accepts_prompt_and_messages_with_defaults() {
        let p = parse(json!({"prompt": "hi", "stream": true, "_meta": {"deadlineMs": 5}}), &config()).unwrap();
        assert_eq!(p.input, Input::Prompt { text: "hi".into(), raw: false });
        assert_eq!(p.max_tokens, 256);
        assert!((p.temperature - 0.2).abs() < 1e-9);
        let p = parse(
            json!({"messages": [{"role": "system", "content": "be brief"},
                                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
                   "max_tokens": 5, "temperature": 0, "top_p": 1, "stop": "\n", "seed": 7, "model": "m"}),
            &config(),
        )
        .unwrap();
        let Input::Messages(m) = &p.input else { panic!("messages") };
        assert_eq!(m[1], ChatMessage { role: Role::User, content: "ab".into() });
        assert_eq!(p.stop, vec!["\n".to_string()]);
        assert_eq!(p.seed, Some(7));
    }

    #[test]
    fn rejects_bad_input_with_the_field() {
        let param = |e: LlmError| match e {
            LlmError::InvalidParams { param, .. } => param,
            other => panic!("{other:?}"),
        };
        assert_eq!(param(err(json!({"prompt": ""}))).as_deref(), Some("prompt"));
        assert_eq!(param(err(json!({"prompt": "  \n"}))).as_deref(), Some("prompt"));
        assert_eq!(param(err(json!({}))).as_deref(), Some("prompt"));
        assert_eq!(param(err(json!({"prompt": "x", "max_tokens": -1}))).as_deref(), Some("max_tokens"));
        assert_eq!(param(err(json!({"prompt": "x", "max_tokens": 0}))).as_deref(), Some("max_tokens"));
        assert_eq!(param(err(json!({"prompt": "x", "max_tokens": 1_000_000_000}))).as_deref(), Some("max_tokens"));
        assert_eq!(param(err(json!({"prompt": "x", "temperature": 2.5}))).as_deref(), Some("temperature"));
        assert_eq!(param(err(json!({"prompt": "x", "temperature": -0.1}))).as_deref(), Some("temperature"));
        assert_eq!(param(err(json!({"prompt": "x", "top_p": 0}))).as_deref(), Some("top_p"));
        assert_eq!(param(err(json!({"prompt": "x", "top_p": 1.5}))).as_deref(), Some("top_p"));
        assert_eq!(param(err(json!({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}))).as_deref(), Some("stop"));
        assert_eq!(param(err(json!({"prompt": "x", "stop": [""]}))).as_deref(), Some("stop"));
        assert_eq!(param(err(json!({"messages": []}))).as_deref(), Some("messages"));
        assert_eq!(param(err(json!({"messages": [{"role": "robot", "content": "x"}]}))).as_deref(), Some("messages"));
        assert_eq!(param(err(json!({"messages": [{"role": "system", "content": "x"}]}))).as_deref(), Some("messages"));
        match err(json!({"prompt": "x", "temprature": 1})) {
            LlmError::InvalidParams { message, .. } => {
                assert!(message.contains("unknown field `temprature`"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(err(json!({"prompt": "x".repeat(300 * 1024)})), LlmError::ContextLength(_)));
    }
}
