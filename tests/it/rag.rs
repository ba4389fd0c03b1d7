//! The rag plug-in through the daemon (issue 7, "must hold"): exact citations, incremental
//! reindex, bad input, SIGKILL during a reindex, and a missing model. Real tantivy index on disk;
//! the vector tests use the real all-MiniLM-L6-v2 (fetched by `scripts/fetch-models.sh minilm`,
//! which `scripts/test.sh` runs first).

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

/// The model directory the plug-in should use (the test's environment is not the plug-in's:
/// the daemon clears it, so the directory is passed in the config).
pub(crate) fn model_dir() -> PathBuf {
    let dir = bkg_plugin_rag::config::default_model_dir().expect("HOME or BKG_MODEL_CACHE is set");
    assert!(
        dir.join("model.safetensors").is_file(),
        "the embedding model is missing at {}: run scripts/fetch-models.sh minilm",
        dir.display()
    );
    dir
}

pub(crate) fn rag_spec(root: &Path, model: Option<&Path>) -> Value {
    let mut config = json!({"roots": [root], "chunk_target_words": 40, "max_file_bytes": 20_000});
    match model {
        Some(dir) => config["model_dir"] = json!(dir),
        None => config["embeddings"] = json!(false),
    }
    json!({
        "name": "rag", "builtin": "rag", "config": config,
        "timeouts": {"stop_grace_ms": 500, "startup_ms": 30000, "ready_ms": 30000, "health_interval_ms": 300},
        "restart": {"backoff_initial_ms": 50, "backoff_max_ms": 400}
    })
}

/// A small mixed corpus: Markdown, text, HTML (with a script), Rust, and files to skip.
fn write_corpus(root: &Path) {
    std::fs::create_dir_all(root.join("guide")).unwrap();
    std::fs::write(
        root.join("guide/ownership.md"),
        "# Ownership\n\nEach value in Rust has an owner. There can only be one owner at a time.\n\n\
         ## Moves\n\nAssigning a heap value to another variable moves it; the first one is no longer valid.\n\n\
         ## Copies\n\nIntegers are Copy, so assigning them copies the bits. Copy and move differ for heap data.\n",
    )
    .unwrap();
    std::fs::write(
        root.join("notes.txt"),
        "Lifetimes make sure that references stay valid.\n\nBorrowing is checked at compile time.\n",
    )
    .unwrap();
    std::fs::write(
        root.join("guide/closures.html"),
        "<!DOCTYPE html><html><head><title>Closures</title><style>p { color: red }</style></head><body>\
         <nav>Table of contents</nav><main><h1 id=\"c\">Closures</h1>\
         <p>Closures are anonymous functions that can <em>capture</em> their environment &amp; be stored.</p>\
         <script>var secretword = \"xylophone\";</script>\
         <pre><code class=\"language-rust\">let add_one = |x| x + 1;\nassert_eq!(add_one(2), 3);</code></pre>\
         </main><footer>footer text</footer></body></html>",
    )
    .unwrap();
    std::fs::write(
        root.join("guide/vec.rs"),
        "/// A growable array.\npub fn make_vector() -> Vec<i32> {\n    vec![1, 2, 3]\n}\n",
    )
    .unwrap();
    std::fs::write(root.join("logo.png"), [0x89u8, b'P', b'N', b'G', 0, 0, 0]).unwrap();
    std::fs::write(root.join("big.txt"), "large ".repeat(10_000)).unwrap();
}

