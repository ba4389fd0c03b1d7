//! The `openai` backend: one or more OpenAI-compatible upstreams (llama.cpp server, vLLM,
//! Ollama, another bkg) tried in order, streamed over SSE, with failover and per-upstream health.
//!
//! Config (`config.openai`):
//!
//! ```json
//! {"upstreams": [{"name": "a", "base_url": "http://127.0.0.1:8080/v1", "model": "m",
//!                 "api_key_env": "UPSTREAM_A_KEY"}],
//!  "cooldown_ms": 5000, "connect_timeout_ms": 2000}
//! ```
//!
//! The API key is read from the named environment variable (the registry entry's `env`), sent as
//! a bearer token and never logged. Failover follows llm.md §3: an upstream is skipped while it
//! cools down; a connect error, 408, 429, 5xx, or a stream that ends before its first content
//! token moves on to the next one; after the first content token nothing is retried (that would
//! duplicate text) and a broken stream is an error. A 429 or 401/403/404, or 3 failures in a row,
//! start a cooldown (5 s, or the upstream's longer `Retry-After`). Upstream 400/422 is the
//! request's fault and is answered 400 with the upstream's reason; every other upstream failure
//! is 502, and 503 when every upstream is cooling down.
//!
//! Plain `http://` only: the build has no TLS stack (see the README).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bkg_plugin_sdk::protocol::HealthStatus;
use bkg_plugin_sdk::{CallContext, Health, RpcError};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::admission::Gate;
use crate::config::LlmConfig;
use crate::error::LlmError;
use crate::params::{GenerateParams, Input};

