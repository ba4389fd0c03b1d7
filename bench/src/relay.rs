//! `relay` (issue 6): latency that the `openai` backend of the llm plug-in adds to every
//! streamed token, over a direct connection to the same upstream.
//!
//! The upstream is a fixture in this process: a minimal HTTP/1.1 server on 127.0.0.1:0 (its own
//! thread and single-threaded runtime) that answers `POST /v1/chat/completions` with
//! `stream: true` as OpenAI SSE (`chat.completion.chunk`s, a usage chunk when
//! `stream_options.include_usage` asks for it, `data: [DONE]`) and `GET /v1/models`. It emits
//! `max_tokens` content tokens at a fixed pace; each token's content is `[<seq>@<ns>]`, where
//! `<ns>` is the emission time (read just before the `write`) in nanoseconds since an `Instant`
//! shared with the bench's clients. The same clock on both ends, so a client that parses the
//! token back out of the text it receives knows its exact age.
//!
//! Three paths, interleaved round by round so that they see the same machine state: **direct**
//! (the bench streams from the fixture), **chat** (`POST /v1/chat/completions` with
//! `stream: true` through the daemon, whose `llm` entry uses the `openai` backend pointed at the
//! fixture) and **infer** (`POST /llm/infer` with `stream: true`, SSE `token` events). Each with
//! one stream and with `--streams` concurrent ones. "Added" is the through-bkg percentile minus
//! the direct percentile of the same run and concurrency (different tokens, so percentiles are
//! subtracted, not single tokens).
//!
//! The plug-in coalesces a stream's pieces into at most one `$/stream` chunk per 20 ms
//! (`STREAM_INTERVAL`), the first at once. A token that waited for that window counts with its
//! wait in the per-token rows; the per-chunk rows separate the wait from the relay path: the
//! **newest** token of each relayed chunk waited least (the relay's own cost plus at most one
//! pace), the **oldest** most, and the **first token of each stream** is forwarded at once.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::daemon::{self, Daemon};
use crate::stats::{Goal, Metric, Samples};

const BENCH: &str = "relay";
/// The model name the fixture serves and the upstream entry asks for.
const MODEL: &str = "bench-fixture";

/// Sizes of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RelayOpts {
    /// Content tokens per stream.
    pub(crate) tokens: usize,
    /// Time between two tokens of one stream.
    pub(crate) pace: Duration,
    /// Rounds per run; each streams once per path alone and once with `streams` at once.
    pub(crate) rounds: usize,
    /// Concurrent streams of the second measurement.
    pub(crate) streams: usize,
    /// The llm plug-in's `stream_interval_ms`.
    pub(crate) stream_interval_ms: u64,
}

/// Where `--dump` writes every token (CSV), for a closer look; `None`: nowhere.
pub(crate) type Dump = Option<std::path::PathBuf>;

/// How the bench reaches the fixture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Direct,
    Chat,
    Infer,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::Direct => "direct to the upstream",
            Route::Chat => "via bkg /v1/chat/completions",
            Route::Infer => "via bkg /llm/infer",
        }
    }
}

/// One received token: emission and arrival (ns since the shared base) and the SSE event (the
/// relayed chunk) that carried it.
#[derive(Debug, Clone, Copy)]
struct Token {
    emitted_ns: u64,
    arrived_ns: u64,
    event: usize,
}

impl Token {
    fn latency_us(self) -> f64 {
        self.arrived_ns.saturating_sub(self.emitted_ns) as f64 / 1e3
    }
}

/// The samples of one (path, concurrency) over a run.
#[derive(Default)]
struct Collected {
    /// Every token.
    all: Samples,
    /// The newest (last) token of each SSE event.
    newest: Samples,
    /// The oldest (first) token of each SSE event.
    oldest: Samples,
    /// The first token of each stream.
    first: Samples,
    events: usize,
    tokens: usize,
}

