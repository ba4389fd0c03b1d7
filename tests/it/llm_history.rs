//! LLM request history (issue 6 item 5) through the real daemon and the real default model:
//! every route records input, output, usage and timings (cancelled and failed requests too),
//! cursor paging, replay, visibility and CSRF, the retention bounds, the off switch, and
//! survival across a daemon restart.

use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::llm::{FRANCE, LLM_WAIT, long_stream, post, start};
use crate::support::*;

/// `GET /llm/history{query}` as the admin, which must succeed.
async fn history(d: &TestDaemon, query: &str) -> Value {
    let (status, body) = d.get(&format!("/llm/history{query}")).await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    body
}

/// The newest row's id (0 when there is none).
async fn newest_id(d: &TestDaemon) -> i64 {
    history(d, "?limit=1").await["entries"][0]["id"].as_i64().unwrap_or(0)
}

/// Waits for a row newer than `after` (rows are written after the answer, off the request path)
/// and returns the newest one.
async fn next_row(d: &TestDaemon, after: i64) -> Value {
    wait_for(&format!("a history row after {after}"), WAIT, || async {
        let row = history(d, "?limit=1").await["entries"][0].clone();
        (row["id"].as_i64().unwrap_or(0) > after).then_some(row)
    })
    .await
}

/// A short request through `/llm/infer` that must succeed.
async fn small_request(d: &TestDaemon) {
    let res = post(d, "/llm/infer", &json!({"prompt": "hi", "max_tokens": 1})).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

fn assert_timed(row: &Value) {
    for field in ["total_ms", "ttft_ms", "queue_ms"] {
        assert!(row[field].as_i64().is_some_and(|v| v >= 0), "{field}: {row}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_recorded_with_output_usage_and_timings() {
    let d = start(json!({})).await;
    let france = json!({"prompt": FRANCE, "temperature": 0, "max_tokens": 32});

    // /llm/infer, whole answer.
    let res = post(&d, "/llm/infer", &france).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let req_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = res.json().await.unwrap();
    let row = next_row(&d, 0).await;
    assert_eq!(row["route"], "/llm/infer");
    assert_eq!(row["actor"], "user:admin");
    assert_eq!(row["req_id"], req_id.as_str());
    assert_eq!(row["outcome"], "ok");
    assert_eq!(row["stream"], false);
    assert_eq!(row["request"], france, "the request is stored as sent");
    assert_eq!(row["output"], body["text"]);
    assert!(row["output"].as_str().unwrap().contains("Paris"), "{row}");
    assert_eq!(row["finish_reason"], body["finish_reason"]);
    assert_eq!(row["model"], "smollm2-135m-instruct");
    assert_eq!(row["prompt_tokens"], body["usage"]["prompt_tokens"]);
    assert_eq!(row["completion_tokens"], body["usage"]["completion_tokens"]);
    assert_timed(&row);
    assert!(row["created_at"].as_i64().unwrap() > 0);

    // /llm/infer streamed: the output is what was streamed.
    let mut streamed = france.clone();
    streamed["stream"] = json!(true);
    let res = post(&d, "/llm/infer", &streamed).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let _ = res.text().await.unwrap();
    let row = next_row(&d, row["id"].as_i64().unwrap()).await;
    assert_eq!((row["route"].as_str(), row["stream"].as_bool()), (Some("/llm/infer"), Some(true)), "{row}");
    assert_eq!(row["output"], body["text"]);
    assert_eq!(row["completion_tokens"], body["usage"]["completion_tokens"]);
    assert_eq!(row["request"], france, "`stream` is a column, not part of the request");
    assert_timed(&row);

    // /v1/chat/completions.
    let chat = json!({"messages": [{"role": "user", "content": FRANCE}], "temperature": 0, "max_tokens": 32});
    let res = post(&d, "/v1/chat/completions", &chat).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let answer: Value = res.json().await.unwrap();
    let row = next_row(&d, row["id"].as_i64().unwrap()).await;
    assert_eq!(row["route"], "/v1/chat/completions");
    assert_eq!(row["outcome"], "ok");
    assert_eq!(row["output"], answer["choices"][0]["message"]["content"]);
    assert_eq!(row["prompt_tokens"], answer["usage"]["prompt_tokens"]);
    assert_eq!(row["request"]["messages"], chat["messages"]);
    assert_timed(&row);

    // The WebSocket.
    let mut request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/llm/stream",
        d.addr
    ))
    .unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {}", d.token).parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.expect("websocket");
    let start_msg = json!({"type": "request", "req_id": "w1", "event": "start", "payload": france});
    ws.send(Message::Text(start_msg.to_string().into())).await.unwrap();
    loop {
        let msg = tokio::time::timeout(LLM_WAIT, ws.next()).await.expect("ws stalled").expect("ws open").unwrap();
        let Message::Text(text) = msg else { continue };
        let m: Value = serde_json::from_str(text.as_str()).unwrap();
        assert_ne!(m["event"], "error", "{m}");
        if m["event"] == "end" {
            break;
        }
    }
    let row = next_row(&d, row["id"].as_i64().unwrap()).await;
    assert_eq!(row["route"], "/llm/stream");
    assert!(row["req_id"].as_str().unwrap().ends_with("/w1"), "{row}");
    assert_eq!(row["output"], body["text"]);
    assert_eq!(row["completion_tokens"], body["usage"]["completion_tokens"]);
    ws.close(None).await.unwrap();

    // A stream the client drops after its first token: cancelled, with the prompt's usage, the
    // tokens generated so far and the text the client got.
    drop(long_stream(&d).await);
    let row = next_row(&d, row["id"].as_i64().unwrap()).await;
    assert_eq!(row["outcome"], "cancelled", "{row}");
    assert_eq!(row["finish_reason"], "cancelled", "{row}");
    assert!(row["prompt_tokens"].as_i64().unwrap() > 0, "{row}");
    assert!(!row["output"].as_str().unwrap().is_empty(), "{row}");
    assert!(row["completion_tokens"].as_i64().unwrap() >= 1, "tokens generated before the cancel: {row}");
    assert!(row["ttft_ms"].as_i64().is_some() && row["total_ms"].as_i64().is_some(), "{row}");

    // Rejected by the plug-in after admission: recorded with the error.
    let res = post(&d, "/llm/infer", &json!({"prompt": ""})).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let row = next_row(&d, row["id"].as_i64().unwrap()).await;
    assert_eq!(row["outcome"], "error", "{row}");
    assert_eq!(row["error"]["status"], 400, "{row}");
    assert_eq!(row["output"], "");

    // Nothing of the credentials is stored.
    let all = history(&d, "?limit=200").await.to_string();
    assert!(!all.contains(&d.token), "a token reached the history");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_replay_visibility_csrf_and_bad_input() {
    let d = start(json!({})).await;
    let res =
        post(&d, "/llm/infer", &json!({"prompt": FRANCE, "temperature": 0, "max_tokens": 32})).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let france_id = next_row(&d, 0).await["id"].as_i64().unwrap();
    for _ in 0..4 {
        small_request(&d).await;
    }
    wait_for("five rows", WAIT, || async {
        (history(&d, "?limit=200").await["entries"].as_array().unwrap().len() == 5).then_some(())
    })
    .await;

    // Pages of two: newest first, disjoint, together the whole history.
    let all: Vec<i64> = history(&d, "?limit=200").await["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert!(all.windows(2).all(|w| w[0] > w[1]), "{all:?}");
    let mut paged = Vec::new();
    let mut query = "?limit=2".to_owned();
    loop {
        let page = history(&d, &query).await;
        let ids: Vec<i64> = page["entries"].as_array().unwrap().iter().map(|e| e["id"].as_i64().unwrap()).collect();
        assert!(ids.len() <= 2);
        paged.extend(ids);
        match page["next_before"].as_i64() {
            Some(before) => query = format!("?limit=2&before={before}"),
            None => break,
        }
    }
    assert_eq!(paged, all);
    let filtered = history(&d, "?route=/v1/chat/completions").await;
    assert_eq!(filtered["entries"], json!([]));
    assert_eq!(history(&d, "?actor=user:admin&limit=200").await["entries"].as_array().unwrap().len(), 5);

    // One entry.
    let (status, entry) = d.get(&format!("/llm/history/{france_id}")).await;
    assert_eq!(status, StatusCode::OK, "{entry}");
    assert_eq!(entry["id"], france_id);

    // Replay: a new request with a new row pointing at the old one, answered like /llm/infer.
    let newest = newest_id(&d).await;
    let res = post(&d, "/llm/history/replay", &json!({"id": france_id})).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let replay_req_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = res.json().await.unwrap();
    assert!(body["text"].as_str().unwrap().contains("Paris"), "{body}");
    let row = next_row(&d, newest).await;
    assert_eq!(row["route"], "replay");
    assert_eq!(row["replay_of"], france_id);
    assert_eq!(row["req_id"], replay_req_id.as_str());
    assert_ne!(row["req_id"], entry["req_id"]);
    assert_eq!(row["output"], body["text"]);
    // Replayed as a stream on request.
    let res = post(&d, "/llm/history/replay", &json!({"id": france_id, "stream": true})).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let sse = res.text().await.unwrap();
    assert!(sse.contains("event: end") && sse.contains("Paris"), "{sse}");

    // Unknown ids and bad input: 404 and 400 with the field, nothing recorded.
    let newest = next_row(&d, row["id"].as_i64().unwrap()).await["id"].as_i64().unwrap();
    assert_eq!(d.get("/llm/history/999999").await.0, StatusCode::NOT_FOUND);
    let res = post(&d, "/llm/history/replay", &json!({"id": 999_999})).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    for (query, field) in [
        ("?limit=0", "limit"),
        ("?limit=201", "limit"),
        ("?limit=ten", "limit"),
        ("?before=-1", "before"),
        ("?route=/nope", "route"),
        ("?colour=blue", "colour"),
    ] {
        let (status, body) = d.get(&format!("/llm/history{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["error"]["details"]["field"], field, "{query}: {body}");
    }
    let (status, body) = d.get("/llm/history/abc").await;
    assert_eq!((status, body["error"]["details"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("id")));
    for (req, field) in [
        (json!({}), "id"),
        (json!({"id": "1"}), "id"),
        (json!({"id": france_id, "stream": "yes"}), "stream"),
        (json!({"id": france_id, "temperature": 1}), "temperature"),
    ] {
        let res = post(&d, "/llm/history/replay", &req).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{req}");
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"]["details"]["field"], field, "{req}: {err}");
    }

    // A key with only llm:use sees its own entries only; others' are 404 and need audit:read.
    let res = d
        .http
        .post(d.url("/admin/keys"))
        .bearer_auth(&d.token)
        .json(&json!({"name": "client", "scopes": ["llm:use"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let key = res.json::<Value>().await.unwrap()["key"].as_str().unwrap().to_owned();
    let as_key = |path: &str| d.http.get(d.url(path)).bearer_auth(&key).send();
    let mine: Value = as_key("/llm/history").await.unwrap().json().await.unwrap();
    assert_eq!(mine["entries"], json!([]), "{mine}");
    assert_eq!(as_key("/llm/history?actor=user:admin").await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(as_key(&format!("/llm/history/{france_id}")).await.unwrap().status(), StatusCode::NOT_FOUND);

    // A cookie session needs the CSRF token to replay.
    let (set_cookie, csrf) = d.cookie_login().await;
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let replay = |csrf: Option<&str>| {
        let mut req = d
            .http
            .post(d.url("/llm/history/replay"))
            .header("cookie", &cookie)
            .timeout(LLM_WAIT)
            .json(&json!({"id": france_id}));
        if let Some(c) = csrf {
            req = req.header("x-csrf-token", c);
        }
        req.send()
    };
    assert_eq!(replay(None).await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(newest_id(&d).await, newest, "a refused replay ran nothing");
    let res = replay(Some(&csrf)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.json::<Value>().await.unwrap()["text"].as_str().unwrap().contains("Paris"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_the_off_switch_and_a_restart() {
    let mut d = start(json!({})).await;
    let tmp = d.take_dir().expect("temp dir");
    for _ in 0..4 {
        small_request(&d).await;
    }
    wait_for("four rows", WAIT, || async {
        (history(&d, "?limit=200").await["entries"].as_array().unwrap().len() == 4).then_some(())
    })
    .await;
    let count = |h: &Value| h["entries"].as_array().unwrap().len();

    // Lowering the count bound trims at once and holds for new rows.
    let put = |v: Value| d.http.put(d.url("/admin/settings/retention")).bearer_auth(&d.token).json(&v).send();
    let res = put(json!({"llm_history_max_rows": 2})).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{:?}", res.text().await);
    let h = history(&d, "?limit=200").await;
    assert_eq!(count(&h), 2, "{h}");
    assert_eq!(h["entries"][0]["id"], 4);
    for expected in 5..=7 {
        small_request(&d).await;
        let row = next_row(&d, expected - 1).await;
        assert_eq!(row["id"], expected);
        assert_eq!(count(&history(&d, "?limit=200").await), 2, "the bound holds after row {expected}");
    }

    // Bad bounds are 400 with the field and change nothing.
    for (value, field) in [
        (json!({"llm_history_max_age_days": 0}), "retention.llm_history_max_age_days"),
        (json!({"llm_history_max_rows": -1}), "retention.llm_history_max_rows"),
    ] {
        let res = put(value.clone()).await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{value}");
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"]["details"]["field"], field, "{err}");
    }
    let (_, settings) = d.get("/admin/settings/retention").await;
    assert_eq!(settings["value"]["llm_history_max_rows"], 2, "{settings}");
    assert_eq!(settings["value"]["llm_history_max_age_days"], 30, "{settings}");

    // History off: nothing is recorded. The store writes in order, so once the request made
    // after turning it back on is visible, a row of the one before would be too.
    assert_eq!(put(json!({"llm_history_max_rows": 0})).await.unwrap().status(), StatusCode::OK);
    small_request(&d).await;
    assert_eq!(put(json!({"llm_history_max_rows": 10})).await.unwrap().status(), StatusCode::OK);
    let res =
        post(&d, "/llm/infer", &json!({"prompt": FRANCE, "temperature": 0, "max_tokens": 32})).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let row = next_row(&d, 7).await;
    assert_eq!(row["id"], 8, "the request made while history was off left no row: {row}");
    assert_eq!(count(&history(&d, "?limit=200").await), 3);

    // The history survives a restart on the same data dir.
    drop(d);
    let d = TestDaemon::start_in(tmp.path(), None).await;
    let (status, after) = d.get("/llm/history/8").await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert_eq!(after, row);
    assert_eq!(count(&history(&d, "?limit=200").await), 3);
}