/// Consecutive failures that start a cooldown.
const FAILURES_BEFORE_COOLDOWN: u32 = 3;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamConfig {
    name: Option<String>,
    base_url: String,
    model: String,
    api_key_env: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenAiConfig {
    upstreams: Vec<UpstreamConfig>,
    #[serde(default = "default_cooldown_ms")]
    cooldown_ms: u64,
    #[serde(default = "default_connect_timeout_ms")]
    connect_timeout_ms: u64,
}

fn default_cooldown_ms() -> u64 {
    5_000
}

fn default_connect_timeout_ms() -> u64 {
    2_000
}

/// Health of one upstream.
#[derive(Debug, Default)]
struct UpstreamHealth {
    consecutive_failures: u32,
    cooldown_until: Option<Instant>,
    last_error: Option<String>,
    requests: u64,
    failures: u64,
}

struct Upstream {
    name: String,
    /// `…/v1` without a trailing slash.
    base_url: String,
    model: String,
    api_key: Option<String>,
    health: Mutex<UpstreamHealth>,
}

impl Upstream {
    fn health(&self) -> std::sync::MutexGuard<'_, UpstreamHealth> {
        self.health.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn cooling_for(&self) -> Option<Duration> {
        let h = self.health();
        h.cooldown_until.and_then(|t| t.checked_duration_since(Instant::now()))
    }

    fn succeeded(&self) {
        let mut h = self.health();
        h.requests += 1;
        h.consecutive_failures = 0;
        h.cooldown_until = None;
    }

    /// Records a failure; `cool` starts the cooldown at once (429, 401/403/404).
    fn failed(&self, why: &str, cool: bool, cooldown: Duration) {
        let mut h = self.health();
        h.requests += 1;
        h.failures += 1;
        h.consecutive_failures += 1;
        h.last_error = Some(why.to_owned());
        if cool || h.consecutive_failures >= FAILURES_BEFORE_COOLDOWN {
            h.cooldown_until = Some(Instant::now() + cooldown);
        }
        tracing::warn!("upstream {} failed: {why}", self.name);
    }
}

/// The configured upstreams and the HTTP client.
pub struct Upstreams {
    upstreams: Vec<Arc<Upstream>>,
    http: reqwest::Client,
    cooldown: Duration,
    model_id: String,
    stream_interval: Duration,
}

/// How one attempt at one upstream ended.
enum Attempt {
    /// Done: the result (summary) of the generation.
    Done(Value),
    /// Failed before any content: try the next upstream.
    Next,
    /// Failed in a way another upstream cannot fix.
    Fail(LlmError),
}

impl Upstreams {
    /// Reads `config.openai`; every problem is a handshake error.
    pub fn from_config(config: &LlmConfig) -> Result<Self, String> {
        let raw = config.openai.clone().unwrap_or(Value::Null);
        let oc = OpenAiConfig::deserialize(&raw).map_err(|e| format!("invalid llm config: openai: {e}"))?;
        if oc.upstreams.is_empty() {
            return Err("invalid llm config: openai.upstreams must list at least one upstream".into());
        }
        let mut upstreams = Vec::new();
        for (i, u) in oc.upstreams.into_iter().enumerate() {
            let name = u.name.unwrap_or_else(|| format!("upstream-{i}"));
            if !u.base_url.starts_with("http://") {
                return Err(format!(
                    "invalid llm config: openai.upstreams[{i}].base_url must be an http:// URL (this build has no TLS)"
                ));
            }
            let api_key = match &u.api_key_env {
                None => None,
                Some(var) => Some(std::env::var(var).map_err(|_| {
                    format!(
                        "openai.upstreams[{i}].api_key_env: {var} is not set in the plug-in's environment; \
                         add it to the registry entry's \"env\""
                    )
                })?),
            };
            upstreams.push(Arc::new(Upstream {
                name,
                base_url: u.base_url.trim_end_matches('/').to_owned(),
                model: u.model,
                api_key,
                health: Mutex::new(UpstreamHealth::default()),
            }));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(oc.connect_timeout_ms))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let model_id = config.model_id.clone().unwrap_or_else(|| upstreams[0].model.clone());
        Ok(Self {
            upstreams,
            http,
            cooldown: Duration::from_millis(oc.cooldown_ms),
            model_id,
            stream_interval: config.stream_interval(),
        })
    }

    /// `plugin.health`: serving while one upstream is not cooling down.
    pub fn health(&self) -> Health {
        let cooling: Vec<&str> =
            self.upstreams.iter().filter(|u| u.cooling_for().is_some()).map(|u| u.name.as_str()).collect();
        if cooling.len() == self.upstreams.len() {
            Health::with_status(
                HealthStatus::Degraded,
                format!("every upstream is cooling down: {}", cooling.join(", ")),
            )
        } else {
            Health::serving()
        }
    }

    /// `llm.models`.
    pub fn models(&self) -> Vec<Value> {
        let upstreams: Vec<Value> = self
            .upstreams
            .iter()
            .map(|u| {
                let h = u.health();
                json!({
                    "name": u.name, "base_url": u.base_url, "model": u.model,
                    "cooling_down_ms": h.cooldown_until.and_then(|t| t.checked_duration_since(Instant::now())).map(|d| d.as_millis() as u64),
                    "last_error": h.last_error, "requests": h.requests, "failures": h.failures,
                })
            })
            .collect();
        let status = if self.upstreams.iter().any(|u| u.cooling_for().is_none()) { "ready" } else { "degraded" };
        vec![json!({"id": self.model_id, "status": status, "backend": "openai", "upstreams": upstreams})]
    }

    /// One generation, with failover across the upstreams.
    pub async fn generate(&self, p: GenerateParams, gate: &Arc<Gate>, ctx: &CallContext) -> Result<Value, RpcError> {
        if let Some(m) = &p.model
            && m != &self.model_id
            && m != "default"
        {
            return Err(LlmError::ModelNotFound(m.clone()).into());
        }
        let messages = match &p.input {
            Input::Messages(m) => {
                m.iter().map(|m| json!({"role": m.role.as_str(), "content": m.content})).collect::<Vec<_>>()
            }
            Input::Prompt { raw: true, .. } => {
                return Err(LlmError::invalid("raw", "raw prompts are not supported by the openai backend").into());
            }
            Input::Prompt { text, .. } => vec![json!({"role": "user", "content": text})],
        };
        let started = Instant::now();
        let (ticket, _) = gate.enter()?;
        let _running = gate.start(ticket).await;
        ctx.stream(json!({"status": {"phase": "started", "queue_ms": started.elapsed().as_millis() as u64}})).await;
        let mut shortest_cooldown: Option<Duration> = None;
        let mut last_error = None;
        for upstream in &self.upstreams {
            if let Some(left) = upstream.cooling_for() {
                shortest_cooldown = Some(shortest_cooldown.map_or(left, |s| s.min(left)));
                continue;
            }
            let mut body = json!({
                "model": upstream.model, "messages": messages, "max_tokens": p.max_tokens,
                "temperature": p.temperature, "top_p": p.top_p, "stream": true,
                "stream_options": {"include_usage": true},
            });
            if !p.stop.is_empty() {
                body["stop"] = json!(p.stop);
            }
            if let Some(seed) = p.seed {
                body["seed"] = json!(seed);
            }
            match self.attempt(upstream, &body, ctx).await {
                Attempt::Done(mut result) => {
                    upstream.succeeded();
                    gate.record_service(started.elapsed());
                    result["model"] = json!(self.model_id);
                    result["upstream"] = json!(upstream.name);
                    result["timings"] = json!({"total_ms": started.elapsed().as_millis() as u64});
                    return Ok(result);
                }
                Attempt::Fail(e) => return Err(e.into()),
                Attempt::Next => {
                    last_error = upstream.health().last_error.clone();
                }
            }
        }
        let message = match (&last_error, shortest_cooldown) {
            (Some(e), _) => format!("no upstream could answer; the last error: {e}"),
            (None, Some(_)) => "every upstream is cooling down after failures".to_owned(),
            (None, None) => "no upstream could answer".to_owned(),
        };
        Err(LlmError::Upstream {
            http_status: if last_error.is_some() { 502 } else { 503 },
            message,
            retry_after_ms: Some(shortest_cooldown.unwrap_or(self.cooldown).as_millis().clamp(1_000, 60_000) as u64),
        }
        .into())
    }

    /// Sends the request to one upstream and forwards its content.
    async fn attempt(&self, upstream: &Upstream, body: &Value, ctx: &CallContext) -> Attempt {
        let url = format!("{}/chat/completions", upstream.base_url);
        let mut request = self.http.post(&url).json(body);
        if let Some(key) = &upstream.api_key {
            request = request.bearer_auth(key);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                upstream.failed(&format!("cannot reach {url}: {}", without_url(&e)), false, self.cooldown);
                return Attempt::Next;
            }
        };
        let status = response.status().as_u16();
        if status != 200 {
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map(|s| Duration::from_secs(s.min(300)));
            let text = response.text().await.unwrap_or_default();
            let reason = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| text.chars().take(200).collect());
            let why = format!("{url} answered {status}: {reason}");
            let cooldown = retry_after.map_or(self.cooldown, |r| r.max(self.cooldown));
            return match status {
                400 | 422 => Attempt::Fail(LlmError::InvalidParams {
                    param: None,
                    message: format!("the upstream refused the request: {reason}"),
                }),
                401 | 403 | 404 => {
                    upstream.failed(&why, true, cooldown);
                    Attempt::Next
                }
                429 => {
                    upstream.failed(&why, true, cooldown);
                    Attempt::Next
                }
                _ => {
                    upstream.failed(&why, false, cooldown);
                    Attempt::Next
                }
            };
        }
        self.relay(upstream, response, ctx).await
    }

    /// Reads the upstream's SSE stream and forwards the content.
    async fn relay(&self, upstream: &Upstream, response: reqwest::Response, ctx: &CallContext) -> Attempt {
        let (tx, rx) = mpsc::channel::<String>(256);
        let mut events = response.bytes_stream().eventsource();
        let mut finish = None;
        let mut usage = Value::Null;
        // The first piece of content decides the upstream: nothing is forwarded before it.
        let first = loop {
            match events.next().await {
                Some(Ok(ev)) if ev.data == "[DONE]" => break None,
                Some(Ok(ev)) => match parse_chunk(&ev.data) {
                    Ok(c) => {
                        if !c.usage.is_null() {
                            usage = c.usage;
                        }
                        if c.finish.is_some() {
                            finish = c.finish;
                        }
                        if let Some(content) = c.content.filter(|s| !s.is_empty()) {
                            break Some(content);
                        }
                    }
                    Err(e) => {
                        upstream.failed(&e, false, self.cooldown);
                        return Attempt::Next;
                    }
                },
                Some(Err(e)) => {
                    upstream.failed(&format!("the stream broke before any content: {e}"), false, self.cooldown);
                    return Attempt::Next;
                }
                None => break None,
            }
        };
        let Some(first) = first else {
            if finish.is_some() {
                // An empty answer is still an answer.
                return Attempt::Done(summary(String::new(), ctx, finish, &usage));
            }
            upstream.failed("the stream ended before any content", false, self.cooldown);
            return Attempt::Next;
        };
        // From here on the upstream is committed: forward pieces through the same coalescing
        // pump as the embedded backend.
        let forward = async move {
            let _ = tx.send(first).await;
            let result = loop {
                let Some(ev) = events.next().await else {
                    break if finish.is_some() {
                        Ok(())
                    } else {
                        Err("the upstream stream ended without a finish reason".to_owned())
                    };
                };
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => break Err(format!("the upstream stream broke: {e}")),
                };
                if ev.data == "[DONE]" {
                    break Ok(());
                }
                let c = match parse_chunk(&ev.data) {
                    Ok(c) => c,
                    Err(e) => break Err(e),
                };
                if !c.usage.is_null() {
                    usage = c.usage;
                }
                if c.finish.is_some() {
                    finish = c.finish;
                }
                if let Some(content) = c.content.filter(|s| !s.is_empty())
                    && tx.send(content).await.is_err()
                {
                    // Nobody listens any more (cancelled): stop reading, which closes the
                    // upstream connection.
                    break Ok(());
                }
            };
            (result, finish, usage)
        };
        // `forward` owns the sender, so the pump ends when it does.
        let ((outcome, finish, usage), text) = tokio::join!(forward, crate::pump(rx, ctx, self.stream_interval));
        match outcome {
            Ok(()) => Attempt::Done(summary(text, ctx, finish, &usage)),
            Err(e) => {
                upstream.failed(&e, false, self.cooldown);
                Attempt::Fail(LlmError::Upstream { http_status: 502, message: e, retry_after_ms: None })
            }
        }
    }
}

