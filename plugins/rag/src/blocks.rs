//! Block structure of text formats: headings, paragraphs and code blocks as byte ranges.
//!
//! The chunker packs blocks into chunks; it never needs a full parser, only where the
//! boundaries are. Every range is trimmed of surrounding whitespace and lies on character
//! boundaries of the source, so `source[block.start..block.end]` is the block's exact text.
//!
//! - Markdown: ATX (`## x`) and setext headings, fenced code (never split at its blank lines),
//!   paragraphs separated by blank lines; thematic breaks separate blocks.
//! - reStructuredText: titles underlined (and optionally overlined) with a repeated punctuation
//!   character, levels in order of first appearance; `::` literal blocks and `.. code-block::`
//!   directives with their indented body are code blocks.
//! - Plain text: paragraphs. Source code: blank-line separated code blocks.

/// What a block is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// A heading of level 1 (top) to 6.
    Heading(u8),
    Paragraph,
    Code,
}

/// A block: a byte range of the text and its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub start: usize,
    pub end: usize,
    pub kind: BlockKind,
}

/// The formats we index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Markdown,
    Rst,
    Html,
    Text,
    Code,
}

impl Format {
    /// The format for a file name (by extension); `None` for known binary formats.
    pub fn for_path(path: &str) -> Option<Format> {
        let name = path.rsplit('/').next().unwrap_or(path);
        let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
        Some(match ext.as_str() {
            "md" | "markdown" | "mdx" | "mkd" => Format::Markdown,
            "rst" | "rest" => Format::Rst,
            "html" | "htm" | "xhtml" => Format::Html,
            "txt" | "text" | "" | "adoc" | "org" | "log" | "csv" | "tsv" => Format::Text,
            "rs" | "py" | "js" | "mjs" | "cjs" | "ts" | "tsx" | "jsx" | "go" | "c" | "h" | "cc" | "cpp" | "cxx"
            | "hpp" | "hh" | "java" | "kt" | "kts" | "scala" | "rb" | "php" | "sh" | "bash" | "zsh" | "fish" | "pl"
            | "lua" | "swift" | "cs" | "fs" | "ex" | "exs" | "erl" | "hs" | "ml" | "mli" | "clj" | "sql" | "toml"
            | "yaml" | "yml" | "json" | "ini" | "cfg" | "conf" | "xml" | "css" | "scss" | "proto" | "graphql"
            | "dockerfile" | "mk" | "cmake" | "gradle" | "r" | "jl" | "nix" | "zig" | "v" | "vue" | "svelte" | "tf"
            | "service" | "el" | "vim" => Format::Code,
            "png" | "jpg" | "jpeg" | "gif" | "webp" | "ico" | "bmp" | "tiff" | "pdf" | "zip" | "gz" | "tgz" | "bz2"
            | "xz" | "zst" | "7z" | "rar" | "tar" | "jar" | "war" | "class" | "o" | "a" | "so" | "dylib" | "dll"
            | "exe" | "bin" | "woff" | "woff2" | "ttf" | "otf" | "eot" | "mp3" | "mp4" | "wav" | "ogg" | "flac"
            | "avi" | "mov" | "mkv" | "webm" | "db" | "sqlite" | "wasm" | "pyc" | "rlib" | "safetensors" | "gguf"
            | "onnx" | "pt" | "npy" | "parquet" | "idx" | "pack" => return None,
            _ => Format::Text,
        })
    }
}

/// The blocks of a text-format document.
pub fn parse(text: &str, format: Format) -> Vec<Block> {
    let lines = lines(text);
    match format {
        Format::Markdown => markdown(text, &lines),
        Format::Rst => rst(text, &lines),
        Format::Text => paragraphs(text, &lines, BlockKind::Paragraph),
        Format::Code => paragraphs(text, &lines, BlockKind::Code),
        // HTML blocks come from the extractor; as a fallback, treat the text as paragraphs.
        Format::Html => paragraphs(text, &lines, BlockKind::Paragraph),
    }
}

