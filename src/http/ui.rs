//! The admin web UI: the files of `ui/` embedded in the binary and served at `/ui/…`.
//!
//! Public (no credentials): the files hold no data; everything the UI shows comes from the JSON
//! API, which the guard protects as for any other client. The files are plain HTML, CSS and
//! JavaScript modules of our own, with no build step and no third-party code.
//!
//! Every answer carries an explicit `Content-Type`, `Cache-Control: no-cache` with an `ETag`
//! (a strong validator: 128 bits of the file's SHA-256), and a strict CSP that allows scripts, styles
//! and connections from this origin only, so no inline script or style can ever run. Only
//! names in [`ASSETS`] are served: nothing is read from the disk at run time.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use sha2::{Digest, Sha256};

use super::error::ApiError;

/// The Content-Security-Policy of every UI file. No `'unsafe-inline'` and no `'unsafe-eval'`:
/// modules, the stylesheet and API calls all come from this origin.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:literal) => {
        Asset { name: $name, content_type: $type, body: include_bytes!(concat!("../../ui/", $name)) }
    };
}

/// Every file of the UI (flat: names have no `/`).
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("dom.js", "text/javascript; charset=utf-8"),
    asset!("login.js", "text/javascript; charset=utf-8"),
    asset!("plugins.js", "text/javascript; charset=utf-8"),
    asset!("logs.js", "text/javascript; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
];

/// The `ETag` of each asset, in [`ASSETS`] order, computed once.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let digest = Sha256::digest(a.body);
            let tag = format!("\"{}\"", hex::encode(&digest[..16]));
            // Hex between quotes is always a valid header value.
            HeaderValue::from_str(&tag).unwrap_or(HeaderValue::from_static("\"0\""))
        })
        .collect()
});

/// `GET /`: the UI's start page.
pub(super) async fn root() -> Redirect {
    Redirect::to("/ui/")
}

/// `GET /ui/`: the page shell.
pub(super) async fn index(headers: HeaderMap) -> Result<Response, ApiError> {
    serve("index.html", &headers)
}

/// `GET /ui/{file}`.
pub(super) async fn file(Path(name): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    serve(&name, &headers)
}

fn serve(name: &str, headers: &HeaderMap) -> Result<Response, ApiError> {
    let Some(idx) = ASSETS.iter().position(|a| a.name == name) else {
        return Err(ApiError::NotFound(format!("no UI file named {name:?}")));
    };
    let asset = &ASSETS[idx];
    let etag = &ETAGS[idx];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == "*" || t.trim().trim_start_matches("W/") == etag));
    let mut response =
        if fresh { StatusCode::NOT_MODIFIED.into_response() } else { (StatusCode::OK, asset.body).into_response() };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::ETAG, etag.clone());
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    const JS: &str = "text/javascript; charset=utf-8";

    #[test]
    fn every_asset_has_a_type_and_no_inline_script() {
        for a in ASSETS {
            assert!(!a.name.contains('/'), "{}: the table is flat", a.name);
            assert!(!a.body.is_empty(), "{} is empty", a.name);
            if a.name.ends_with(".js") {
                assert_eq!(a.content_type, JS, "{}", a.name);
            }
        }
        let html = std::str::from_utf8(ASSETS[0].body).unwrap_or_default();
        // Every <script> of the shell loads a file; an inline one would be blocked by the CSP.
        for tag in html.split("<script").skip(1) {
            assert!(tag.contains("src="), "inline script in index.html: <script{tag}");
        }
        assert!(!html.contains("style="), "inline style in index.html");
    }

    #[test]
    fn etag_and_conditional_get() {
        let Ok(first) = serve("app.js", &HeaderMap::new()) else { panic!("app.js missing") };
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()[header::ETAG].clone();
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, etag);
        let Ok(again) = serve("app.js", &headers) else { panic!("app.js missing") };
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert!(serve("../Cargo.toml", &HeaderMap::new()).is_err());
    }
}
