//! The llm plug-in through the daemon (issue 6, "must hold"), with the real default model
//! (SmolLM2-135M-Instruct, fetched by `scripts/fetch-models.sh smollm2`, which
//! `scripts/test.sh` runs first) at temperature 0: the answer through `/llm/infer`,
//! `/v1/chat/completions` and the WebSocket; streaming order; cancellation on disconnect; bad
//! input; admission (429); a plug-in killed mid-stream; and the official `openai` Python client.

#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

pub(crate) const FRANCE: &str = "What is the capital of France?";
/// A prompt whose answer is long enough to be cancelled midway.
pub(crate) const LONG: &str = "Write a long story about a dragon who learns to cook.";
/// Model load (dequantizing to f32), warm-up and the first request in a debug build.
pub(crate) const LLM_WAIT: Duration = Duration::from_secs(120);

/// The default model in the model cache (the daemon clears the plug-in's environment, so the
/// path goes into the config).
fn model_path() -> PathBuf {
    let path = bkg_plugin_llm::fetch::Places::new(None, None).cached_gguf();
    assert!(path.is_file(), "{} is missing: run scripts/fetch-models.sh smollm2", path.display());
    path
}

pub(crate) fn llm_spec(extra: Value) -> Value {
    let mut config = json!({"model_path": model_path(), "auto_fetch": false});
    if let (Some(c), Value::Object(extra)) = (config.as_object_mut(), extra) {
        c.extend(extra);
    }
    json!({
        "name": "llm", "builtin": "llm", "config": config,
        "timeouts": {"stop_grace_ms": 500, "startup_ms": 30000, "ready_ms": 120000},
        "restart": {"backoff_initial_ms": 50, "backoff_max_ms": 400}
    })
}

pub(crate) async fn start(extra: Value) -> TestDaemon {
    let d = TestDaemon::start(vec![llm_spec(extra)]).await;
    wait_ready(&d).await;
    d
}

pub(crate) async fn wait_ready(d: &TestDaemon) {
    wait_for("llm ready", LLM_WAIT, || async {
        let v = d.plugin("llm").await;
        assert_ne!(v["state"], "failed", "{v}");
        (v["state"] == "ready").then_some(())
    })
    .await;
}

pub(crate) fn post(d: &TestDaemon, path: &str, body: &Value) -> reqwest::RequestBuilder {
    d.http.post(d.url(path)).bearer_auth(&d.token).timeout(LLM_WAIT).json(body)
}

