//! RpcClient against an in-process SDK plug-in and against a hand-driven peer.

use std::collections::BTreeMap;
use std::time::Duration;

use bkg_plugin_sdk::protocol::codes;
use bkg_plugin_sdk::{CallContext, MethodInfo, Plugin, PluginInfo, RpcError, ServeOptions};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::*;

struct TestPlugin;

impl Plugin for TestPlugin {
    fn info(&self) -> PluginInfo {
        PluginInfo { name: "t".into(), version: "0".into(), sdk: None }
    }
    fn methods(&self) -> BTreeMap<String, MethodInfo> {
        ["t.echo", "t.sleep", "t.stream"].iter().map(|m| (m.to_string(), MethodInfo::default())).collect()
    }
    async fn call(&self, method: &str, params: Value, ctx: CallContext) -> Result<Value, RpcError> {
        match method {
            "t.echo" => Ok(params["v"].clone()),
            "t.sleep" => {
                tokio::time::sleep(Duration::from_millis(params["ms"].as_u64().unwrap_or(0))).await;
                Ok(json!("slept"))
            }
            _ => {
                let n = params["n"].as_u64().unwrap_or(0);
                for i in 0..n {
                    ctx.stream(json!(i)).await;
                }
                Ok(json!({"chunks": n}))
            }
        }
    }
}

async fn connect() -> RpcClient {
    let (daemon_side, plugin_side) = tokio::io::duplex(1 << 20);
    let (plugin_in, plugin_out) = tokio::io::split(plugin_side);
    let (daemon_in, daemon_out) = tokio::io::split(daemon_side);
    let log = bkg_plugin_sdk::logging::install("error");
    let options = ServeOptions { watch_parent: false, reap_group: false };
    tokio::spawn(bkg_plugin_sdk::serve_io(TestPlugin, Box::pin(plugin_in), Box::pin(plugin_out), log, options));
    let client = RpcClient::start(daemon_in, daemon_out, ClientConfig::default());
    let init = json!({"protocolVersions": [1]});
    client.call("initialize", init, CallOptions::default()).await.unwrap();
    client.notify("initialized", json!({}));
    client
}

#[tokio::test]
async fn round_trip_and_concurrent_calls() {
    let client = connect().await;
    let calls = (0..50).map(|i| {
        let c = client.clone();
        async move { c.call("t.echo", json!({"v": i}), CallOptions::default()).await.unwrap() }
    });
    let results = futures_util::future::join_all(calls).await;
    assert_eq!(results, (0..50).map(|i| json!(i)).collect::<Vec<_>>());
    assert_eq!(client.in_flight(), 0);
}

#[tokio::test]
async fn deadline_fails_the_call_and_cancels_it_in_the_plugin() {
    let client = connect().await;
    let opts = CallOptions { timeout: Some(Duration::from_millis(50)), stream: None };
    let err = client.call("t.sleep", json!({"ms": 5_000}), opts).await.unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    assert_eq!(client.in_flight(), 0);
    // The plug-in still serves: the cancelled call freed its slot.
    assert_eq!(client.call("t.echo", json!({"v": 1}), CallOptions::default()).await.unwrap(), json!(1));
}