impl Collected {
    fn add(&mut self, tokens: &[Token]) {
        let Some(first) = tokens.first() else { return };
        self.first.push_us(first.latency_us());
        let mut i = 0;
        while i < tokens.len() {
            let ev = tokens[i].event;
            let mut j = i;
            while j + 1 < tokens.len() && tokens[j + 1].event == ev {
                j += 1;
            }
            self.oldest.push_us(tokens[i].latency_us());
            self.newest.push_us(tokens[j].latency_us());
            self.events += 1;
            i = j + 1;
        }
        for t in tokens {
            self.all.push_us(t.latency_us());
        }
        self.tokens += tokens.len();
    }
}

pub(crate) async fn run(bkg: &Path, opts: RelayOpts, dump: &Dump) -> anyhow::Result<Vec<Metric>> {
    let base = Instant::now();
    let base_wall_us = daemon::now_us();
    let mut csv = String::new();
    let fixture = Fixture::start(base, opts.pace)?;
    let tmp = tempfile::tempdir()?;
    let llm = json!({
        "name": "llm", "builtin": "llm",
        "config": {
            "backend": "openai", "max_concurrent": 16, "max_queue": 16,
            "stream_interval_ms": opts.stream_interval_ms,
            "openai": {"upstreams": [{"name": "fixture", "base_url": format!("http://{}/v1", fixture.addr), "model": MODEL}]},
        },
    });
    let registry = daemon::write_registry(tmp.path(), &[llm])?;
    let d = Daemon::start_logged_in(bkg, &tmp.path().join("data"), &registry).await?;
    d.wait_ready(&["llm"]).await?;
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(120)).build()?;
    let ctx = Ctx { base, fixture: fixture.addr, daemon: &d, client: &client };

    // Warm-up: connections, the plug-in's upstream connection pool, page-in of both processes.
    for path in [Route::Direct, Route::Chat, Route::Infer] {
        ctx.stream(path, 20).await?;
    }

    let paths = [Route::Direct, Route::Chat, Route::Infer];
    let concurrencies = [1, opts.streams.max(1)];
    let mut collected: Vec<Vec<Collected>> =
        concurrencies.iter().map(|_| paths.iter().map(|_| Collected::default()).collect()).collect();
    for round in 0..opts.rounds.max(1) {
        for (ci, &n) in concurrencies.iter().enumerate() {
            for (pi, &path) in paths.iter().enumerate() {
                let streams = (0..n).map(|_| ctx.stream(path, opts.tokens));
                for (k, tokens) in join_all(streams).await.into_iter().enumerate() {
                    let tokens = tokens?;
                    if dump.is_some() {
                        for (seq, t) in tokens.iter().enumerate() {
                            let _ = writeln!(
                                csv,
                                "{round},{path:?},{n},{k},{seq},{},{},{}",
                                t.event, t.emitted_ns, t.arrived_ns
                            );
                        }
                    }
                    collected[ci][pi].add(&tokens);
                }
            }
        }
    }
    if let Some(file) = dump {
        // Appends: one file collects every run. Wall clock of ns 0, for matching with strace -tt.
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(file)?;
        writeln!(f, "# base wall clock (µs since the epoch) {base_wall_us}")?;
        writeln!(f, "# round,path,streams,stream,seq,event,emitted_ns,arrived_ns")?;
        f.write_all(csv.as_bytes())?;
    }
    d.stop().await?;
    drop(fixture);

    let mut out = vec![];
    let ms = |us: f64| us / 1e3;
    let per = format!("{} tokens/stream, 1 per {} ms", opts.tokens, opts.pace.as_millis());
    for (ci, &n) in concurrencies.iter().enumerate() {
        let streams = if n == 1 { "1 stream".to_owned() } else { format!("{n} streams") };
        let direct = &collected[ci][0];
        for p in [50.0, 95.0, 99.0] {
            out.push(Metric::info(
                BENCH,
                format!("{streams}: {}, per token, p{p} ({per})", Route::Direct.label()),
                "ms",
                ms(direct.all.percentile(p)),
            ));
        }
        for (pi, &path) in paths.iter().enumerate().skip(1) {
            let c = &collected[ci][pi];
            let added = |s: &Samples, p: f64| ms(s.percentile(p) - direct.all.percentile(p));
            let label = path.label();
            out.push(Metric::target(
                BENCH,
                format!("{streams}: {label}, added per token, p50"),
                "ms",
                added(&c.all, 50.0),
                Goal::Below(1.0),
                "< 1 ms (#6)",
            ));
            for p in [95.0, 99.0] {
                out.push(Metric::info(
                    BENCH,
                    format!("{streams}: {label}, added per token, p{p}"),
                    "ms",
                    added(&c.all, p),
                ));
            }
            for p in [50.0, 99.0] {
                out.push(Metric::info(
                    BENCH,
                    format!("{streams}: {label}, added, newest token of each relayed chunk, p{p}"),
                    "ms",
                    added(&c.newest, p),
                ));
            }
            out.push(Metric::info(
                BENCH,
                format!("{streams}: {label}, added, oldest token of each relayed chunk, p50"),
                "ms",
                added(&c.oldest, 50.0),
            ));
            out.push(Metric::info(
                BENCH,
                format!("{streams}: {label}, added, first token of each stream (not coalesced), p50"),
                "ms",
                ms(c.first.percentile(50.0) - direct.first.percentile(50.0)),
            ));
            out.push(Metric::info(
                BENCH,
                format!("{streams}: {label}, tokens per relayed chunk (mean)"),
                "",
                c.tokens as f64 / c.events.max(1) as f64,
            ));
        }
        let samples = collected[ci].iter().map(|c| c.tokens.to_string()).collect::<Vec<_>>().join(" / ");
        eprintln!("  relay: {streams}: tokens measured direct / chat / infer: {samples}");
    }
    Ok(out)
}

