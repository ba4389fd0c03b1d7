//! HTML → text, with a map from every extracted byte back to the markup it came from.
//!
//! A small tolerant tokenizer (no DOM): tags, comments, doctypes, raw-text elements and
//! character references. The walk drops `script`, `style`, `template`, `nav`, `footer`, `head`,
//! `noscript`, `svg` and similar; when the page has a `<main>` element, only its content is
//! kept (site chrome such as menus and help pop-ups is outside it). Whitespace collapses to one
//! space outside `<pre>`; block elements end a block (`\n\n` in the text); `h1`–`h6` become
//! heading blocks for the chunker.
//!
//! [`Extracted::source_span`] maps a text range to the source bytes from the first character's
//! markup to the last one's: for a chunk, `file[start..end]` is the markup its text was
//! extracted from, and extracting that slice again gives the same text up to whitespace (the
//! property the tests check).

use std::ops::Range;

use crate::blocks::{Block, BlockKind};

/// Extracted text, its blocks, and the source span of every text byte.
#[derive(Debug, Default)]
pub struct Extracted {
    pub text: String,
    pub blocks: Vec<Block>,
    /// For each byte of `text`: the source range of the character (or reference, or tag for
    /// generated whitespace) that produced it.
    spans: Vec<(u32, u32)>,
}

impl Extracted {
    /// Source byte range of a non-empty text range: from the start of its first character's
    /// markup to the end of its last one's.
    pub fn source_span(&self, range: Range<usize>) -> Range<usize> {
        if range.is_empty() || range.end > self.spans.len() {
            return 0..0;
        }
        let start = self.spans[range.start].0 as usize;
        let end = self.spans[range.end - 1].1 as usize;
        start..end.max(start)
    }
}

/// Elements whose whole content is dropped.
const DROPPED: &[&str] = &[
    "script", "style", "template", "nav", "footer", "head", "noscript", "svg", "iframe", "object", "canvas", "select",
    "button", "math",
];

/// Elements that end a block (a paragraph break in the text).
const BLOCKS: &[&str] = &[
    "p",
    "div",
    "section",
    "article",
    "main",
    "header",
    "aside",
    "blockquote",
    "pre",
    "ul",
    "ol",
    "li",
    "dl",
    "dt",
    "dd",
    "table",
    "thead",
    "tbody",
    "tfoot",
    "tr",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "figure",
    "figcaption",
    "address",
    "details",
    "summary",
    "form",
    "fieldset",
    "legend",
    "body",
    "html",
    "caption",
];

/// Elements without content (never closed).
const VOID: &[&str] =
    &["area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr", "param"];

/// Elements whose content is raw text up to the matching end tag.
const RAW_TEXT: &[&str] = &["script", "style", "textarea", "title", "xmp"];

#[derive(Debug)]
enum Token {
    /// Text (undecoded) at this source range.
    Text(Range<usize>),
    /// `<name ...>`; the range covers the whole tag.
    Start { name: String, range: Range<usize>, self_closing: bool },
    /// `</name>`.
    End { name: String, range: Range<usize> },
}

/// The tokenizer: yields text runs and tags, skips comments, doctypes and processing
/// instructions, and returns raw-text element content as one text token (the caller drops it
/// when the element is dropped).
struct Tokenizer<'a> {
    src: &'a str,
    pos: usize,
    raw_end_tag: Option<String>,
}

impl<'a> Tokenizer<'a> {
    fn new(src: &'a str) -> Self {
        Self { src, pos: 0, raw_end_tag: None }
    }

    fn find_ci(&self, from: usize, needle: &str) -> Option<usize> {
        let hay = self.src.as_bytes();
        let n = needle.as_bytes();
        if n.is_empty() || hay.len() < n.len() {
            return None;
        }
        (from..=hay.len() - n.len()).find(|&i| hay[i..i + n.len()].eq_ignore_ascii_case(n))
    }