#[tokio::test]
async fn remote_errors_and_unknown_methods() {
    let client = connect().await;
    match client.call("nope", json!({}), CallOptions::default()).await {
        Err(Error::Remote(e)) => assert_eq!(e.code, codes::METHOD_NOT_FOUND),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn stream_chunks_arrive_in_order_before_the_summary() {
    let client = connect().await;
    let (tx, mut rx) = mpsc::channel(256);
    let summary =
        client.call("t.stream", json!({"n": 20}), CallOptions { timeout: None, stream: Some(tx) }).await.unwrap();
    assert_eq!(summary, json!({"chunks": 20}));
    let mut got = Vec::new();
    while let Ok(v) = rx.try_recv() {
        got.push(v);
    }
    assert_eq!(got, (0..20).map(|i| json!(i)).collect::<Vec<_>>());
}

#[tokio::test]
async fn slow_stream_consumer_cancels_only_its_call() {
    let client = connect().await;
    let (tx, _rx) = mpsc::channel(2);
    let err =
        client.call("t.stream", json!({"n": 100}), CallOptions { timeout: None, stream: Some(tx) }).await.unwrap_err();
    assert!(matches!(err, Error::SlowConsumer), "{err:?}");
    assert_eq!(client.call("t.echo", json!({"v": 2}), CallOptions::default()).await.unwrap(), json!(2));
}

/// A hand-driven peer: junk and oversized lines are skipped, the stream resynchronises, and
/// closing the pipe fails pending calls at once (not at their deadline).
#[tokio::test]
async fn junk_and_oversized_lines_are_skipped_and_eof_fails_pending_calls() {
    let (daemon_side, peer) = tokio::io::duplex(1 << 16);
    let (daemon_in, daemon_out) = tokio::io::split(daemon_side);
    let config = ClientConfig { max_incoming_bytes: 1024, ..ClientConfig::default() };
    let client = RpcClient::start(daemon_in, daemon_out, config);
    let (peer_in, mut peer_out) = tokio::io::split(peer);
    let mut lines = BufReader::new(peer_in).lines();

    let c = client.clone();
    let call = tokio::spawn(async move { c.call("x", json!({}), CallOptions::default()).await });
    let req: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    let id = req["id"].as_u64().unwrap();
    let big = "y".repeat(10_000);
    let reply = format!("hello junk\n\u{1}\u{2}\n{big}\n{{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":42}}\n");
    peer_out.write_all(reply.as_bytes()).await.unwrap();
    assert_eq!(call.await.unwrap().unwrap(), json!(42));
    assert_eq!(client.stats().junk_lines.load(Ordering::Relaxed), 2);
    assert_eq!(client.stats().oversized_frames.load(Ordering::Relaxed), 1);

    let c = client.clone();
    let pending = tokio::spawn(async move { c.call("x", json!({}), CallOptions::default()).await });
    lines.next_line().await.unwrap();
    drop(peer_out);
    drop(lines);
    let res = tokio::time::timeout(Duration::from_secs(2), pending).await.unwrap().unwrap();
    assert!(matches!(res, Err(Error::Unavailable)), "{res:?}");
    assert!(client.is_closed());
}

#[tokio::test]
async fn declared_limits_fail_fast_and_declared_deadlines_apply() {
    let client = connect().await;
    let methods: BTreeMap<String, MethodInfo> =
        [("t.sleep".to_string(), MethodInfo { timeout_ms: Some(50), ..MethodInfo::default() })].into();
    let limits = bkg_plugin_sdk::Limits { max_concurrent_requests: Some(1), max_message_bytes: Some(1024) };
    client.apply_handshake(&limits, &methods);
    // The declared 50 ms deadline applies when the caller gives none.
    let err = client.call("t.sleep", json!({"ms": 5_000}), CallOptions::default()).await.unwrap_err();
    assert!(matches!(err, Error::Timeout(d) if d == Duration::from_millis(50)), "{err:?}");
    // One call in flight is the limit: a second one fails fast, protocol calls still pass.
    let c = client.clone();
    let slow = tokio::spawn(async move {
        c.call("t.sleep", json!({"ms": 300}), CallOptions { timeout: Some(Duration::from_secs(5)), stream: None }).await
    });
    wait_until(|| client.in_flight() == 1).await;
    let err = client.call("t.echo", json!({"v": 1}), CallOptions::default()).await.unwrap_err();
    assert!(matches!(err, Error::Overloaded), "{err:?}");
    client.call("$/ping", json!({}), CallOptions::default()).await.unwrap();
    slow.await.unwrap().unwrap();
    // Requests larger than the declared input cap are refused before they are sent.
    let err = client.call("t.echo", json!({"v": "x".repeat(2000)}), CallOptions::default()).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge(_)), "{err:?}");
}

async fn wait_until(mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("condition never held");
}
