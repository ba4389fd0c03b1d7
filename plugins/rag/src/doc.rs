//! One file → its chunks with exact source offsets, or the reason it was skipped.
//!
//! Text formats are chunked over the raw file bytes (which must be UTF-8: a file that is not is
//! skipped, never decoded lossily, since that would shift offsets), so `file[start..end]` is
//! exactly the chunk text. HTML is chunked over the extracted text and each chunk's offsets are
//! mapped back to the markup it came from.

use sha2::{Digest, Sha256};

use crate::blocks::{self, Format};
use crate::chunk::{self, ChunkSpan};
use crate::config::ChunkParams;
use crate::html;

/// Bumped whenever extraction or chunking changes what a file turns into: part of the index
/// fingerprint, so a new version reindexes everything.
pub const EXTRACTOR_VERSION: u32 = 1;

/// A chunk ready to index.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// First 16 hex digits of sha256(path ‖ 0 ‖ file sha256 ‖ start ‖ end).
    pub chunk_id: String,
    /// Position in the file (0-based).
    pub ord: u64,
    pub start: u64,
    pub end: u64,
    /// The chunk's text (for HTML: the extracted text).
    pub text: String,
    /// `H1 › H2` of the enclosing headings (may be empty).
    pub heading: String,
}

impl Chunk {
    /// What the embedding model sees: the file name and heading path as context, then the text.
    pub fn embed_input(&self, path: &str) -> String {
        let name = path.rsplit('/').next().unwrap_or(path);
        if self.heading.is_empty() {
            format!("{name}\n{}", self.text)
        } else {
            format!("{name} › {}\n{}", self.heading, self.text)
        }
    }
}

/// Why a file was not indexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// Known binary extension, a NUL byte, or not UTF-8.
    Binary,
    /// Larger than `max_file_bytes`.
    Oversized,
    /// Could not be read.
    Unreadable,
}

/// The outcome for one file's content.
#[derive(Debug)]
pub enum Prepared {
    Indexed { format: Format, chunks: Vec<Chunk> },
    Skipped(SkipReason),
}

/// sha256 of bytes as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn chunk_id(path: &str, file_sha: &str, start: usize, end: usize) -> String {
    let mut h = Sha256::new();
    h.update(path.as_bytes());
    h.update([0u8]);
    h.update(file_sha.as_bytes());
    h.update(start.to_le_bytes());
    h.update(end.to_le_bytes());
    let digest = h.finalize();
    hex::encode(&digest[..8])
}

