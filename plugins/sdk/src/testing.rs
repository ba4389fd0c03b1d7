//! A test host for plug-in unit tests: serves a [`Plugin`] in-process over in-memory pipes and
//! plays the daemon's side of svp/1 with raw JSON messages, so a test sees exactly what goes over
//! the wire. Enabled by the `testing` feature (plug-ins turn it on for their dev-dependencies).

#![allow(clippy::expect_used, reason = "test harness: a panic is the failure report")]

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, Lines};
use tokio::task::JoinHandle;

use crate::{ExitReason, Plugin, ServeOptions, serve_io};

/// The daemon's end of the two pipes of one in-process plug-in.
pub struct TestHost {
    to_plugin: DuplexStream,
    from_plugin: Lines<BufReader<DuplexStream>>,
    serving: JoinHandle<ExitReason>,
    next_id: u64,
    /// How long [`TestHost::recv`] waits for a message.
    pub reply_timeout: Duration,
}

impl TestHost {
    /// Starts serving `plugin` with the SDK's log level set to `log_level`; pipes of `pipe_bytes`.
    pub fn start<P: Plugin>(plugin: P, log_level: &str, pipe_bytes: usize) -> Self {
        let (to_plugin, plugin_stdin) = tokio::io::duplex(pipe_bytes);
        let (plugin_stdout, from_plugin) = tokio::io::duplex(pipe_bytes);
        let log_level = crate::logging::install(log_level);
        let options = ServeOptions { watch_parent: false, reap_group: false };
        let serving =
            tokio::spawn(serve_io(plugin, Box::pin(plugin_stdin), Box::pin(plugin_stdout), log_level, options));
        Self {
            to_plugin,
            from_plugin: BufReader::new(from_plugin).lines(),
            serving,
            next_id: 100,
            reply_timeout: Duration::from_secs(5),
        }
    }

    /// Writes one message as a line.
    pub async fn send(&mut self, message: Value) {
        let mut line = serde_json::to_vec(&message).expect("serialize");
        line.push(b'\n');
        self.to_plugin.write_all(&line).await.expect("write to plug-in");
    }

    /// Sends a request with a fresh id and returns the id.
    pub async fn request(&mut self, method: &str, params: Value) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.request_with_id(id, method, params).await;
        id
    }

    /// Sends a request with the given id.
    pub async fn request_with_id(&mut self, id: u64, method: &str, params: Value) {
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})).await;
    }

    /// The next message from the plug-in (panics after [`TestHost::reply_timeout`]).
    pub async fn recv(&mut self) -> Value {
        let line = tokio::time::timeout(self.reply_timeout, self.from_plugin.next_line())
            .await
            .expect("plug-in answered in time")
            .expect("read from plug-in")
            .expect("plug-in output still open");
        serde_json::from_str(&line).expect("plug-in wrote JSON")
    }

    /// The final response to `id`, with the `$/stream` data sent for it before; other messages
    /// are skipped.
    pub async fn response(&mut self, id: u64) -> (Vec<Value>, Value) {
        let mut chunks = Vec::new();
        loop {
            let message = self.recv().await;
            if message["method"] == "$/stream" && message["params"]["id"] == id {
                chunks.push(message["params"]["data"].clone());
            } else if message["id"] == id {
                return (chunks, message);
            }
        }
    }

    /// A request and its final response.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.request(method, params).await;
        self.response(id).await.1
    }

    /// `initialize` (+ `initialized` when it succeeded); returns the `initialize` response.
    pub async fn handshake(&mut self, config: Value) -> Value {
        let response = self.call("initialize", json!({"protocolVersions": [1], "config": config})).await;
        if response.get("result").is_some() {
            self.send(json!({"jsonrpc": "2.0", "method": "initialized", "params": {}})).await;
        }
        response
    }

    /// Closes the plug-in's stdin and returns why it stopped serving.
    pub async fn close(self) -> ExitReason {
        drop(self.to_plugin);
        tokio::time::timeout(Duration::from_secs(5), self.serving)
            .await
            .expect("plug-in exits on EOF")
            .expect("serve task")
    }
}