/// A line: its byte range without the line terminator.
#[derive(Debug, Clone, Copy)]
struct Line {
    start: usize,
    end: usize,
}

fn lines(text: &str) -> Vec<Line> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, b) in text.bytes().enumerate() {
        if b == b'\n' {
            let end = if i > start && text.as_bytes()[i - 1] == b'\r' { i - 1 } else { i };
            out.push(Line { start, end });
            start = i + 1;
        }
    }
    if start < text.len() {
        out.push(Line { start, end: text.len() });
    }
    out
}

fn is_blank(text: &str, l: Line) -> bool {
    text[l.start..l.end].trim().is_empty()
}

/// `start..end` trimmed of whitespace on both sides (None when nothing is left).
pub fn trim_range(text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
    let s = &text[start..end];
    let lead = s.len() - s.trim_start().len();
    let trimmed = s.trim();
    if trimmed.is_empty() {
        return None;
    }
    // A byte-order mark is not whitespace to `trim`, but it is no content either.
    let mut a = start + lead;
    if text[a..].starts_with('\u{feff}') {
        a += '\u{feff}'.len_utf8();
    }
    let b = start + lead + trimmed.len();
    (a < b).then_some((a, b))
}

fn push(out: &mut Vec<Block>, text: &str, start: usize, end: usize, kind: BlockKind) {
    if let Some((a, b)) = trim_range(text, start, end) {
        out.push(Block { start: a, end: b, kind });
    }
}

fn paragraphs(text: &str, lines: &[Line], kind: BlockKind) -> Vec<Block> {
    let mut out = Vec::new();
    let mut para: Option<usize> = None;
    let mut last_end = 0;
    for &l in lines {
        if is_blank(text, l) {
            if let Some(s) = para.take() {
                push(&mut out, text, s, last_end, kind);
            }
        } else {
            para.get_or_insert(l.start);
            last_end = l.end;
        }
    }
    if let Some(s) = para {
        push(&mut out, text, s, last_end, kind);
    }
    out
}

fn indent(s: &str) -> usize {
    s.len() - s.trim_start_matches([' ', '\t']).len()
}

fn fence(s: &str) -> Option<(char, usize)> {
    if indent(s) > 3 {
        return None;
    }
    let t = s.trim_start();
    let c = t.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let n = t.chars().take_while(|x| *x == c).count();
    (n >= 3).then_some((c, n))
}

fn atx_level(s: &str) -> Option<u8> {
    if indent(s) > 3 {
        return None;
    }
    let t = s.trim_start();
    let n = t.bytes().take_while(|b| *b == b'#').count();
    let rest = &t[n..];
    ((1..=6).contains(&n) && (rest.is_empty() || rest.starts_with([' ', '\t']))).then_some(n as u8)
}

fn setext_level(s: &str) -> Option<u8> {
    if indent(s) > 3 {
        return None;
    }
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b == b'=') {
        Some(1)
    } else if !t.is_empty() && t.bytes().all(|b| b == b'-') {
        Some(2)
    } else {
        None
    }
}

fn thematic_break(s: &str) -> bool {
    let t: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    t.len() >= 3 && (t.bytes().all(|b| b == b'*') || t.bytes().all(|b| b == b'-') || t.bytes().all(|b| b == b'_'))
}