/// The call's result from what the upstream sent.
fn summary(text: String, ctx: &CallContext, finish: Option<String>, usage: &Value) -> Value {
    let prompt = usage["prompt_tokens"].as_u64().unwrap_or(0);
    let completion = usage["completion_tokens"].as_u64().unwrap_or(0);
    let finish = match finish.as_deref() {
        Some("length") => "length",
        _ => "stop",
    };
    let mut result = json!({
        "finish_reason": finish,
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    });
    if !ctx.streaming() {
        result["text"] = json!(text);
    }
    result
}

/// What one upstream chunk says.
#[derive(Debug)]
struct Chunk {
    content: Option<String>,
    finish: Option<String>,
    usage: Value,
}

fn parse_chunk(data: &str) -> Result<Chunk, String> {
    let v: Value = serde_json::from_str(data).map_err(|e| format!("the upstream sent a malformed chunk: {e}"))?;
    if let Some(err) = v.get("error") {
        let message = err["message"].as_str().unwrap_or("unknown error");
        return Err(format!("the upstream reported an error mid-stream: {message}"));
    }
    let choice = &v["choices"][0];
    Ok(Chunk {
        content: choice["delta"]["content"].as_str().map(str::to_owned),
        finish: choice["finish_reason"].as_str().map(str::to_owned),
        usage: v.get("usage").cloned().unwrap_or(Value::Null),
    })
}