/// `futures::future::join_all` without the dependency: polls all in the calling task.
async fn join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, r) in pinned.iter_mut().zip(results.iter_mut()) {
            if r.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *r = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    results.into_iter().flatten().collect()
}

/// What a client needs to stream over any path.
struct Ctx<'a> {
    base: Instant,
    fixture: SocketAddr,
    daemon: &'a Daemon,
    client: &'a reqwest::Client,
}

impl Ctx<'_> {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// One stream of `tokens` tokens over `path`; every token with its emission and arrival.
    async fn stream(&self, path: Route, tokens: usize) -> anyhow::Result<Vec<Token>> {
        let messages = json!([{"role": "user", "content": "relay benchmark"}]);
        let request = match path {
            Route::Direct => self.client.post(format!("http://{}/v1/chat/completions", self.fixture)).json(&json!({
                "model": MODEL, "messages": messages, "max_tokens": tokens, "stream": true,
                "stream_options": {"include_usage": true},
            })),
            Route::Chat => {
                self.client.post(self.daemon.url("/v1/chat/completions")).bearer_auth(&self.daemon.token).json(&json!({
                    "model": MODEL, "messages": messages, "max_tokens": tokens, "stream": true,
                    "stream_options": {"include_usage": true},
                }))
            }
            Route::Infer => self
                .client
                .post(self.daemon.url("/llm/infer"))
                .bearer_auth(&self.daemon.token)
                .json(&json!({"messages": messages, "max_tokens": tokens, "stream": true})),
        };
        let mut res = request.send().await?;
        if res.status() != StatusCode::OK {
            let status = res.status();
            let text = res.text().await.unwrap_or_default();
            bail!("{}: {status} {text}", path.label());
        }
        let mut pending: Vec<u8> = vec![];
        let mut out: Vec<Token> = Vec::with_capacity(tokens);
        let mut events = 0usize;
        let mut done = false;
        while let Some(chunk) = res.chunk().await? {
            let arrived_ns = self.now_ns();
            pending.extend_from_slice(&chunk);
            while let Some(end) = find(&pending, b"\n\n") {
                let raw: Vec<u8> = pending.drain(..end + 2).collect();
                let (name, data) = sse_event(&String::from_utf8_lossy(&raw));
                let Some(data) = data else { continue };
                let text = match (path, name.as_deref()) {
                    (Route::Infer, Some("token")) => {
                        let v: Value = serde_json::from_str(&data)?;
                        v["delta"].as_str().unwrap_or_default().to_owned()
                    }
                    (Route::Infer, Some("end")) => {
                        done = true;
                        continue;
                    }
                    (Route::Infer, Some("error")) => bail!("{}: error event {data}", path.label()),
                    (Route::Infer, _) => continue,
                    (_, _) if data == "[DONE]" => {
                        done = true;
                        continue;
                    }
                    (_, _) => {
                        let v: Value = serde_json::from_str(&data)?;
                        if v.get("error").is_some() {
                            bail!("{}: error chunk {data}", path.label());
                        }
                        v["choices"][0]["delta"]["content"].as_str().unwrap_or_default().to_owned()
                    }
                };
                let before = out.len();
                for (seq, emitted_ns) in parse_tokens(&text) {
                    ensure!(seq == out.len(), "{}: token {seq} arrived as number {}", path.label(), out.len());
                    out.push(Token { emitted_ns, arrived_ns, event: events });
                }
                if out.len() > before {
                    events += 1;
                }
            }
        }
        ensure!(done, "{}: the stream ended without its end marker", path.label());
        ensure!(out.len() == tokens, "{}: {} of {tokens} tokens arrived", path.label(), out.len());
        Ok(out)
    }
}