fn markdown(text: &str, lines: &[Line]) -> Vec<Block> {
    let mut out = Vec::new();
    let mut para: Option<usize> = None;
    let mut para_end = 0;
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        let s = &text[l.start..l.end];
        if let Some((c, n)) = fence(s) {
            if let Some(p) = para.take() {
                push(&mut out, text, p, para_end, BlockKind::Paragraph);
            }
            let mut j = i + 1;
            while j < lines.len() {
                let t = &text[lines[j].start..lines[j].end];
                if fence(t).is_some_and(|(c2, n2)| c2 == c && n2 >= n) && t.trim().chars().all(|x| x == c) {
                    break;
                }
                j += 1;
            }
            let end = lines[j.min(lines.len() - 1)].end;
            push(&mut out, text, l.start, end, BlockKind::Code);
            i = j + 1;
            continue;
        }
        if is_blank(text, l) {
            if let Some(p) = para.take() {
                push(&mut out, text, p, para_end, BlockKind::Paragraph);
            }
        } else if let Some(level) = atx_level(s) {
            if let Some(p) = para.take() {
                push(&mut out, text, p, para_end, BlockKind::Paragraph);
            }
            push(&mut out, text, l.start, l.end, BlockKind::Heading(level));
        } else if let (Some(p), Some(level)) = (para, setext_level(s)) {
            push(&mut out, text, p, l.end, BlockKind::Heading(level));
            para = None;
        } else if para.is_none() && thematic_break(s) {
            // A separator, not content.
        } else {
            para.get_or_insert(l.start);
            para_end = l.end;
        }
        i += 1;
    }
    if let Some(p) = para {
        push(&mut out, text, p, para_end, BlockKind::Paragraph);
    }
    out
}

fn rst_adornment(s: &str) -> Option<char> {
    let t = s.trim_end();
    let c = t.chars().next()?;
    const PUNCT: &str = "=-`:'\"~^_*+#<>.!$%&(),/;?@[\\]{|}";
    (t.chars().count() >= 2 && PUNCT.contains(c) && t.chars().all(|x| x == c)).then_some(c)
}