    fn parse_tag(&self, at: usize) -> Option<(Token, usize)> {
        let b = self.src.as_bytes();
        let mut i = at + 1;
        let closing = b.get(i) == Some(&b'/');
        if closing {
            i += 1;
        }
        let name_start = i;
        if !b.get(i).is_some_and(u8::is_ascii_alphabetic) {
            return None;
        }
        while b.get(i).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b':' || *c == b'_') {
            i += 1;
        }
        let name = self.src[name_start..i].to_ascii_lowercase();
        // Attributes: skip to the closing '>' outside quotes.
        let mut quote: Option<u8> = None;
        while i < b.len() {
            let c = b[i];
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == b'"' || c == b'\'' => quote = Some(c),
                None if c == b'>' => {
                    let self_closing = i > at + 1 && b[i - 1] == b'/';
                    let range = at..i + 1;
                    let token =
                        if closing { Token::End { name, range } } else { Token::Start { name, range, self_closing } };
                    return Some((token, i + 1));
                }
                None => {}
            }
            i += 1;
        }
        // Unterminated tag: the rest of the file is the tag.
        let range = at..b.len();
        Some((
            if closing { Token::End { name, range } } else { Token::Start { name, range, self_closing: false } },
            b.len(),
        ))
    }
}

impl Iterator for Tokenizer<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        let b = self.src.as_bytes();
        if self.pos >= b.len() {
            return None;
        }
        if let Some(end_tag) = self.raw_end_tag.take() {
            let needle = format!("</{end_tag}");
            let end = self.find_ci(self.pos, &needle).unwrap_or(b.len());
            let start = self.pos;
            self.pos = end;
            if end > start {
                return Some(Token::Text(start..end));
            }
        }
        loop {
            let at = self.pos;
            if at >= b.len() {
                return None;
            }
            if b[at] == b'<' {
                if self.src[at..].starts_with("<!--") {
                    self.pos = self.src[at + 4..].find("-->").map_or(b.len(), |i| at + 4 + i + 3);
                    continue;
                }
                if matches!(b.get(at + 1), Some(b'!') | Some(b'?')) {
                    self.pos = self.src[at..].find('>').map_or(b.len(), |i| at + i + 1);
                    continue;
                }
                if let Some((token, next)) = self.parse_tag(at) {
                    self.pos = next;
                    if let Token::Start { name, self_closing: false, .. } = &token
                        && RAW_TEXT.contains(&name.as_str())
                    {
                        self.raw_end_tag = Some(name.clone());
                    }
                    return Some(token);
                }
            }
            // Text up to the next '<' that is not this one ('<' is ASCII, so searching the bytes
            // after `at` always lands on a character boundary, even when `at` starts a multi-byte
            // character).
            let next_lt = b[at + 1..].iter().position(|&c| c == b'<').map_or(b.len(), |i| at + 1 + i);
            self.pos = next_lt;
            return Some(Token::Text(at..next_lt));
        }
    }
}

/// Extracts the text of an HTML document (see the module docs).
pub fn extract(src: &str) -> Extracted {
    let has_main = Tokenizer::new(src).any(|t| matches!(&t, Token::Start { name, .. } if name == "main"));
    let mut out = Builder::new(src);
    // Nesting of dropped elements: (name, depth of same-name tags).
    let mut dropped: Option<(String, usize)> = None;
    let mut main_depth = 0usize;
    let mut pre_depth = 0usize;
    let mut heading: Option<u8> = None;
    for token in Tokenizer::new(src) {
        if let Some((name, depth)) = &mut dropped {
            match &token {
                Token::Start { name: n, self_closing: false, .. } if n == name => *depth += 1,
                Token::End { name: n, .. } if n == name => {
                    if *depth == 0 {
                        dropped = None;
                    } else {
                        *depth -= 1;
                    }
                }
                _ => {}
            }
            continue;
        }
        match token {
            Token::Start { name, range, self_closing } => {
                if name == "main" {
                    main_depth += 1;
                }
                if has_main && main_depth == 0 {
                    // Outside <main>: only track dropped elements so their content stays out.
                    if DROPPED.contains(&name.as_str()) && !self_closing && !VOID.contains(&name.as_str()) {
                        dropped = Some((name, 0));
                    }
                    continue;
                }
                if DROPPED.contains(&name.as_str()) {
                    if !self_closing && !VOID.contains(&name.as_str()) {
                        dropped = Some((name, 0));
                    }
                    continue;
                }
                if name == "br" {
                    out.line_break(range);
                } else if BLOCKS.contains(&name.as_str()) {
                    out.block_break(range);
                    if let Some(level) = heading_level(&name) {
                        heading = Some(level);
                    }
                    if name == "pre" && !self_closing {
                        pre_depth += 1;
                    }
                } else if matches!(name.as_str(), "td" | "th") {
                    out.soft_space(range);
                }
            }
            Token::End { name, range } => {
                if has_main && main_depth == 0 {
                    continue;
                }
                if name == "main" {
                    main_depth = main_depth.saturating_sub(1);
                }
                if BLOCKS.contains(&name.as_str()) {
                    if name == "pre" {
                        pre_depth = pre_depth.saturating_sub(1);
                    }
                    let kind = match heading_level(&name) {
                        Some(level) if heading.is_some() => {
                            heading = None;
                            Some(BlockKind::Heading(level))
                        }
                        _ if name == "pre" => Some(BlockKind::Code),
                        _ => None,
                    };
                    out.end_block_as(kind);
                    out.block_break(range);
                } else if matches!(name.as_str(), "td" | "th") {
                    out.soft_space(range);
                }
            }
            Token::Text(range) => {
                if has_main && main_depth == 0 {
                    continue;
                }
                out.text(range, pre_depth > 0);
            }
        }
    }
    out.finish()
}