/// Splits a file into chunks. `file_sha` is the sha256 of `bytes`.
pub fn prepare(path: &str, bytes: &[u8], file_sha: &str, params: ChunkParams) -> Prepared {
    let Some(format) = Format::for_path(path) else {
        return Prepared::Skipped(SkipReason::Binary);
    };
    // A NUL in the first 8 KiB marks binary content whatever the extension says.
    if bytes[..bytes.len().min(8192)].contains(&0) {
        return Prepared::Skipped(SkipReason::Binary);
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Prepared::Skipped(SkipReason::Binary);
    };
    let (spans, mapped): (Vec<ChunkSpan>, Vec<(usize, usize, String)>) = if format == Format::Html {
        let extracted = html::extract(text);
        let spans = chunk::chunk(&extracted.text, &extracted.blocks, params);
        let mapped = spans
            .iter()
            .map(|s| {
                let src = extracted.source_span(s.start..s.end);
                (src.start, src.end, extracted.text[s.start..s.end].to_owned())
            })
            .collect();
        (spans, mapped)
    } else {
        let blocks = blocks::parse(text, format);
        let spans = chunk::chunk(text, &blocks, params);
        let mapped = spans.iter().map(|s| (s.start, s.end, text[s.start..s.end].to_owned())).collect();
        (spans, mapped)
    };
    let chunks = spans
        .iter()
        .zip(mapped)
        .enumerate()
        .map(|(ord, (span, (start, end, text)))| Chunk {
            chunk_id: chunk_id(path, file_sha, start, end),
            ord: ord as u64,
            start: start as u64,
            end: end as u64,
            text,
            heading: span.headings.join(" › "),
        })
        .collect();
    Prepared::Indexed { format, chunks }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(path: &str, content: &str) -> Vec<Chunk> {
        let sha = sha256_hex(content.as_bytes());
        match prepare(path, content.as_bytes(), &sha, ChunkParams { target_words: 40, overlap_words: 6 }) {
            Prepared::Indexed { chunks, .. } => chunks,
            Prepared::Skipped(r) => panic!("skipped: {r:?}"),
        }
    }

    #[test]
    fn text_formats_cite_exact_bytes() {
        let md = "# Title\n\nSome intro text that is long enough to be a section of its own here.\n\n## Part\n\n"
            .to_string()
            + &"Repeated sentence with the same words. ".repeat(30)
            + "\n\n```\ncode block\n```\n";
        for (path, content) in [("/d/a.md", md.as_str()), ("/d/a.txt", md.as_str()), ("/d/a.rs", md.as_str())] {
            let cs = chunks(path, content);
            assert!(cs.len() > 3, "{path}");
            for c in &cs {
                assert_eq!(&content[c.start as usize..c.end as usize], c.text, "{path}");
            }
            let mut ids: Vec<_> = cs.iter().map(|c| c.chunk_id.clone()).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), cs.len(), "chunk ids are unique even for repeated text");
        }
    }

    #[test]
    fn html_offsets_cover_the_source_markup() {
        let html = "<html><body><nav>skip</nav><main><h1>Ownership</h1><p>".to_string()
            + &"Each value has an <em>owner</em> &amp; one only. ".repeat(20)
            + "</p><pre><code>let s = String::from(&quot;hi&quot;);</code></pre></main></body></html>";
        let cs = chunks("/d/page.html", &html);
        assert!(cs.len() > 2);
        for c in &cs {
            let slice = &html[c.start as usize..c.end as usize];
            assert_eq!(html::normalize_ws(&html::extract(slice).text), html::normalize_ws(&c.text));
            assert!(!c.text.contains('<') || c.text.contains("String"), "no markup in the text: {}", c.text);
        }
        assert_eq!(cs[0].heading, "Ownership");
    }

    /// Random documents in every format: no panic, and text-format chunks cite exact bytes.
    #[test]
    fn random_documents_chunk_without_panics() {
        const PIECES: &[&str] = &[
            "# ",
            "## ",
            "\n",
            "\n\n",
            "```",
            "~~~",
            "    ",
            "word ",
            "naïve ",
            "日本語。",
            "→ ",
            ". ",
            "! ",
            "? ",
            "::",
            "\n.. code-block:: rust\n",
            "=====",
            "-----",
            "\r\n",
            "\t",
            "<p>",
            "</p>",
            "&amp;",
            "\u{feff}",
            "* ",
            "1. ",
            "\"quoted.\" ",
            "(paren.) ",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let params = ChunkParams { target_words: 16, overlap_words: 4 };
        for round in 0..2000 {
            let n = (next() % 120) as usize;
            let content: String = (0..n).map(|_| PIECES[(next() % PIECES.len() as u64) as usize]).collect();
            let path = ["/d/a.md", "/d/a.rst", "/d/a.txt", "/d/a.rs", "/d/a.html"][round % 5];
            let sha = sha256_hex(content.as_bytes());
            let Prepared::Indexed { chunks, .. } = prepare(path, content.as_bytes(), &sha, params) else {
                panic!("{path}: skipped {content:?}");
            };
            for c in &chunks {
                let (a, b) = (c.start as usize, c.end as usize);
                assert!(a < b && b <= content.len(), "{path} {content:?}");
                assert!(content.is_char_boundary(a) && content.is_char_boundary(b), "{path} {content:?}");
                if !path.ends_with(".html") {
                    assert_eq!(&content[a..b], c.text, "{path} {content:?}");
                }
            }
        }
    }

    #[test]
    fn binary_and_non_utf8_are_skipped() {
        let p = ChunkParams::default();
        assert!(matches!(prepare("/a.png", b"abc", "x", p), Prepared::Skipped(SkipReason::Binary)));
        assert!(matches!(prepare("/a.txt", b"ab\0c", "x", p), Prepared::Skipped(SkipReason::Binary)));
        assert!(matches!(prepare("/a.txt", b"ab\xffc", "x", p), Prepared::Skipped(SkipReason::Binary)));
        assert!(matches!(prepare("/a.txt", b"", "x", p), Prepared::Indexed { ref chunks, .. } if chunks.is_empty()));
    }
}
