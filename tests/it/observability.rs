//! `/metrics`, `/admin/system` and `/openapi.json` against the real daemon (issue 4, part 4).

// Helpers outside #[test] functions unwrap too: a panic is the failure report here.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::logs_sse::wait_listed;
use crate::support::*;

/// Parses a Prometheus text page strictly enough to catch format mistakes: every sample belongs
/// to a family declared once (with `# TYPE`) before it, label values are quoted and escaped,
/// values are numbers. Returns `series → value`.
fn parse_exposition(page: &str) -> BTreeMap<String, f64> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    let mut samples = BTreeMap::new();
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(types.insert(name.to_owned(), kind.to_owned()).is_none(), "family declared twice: {name}");
            current = Some((name.to_owned(), kind.to_owned()));
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.is_empty() && !line.starts_with('#'), "stray line {line:?}");
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') && !name.is_empty(),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            check_labels(&series[name_end..]);
        }
        let (family, kind) = current.as_ref().unwrap_or_else(|| panic!("sample before any TYPE: {line}"));
        let belongs = match kind.as_str() {
            "histogram" => [format!("{family}_bucket"), format!("{family}_sum"), format!("{family}_count")]
                .iter()
                .any(|n| n == name),
            _ => name == family,
        };
        assert!(belongs, "sample {name} is not in family {family}");
        assert!(samples.insert(series.to_owned(), value).is_none(), "duplicate series {series}");
    }
    samples
}

/// `{k="v",k2="v\"2"}`: names are identifiers, values quoted with `\\`, `\"`, `\n` escapes.
fn check_labels(labels: &str) {
    let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}')).expect("braces");
    let mut chars = inner.chars().peekable();
    loop {
        let name: String = std::iter::from_fn(|| chars.next_if(|c| c.is_ascii_alphanumeric() || *c == '_')).collect();
        assert!(!name.is_empty(), "label name in {labels}");
        assert_eq!((chars.next(), chars.next()), (Some('='), Some('"')), "{labels}");
        loop {
            match chars.next().expect("unterminated label value") {
                '\\' => assert!(matches!(chars.next(), Some('\\' | '"' | 'n')), "bad escape in {labels}"),
                '"' => break,
                _ => {}
            }
        }
        match chars.next() {
            None => return,
            Some(',') => continue,
            Some(c) => panic!("unexpected {c:?} in {labels}"),
        }
    }
}

async fn metrics(d: &TestDaemon) -> BTreeMap<String, f64> {
    let res = d.http.get(d.url("/metrics")).bearer_auth(&d.token).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    parse_exposition(&res.text().await.unwrap())
}