/// The `event:` name and the joined `data:` lines of one SSE event.
fn sse_event(raw: &str) -> (Option<String>, Option<String>) {
    let mut name = None;
    let mut data: Option<String> = None;
    for line in raw.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            name = Some(v.trim_start().to_owned());
        } else if let Some(v) = line.strip_prefix("data:") {
            let v = v.strip_prefix(' ').unwrap_or(v);
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(v);
                }
                None => data = Some(v.to_owned()),
            }
        }
    }
    (name, data)
}

/// The `[<seq>@<ns>]` tokens of a piece of relayed text.
fn parse_tokens(text: &str) -> Vec<(usize, u64)> {
    let mut out = vec![];
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find(']') else { break };
        let inner = &rest[open + 1..open + close];
        if let Some((seq, ns)) = inner.split_once('@')
            && let (Ok(seq), Ok(ns)) = (seq.parse(), ns.parse())
        {
            out.push((seq, ns));
        }
        rest = &rest[open + close + 1..];
    }
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The upstream fixture: its own thread and single-threaded runtime, so that its pacing and
/// timestamps do not compete with the bench's clients for a worker. Stops when dropped.
struct Fixture {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Fixture {
    fn start(base: Instant, pace: Duration) -> anyhow::Result<Self> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new().name("relay-fixture".into()).spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = TcpListener::from_std(std_listener) else { return };
                let accept = async {
                    while let Ok((sock, _)) = listener.accept().await {
                        tokio::spawn(async move {
                            if let Err(e) = serve(sock, base, pace).await {
                                eprintln!("  relay fixture: connection error: {e}");
                            }
                        });
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stop_rx => {}
                }
            });
        })?;
        Ok(Self { addr, _stop: stop_tx })
    }
}

