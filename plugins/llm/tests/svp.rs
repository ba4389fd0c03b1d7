//! The llm plug-in served in-process over in-memory pipes, the way the daemon talks to it, with
//! the real default model (SmolLM2-135M-Instruct Q4_1). `scripts/fetch-models.sh smollm2` puts
//! it in the model cache; `scripts/test.sh` runs that first.

#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bkg_plugin_llm::LlmPlugin;
use bkg_plugin_sdk::testing::TestHost;
use serde_json::{Value, json};

/// The default model in the model cache, or a panic that says how to get it.
fn model_path() -> PathBuf {
    let path = bkg_plugin_llm::fetch::Places::new(None, None).cached_gguf();
    assert!(path.is_file(), "{} is missing: run scripts/fetch-models.sh smollm2", path.display());
    path
}

fn host() -> TestHost {
    let mut d = TestHost::start(LlmPlugin::default(), "warn", 1024 * 1024);
    // Model load and generation in a debug test build.
    d.reply_timeout = Duration::from_secs(120);
    d
}

/// Handshake with the real model, then waits until `plugin.health` says serving.
async fn ready(config: Value) -> TestHost {
    let mut d = host();
    let mut config = config;
    config["model_path"] = json!(model_path());
    let init = d.handshake(config).await;
    assert!(init.get("result").is_some(), "{init}");
    let started = Instant::now();
    loop {
        let h = d.call("plugin.health", json!({})).await;
        match h["result"]["status"].as_str() {
            Some("serving") => return d,
            Some("starting") => {}
            other => panic!("unexpected health {other:?}: {h}"),
        }
        assert!(started.elapsed() < Duration::from_secs(120), "model not ready: {h}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const FRANCE: &str = "What is the capital of France?";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_streams_and_cancels_with_the_real_model() {
    let mut d = ready(json!({})).await;

    // Non-streaming: the whole text in the result.
    let r = d.call("llm.generate", json!({"prompt": FRANCE, "temperature": 0, "max_tokens": 24})).await;
    let result = &r["result"];
    let text = result["text"].as_str().unwrap_or_else(|| panic!("{r}"));
    assert!(text.contains("Paris"), "{text:?}");
    assert!(result["usage"]["prompt_tokens"].as_u64().unwrap() > 10, "{r}");
    assert!(result["usage"]["completion_tokens"].as_u64().unwrap() >= 1, "{r}");
    assert!(["stop", "length"].contains(&result["finish_reason"].as_str().unwrap()), "{r}");

    // Streaming the same greedy request: the deltas concatenate to the same text, and the
    // final response is only a summary.
    let id =
        d.request("llm.generate", json!({"prompt": FRANCE, "temperature": 0, "max_tokens": 24, "stream": true})).await;
    let (chunks, last) = d.response(id).await;
    assert!(!chunks.is_empty(), "{last}");
    let streamed: String = chunks.iter().filter_map(|c| c["delta"].as_str()).collect();
    assert_eq!(streamed, text);
    assert!(last["result"].get("text").is_none(), "{last}");
    assert_eq!(last["result"]["usage"], result["usage"]);

    // Stop strings end generation and are not part of the text.
    let r =
        d.call("llm.generate", json!({"prompt": FRANCE, "temperature": 0, "max_tokens": 24, "stop": ["Paris"]})).await;
    let stopped = r["result"]["text"].as_str().unwrap();
    assert!(!stopped.contains("Paris") && text.starts_with(stopped), "{stopped:?} vs {text:?}");
    assert_eq!(r["result"]["finish_reason"], "stop");

    // Cancel mid-stream: exactly one -32800, and the generation stopped long before max_tokens.
    let id = d
        .request(
            "llm.generate",
            json!({"prompt": "Write a long story about a dragon.", "temperature": 0,
                                        "max_tokens": 2000, "stream": true}),
        )
        .await;
    loop {
        let m = d.recv().await;
        if m["method"] == "$/stream" && m["params"]["data"]["delta"].is_string() {
            break;
        }
    }
    d.send(json!({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": id}})).await;
    let (_, last) = d.response(id).await;
    assert_eq!(last["error"]["code"], -32800, "{last}");
    let stats = loop {
        let s = d.call("llm.stats", json!({})).await["result"].clone();
        if s["cancelled"] == 1 {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(stats["last_cancelled_tokens"].as_u64().unwrap() < 100, "{stats}");
    assert_eq!(stats["running"], 0, "{stats}");

    // Bad params are -32602 with the field, and the plug-in keeps serving.
    for (params, param) in [
        (json!({"prompt": ""}), "prompt"),
        (json!({"prompt": "x", "max_tokens": -5}), "max_tokens"),
        (json!({"prompt": "x", "max_tokens": 10_000_000}), "max_tokens"),
        (json!({"prompt": "x", "temperature": 3}), "temperature"),
        (json!({"prompt": "x", "top_p": 0}), "top_p"),
    ] {
        let r = d.call("llm.generate", params.clone()).await;
        assert_eq!(r["error"]["code"], -32602, "{params}: {r}");
        assert_eq!(r["error"]["data"]["param"], param, "{params}: {r}");
    }
    let r = d.call("llm.generate", json!({"prompt": "x", "bogus": 1})).await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
    let r = d.call("llm.generate", json!({"prompt": "x", "model": "gpt-4"})).await;
    assert_eq!(r["error"]["data"]["httpStatus"], 404, "{r}");

    let models = d.call("llm.models", json!({})).await;
    assert_eq!(models["result"]["models"][0]["id"], "smollm2-135m-instruct", "{models}");
    assert_eq!(models["result"]["models"][0]["status"], "ready", "{models}");
    d.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_with_retry_after() {
    let mut d = ready(json!({"max_concurrent": 1, "max_queue": 0})).await;
    let long = json!({"prompt": "Count from 1 to 500.", "temperature": 0, "max_tokens": 400, "stream": true});
    let first = d.request("llm.generate", long).await;
    // Wait until the first one runs, then a second is refused at once.
    loop {
        let m = d.recv().await;
        if m["method"] == "$/stream" && m["params"]["id"] == first {
            break;
        }
    }
    let r = d.call("llm.generate", json!({"prompt": "hi", "max_tokens": 2})).await;
    assert_eq!(r["error"]["code"], 2002, "{r}");
    assert_eq!(r["error"]["data"]["httpStatus"], 429, "{r}");
    let retry = r["error"]["data"]["retryAfterMs"].as_u64().unwrap();
    assert!((1_000..=60_000).contains(&retry), "{r}");
    d.send(json!({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": first}})).await;
    let (_, last) = d.response(first).await;
    assert_eq!(last["error"]["code"], -32800);
    // The slot is free again once the cancelled generation stopped.
    let r = loop {
        let r = d.call("llm.generate", json!({"prompt": "hi", "max_tokens": 2, "temperature": 0})).await;
        if r["error"]["code"] != 2002 {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(r["result"]["text"].is_string(), "{r}");
    d.close().await;
}

#[tokio::test]
async fn a_bad_model_path_fails_the_handshake_with_what_to_do() {
    let mut d = host();
    let r = d.handshake(json!({"model_path": "/nonexistent/model.gguf"})).await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
    let message = r["error"]["message"].as_str().unwrap();
    assert!(message.contains("/nonexistent/model.gguf") && message.contains("model_path"), "{message}");
    d.close().await;

    // A file that starts like a GGUF but is truncated: the plug-in starts, then reports
    // degraded with the reason, and calls answer 503 with it.
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("truncated.gguf");
    let bytes = std::fs::read(model_path()).unwrap();
    std::fs::write(&bad, &bytes[..4096]).unwrap();
    let mut d = host();
    let init = d.handshake(json!({"model_path": bad})).await;
    assert!(init.get("result").is_some(), "{init}");
    let health = loop {
        let h = d.call("plugin.health", json!({})).await["result"].clone();
        if h["status"] != "starting" {
            break h;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(health["status"], "degraded", "{health}");
    let detail = health["detail"].as_str().unwrap();
    assert!(detail.contains("truncated.gguf") && detail.contains("corrupt"), "{detail}");
    let r = d.call("llm.generate", json!({"prompt": "hi"})).await;
    assert_eq!(r["error"]["data"]["httpStatus"], 503, "{r}");
    d.close().await;
}