fn value(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_page_counts_requests_states_rpc_and_logs() {
    let d = TestDaemon::start(vec![fake_spec("f", json!({}), json!({})), echo_spec("e")]).await;
    wait_listed(&d, &["f", "e"]).await;
    d.wait_ready("f").await;
    d.wait_ready("e").await;
    let res = d.http.get(d.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    let before = metrics(&d).await;
    assert_eq!(value(&before, r#"bkg_plugin_state{plugin="f",state="ready"}"#), 1.0);
    assert_eq!(before.get(r#"bkg_plugin_state{plugin="f",state="stopped"}"#), Some(&0.0));
    assert_eq!(value(&before, r#"bkg_plugin_up{plugin="e"}"#), 1.0);
    assert_eq!(before.get(r#"bkg_plugin_restarts_total{plugin="f"}"#), Some(&0.0));
    assert!(value(&before, "process_resident_memory_bytes") > 1e6);
    assert!(before.contains_key("process_cpu_seconds_total"));
    // Nothing flooded the daemon's own log writer.
    assert_eq!(before.get("bkg_daemon_log_dropped_total"), Some(&0.0));

    // HTTP requests are counted by route template and status, not by raw path.
    let detail = r#"bkg_http_requests_total{method="GET",route="/admin/plugins/{name}",status="200"}"#;
    let missing = r#"bkg_http_requests_total{method="GET",route="/admin/plugins/{name}",status="404"}"#;
    let unauthorized = r#"bkg_http_requests_total{method="GET",route="/metrics",status="401"}"#;
    d.plugin("f").await;
    d.plugin("e").await;
    let (status, _) = d.get("/admin/plugins/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let res = d.http.get(d.url("/no/such/route/123")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    // rpc latency per plug-in and method, and log lines per plug-in.
    let (status, body) = d.rpc("f", "fake.echo", json!({"x": 1}), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = d.rpc("f", "fake.log", json!({"lines": 25}), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let lines_before = value(&before, r#"bkg_plugin_log_lines_total{plugin="f"}"#);
    let after = wait_for("25 more log lines counted", WAIT, || async {
        let m = metrics(&d).await;
        (value(&m, r#"bkg_plugin_log_lines_total{plugin="f"}"#) >= lines_before + 25.0).then_some(m)
    })
    .await;
    assert_eq!(value(&after, detail), value(&before, detail) + 2.0);
    assert_eq!(value(&after, missing), value(&before, missing) + 1.0);
    assert!(value(&after, unauthorized) >= 1.0);
    let unmatched = r#"bkg_http_requests_total{method="GET",route="unmatched",status="404"}"#;
    assert_eq!(value(&after, unmatched), 1.0);
    assert!(!after.keys().any(|k| k.contains("/no/such/route") || k.contains("/admin/plugins/nope")));
    let echo_count = r#"bkg_plugin_rpc_duration_seconds_count{plugin="f",method="fake.echo"}"#;
    let echo_inf = r#"bkg_plugin_rpc_duration_seconds_bucket{plugin="f",method="fake.echo",le="+Inf"}"#;
    assert_eq!((value(&after, echo_count), value(&after, echo_inf)), (1.0, 1.0));
    assert!(value(&after, r#"bkg_plugin_rpc_calls_total{plugin="f"}"#) >= 2.0);
    assert_eq!(after.get(r#"bkg_plugin_log_dropped_total{plugin="f"}"#), Some(&0.0));
    assert!(
        value(&after, r#"bkg_http_request_duration_seconds_count{method="GET",route="/admin/plugins/{name}"}"#) >= 3.0
    );

    // A plug-in that is stopped shows up in its new state.
    let (status, body) = d.post("/admin/plugins/e/stop", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    d.wait_plugin("e", "stopped", |v| v["state"] == "stopped").await;
    let m = metrics(&d).await;
    assert_eq!(value(&m, r#"bkg_plugin_state{plugin="e",state="stopped"}"#), 1.0);
    assert_eq!(value(&m, r#"bkg_plugin_state{plugin="e",state="ready"}"#), 0.0);
    assert_eq!(value(&m, r#"bkg_plugin_up{plugin="e"}"#), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_reports_the_daemon_and_each_plugin_group() {
    let d = TestDaemon::start(vec![fake_spec("f", json!({}), json!({})), echo_spec("e")]).await;
    wait_listed(&d, &["f", "e"]).await;
    let f_pid = d.wait_ready("f").await["pid"].as_u64().unwrap();
    d.wait_ready("e").await;
    let res = d.http.get(d.url("/admin/system")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    let (status, sys) = d.get("/admin/system").await;
    assert_eq!(status, StatusCode::OK, "{sys}");
    let daemon = &sys["daemon"];
    assert_eq!(daemon["pid"].as_u64(), Some(u64::from(d.pid())));
    assert!(daemon["rss_bytes"].as_u64().unwrap() > 1 << 20, "{daemon}");
    assert!(daemon["threads"].as_u64().unwrap() >= 2, "{daemon}");
    assert!(daemon["open_fds"].as_u64().unwrap() >= 4, "{daemon}");
    assert!(daemon["cpu_seconds"].as_f64().unwrap() >= 0.0);
    assert!(daemon["uptime_s"].as_f64().unwrap() >= 0.0);

    let plugin = |sys: &Value, name: &str| -> Value {
        sys["plugins"].as_array().unwrap().iter().find(|p| p["name"] == name).cloned().expect(name)
    };
    let f = plugin(&sys, "f");
    assert_eq!(f["pid"].as_u64(), Some(f_pid));
    assert_eq!(f["state"], "ready");
    assert_eq!(f["processes"], 1, "{f}");
    assert!(f["rss_bytes"].as_u64().unwrap() > 0 && f["threads"].as_u64().unwrap() >= 1, "{f}");
    assert!(f["open_fds"].as_u64().unwrap() >= 3, "{f}");

    // Helpers the plug-in starts in its process group are counted with it.
    let (status, body) = d.rpc("f", "fake.spawn", json!({"count": 2}), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let spawned: Vec<u64> = body["result"]["pids"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap()).collect();
    let f = wait_for("the group to include the helpers", WAIT, || async {
        let (_, sys) = d.get("/admin/system").await;
        let f = plugin(&sys, "f");
        (f["processes"] == 3).then_some(f)
    })
    .await;
    let group: Vec<u64> = f["group_pids"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap()).collect();
    assert!(spawned.iter().all(|p| group.contains(p)) && group.contains(&f_pid), "{f}");

    // A stopped plug-in has no process to report.
    let (status, _) = d.post("/admin/plugins/e/stop", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    d.wait_plugin("e", "stopped", |v| v["state"] == "stopped").await;
    let (_, sys) = d.get("/admin/system").await;
    let e = plugin(&sys, "e");
    assert_eq!((e["state"].as_str(), &e["pid"], e.get("rss_bytes")), (Some("stopped"), &Value::Null, None), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_every_route_and_each_documented_route_exists() {
    let d = TestDaemon::start(vec![fake_spec("f", json!({}), json!({}))]).await;
    wait_listed(&d, &["f"]).await;
    d.wait_ready("f").await;
    let res = d.http.get(d.url("/openapi.json")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "no credentials needed");
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();

    // Every guarded route and every public one is documented, with its scope.
    for (method, path) in bkg::http::guard::guarded_routes() {
        let op = &doc["paths"][path][method.to_lowercase()];
        let scope = bkg::http::guard::required_scope(&method.parse().unwrap(), path).unwrap();
        assert!(op.is_object(), "{method} {path} is not documented");
        // Routes that need any valid credential but no scope carry no `x-scope`.
        let expected = if scope.is_empty() { Value::Null } else { json!(scope) };
        assert_eq!(op["x-scope"], expected, "{method} {path}");
    }
    for (method, path) in bkg::http::openapi::PUBLIC {
        assert_eq!(doc["paths"][*path][method.to_lowercase()]["security"], json!([]), "{method} {path}");
    }

    // Every documented operation exists in the router: without credentials it answers 401
    // (guarded) or succeeds (public), never 404 or 405.
    let mut operations = 0;
    for (path, item) in paths {
        let url = path.replace("{name}", "f").replace("{op}", "start").replace("{group}", "logging");
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let method: reqwest::Method = method.to_uppercase().parse().unwrap();
            let mut req = d.http.request(method.clone(), d.url(&url));
            if op.get("requestBody").is_some() {
                req = req.json(&json!({}));
            }
            let status = req.send().await.unwrap().status();
            if op["security"] == json!([]) {
                // Public: routed and answered (an empty login body is a 400, /health may be 503).
                let unrouted = [StatusCode::NOT_FOUND, StatusCode::METHOD_NOT_ALLOWED, StatusCode::UNAUTHORIZED];
                assert!(!unrouted.contains(&status), "{method} {path}: {status}");
            } else {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
            }
        }
    }
    let documented = bkg::http::guard::guarded_routes().count() + bkg::http::openapi::PUBLIC.len();
    assert_eq!(operations, documented, "the document has operations that are neither guarded nor public");
    let res = d.http.get(d.url("/admin/not-a-route")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND, "sanity: unknown routes are 404");
}