/// The plug-in's counters (`llm.stats`).
pub(crate) async fn stats(d: &TestDaemon) -> Value {
    let (status, body) = d.rpc("llm", "llm.stats", json!({}), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["result"].clone()
}

/// An SSE event with the time it arrived.
pub(crate) struct Received {
    pub(crate) event: String,
    pub(crate) data: String,
    pub(crate) at: Instant,
}

pub(crate) async fn sse_events(res: reqwest::Response) -> Vec<Received> {
    let mut stream = res.bytes_stream().eventsource();
    let mut out = Vec::new();
    while let Some(ev) = tokio::time::timeout(LLM_WAIT, stream.next()).await.expect("stream stalled") {
        let ev = ev.expect("valid SSE");
        out.push(Received { event: ev.event, data: ev.data, at: Instant::now() });
    }
    out
}

/// The next `token` event of an `/llm/infer` stream, skipping `status` events.
/// A streamed generation of [`LONG`] that has sent its first token (it runs for a while).
pub(crate) async fn long_stream(
    d: &TestDaemon,
) -> impl futures_util::Stream<Item = Result<eventsource_stream::Event, impl std::fmt::Debug>> + Unpin {
    let res = post(d, "/llm/infer", &json!({"prompt": LONG, "temperature": 0, "max_tokens": 2000, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut stream = res.bytes_stream().eventsource();
    let first = next_token(&mut stream).await;
    assert_eq!(first.event, "token");
    stream
}

pub(crate) async fn next_token<S, E>(stream: &mut S) -> eventsource_stream::Event
where
    S: futures_util::Stream<Item = Result<eventsource_stream::Event, E>> + Unpin,
    E: std::fmt::Debug,
{
    loop {
        let ev = tokio::time::timeout(LLM_WAIT, stream.next()).await.unwrap().unwrap().unwrap();
        if ev.event != "status" {
            return ev;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_through_infer_chat_completions_and_the_websocket() {
    let d = start(json!({})).await;

    // POST /llm/infer, whole answer.
    let res =
        post(&d, "/llm/infer", &json!({"prompt": FRANCE, "temperature": 0, "max_tokens": 32})).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    let text = body["text"].as_str().unwrap_or_else(|| panic!("{body}")).to_owned();
    assert!(text.contains("Paris"), "{text:?}");
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0, "{body}");
    assert_eq!(body["model"], "smollm2-135m-instruct");

    // The same request streamed: token events first, one `end` summary last; the first token
    // arrives before generation ends and the tokens concatenate to the text.
    let res = post(&d, "/llm/infer", &json!({"prompt": FRANCE, "temperature": 0, "max_tokens": 32, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    assert_eq!(res.headers()["cache-control"], "no-cache");
    let events = sse_events(res).await;
    let last = events.last().expect("events");
    assert_eq!(last.event, "end", "{}", last.data);
    let summary: Value = serde_json::from_str(&last.data).unwrap();
    assert_eq!(summary["usage"], body["usage"]);
    assert_eq!(events[0].event, "status", "the stream opens with the admission status");
    let tokens: Vec<&Received> = events.iter().filter(|e| e.event == "token").collect();
    assert!(!tokens.is_empty());
    let streamed: String = tokens
        .iter()
        .map(|e| serde_json::from_str::<Value>(&e.data).unwrap()["delta"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(streamed, text);
    if tokens.len() > 1 {
        assert!(tokens[0].at < last.at, "the first token came before the end");
    }

    // POST /v1/chat/completions, whole answer, in OpenAI's shape.
    let messages = json!([{"role": "user", "content": FRANCE}]);
    let req = json!({"model": "smollm2-135m-instruct", "messages": messages, "temperature": 0, "max_tokens": 32});
    let res = post(&d, "/v1/chat/completions", &req).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], text.as_str());
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let total = body["usage"]["total_tokens"].as_u64().unwrap();
    assert_eq!(
        total,
        body["usage"]["prompt_tokens"].as_u64().unwrap() + body["usage"]["completion_tokens"].as_u64().unwrap()
    );

    // Streamed: role chunk, content chunks, finish chunk, usage chunk (asked for), [DONE].
    let mut req = req.clone();
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let res = post(&d, "/v1/chat/completions", &req).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let events = sse_events(res).await;
    let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(*data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
    let id = &chunks[0]["id"];
    assert!(chunks.iter().all(|c| &c["id"] == id && c["object"] == "chat.completion.chunk"));
    let usage_chunk = &chunks[chunks.len() - 1];
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["total_tokens"], total);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let content: String = chunks[1..chunks.len() - 2]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(content, text);

    // GET /v1/models.
    let (status, models) = d.get("/v1/models").await;
    assert_eq!(status, StatusCode::OK, "{models}");
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "smollm2-135m-instruct");
    assert_eq!(models["data"][0]["status"], "ready");

    // The WebSocket: two requests at once on one socket, a cancel, and malformed frames that
    // get `error` events without closing the socket.
    let mut request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/llm/stream",
        d.addr
    ))
    .unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {}", d.token).parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.expect("websocket");
    let start = |id: &str, payload: Value| {
        Message::Text(json!({"type": "request", "req_id": id, "event": "start", "payload": payload}).to_string().into())
    };
    ws.send(start("long", json!({"prompt": LONG, "temperature": 0, "max_tokens": 2000}))).await.unwrap();
    ws.send(start("france", json!({"messages": messages, "temperature": 0, "max_tokens": 32}))).await.unwrap();
    ws.send(Message::Text("this is not json".into())).await.unwrap();
    ws.send(Message::Binary(vec![1u8, 2, 3].into())).await.unwrap();
    let huge =
        json!({"type": "request", "req_id": "huge", "event": "start", "payload": {"prompt": "x".repeat(10 << 20)}});
    ws.send(Message::Text(huge.to_string().into())).await.unwrap();
    ws.send(Message::Text(json!({"type": "request", "req_id": "x", "event": "explode"}).to_string().into()))
        .await
        .unwrap();
    let mut france = String::new();
    let mut errors = 0;
    let (mut france_done, mut long_done, mut cancel_sent) = (false, false, false);
    while !(france_done && long_done) {
        let msg = tokio::time::timeout(LLM_WAIT, ws.next()).await.expect("ws stalled").expect("ws open").unwrap();
        let Message::Text(text) = msg else { continue };
        let m: Value = serde_json::from_str(text.as_str()).unwrap();
        assert_eq!(m["type"], "response", "{m}");
        assert_eq!(m["source"], "llm", "{m}");
        assert!(m["ts"].is_u64(), "{m}");
        match (m["req_id"].as_str(), m["event"].as_str()) {
            (Some("france"), Some("token")) => france.push_str(m["payload"]["delta"].as_str().unwrap()),
            (Some("france"), Some("end")) => {
                assert_eq!(m["payload"]["finish_reason"], "stop", "{m}");
                france_done = true;
            }
            (Some("long"), Some("token")) if !cancel_sent => {
                ws.send(Message::Text(
                    json!({"type": "request", "req_id": "long", "event": "cancel"}).to_string().into(),
                ))
                .await
                .unwrap();
                cancel_sent = true;
            }
            (Some("long"), Some("end")) => {
                assert_eq!(m["payload"]["finish_reason"], "cancelled", "{m}");
                long_done = true;
            }
            (_, Some("error")) => {
                let status = &m["payload"]["error"]["status"];
                assert!(status == 400 || status == 413, "{m}");
                errors += 1;
            }
            (Some("france" | "long"), Some("status" | "token")) => {}
            other => panic!("unexpected {other:?}: {m}"),
        }
    }
    assert_eq!(errors, 4);
    assert_eq!(france, text);
    ws.close(None).await.unwrap();
    // The cancelled request really stopped in the plug-in.
    wait_for("cancelled generation stops", WAIT, || async {
        let s = stats(&d).await;
        (s["cancelled"].as_u64() >= Some(1) && s["running"] == 0).then_some(())
    })
    .await;
}

/// Drops a streaming response after its first token and measures how long the plug-in's
/// generation thread takes to stop.
async fn disconnect_after_first_token(d: &TestDaemon, path: &str, body: Value) -> Duration {
    let before = stats(d).await["cancelled"].as_u64().unwrap();
    let res = post(d, path, &body).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut stream = res.bytes_stream().eventsource();
    loop {
        let ev = tokio::time::timeout(LLM_WAIT, stream.next()).await.unwrap().unwrap().unwrap();
        if ev.event == "token" || ev.data.contains("\"content\":\"") && !ev.data.contains("\"content\":\"\"") {
            break;
        }
    }
    let dropped = Instant::now();
    drop(stream);
    wait_for("the generation stops after the client left", WAIT, || async {
        let s = stats(d).await;
        (s["cancelled"].as_u64().unwrap() > before && s["running"] == 0).then_some(())
    })
    .await;
    dropped.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_stops_the_generation() {
    let d = start(json!({})).await;
    let took = disconnect_after_first_token(
        &d,
        "/llm/infer",
        json!({"prompt": LONG, "temperature": 0, "max_tokens": 2000, "stream": true}),
    )
    .await;
    let s = stats(&d).await;
    assert!(s["last_cancelled_tokens"].as_u64().unwrap() < 200, "{s}");
    // The poll itself is an HTTP round trip every 20 ms; the stop is well within a second.
    assert!(took < Duration::from_secs(1), "the generation stopped {took:?} after the disconnect");

    let took = disconnect_after_first_token(
        &d,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": LONG}], "temperature": 0, "max_tokens": 2000, "stream": true}),
    )
    .await;
    assert!(took < Duration::from_secs(1), "the generation stopped {took:?} after the disconnect");

    // A non-streaming request whose client gives up is cancelled too.
    let before = stats(&d).await["cancelled"].as_u64().unwrap();
    let res = d
        .http
        .post(d.url("/llm/infer"))
        .bearer_auth(&d.token)
        .timeout(Duration::from_millis(1500))
        .json(&json!({"prompt": LONG, "temperature": 0, "max_tokens": 2000}))
        .send()
        .await;
    assert!(res.is_err(), "the client timed out");
    wait_for("the non-streaming generation stops", WAIT, || async {
        let s = stats(&d).await;
        (s["cancelled"].as_u64().unwrap() > before && s["running"] == 0).then_some(())
    })
    .await;
    // The plug-in logs each cancelled generation.
    wait_for("the cancellation log line", WAIT, || async {
        d.logs().iter().any(|l| l.contains("generation cancelled")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_400_and_the_plugin_keeps_serving() {
    let d = start(json!({})).await;
    for (body, field) in [
        (json!({"prompt": ""}), "prompt"),
        (json!({}), "prompt"),
        (json!({"prompt": "hi", "max_tokens": -1}), "max_tokens"),
        (json!({"prompt": "hi", "max_tokens": 0}), "max_tokens"),
        (json!({"prompt": "hi", "max_tokens": 100_000_000}), "max_tokens"),
        (json!({"prompt": "hi", "temperature": 2.5}), "temperature"),
        (json!({"prompt": "hi", "top_p": 0}), "top_p"),
        (json!({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}), "stop"),
        (json!({"prompt": "hi", "colour": "blue"}), "colour"),
        (json!({"prompt": "hi", "stream": "yes"}), "stream"),
        (json!({"messages": [{"role": "robot", "content": "hi"}]}), "messages"),
        (json!({"prompt": "x".repeat(300 * 1024)}), "prompt"),
    ] {
        let res = post(&d, "/llm/infer", &body).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{field}");
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"]["details"]["field"], field, "{err}");
    }
    // Streaming requests fail before the first byte, with the same status.
    let res = post(&d, "/llm/infer", &json!({"prompt": "", "stream": true})).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    // A 10 MB prompt is refused by the body limit.
    let res = post(&d, "/llm/infer", &json!({"prompt": "x".repeat(10 * 1024 * 1024)})).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // OpenAI's error shape on /v1.
    let res =
        post(&d, "/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "hi"}], "temperature": 9}))
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"]["type"], "invalid_request_error", "{err}");
    assert_eq!(err["error"]["param"], "temperature", "{err}");
    let res =
        post(&d, "/v1/chat/completions", &json!({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"]["code"], "model_not_found", "{err}");
    let res = post(&d, "/v1/chat/completions", &json!({"messages": "hi"})).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    // Without credentials: 401.
    let res = d.http.post(d.url("/llm/infer")).json(&json!({"prompt": "hi"})).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // Still serving, same plug-in process.
    let pid = d.plugin("llm").await["pid"].clone();
    let res =
        post(&d, "/llm/infer", &json!({"prompt": FRANCE, "temperature": 0, "max_tokens": 32})).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.json::<Value>().await.unwrap()["text"].as_str().unwrap().contains("Paris"));
    assert_eq!(d.plugin("llm").await["pid"], pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_429_with_retry_after() {
    let d = start(json!({"max_concurrent": 1, "max_queue": 0})).await;
    let running = long_stream(&d).await;

    let res = post(&d, "/llm/infer", &json!({"prompt": "hi"})).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(stats(&d).await["rejected"], 1);
    let retry: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let res =
        post(&d, "/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "hi"}], "stream": true}))
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key("retry-after-ms"));
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["error"]["type"], "rate_limit_error", "{err}");
    drop(running);
    // Once the first request is cancelled, the slot is free again.
    wait_for("slot freed", WAIT, || async { (stats(&d).await["running"] == 0).then_some(()) }).await;
    let res =
        post(&d, "/llm/infer", &json!({"prompt": FRANCE, "temperature": 0, "max_tokens": 16})).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_plugin_mid_stream_ends_the_stream_with_an_error_event() {
    let d = start(json!({})).await;
    let mut stream = long_stream(&d).await;
    let pid = d.plugin("llm").await["pid"].as_u64().unwrap() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    let last = loop {
        match tokio::time::timeout(WAIT, stream.next()).await.expect("the stream did not hang") {
            Some(Ok(ev)) if ev.event == "token" => {}
            Some(Ok(ev)) => break ev,
            other => panic!("stream ended without an error event: {other:?}"),
        }
    };
    assert_eq!(last.event, "error", "{}", last.data);
    let err: Value = serde_json::from_str(&last.data).unwrap();
    assert_eq!(err["error"]["status"], 503, "{err}");
    assert!(tokio::time::timeout(WAIT, stream.next()).await.unwrap().is_none(), "the stream ends after the error");
    assert!(killed.elapsed() < Duration::from_secs(5));

    // The supervisor restarts it; the next request works.
    wait_for("llm restarted", LLM_WAIT, || async {
        let v = d.plugin("llm").await;
        (v["state"] == "ready" && v["pid"].as_u64() != Some(pid as u64)).then_some(())
    })
    .await;
    let res =
        post(&d, "/llm/infer", &json!({"prompt": FRANCE, "temperature": 0, "max_tokens": 32})).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.json::<Value>().await.unwrap()["text"].as_str().unwrap().contains("Paris"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_python_client_works() {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/py-venv/bin/python");
    assert!(python.is_file(), "{} is missing: scripts/test.sh installs the openai client there", python.display());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/openai_client.py");
    let d = start(json!({})).await;
    let output = tokio::process::Command::new(&python)
        .arg(&script)
        .env("OPENAI_BASE_URL", d.url("/v1"))
        .env("OPENAI_API_KEY", &d.token)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "openai client test failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("non-stream ok") && stdout.contains("stream ok"), "{stdout}");
}

/// A daemon whose llm plug-in uses the `openai` backend with these upstreams; `key` is put in
/// the plug-in's environment as `UPSTREAM_KEY`.
async fn start_openai(upstreams: Value, key: &str, extra: Value) -> TestDaemon {
    let mut openai = json!({"upstreams": upstreams, "connect_timeout_ms": 1000});
    if let (Some(o), Value::Object(extra)) = (openai.as_object_mut(), extra) {
        o.extend(extra);
    }
    let spec = json!({
        "name": "llm", "builtin": "llm", "env": {"UPSTREAM_KEY": key},
        "config": {"backend": "openai", "model_id": "relayed", "max_concurrent": 4, "max_queue": 8, "openai": openai},
        "timeouts": {"stop_grace_ms": 500}
    });
    let d = TestDaemon::start(vec![spec]).await;
    wait_ready(&d).await;
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_backend_streams_fails_over_and_maps_upstream_errors() {
    // The upstream: another daemon's /v1 with the embedded model.
    let upstream = start(json!({})).await;
    let base = upstream.url("/v1");
    // Nothing listens on port 9 of loopback: connection refused.
    let dead = json!({"name": "dead", "base_url": "http://127.0.0.1:9/v1", "model": "m"});
    let good =
        json!({"name": "good", "base_url": base, "model": "smollm2-135m-instruct", "api_key_env": "UPSTREAM_KEY"});
    let d = start_openai(json!([dead, good]), &upstream.token, json!({})).await;

    // Whole answer, after failing over from the dead upstream.
    let res =
        post(&d, "/llm/infer", &json!({"prompt": FRANCE, "temperature": 0, "max_tokens": 32})).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert!(body["text"].as_str().unwrap().contains("Paris"), "{body}");
    assert_eq!(body["upstream"], "good", "{body}");
    assert_eq!(body["model"], "relayed");
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{body}");

    // Streamed through both daemons, in OpenAI's shape.
    let req = json!({"model": "relayed", "messages": [{"role": "user", "content": FRANCE}], "temperature": 0,
                     "max_tokens": 32, "stream": true});
    let res = post(&d, "/v1/chat/completions", &req).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let events = sse_events(res).await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let content: String = events[..events.len() - 1]
        .iter()
        .filter_map(|e| {
            serde_json::from_str::<Value>(&e.data).unwrap()["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(content, body["text"].as_str().unwrap());

    let (_, models) = d.rpc("llm", "llm.models", json!({}), None).await;
    let upstreams = &models["result"]["models"][0]["upstreams"];
    assert!(upstreams[0]["last_error"].as_str().unwrap().contains("cannot reach"), "{models}");
    assert_eq!(upstreams[1]["failures"], 0, "{models}");

    // An upstream that refuses the model: 502 with its reason, then 503 while it cools down.
    let wrong = json!({"name": "wrong", "base_url": base, "model": "no-such-model", "api_key_env": "UPSTREAM_KEY"});
    let broken = start_openai(json!([wrong]), &upstream.token, json!({"cooldown_ms": 60000})).await;
    let res = post(&broken, "/llm/infer", &json!({"prompt": FRANCE})).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    let err: Value = res.json().await.unwrap();
    assert!(err["error"]["message"].as_str().unwrap().contains("404"), "{err}");
    let res = post(&broken, "/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().contains_key("retry-after"));
    let err: Value = res.json().await.unwrap();
    assert!(err["error"]["message"].as_str().unwrap().contains("cooling down"), "{err}");

    // A wrong key is an upstream error too (401 → 502), never a leak of the key.
    let badkey = start_openai(json!([good]), "bkg_not_a_real_token_0000000000", json!({})).await;
    let res = post(&badkey, "/llm/infer", &json!({"prompt": FRANCE})).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    let text = res.text().await.unwrap();
    assert!(text.contains("401"), "{text}");
    assert!(!badkey.logs().join("\n").contains("bkg_not_a_real_token"), "the key was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_model_fails_the_plugin_with_what_to_do() {
    let spec = json!({"name": "llm", "builtin": "llm", "config": {"model_path": "/nonexistent/model.gguf"},
                      "timeouts": {"stop_grace_ms": 500}});
    let d = TestDaemon::start(vec![spec]).await;
    let view = d.wait_plugin("llm", "failed", |v| v["state"] == "failed").await;
    let reason = view["reason"].as_str().unwrap();
    assert!(reason.contains("/nonexistent/model.gguf") && reason.contains("model_path"), "{reason}");
    let res = post(&d, "/llm/infer", &json!({"prompt": "hi"})).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let err: Value = res.json().await.unwrap();
    assert!(err["error"]["message"].as_str().unwrap().contains("model_path"), "{err}");
}