fn heading_level(name: &str) -> Option<u8> {
    match name {
        "h1" => Some(1),
        "h2" => Some(2),
        "h3" => Some(3),
        "h4" => Some(4),
        "h5" => Some(5),
        "h6" => Some(6),
        _ => None,
    }
}

/// Accumulates text, spans and blocks.
struct Builder<'a> {
    src: &'a str,
    out: Extracted,
    /// A collapsed whitespace run waiting for the next visible character: its source span.
    pending_space: Option<(u32, u32)>,
    /// Start of the current block in `text`, once it has a visible character.
    block_start: Option<usize>,
    /// End of the last visible character of the current block.
    block_end: usize,
    /// The block kind decided at its end tag (heading, code), if any.
    kind_override: Option<BlockKind>,
}

impl<'a> Builder<'a> {
    fn new(src: &'a str) -> Self {
        Self {
            src,
            out: Extracted::default(),
            pending_space: None,
            block_start: None,
            block_end: 0,
            kind_override: None,
        }
    }

    fn push(&mut self, s: &str, span: (u32, u32)) {
        self.out.text.push_str(s);
        self.out.spans.extend(std::iter::repeat_n(span, s.len()));
    }

    fn visible(&mut self, s: &str, span: (u32, u32)) {
        if let Some(space) = self.pending_space.take()
            && self.block_start.is_some()
        {
            self.push(" ", space);
        }
        if self.block_start.is_none() {
            self.block_start = Some(self.out.text.len());
        }
        self.push(s, span);
        self.block_end = self.out.text.len();
    }

    fn text(&mut self, range: Range<usize>, preformatted: bool) {
        let src = self.src;
        let s = &src[range.clone()];
        let base = range.start;
        let mut iter = s.char_indices().peekable();
        while let Some((i, c)) = iter.next() {
            let at = base + i;
            if c == '&'
                && let Some((decoded, len)) = decode_reference(&s[i..])
            {
                let span = (at as u32, (at + len) as u32);
                let mut buf = [0u8; 4];
                if !preformatted && decoded.is_whitespace() {
                    self.pending_space.get_or_insert(span);
                } else {
                    self.visible(decoded.encode_utf8(&mut buf), span);
                }
                // Skip the rest of the reference.
                while iter.peek().is_some_and(|(j, _)| *j < i + len) {
                    iter.next();
                }
                continue;
            }
            let span = (at as u32, (at + c.len_utf8()) as u32);
            if preformatted {
                if c == '\n' || c == '\t' || c == ' ' || c == '\r' {
                    // Whitespace inside <pre> is kept verbatim but never starts a block.
                    if self.block_start.is_some() {
                        if let Some(space) = self.pending_space.take() {
                            self.push(" ", space);
                        }
                        let mut buf = [0u8; 4];
                        self.push(c.encode_utf8(&mut buf), span);
                    }
                } else {
                    let mut buf = [0u8; 4];
                    self.visible(c.encode_utf8(&mut buf), span);
                }
            } else if c.is_whitespace() {
                self.pending_space.get_or_insert(span);
            } else {
                let mut buf = [0u8; 4];
                self.visible(c.encode_utf8(&mut buf), span);
            }
        }
    }

    /// `<td>`/`<th>`: a space between cells.
    fn soft_space(&mut self, tag: Range<usize>) {
        self.pending_space.get_or_insert((tag.start as u32, tag.end as u32));
    }

    /// `<br>`: a line break inside the block.
    fn line_break(&mut self, tag: Range<usize>) {
        if self.block_start.is_some() {
            self.pending_space = None;
            self.out.text.truncate(self.block_end);
            self.out.spans.truncate(self.block_end);
            self.push("\n", (tag.start as u32, tag.end as u32));
        }
    }