/// A reqwest error without its URL (which the caller already names).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chunks_and_mid_stream_errors() {
        let c = parse_chunk(r#"{"choices":[{"index":0,"delta":{"content":"Par"},"finish_reason":null}]}"#).unwrap();
        assert_eq!(c.content.as_deref(), Some("Par"));
        assert!(c.finish.is_none() && c.usage.is_null());
        let c = parse_chunk(r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#).unwrap();
        assert_eq!(c.usage["prompt_tokens"], 3);
        assert!(parse_chunk(r#"{"error":{"message":"boom"}}"#).unwrap_err().contains("boom"));
        assert!(parse_chunk("not json").is_err());
    }

    #[test]
    fn config_errors_are_explained() {
        // `Upstreams` has no Debug (it holds the API keys), so errors are matched by hand.
        let config = |openai: Value| LlmConfig { openai: Some(openai), ..LlmConfig::default() };
        let err = |openai: Value| Upstreams::from_config(&config(openai)).err().unwrap();
        assert!(err(json!({"upstreams": []})).contains("at least one"));
        assert!(err(json!({"upstreams": [{"base_url": "https://x/v1", "model": "m"}]})).contains("http://"));
        assert!(
            err(json!({"upstreams": [{"base_url": "http://x/v1", "model": "m", "api_key_env": "BKG_TEST_SURELY_UNSET"}]}))
                .contains("BKG_TEST_SURELY_UNSET is not set")
        );
        assert!(err(json!({"upstreams": [{"base_url": "http://x/v1"}]})).contains("model"));
        let ok = Upstreams::from_config(&config(json!({"upstreams": [{"base_url": "http://x/v1/", "model": "m"}]})))
            .unwrap();
        assert_eq!(ok.upstreams[0].base_url, "http://x/v1");
        assert_eq!(ok.model_id, "m");
    }
}