fn rst(text: &str, lines: &[Line]) -> Vec<Block> {
    let mut out = Vec::new();
    // Title styles in order of first appearance: (character, overlined).
    let mut styles: Vec<(char, bool)> = Vec::new();
    let mut level_of = |style: (char, bool)| -> u8 {
        let idx = styles.iter().position(|s| *s == style).unwrap_or_else(|| {
            styles.push(style);
            styles.len() - 1
        });
        (idx + 1).min(6) as u8
    };
    let mut para: Option<usize> = None;
    let mut para_end = 0;
    let mut i = 0;
    let flush = |out: &mut Vec<Block>, para: &mut Option<usize>, end: usize| {
        if let Some(p) = para.take() {
            push(out, text, p, end, BlockKind::Paragraph);
        }
    };
    while i < lines.len() {
        let l = lines[i];
        let s = &text[l.start..l.end];
        let blank = is_blank(text, l);
        // Overlined title: adornment, title, same adornment.
        if para.is_none()
            && let Some(c) = rst_adornment(s)
            && i + 2 < lines.len()
            && !is_blank(text, lines[i + 1])
            && rst_adornment(&text[lines[i + 2].start..lines[i + 2].end]) == Some(c)
        {
            let level = level_of((c, true));
            push(&mut out, text, lines[i + 1].start, lines[i + 1].end, BlockKind::Heading(level));
            i += 3;
            continue;
        }
        // Underlined title: one text line, then an adornment at least as long.
        if !blank
            && para.is_none()
            && rst_adornment(s).is_none()
            && i + 1 < lines.len()
            && let Some(c) = rst_adornment(&text[lines[i + 1].start..lines[i + 1].end])
            && text[lines[i + 1].start..lines[i + 1].end].trim_end().chars().count() >= s.trim().chars().count()
        {
            let level = level_of((c, false));
            push(&mut out, text, l.start, l.end, BlockKind::Heading(level));
            i += 2;
            continue;
        }
        let t = s.trim_start();
        let directive_code = para.is_none()
            && (t.starts_with(".. code-block::") || t.starts_with(".. code::") || t.starts_with(".. sourcecode::"));
        let literal_follows = !blank && s.trim_end().ends_with("::");
        if directive_code || literal_follows {
            // The paragraph (or directive line) ends here; an indented body follows.
            let base = indent(s);
            let block_start = if directive_code { l.start } else { para.unwrap_or(l.start) };
            if !directive_code {
                para = None;
                push(&mut out, text, block_start, l.end, BlockKind::Paragraph);
            }
            let mut j = i + 1;
            let mut body_end = l.end;
            while j < lines.len() {
                let lj = lines[j];
                if is_blank(text, lj) {
                    j += 1;
                    continue;
                }
                if indent(&text[lj.start..lj.end]) > base {
                    body_end = lj.end;
                    j += 1;
                } else {
                    break;
                }
            }
            let code_start = if directive_code { l.start } else { lines.get(i + 1).map_or(l.end, |n| n.start) };
            if body_end > l.end || directive_code {
                push(&mut out, text, code_start, body_end.max(l.end), BlockKind::Code);
            }
            // Resume after the body (blank lines after it are skipped by the loop).
            i = j;
            continue;
        }
        if blank {
            flush(&mut out, &mut para, para_end);
        } else {
            para.get_or_insert(l.start);
            para_end = l.end;
        }
        i += 1;
    }
    flush(&mut out, &mut para, para_end);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(text: &str, format: Format) -> Vec<(String, BlockKind)> {
        parse(text, format).into_iter().map(|b| (text[b.start..b.end].to_owned(), b.kind)).collect()
    }

    #[test]
    fn markdown_headings_fences_and_paragraphs() {
        let md = "# Title\n\nIntro line one\nline two.\n\n```rust\nfn a() {}\n\nfn b() {}\n```\n\nSetext\n------\n\n---\n\n## Sub ##\ntext\r\n";
        assert_eq!(
            show(md, Format::Markdown),
            vec![
                ("# Title".into(), BlockKind::Heading(1)),
                ("Intro line one\nline two.".into(), BlockKind::Paragraph),
                ("```rust\nfn a() {}\n\nfn b() {}\n```".into(), BlockKind::Code),
                ("Setext\n------".into(), BlockKind::Heading(2)),
                ("## Sub ##".into(), BlockKind::Heading(2)),
                ("text".into(), BlockKind::Paragraph),
            ]
        );
        // An unterminated fence runs to the end.
        assert_eq!(show("```\ncode\n\nmore", Format::Markdown), vec![("```\ncode\n\nmore".into(), BlockKind::Code)]);
    }

    #[test]
    fn rst_titles_and_literal_blocks() {
        let rst = "=====\nTitle\n=====\n\nIntro::\n\n    literal\n\n    more literal\n\nSection\n-------\n\nText here.\n\n.. code-block:: python\n\n   x = 1\n\nAfter.\n\nOther\n=====\n";
        assert_eq!(
            show(rst, Format::Rst),
            vec![
                ("Title".into(), BlockKind::Heading(1)),
                ("Intro::".into(), BlockKind::Paragraph),
                ("literal\n\n    more literal".into(), BlockKind::Code),
                ("Section".into(), BlockKind::Heading(2)),
                ("Text here.".into(), BlockKind::Paragraph),
                (".. code-block:: python\n\n   x = 1".into(), BlockKind::Code),
                ("After.".into(), BlockKind::Paragraph),
                ("Other".into(), BlockKind::Heading(3)),
            ]
        );
    }

    #[test]
    fn code_and_text_split_on_blank_lines_and_ranges_are_exact() {
        let code = "\u{feff}use std::io;\n\nfn main() {\n    println!(\"hi\");\n}\n";
        let blocks = parse(code, Format::Code);
        assert_eq!(blocks.len(), 2);
        assert_eq!(&code[blocks[0].start..blocks[0].end], "use std::io;");
        assert_eq!(&code[blocks[1].start..blocks[1].end], "fn main() {\n    println!(\"hi\");\n}");
        assert!(parse("   \n\n  ", Format::Text).is_empty());
    }

    #[test]
    fn formats_by_extension() {
        assert_eq!(Format::for_path("/a/b.MD"), Some(Format::Markdown));
        assert_eq!(Format::for_path("/a/b.rst"), Some(Format::Rst));
        assert_eq!(Format::for_path("/a/index.html"), Some(Format::Html));
        assert_eq!(Format::for_path("/a/main.rs"), Some(Format::Code));
        assert_eq!(Format::for_path("/a/README"), Some(Format::Text));
        assert_eq!(Format::for_path("/a/.hidden"), Some(Format::Text));
        assert_eq!(Format::for_path("/a/logo.png"), None);
    }
}