    fn end_block_as(&mut self, kind: Option<BlockKind>) {
        if kind.is_some() {
            self.kind_override = kind;
        }
    }

    /// Ends the current block (if it has text) and separates it from the next one.
    fn block_break(&mut self, tag: Range<usize>) {
        self.pending_space = None;
        if let Some(start) = self.block_start.take() {
            // Drop trailing whitespace kept inside <pre>.
            self.out.text.truncate(self.block_end);
            self.out.spans.truncate(self.block_end);
            let kind = self.kind_override.take().unwrap_or(BlockKind::Paragraph);
            self.out.blocks.push(Block { start, end: self.block_end, kind });
            self.push("\n\n", (tag.start as u32, tag.end as u32));
        } else {
            self.kind_override = None;
        }
    }

    fn finish(mut self) -> Extracted {
        let end = self.src.len();
        self.block_break(end..end);
        let len = self.out.blocks.last().map_or(0, |b| b.end);
        self.out.text.truncate(len);
        self.out.spans.truncate(len);
        self.out
    }
}

/// Decodes a character reference at the start of `s` (`&amp;`, `&#39;`, `&#x27;`): the
/// character and the reference's length in bytes.
fn decode_reference(s: &str) -> Option<(char, usize)> {
    let b = s.as_bytes();
    if b.get(1) == Some(&b'#') {
        let (digits_start, radix) = if matches!(b.get(2), Some(b'x') | Some(b'X')) { (3, 16) } else { (2, 10) };
        let mut end = digits_start;
        while end < b.len() && end - digits_start < 8 && (b[end] as char).is_digit(radix) {
            end += 1;
        }
        if end == digits_start {
            return None;
        }
        let value = u32::from_str_radix(&s[digits_start..end], radix).ok()?;
        let c = char::from_u32(value).filter(|c| *c != '\0').unwrap_or('\u{FFFD}');
        let len = if b.get(end) == Some(&b';') { end + 1 } else { end };
        return Some((c, len));
    }
    let mut end = 1;
    while end < b.len() && end < 32 && b[end].is_ascii_alphanumeric() {
        end += 1;
    }
    if b.get(end) != Some(&b';') {
        return None;
    }
    let c = match &s[1..end] {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => '\u{a0}',
        "copy" => '©',
        "reg" => '®',
        "trade" => '™',
        "hellip" => '…',
        "mdash" => '—',
        "ndash" => '–',
        "lsquo" => '‘',
        "rsquo" => '’',
        "ldquo" => '“',
        "rdquo" => '”',
        "laquo" => '«',
        "raquo" => '»',
        "larr" => '←',
        "rarr" => '→',
        "uarr" => '↑',
        "darr" => '↓',
        "times" => '×',
        "middot" => '·',
        "bull" => '•',
        "deg" => '°',
        "euro" => '€',
        "pound" => '£',
        "sect" => '§',
        "para" => '¶',
        "shy" => '\u{ad}',
        "zwj" => '\u{200d}',
        "zwnj" => '\u{200c}',
        "ensp" => '\u{2002}',
        "emsp" => '\u{2003}',
        "thinsp" => '\u{2009}',
        _ => return None,
    };
    Some((c, end + 1))
}