/// One keep-alive connection: requests one after the other.
async fn serve(mut sock: TcpStream, base: Instant, pace: Duration) -> anyhow::Result<()> {
    sock.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut read = [0u8; 8192];
    loop {
        let head_end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            let n = sock.read(&mut read).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&read[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or_default().split(' ');
        let (method, target) = (first.next().unwrap_or_default(), first.next().unwrap_or_default());
        let length: usize = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let n = sock.read(&mut read).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&read[..n]);
        }
        let body: Value = serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or(Value::Null);
        buf.drain(..head_end + length);
        match (method, target) {
            ("GET", "/v1/models") => {
                let models = json!({"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "bkg-bench"}]});
                respond(&mut sock, "200 OK", &models).await?;
            }
            ("POST", "/v1/chat/completions") if body["stream"] == true => {
                let tokens = body["max_tokens"].as_u64().context("no max_tokens")?;
                let usage = body["stream_options"]["include_usage"] == true;
                stream(&mut sock, base, pace, tokens, usage).await?;
            }
            ("POST", "/v1/chat/completions") => {
                let e = json!({"error": {"message": "this fixture only streams", "type": "invalid_request_error"}});
                respond(&mut sock, "400 Bad Request", &e).await?;
            }
            _ => respond(&mut sock, "404 Not Found", &json!({"error": {"message": "not found"}})).await?,
        }
    }
}

async fn respond(sock: &mut TcpStream, status: &str, body: &Value) -> std::io::Result<()> {
    let body = body.to_string();
    let head = format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len());
    sock.write_all(format!("{head}{body}").as_bytes()).await
}

/// Appends one chunk of the chunked transfer coding.
fn chunked(out: &mut Vec<u8>, data: &str) {
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The SSE answer: a role chunk at once, then `tokens` content chunks `pace` apart, each
/// stamped with its emission time, then the finish chunk, the usage chunk and `[DONE]`.
async fn stream(sock: &mut TcpStream, base: Instant, pace: Duration, tokens: u64, usage: bool) -> anyhow::Result<()> {
    let chunk = |delta: &str, finish: &str| {
        format!(
            "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"{MODEL}\",\
             \"choices\":[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}]}}\n\n"
        )
    };
    let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
                    transfer-encoding: chunked\r\n\r\n"
        .to_vec();
    chunked(&mut out, &chunk(r#"{"role":"assistant","content":""}"#, "null"));
    sock.write_all(&out).await?;
    let start = tokio::time::Instant::now();
    for seq in 0..tokens {
        tokio::time::sleep_until(start + pace * u32::try_from(seq + 1)?).await;
        let ns = u64::try_from(base.elapsed().as_nanos())?;
        out.clear();
        chunked(&mut out, &chunk(&format!(r#"{{"content":"[{seq}@{ns}]"}}"#), "null"));
        sock.write_all(&out).await?;
    }
    out.clear();
    chunked(&mut out, &chunk("{}", r#""length""#));
    if usage {
        let u = json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
                       "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": tokens, "total_tokens": tokens + 3}});
        chunked(&mut out, &format!("data: {u}\n\n"));
    }
    chunked(&mut out, "data: [DONE]\n\n");
    out.extend_from_slice(b"0\r\n\r\n");
    sock.write_all(&out).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stamped_tokens_and_events() {
        assert_eq!(parse_tokens("[0@12][1@345]"), vec![(0, 12), (1, 345)]);
        assert_eq!(parse_tokens("x[2@7"), vec![]);
        let (name, data) = sse_event("event: token\ndata: {\"delta\":\"[0@1]\"}\n\n");
        assert_eq!(name.as_deref(), Some("token"));
        assert_eq!(data.as_deref(), Some("{\"delta\":\"[0@1]\"}"));
    }

    #[test]
    fn groups_tokens_by_relayed_chunk() {
        let t = |emitted_ns, arrived_ns, event| Token { emitted_ns, arrived_ns, event };
        let mut c = Collected::default();
        c.add(&[t(0, 1_000, 0), t(5_000, 30_000, 1), t(10_000, 30_000, 1)]);
        assert_eq!((c.events, c.tokens), (2, 3));
        assert_eq!(c.oldest.percentile(100.0), 25.0);
        assert_eq!(c.newest.percentile(100.0), 20.0);
        assert_eq!(c.first.percentile(50.0), 1.0);
    }
}
