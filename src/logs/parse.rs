//! Parsing one stderr line: JSON lines (ours, hclog, tracing-subscriber), `[LEVEL]` prefixes,
//! panic detection, and masking of anything shaped like a bkg key or session token.

use serde::Serialize;
use serde_json::{Map, Value};

/// Log levels, the same five as `tracing` and hclog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    /// Parses `warn`, `WARNING`, `err`, … case-insensitively.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "trace" => Some(Level::Trace),
            "debug" => Some(Level::Debug),
            "info" | "information" | "notice" => Some(Level::Info),
            "warn" | "warning" => Some(Level::Warn),
            "error" | "err" | "fatal" | "critical" | "panic" => Some(Level::Error),
            _ => None,
        }
    }
}

/// The result of parsing one line.
#[derive(Debug, PartialEq)]
pub struct Parsed {
    pub level: Level,
    pub msg: String,
    pub fields: Option<Value>,
    pub raw: bool,
}

/// Stateful parser for one process's stderr: after a panic header, following lines without a
/// level of their own are errors too (go-plugin's approach).
#[derive(Debug, Default)]
pub struct Parser {
    in_panic: bool,
}

impl Parser {
    pub fn parse(&mut self, bytes: &[u8]) -> Parsed {
        let text = String::from_utf8_lossy(bytes);
        let trimmed = text.trim_end();
        if trimmed.starts_with('{')
            && let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(trimmed)
        {
            self.in_panic = false;
            return parse_json(obj);
        }
        let (level, msg) = match prefixed_level(trimmed) {
            Some((level, rest)) => {
                self.in_panic = false;
                (level, rest)
            }
            None if is_panic_header(trimmed) => {
                self.in_panic = true;
                (Level::Error, trimmed)
            }
            None if self.in_panic => (Level::Error, trimmed),
            None => (Level::Info, trimmed),
        };
        Parsed { level, msg: redact(msg), fields: None, raw: true }
    }
}

fn is_panic_header(line: &str) -> bool {
    (line.starts_with("thread '") && line.contains("panicked at"))
        || line.starts_with("panic:")
        || line.starts_with("fatal error:")
}

fn prefixed_level(line: &str) -> Option<(Level, &str)> {
    let rest = line.strip_prefix('[')?;
    let (tag, rest) = rest.split_once(']')?;
    let level = Level::parse(tag)?;
    Some((level, rest.trim_start()))
}

fn take_str(obj: &mut Map<String, Value>, keys: &[&str]) -> Option<String> {
    for key in keys {
        if let Some(v) = obj.remove(*key) {
            return Some(match v {
                Value::String(s) => s,
                other => other.to_string(),
            });
        }
    }
    None
}

fn parse_json(mut obj: Map<String, Value>) -> Parsed {
    // tracing-subscriber without `flatten_event` nests the message under `fields`.
    if let Some(Value::Object(mut nested)) = obj.remove("fields") {
        if let Some(m) = nested.remove("message") {
            obj.entry("message").or_insert(m);
        }
        for (k, v) in nested {
            obj.entry(k).or_insert(v);
        }
    }
    let level = take_str(&mut obj, &["level", "@level", "lvl", "severity"]).and_then(|l| Level::parse(&l));
    let msg = take_str(&mut obj, &["msg", "message", "@message"]).unwrap_or_default();
    for key in ["ts", "timestamp", "@timestamp", "time"] {
        obj.remove(key);
    }
    for v in obj.values_mut() {
        if let Value::String(s) = v {
            *s = redact(s);
        }
    }
    Parsed {
        level: level.unwrap_or(Level::Info),
        msg: redact(&msg),
        fields: if obj.is_empty() { None } else { Some(Value::Object(obj)) },
        raw: false,
    }
}

/// Masks anything shaped like a bkg API key (`bkg_…`) or session token (`bkgs_…`): plug-ins must
/// not log secrets, and the daemon does not trust that they don't (protocol.md §2.11).
pub(super) fn redact(text: &str) -> String {
    const MIN_SECRET: usize = 16;
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut copied = 0;
    while let Some(pos) = text[i..].find("bkg") {
        let start = i + pos;
        let prefix_len = if text[start..].starts_with("bkgs_") {
            5
        } else if text[start..].starts_with("bkg_") {
            4
        } else {
            i = start + 3;
            continue;
        };
        let boundary_before = start == 0 || !is_token_char(bytes[start - 1]);
        let body = bytes[start + prefix_len..].iter().take_while(|b| is_token_char(**b)).count();
        if boundary_before && body >= MIN_SECRET {
            out.push_str(&text[copied..start]);
            out.push_str(&text[start..start + prefix_len]);
            out.push_str("[redacted]");
            copied = start + prefix_len + body;
        }
        i = start + prefix_len + body;
    }
    out.push_str(&text[copied..]);
    out
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_of_every_supported_shape() {
        let mut p = Parser::default();
        let ours = p.parse(br#"{"ts":"x","level":"warn","msg":"disk low","free_mb":12}"#);
        assert_eq!(ours.level, Level::Warn);
        assert_eq!(ours.msg, "disk low");
        assert_eq!(ours.fields, Some(serde_json::json!({"free_mb": 12})));
        let hclog = p.parse(br#"{"@level":"error","@message":"boom","@timestamp":"t"}"#);
        assert_eq!((hclog.level, hclog.msg.as_str(), hclog.fields), (Level::Error, "boom", None));
        let tracing = p.parse(br#"{"timestamp":"t","level":"DEBUG","fields":{"message":"hi","k":1},"target":"x"}"#);
        assert_eq!((tracing.level, tracing.msg.as_str()), (Level::Debug, "hi"));
        assert_eq!(tracing.fields, Some(serde_json::json!({"k": 1, "target": "x"})));
    }

    #[test]
    fn prefixes_panics_and_plain_text() {
        let mut p = Parser::default();
        assert_eq!(p.parse(b"[WARN] careful").level, Level::Warn);
        assert_eq!(p.parse(b"[WARN] careful").msg, "careful");
        assert_eq!(p.parse(b"hello").level, Level::Info);
        assert!(p.parse(b"hello").raw);
        assert_eq!(p.parse(b"thread 'main' panicked at src/x.rs:1:1:").level, Level::Error);
        assert_eq!(p.parse(b"note: run with RUST_BACKTRACE=1").level, Level::Error);
        assert_eq!(p.parse(b"[INFO] recovered").level, Level::Info);
        assert_eq!(p.parse(b"plain again").level, Level::Info);
        assert_eq!(p.parse(b"\xff\xfe bytes").msg, "\u{fffd}\u{fffd} bytes");
    }

    #[test]
    fn secrets_are_masked() {
        let key = "bkg_AbCdEfGhIjKl_0123456789abcdefghijABCDEFGHIJ123456";
        let line =
            format!("{{\"level\":\"info\",\"msg\":\"using {key}\",\"token\":\"bkgs_abcdefghijklmnopqrstuvwxyz\"}}");
        let parsed = Parser::default().parse(line.as_bytes());
        assert_eq!(parsed.msg, "using bkg_[redacted]");
        assert_eq!(parsed.fields.unwrap()["token"], "bkgs_[redacted]");
        assert_eq!(redact("mybkg_notasecretbecausenoboundary"), "mybkg_notasecretbecausenoboundary");
        assert_eq!(redact("bkg_short"), "bkg_short");
        assert_eq!(redact("the bkg daemon"), "the bkg daemon");
    }
}