/// Whitespace-insensitive form of a text, for comparing extractions.
pub fn normalize_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(e: &Extracted) -> Vec<(&str, BlockKind)> {
        e.blocks.iter().map(|b| (&e.text[b.start..b.end], b.kind)).collect()
    }

    #[test]
    fn drops_scripts_styles_and_chrome_and_decodes_references() {
        let html = "<!DOCTYPE html><html><head><title>T</title><style>p{}</style></head><body>\
            <nav>menu</nav><h1 id=x>Hello &amp; <em>welcome</em></h1>\
            <p>One&nbsp;two   three<script>var a = '<p>no</p>';</script> four &#x41;&#66;&unknown;</p>\
            <!-- comment <p>hidden</p> --><pre><code>fn main() {\n    x &lt; y\n}\n</code></pre>\
            <footer>foot</footer><ul><li>a</li><li>b<br>c</li></ul></body></html>";
        let e = extract(html);
        assert_eq!(
            texts(&e),
            vec![
                ("Hello & welcome", BlockKind::Heading(1)),
                ("One two three four AB&unknown;", BlockKind::Paragraph),
                ("fn main() {\n    x < y\n}", BlockKind::Code),
                ("a", BlockKind::Paragraph),
                ("b\nc", BlockKind::Paragraph),
            ]
        );
        assert!(!e.text.contains("menu") && !e.text.contains("foot") && !e.text.contains("var"));
    }

    #[test]
    fn main_element_limits_the_extraction() {
        let html =
            "<body><div class=menu><h1>Site</h1></div><main><h2>Real</h2><p>content</p></main><p>after</p></body>";
        let e = extract(html);
        assert_eq!(texts(&e), vec![("Real", BlockKind::Heading(2)), ("content", BlockKind::Paragraph)]);
    }

    #[test]
    fn spans_map_text_back_to_markup_that_extracts_to_the_same_text() {
        let html = "<main><h2><a href=\"#x\">Title &amp; more</a></h2>\n<p>Some <code>code</code> and\n  text.</p>\
                    <pre><code class=\"rust\"><span class=\"kw\">let</span> x = 1;\n\nlet y;</code></pre><p>last</p></main>";
        let e = extract(html);
        for block in &e.blocks {
            let span = e.source_span(block.start..block.end);
            let again = extract(&html[span.clone()]);
            assert_eq!(normalize_ws(&again.text), normalize_ws(&e.text[block.start..block.end]), "{span:?}");
        }
        // A range covering several blocks too.
        let all = e.source_span(0..e.text.len());
        assert_eq!(normalize_ws(&extract(&html[all]).text), normalize_ws(&e.text));
        // The first character's markup starts at the title text, not at the tag.
        let first = e.source_span(0..5);
        assert_eq!(&html[first], "Title");
        let amp = e.text.find('&').unwrap();
        assert_eq!(&html[e.source_span(amp..amp + 1)], "&amp;");
    }

    /// Random documents from markup fragments and multi-byte text: extraction never panics,
    /// every block and span lies on character boundaries, and re-extracting a block's source
    /// span gives the block's text back.
    #[test]
    fn random_documents_keep_the_invariants() {
        const PIECES: &[&str] = &[
            "<p>",
            "</p>",
            "←",
            "é",
            "日本",
            "&amp;",
            "&#x2192;",
            "&nbsp;",
            "<",
            ">",
            "&",
            "<script>",
            "</script>",
            "<pre>",
            "</pre>",
            " ",
            "\n",
            "word",
            "<!--",
            "-->",
            "<h2>",
            "</h2>",
            "<main>",
            "</main>",
            "<br>",
            "\"",
            "'",
            "<a href=\"x>y\">",
            "</a>",
            "<td>",
            "<nav>",
            "</nav>",
            "<b",
            "&unknown;",
            "\u{feff}",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..3000 {
            let n = (next() % 40) as usize;
            let doc: String = (0..n).map(|_| PIECES[(next() % PIECES.len() as u64) as usize]).collect();
            let e = extract(&doc);
            for b in &e.blocks {
                assert!(b.start < b.end && b.end <= e.text.len(), "{doc:?}");
                assert!(e.text.is_char_boundary(b.start) && e.text.is_char_boundary(b.end), "{doc:?}");
                let span = e.source_span(b.start..b.end);
                assert!(doc.is_char_boundary(span.start) && doc.is_char_boundary(span.end), "{doc:?}");
                let block_text = normalize_ws(&e.text[b.start..b.end]);
                let again = normalize_ws(&extract(&doc[span.clone()]).text);
                // A span that starts inside an unterminated tag or comment region cannot be
                // extracted the same way in isolation; everything else must round-trip.
                if !doc[span.clone()].contains("<!--") && !doc[span.clone()].contains("<main>") {
                    assert_eq!(again, block_text, "{doc:?} {span:?}");
                }
            }
        }
    }

    #[test]
    fn tolerates_broken_markup() {
        for html in [
            "<p>unterminated <b",
            "a < b and c > d",
            "<<>>",
            "&#xFFFFFFFF; &#0; &",
            "<script>never closed",
            "</p></div>",
            "<p>←x</p>",
            "←<p>é</p>→",
        ] {
            let e = extract(html);
            for b in &e.blocks {
                assert!(b.start < b.end && b.end <= e.text.len());
            }
        }
        assert_eq!(extract("a < b and c > d").text, "a < b and c > d");
        assert_eq!(extract("&#0;x").text, "\u{FFFD}x");
    }
}