async fn reindex(d: &TestDaemon, full: bool) -> Value {
    let (status, body) = d.post("/rag/reindex", json!({"full": full})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn query(d: &TestDaemon, q: &str, mode: &str, top_k: u64) -> Vec<Value> {
    let (status, body) = d.post("/rag/query", json!({"query": q, "mode": mode, "top_k": top_k})).await;
    assert_eq!(status, StatusCode::OK, "{q} ({mode}): {body}");
    body["results"].as_array().expect("results").clone()
}

fn file_names(results: &[Value]) -> Vec<String> {
    results.iter().map(|r| r["source"]["path"].as_str().unwrap().rsplit('/').next().unwrap().to_owned()).collect()
}

/// Reads the cited bytes and checks the citation: sha256 of the file, and the text (exactly for
/// text formats, after re-extraction for HTML).
fn check_citation(r: &Value) {
    let source = &r["source"];
    let path = source["path"].as_str().unwrap();
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(bkg_plugin_rag::doc::sha256_hex(&bytes), source["sha256"].as_str().unwrap(), "{path}");
    let (start, end) = (source["start"].as_u64().unwrap() as usize, source["end"].as_u64().unwrap() as usize);
    assert!(start < end && end <= bytes.len(), "{source}");
    let slice = std::str::from_utf8(&bytes[start..end]).expect("citations lie on character boundaries");
    let text = r["text"].as_str().unwrap();
    if path.ends_with(".html") {
        use bkg_plugin_rag::html::{extract, normalize_ws};
        assert_eq!(normalize_ws(&extract(slice).text), normalize_ws(text), "{path} [{start}, {end})");
    } else {
        assert_eq!(slice, text, "{path} [{start}, {end})");
    }
    assert_eq!(source["chunk_id"].as_str().unwrap().len(), 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn citations_are_exact_in_every_mode() {
    let corpus = tempfile::tempdir().unwrap();
    write_corpus(corpus.path());
    let model = model_dir();
    let d = TestDaemon::start(vec![rag_spec(corpus.path(), Some(&model))]).await;
    d.wait_ready("rag").await;
    let report = reindex(&d, false).await;
    assert_eq!(report["added"], 4, "{report}");
    assert_eq!(report["skipped"], 2, "{report}");
    assert_eq!(report["skipped_by_reason"], json!({"binary": 1, "oversized": 1}));
    assert_eq!(report["embedded"], report["chunks_added"]);

    let mut checked = 0;
    for mode in ["bm25", "vector", "hybrid"] {
        for q in
            ["who owns a value", "capture environment closures", "references valid lifetimes", "growable array vector"]
        {
            let results = query(&d, q, mode, 5).await;
            assert!(!results.is_empty(), "{q} ({mode})");
            for r in &results {
                check_citation(r);
                assert!(!r["text"].as_str().unwrap().contains("xylophone"), "scripts are not indexed");
                checked += 1;
            }
        }
    }
    assert!(checked > 20);
    assert_eq!(file_names(&query(&d, "capture environment closures", "bm25", 1).await), vec!["closures.html"]);
    assert_eq!(
        file_names(&query(&d, "anonymous functions that remember variables", "vector", 1).await),
        vec!["closures.html"]
    );
    assert!(query(&d, "xylophone", "bm25", 5).await.is_empty(), "script content is dropped");
    assert!(query(&d, "footer", "bm25", 5).await.is_empty(), "footers are dropped");

    // path_prefix restricts every mode, and a prefix inside the roots is fine.
    let guide = format!("{}/guide/", corpus.path().canonicalize().unwrap().display());
    for mode in ["bm25", "vector", "hybrid"] {
        let (status, body) = d
            .post(
                "/rag/query",
                json!({"query": "lifetimes references", "mode": mode, "top_k": 10, "path_prefix": guide}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let results = body["results"].as_array().unwrap();
        assert!(results.iter().all(|r| r["source"]["path"].as_str().unwrap().starts_with(&guide)), "{mode}: {body}");
        assert!(!file_names(results).contains(&"notes.txt".to_owned()));
    }
    let (status, status_body) = d.get("/rag/status").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(status_body["files"], 4, "{status_body}");
    assert_eq!(status_body["vector_coverage"], 1.0);
    assert_eq!(status_body["model"]["state"], "loaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_reindex_processes_exactly_the_changed_files() {
    let corpus = tempfile::tempdir().unwrap();
    let root = corpus.path();
    write_corpus(root);
    let d = TestDaemon::start(vec![rag_spec(root, None)]).await;
    d.wait_ready("rag").await;
    let first = reindex(&d, false).await;
    assert_eq!((first["added"].clone(), first["full"].clone()), (json!(4), json!(true)));
    let again = reindex(&d, false).await;
    assert_eq!(
        (&again["added"], &again["changed"], &again["deleted"], &again["unchanged"], &again["reprocessed"]),
        (&json!(0), &json!(0), &json!(0), &json!(4), &json!(0)),
        "{again}"
    );

    // Change one, delete one, add one.
    std::fs::write(root.join("notes.txt"), "Notes now describe pattern matching with match arms.\n").unwrap();
    std::fs::remove_file(root.join("guide/vec.rs")).unwrap();
    std::fs::write(root.join("guide/traits.md"), "# Traits\n\nTraits define shared behavior across types.\n").unwrap();
    let r = reindex(&d, false).await;
    assert_eq!(
        (&r["added"], &r["changed"], &r["deleted"], &r["unchanged"], &r["reprocessed"], &r["full"]),
        (&json!(1), &json!(1), &json!(1), &json!(2), &json!(2), &json!(false)),
        "{r}"
    );
    assert_eq!(file_names(&query(&d, "pattern matching arms", "bm25", 3).await), vec!["notes.txt"]);
    assert!(
        query(&d, "borrowing checked compile", "bm25", 5).await.is_empty(),
        "the old text of the changed file is gone"
    );
    assert!(query(&d, "growable array", "bm25", 5).await.is_empty(), "the deleted file is gone");
    assert_eq!(file_names(&query(&d, "shared behavior traits", "bm25", 3).await), vec!["traits.md"]);
    for r in query(&d, "traits pattern ownership closures", "bm25", 10).await {
        check_citation(&r);
    }

    // The index survives a restart of the plug-in: nothing to do afterwards.
    let (status, _) = d.post("/admin/plugins/rag/restart", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    d.wait_ready("rag").await;
    let after = reindex(&d, false).await;
    assert_eq!((&after["unchanged"], &after["reprocessed"]), (&json!(4), &json!(0)), "{after}");
    let full = reindex(&d, true).await;
    assert_eq!((&full["full"], &full["reprocessed"], &full["files"]), (&json!(true), &json!(4), &json!(4)), "{full}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_400_with_the_field_and_never_a_crash() {
    let base = tempfile::tempdir().unwrap();
    let base_path = base.path().canonicalize().unwrap();
    let root = base_path.join("root");
    let outside = base_path.join("outside");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    write_corpus(&root);
    std::fs::write(outside.join("secret.txt"), "the secret outside the root").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), root.join("secret-link.txt")).unwrap();
    nix::unistd::mkfifo(&root.join("pipe"), nix::sys::stat::Mode::S_IRWXU).unwrap();

    let d = TestDaemon::start(vec![rag_spec(&root, None)]).await;
    let pid = d.wait_ready("rag").await["pid"].clone();
    let r = reindex(&d, false).await;
    assert_eq!(r["skipped_by_reason"]["symlink"], 2, "{r}");
    assert_eq!(r["skipped_by_reason"]["special"], 1, "{r}");
    assert!(query(&d, "secret outside", "bm25", 5).await.is_empty(), "symlinked files are not indexed");

    let root_s = root.display().to_string();
    let cases = [
        (json!({"query": ""}), "query"),
        (json!({"query": "   "}), "query"),
        (json!({"top_k": 3}), "query"),
        (json!({"query": 5}), "query"),
        (json!({"query": "x".repeat(5000)}), "query"),
        (json!({"query": "x", "top_k": 0}), "top_k"),
        (json!({"query": "x", "top_k": 101}), "top_k"),
        (json!({"query": "x", "top_k": -3}), "top_k"),
        (json!({"query": "x", "mode": "magic"}), "mode"),
        (json!({"query": "x", "path_prefix": format!("{root_s}/../outside")}), "path_prefix"),
        (json!({"query": "x", "path_prefix": format!("{root_s}/escape")}), "path_prefix"),
        (json!({"query": "x", "path_prefix": format!("{root_s}/escape/secret.txt")}), "path_prefix"),
        (json!({"query": "x", "path_prefix": outside.display().to_string()}), "path_prefix"),
        (json!({"query": "x", "path_prefix": "/etc"}), "path_prefix"),
        (json!({"query": "x", "path_prefix": "guide"}), "path_prefix"),
        (json!({"query": "x", "unknown": 1}), "unknown"),
        (json!(["query"]), "body"),
    ];
    for (body, field) in cases {
        let (status, answer) = d.post("/rag/query", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["error"]["details"]["field"], field, "{body}: {answer}");
    }
    // Malformed JSON and a wrong reindex body.
    let res = d
        .http
        .post(d.url("/rag/query"))
        .bearer_auth(&d.token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let (status, answer) = d.post("/rag/reindex", json!({"full": "yes"})).await;
    assert_eq!((status, answer["error"]["details"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("full")));
    // Without the model, vector modes are 503 with what to do; bm25 still answers.
    let (status, answer) = d.post("/rag/query", json!({"query": "owner", "mode": "hybrid"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("bm25"), "{answer}");
    assert!(!query(&d, "owner", "bm25", 3).await.is_empty());
    // Without credentials: 401.
    let res = d.http.post(d.url("/rag/query")).json(&json!({"query": "x"})).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    let view = d.plugin("rag").await;
    assert_eq!((view["state"].clone(), view["pid"].clone(), view["restarts"].clone()), (json!("ready"), pid, json!(0)));

    // A stopped plug-in is a 503, not a hang.
    let (status, _) = d.post("/admin/plugins/rag/stop", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    d.wait_plugin("rag", "stopped", |v| v["state"] == "stopped").await;
    let (status, answer) = d.post("/rag/query", json!({"query": "owner", "mode": "bm25"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    let (status, _) = d.get("/rag/status").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_reindex_keeps_the_previous_index_usable() {
    let corpus = tempfile::tempdir().unwrap();
    let root = corpus.path();
    write_corpus(root);
    let model = model_dir();
    let d = TestDaemon::start(vec![rag_spec(root, Some(&model))]).await;
    d.wait_ready("rag").await;
    let first = reindex(&d, false).await;
    let generation = first["generation"].clone();

    // Enough new text that embedding it takes a while.
    std::fs::create_dir_all(root.join("bulk")).unwrap();
    for i in 0..80 {
        let body: String = (0..4)
            .map(|s| format!("Bulk file {i} sentence {s} mentions zeppelin number {} and more words. ", i * 100 + s))
            .collect();
        std::fs::write(root.join(format!("bulk/f{i:03}.md")), format!("# Bulk {i}\n\n{body}\n")).unwrap();
    }
    let pid = d.plugin("rag").await["pid"].as_u64().unwrap() as i32;
    let url = d.url("/rag/reindex");
    let http = d.http.clone();
    let token = d.token.clone();
    let pending =
        tokio::spawn(
            async move { http.post(url).bearer_auth(token).json(&json!({})).send().await.map(|r| r.status()) },
        );
    // Kill it while it is embedding, before it could commit.
    wait_for("the reindex to be embedding", WAIT, || async {
        let (_, s) = d.get("/rag/status").await;
        (s["state"] == "indexing" && s["progress"]["embedded"].as_u64().unwrap_or(0) > 0).then_some(())
    })
    .await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let status = pending.await.unwrap().unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "the interrupted reindex reports the plug-in went away");

    let view =
        d.wait_plugin("rag", "restarted", |v| v["state"] == "ready" && v["pid"].as_i64() != Some(i64::from(pid))).await;
    assert_eq!(view["last_exit"]["signal"], 9, "{view}");
    // The previous commit serves: old content is there, none of the new.
    let (_, s) = d.get("/rag/status").await;
    assert_eq!((s["generation"].clone(), s["files"].clone()), (generation, json!(4)), "{s}");
    assert_eq!(file_names(&query(&d, "capture environment closures", "hybrid", 1).await), vec!["closures.html"]);
    assert!(query(&d, "zeppelin", "bm25", 5).await.is_empty());
    for r in query(&d, "who owns a value", "vector", 5).await {
        check_citation(&r);
    }

    // A new reindex completes and sees everything.
    let r = reindex(&d, false).await;
    assert_eq!((&r["added"], &r["unchanged"], &r["files"]), (&json!(80), &json!(4), &json!(84)), "{r}");
    let zeppelin = query(&d, "zeppelin number 4203", "hybrid", 3).await;
    assert_eq!(file_names(&zeppelin)[0], "f042.md", "{zeppelin:?}");
    let (_, s) = d.get("/rag/status").await;
    assert_eq!(s["vector_coverage"], 1.0, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_model_degrades_vector_search_only() {
    let corpus = tempfile::tempdir().unwrap();
    write_corpus(corpus.path());
    let empty_models = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(vec![rag_spec(corpus.path(), Some(empty_models.path()))]).await;
    let view = d.wait_plugin("rag", "degraded", |v| v["state"] == "degraded").await;
    assert!(view["health"].to_string().contains("fetch-models.sh"), "{view}");
    reindex(&d, false).await;
    assert_eq!(file_names(&query(&d, "lifetimes references", "bm25", 1).await), vec!["notes.txt"]);
    for mode in ["vector", "hybrid"] {
        let (status, body) = d.post("/rag/query", json!({"query": "lifetimes", "mode": mode})).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("model.safetensors is missing"), "{body}");
    }
    let (_, s) = d.get("/rag/status").await;
    assert_eq!(s["model"]["state"], "missing", "{s}");
    assert_eq!(s["vector_coverage"], 0.0, "{s}");
}
