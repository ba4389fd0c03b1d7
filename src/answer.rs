//! Answers with sources (rag.md row 14 and §7): numbering retrieved passages `[1]..[n]`,
//! building the prompt within a budget that fits the model's context, and checking the `[n]`
//! markers of the model's answer against the set.
//!
//! Pure functions and types only: no I/O, no HTTP, no RPC. `http::answer` calls the plug-ins and
//! uses these to compose. The same [`CitationFilter`] cleans a whole answer and a stream of
//! deltas, so a streamed answer is exactly the non-streamed one cut into pieces.
//!
//! Rules of the filter:
//! - A marker is `[` one or more comma-separated numbers (at most 4 digits each, spaces allowed)
//!   `]`, outside code. `[1][2]` is two markers, `[1, 2]` one marker with two numbers.
//! - Numbers outside `1..=n` are removed and counted; a marker left with no number is removed
//!   with the spaces before it (`Paris [7].` → `Paris.`). Repeated numbers in one marker collapse.
//! - Inside inline code (`` `v[12]` ``) and fenced code (```` ``` ````) nothing is a marker.
//! - Anything else in brackets (`[a]`, `[]`, `[1-3]`, `[^1]`) is text and passes untouched.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// Passages retrieved when the request does not say (`k`).
pub const DEFAULT_K: u64 = 4;
/// Most passages an answer may use.
pub const MAX_K: u64 = 10;

/// Characters the whole prompt may take (instructions, sources and question).
///
/// The llm plug-in accepts at most 2048 prompt tokens by default (`max_prompt_tokens`; the
/// context of SmolLM2-135M is larger). Its tokenizer gives about 4 characters per token on
/// English prose and nearer 3 on paths, code and numbers, so 5,400 characters stay under about
/// 1,800 tokens with room for the chat template.
pub const PROMPT_BUDGET_CHARS: usize = 5_400;
/// A source gets at least this many characters of text, else fewer sources are shown.
const MIN_SOURCE_CHARS: usize = 160;
/// The `path › headings` line of a source is cut to this length.
const MAX_LABEL_CHARS: usize = 160;
/// Longest text between `[` and `]` that can still be a marker.
const MAX_MARKER_CHARS: usize = 32;
/// Marked at the end of a passage cut to fit the budget.
const ELLIPSIS: &str = " …";

/// The instructions given to the model as its system message.
pub const INSTRUCTIONS: &str = "Answer the question using only the numbered sources. After each \
    sentence that uses a source, cite it with its number in square brackets, like [1]. If the \
    sources do not contain the answer, say that you do not know.";

/// One passage as the rag plug-in's `rag.query` returns it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Retrieved {
    pub text: String,
    pub score: f64,
    pub source: bkg_plugin_rag::engine::Source,
    /// `H1 › H2` of the enclosing headings (may be empty).
    #[serde(default)]
    pub heading: String,
}

/// A numbered source of an answer: the exact span, as retrieved (the prompt may show it cut).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Source {
    /// Its number in the prompt and in the answer's `[n]` markers, from 1.
    pub n: usize,
    pub path: String,
    /// Byte range of the passage in the file as indexed.
    pub start: u64,
    pub end: u64,
    /// `H1 › H2`, as `/rag/query` gives it.
    pub heading: String,
    /// The same headings as a list.
    pub headings: Vec<String>,
    pub text: String,
    /// sha256 of the file bytes at index time.
    pub sha256: String,
    pub chunk_id: String,
    /// Retrieval score (comparable only within one answer).
    pub score: f64,
    /// Whether the answer cites it; absent until the answer is known (the stream's first event).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cited: Option<bool>,
}

/// Numbers retrieved passages `[1]..[n]` in rank order.
pub fn number_sources(results: Vec<Retrieved>) -> Vec<Source> {
    results
        .into_iter()
        .enumerate()
        .map(|(i, r)| Source {
            n: i + 1,
            headings: r.heading.split(" › ").map(str::trim).filter(|h| !h.is_empty()).map(str::to_owned).collect(),
            heading: r.heading,
            path: r.source.path,
            start: r.source.start,
            end: r.source.end,
            text: r.text,
            sha256: r.source.sha256,
            chunk_id: r.source.chunk_id,
            score: r.score,
            cited: None,
        })
        .collect()
}

/// Sets every source's `cited` flag from the numbers the answer kept.
pub fn mark_cited(sources: &mut [Source], cited: &BTreeSet<usize>) {
    for s in sources {
        s.cited = Some(cited.contains(&s.n));
    }
}

/// The prompt of an answer: a system message and a user message.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub system: String,
    pub user: String,
    /// How many of the given sources it shows (the first ones); the rest did not fit.
    pub shown: usize,
    /// How many of the shown sources were cut to fit.
    pub cut: usize,
}

/// Builds the prompt: the numbered sources (`[n] path › headings`, then the text), then the
/// question, all within `budget` characters (bytes, which is conservative). Long passages are cut
/// at a word boundary; when even `MIN_SOURCE_CHARS` per source does not fit, the lowest-ranked
/// sources are left out (the caller must drop them too, so the numbering stays `1..=shown`).
pub fn build_prompt(question: &str, sources: &[Source], budget: usize) -> Prompt {
    const HEAD: &str = "Sources:\n\n";
    const QUESTION: &str = "Question: ";
    let labels: Vec<String> = sources.iter().map(|s| format!("[{}] {}\n", s.n, label(s))).collect();
    let fixed = INSTRUCTIONS.len() + HEAD.len() + QUESTION.len() + question.len();
    let mut available = budget.saturating_sub(fixed);
    // Keep the best-ranked sources that fit with their minimum share.
    let (mut shown, mut labels_len) = (0, 0);
    for l in &labels {
        let need = labels_len + l.len() + 2 + (shown + 1) * (MIN_SOURCE_CHARS + ELLIPSIS.len());
        if need > available {
            break;
        }
        labels_len += l.len() + 2;
        shown += 1;
    }
    available -= labels_len;
    let shares = fair_shares(&sources[..shown].iter().map(|s| s.text.len()).collect::<Vec<_>>(), available);
    let mut user = String::from(HEAD);
    let mut cut = 0;
    for ((s, l), share) in sources.iter().zip(&labels).zip(shares) {
        user.push_str(l);
        let text = s.text.trim();
        if text.len() <= share {
            user.push_str(text);
        } else {
            user.push_str(cut_at_word(text, share.saturating_sub(ELLIPSIS.len())));
            user.push_str(ELLIPSIS);
            cut += 1;
        }
        user.push_str("\n\n");
    }
    user.push_str(QUESTION);
    user.push_str(question);
    Prompt { system: INSTRUCTIONS.to_owned(), user, shown, cut }
}

/// `path › H1 › H2`, cut to `MAX_LABEL_CHARS`.
fn label(s: &Source) -> String {
    let full = if s.heading.is_empty() { s.path.clone() } else { format!("{} › {}", s.path, s.heading) };
    if full.len() <= MAX_LABEL_CHARS {
        return full;
    }
    // The end of a path is the telling part.
    let keep = MAX_LABEL_CHARS - 3;
    let mut from = full.len() - keep;
    while !full.is_char_boundary(from) {
        from += 1;
    }
    format!("…{}", &full[from..])
}

/// Splits `budget` over items of these lengths: none gets more than it needs, and what the
/// short ones leave is shared evenly by the long ones (water filling).
fn fair_shares(lengths: &[usize], budget: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    let mut shares = vec![0; lengths.len()];
    let mut left = budget;
    for (done, &i) in order.iter().enumerate() {
        let even = left / (lengths.len() - done);
        shares[i] = lengths[i].min(even);
        left -= shares[i];
    }
    shares
}

/// The longest prefix of `text` of at most `max` bytes, ending at a character boundary and,
/// when one is in its last fifth, at whitespace.
fn cut_at_word(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let prefix = &text[..end];
    match prefix.rfind(char::is_whitespace) {
        Some(ws) if ws >= end - end / 5 => prefix[..ws].trim_end(),
        _ => prefix,
    }
}

/// An answer with its markers checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleaned {
    pub text: String,
    /// The source numbers the answer cites.
    pub cited: BTreeSet<usize>,
    /// Numbers removed because no source has them.
    pub dropped: usize,
}

/// Checks every `[n]` marker of a whole answer against `1..=n` (see the module doc).
pub fn clean_citations(text: &str, n: usize) -> Cleaned {
    let mut filter = CitationFilter::new(n);
    let mut out = filter.push(text);
    out.push_str(&filter.finish());
    Cleaned { text: out, cited: filter.cited, dropped: filter.dropped }
}

/// Where the filter is with respect to code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Code {
    Text,
    /// Inside inline code opened by this many backticks.
    Inline(usize),
    /// Inside a fence opened by this many backticks.
    Fence(usize),
}

/// The incremental form of [`clean_citations`]: feed deltas, get the text that is safe to show.
/// Text that may still turn out to be a marker (from a `[`, with the spaces before it) or part
/// of a backtick run is held back until it is decided.
#[derive(Debug, Clone)]
pub struct CitationFilter {
    n: usize,
    code: Code,
    /// A backtick run not yet ended.
    ticks: usize,
    /// Spaces held before a possible marker.
    spaces: String,
    /// The text after a `[` that may still be a marker.
    marker: Option<String>,
    /// A marker was just removed: the spaces around it are collapsed.
    after_drop: bool,
    cited: BTreeSet<usize>,
    dropped: usize,
}

impl CitationFilter {
    /// A filter for an answer over sources `1..=n`.
    pub fn new(n: usize) -> Self {
        Self {
            n,
            code: Code::Text,
            ticks: 0,
            spaces: String::new(),
            marker: None,
            after_drop: false,
            cited: BTreeSet::new(),
            dropped: 0,
        }
    }

    /// The source numbers cited so far.
    pub fn cited(&self) -> &BTreeSet<usize> {
        &self.cited
    }

    /// Numbers removed so far.
    pub fn dropped(&self) -> usize {
        self.dropped
    }

    /// Takes the next delta; returns the text decided so far.
    pub fn push(&mut self, delta: &str) -> String {
        let mut out = String::new();
        for c in delta.chars() {
            self.step(c, &mut out);
        }
        out
    }

    /// Ends the answer: whatever is held back is text.
    pub fn finish(&mut self) -> String {
        let mut out = String::new();
        self.end_ticks(&mut out);
        if let Some(buf) = self.marker.take() {
            self.flush_spaces(&mut out, None);
            out.push('[');
            out.push_str(&buf);
        }
        if !self.after_drop {
            out.push_str(&self.spaces);
        }
        self.spaces.clear();
        out
    }

    fn step(&mut self, c: char, out: &mut String) {
        if self.ticks > 0 && c != '`' {
            self.end_ticks(out);
        }
        if self.code != Code::Text {
            if c == '`' {
                self.ticks += 1;
            } else {
                out.push(c);
            }
            return;
        }
        if let Some(mut buf) = self.marker.take() {
            if (c.is_ascii_digit() || c == ',' || c == ' ') && buf.len() < MAX_MARKER_CHARS {
                buf.push(c);
                self.marker = Some(buf);
                return;
            }
            if c == ']' {
                self.close_marker(&buf, out);
                return;
            }
            // Not a marker: it is text, and `c` is read again as text.
            self.flush_spaces(out, None);
            out.push('[');
            out.push_str(&buf);
        }
        match c {
            ' ' => self.spaces.push(c),
            '[' => self.marker = Some(String::new()),
            '`' => {
                self.flush_spaces(out, Some(c));
                self.ticks += 1;
            }
            _ => {
                self.flush_spaces(out, Some(c));
                out.push(c);
            }
        }
    }

    /// Emits the held spaces before `next`; after a removed marker they collapse to one, or to
    /// none before punctuation or the end of a line.
    fn flush_spaces(&mut self, out: &mut String, next: Option<char>) {
        if self.after_drop {
            let tight = next.is_none_or(|c| matches!(c, '.' | ',' | ';' | ':' | '!' | '?' | ')' | '\n'));
            if !self.spaces.is_empty() && !tight {
                out.push(' ');
            }
            self.after_drop = false;
        } else {
            out.push_str(&self.spaces);
        }
        self.spaces.clear();
    }

    /// A backtick run ended: it opens or closes code, and is text either way.
    fn end_ticks(&mut self, out: &mut String) {
        let run = std::mem::take(&mut self.ticks);
        if run == 0 {
            return;
        }
        self.code = match self.code {
            Code::Text if run >= 3 => Code::Fence(run),
            Code::Text => Code::Inline(run),
            Code::Inline(k) if run == k => Code::Text,
            Code::Fence(k) if run >= k => Code::Text,
            other => other,
        };
        out.extend(std::iter::repeat_n('`', run));
    }

    /// `buf` is what stood between `[` and `]`.
    fn close_marker(&mut self, buf: &str, out: &mut String) {
        let numbers: Option<Vec<usize>> = buf
            .split(',')
            .map(|part| {
                let part = part.trim();
                let ok = !part.is_empty() && part.len() <= 4 && part.bytes().all(|b| b.is_ascii_digit());
                ok.then(|| part.parse::<usize>().ok()).flatten()
            })
            .collect();
        let Some(numbers) = numbers else {
            // `[]`, `[1,,2]`, `[ ]`: not a marker.
            self.flush_spaces(out, Some('['));
            out.push('[');
            out.push_str(buf);
            out.push(']');
            return;
        };
        let mut kept: Vec<usize> = Vec::new();
        for x in numbers {
            if (1..=self.n).contains(&x) {
                if !kept.contains(&x) {
                    kept.push(x);
                }
            } else {
                self.dropped += 1;
            }
        }
        if kept.is_empty() {
            // The spaces before it stay held; the next character decides about them.
            self.after_drop = true;
            return;
        }
        self.flush_spaces(out, Some('['));
        let list: Vec<String> = kept.iter().map(usize::to_string).collect();
        out.push('[');
        out.push_str(&list.join(", "));
        out.push(']');
        self.cited.extend(kept);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(text: &str, n: usize) -> (String, Vec<usize>, usize) {
        let c = clean_citations(text, n);
        (c.text, c.cited.into_iter().collect(), c.dropped)
    }

    fn source(n: usize, path: &str, heading: &str, text: &str) -> Source {
        number_sources(vec![Retrieved {
            text: text.into(),
            score: 1.0 / n as f64,
            source: bkg_plugin_rag::engine::Source {
                path: path.into(),
                sha256: "ab".into(),
                chunk_id: "cd".into(),
                start: 0,
                end: 1,
            },
            heading: heading.into(),
        }])
        .pop()
        .map(|s| Source { n, ..s })
        .unwrap()
    }

    #[test]
    fn valid_markers_are_kept_and_counted_as_cited() {
        assert_eq!(clean("Paris [1].", 4), ("Paris [1].".into(), vec![1], 0));
        assert_eq!(clean("A [1][2] and B [4]", 4), ("A [1][2] and B [4]".into(), vec![1, 2, 4], 0));
        assert_eq!(clean("Both [1, 2].", 4), ("Both [1, 2].".into(), vec![1, 2], 0));
        assert_eq!(clean("Spaced [ 3 ,1 ].", 4), ("Spaced [3, 1].".into(), vec![1, 3], 0));
    }

    #[test]
    fn invented_markers_are_removed_and_counted() {
        assert_eq!(clean("Paris [12].", 4), ("Paris.".into(), vec![], 1));
        assert_eq!(clean("Paris [5] is big", 4), ("Paris is big".into(), vec![], 1));
        assert_eq!(clean("Paris[0] is big [7]\nNext", 4), ("Paris is big\nNext".into(), vec![], 2));
        assert_eq!(clean("See [1, 7] and [9, 12].", 4), ("See [1] and.".into(), vec![1], 3));
        assert_eq!(clean("[3][8] x", 4), ("[3] x".into(), vec![3], 1));
        assert_eq!(clean("no sources [1]", 0), ("no sources".into(), vec![], 1));
    }

    #[test]
    fn repeated_markers_count_once() {
        assert_eq!(clean("A [2]. B [2]. C [2, 2].", 4), ("A [2]. B [2]. C [2].".into(), vec![2], 0));
    }

    #[test]
    fn markers_inside_code_are_text() {
        let inline = "Use `v[12]` or `` x[9] `` here [1].";
        assert_eq!(clean(inline, 4), (inline.into(), vec![1], 0));
        let fenced = "Code:\n```rust\nlet a = v[12];\n```\nDone [9].";
        assert_eq!(clean(fenced, 4), ("Code:\n```rust\nlet a = v[12];\n```\nDone.".into(), vec![], 1));
        // An unclosed fence swallows the rest: nothing after it is a marker.
        assert_eq!(clean("```\nv[7]", 4), ("```\nv[7]".into(), vec![], 0));
    }

    #[test]
    fn other_brackets_are_text() {
        for text in ["a [b] c", "[] x", "[1-3]", "[^1]", "[1,,2]", "[12345]", "open [1 and more", "tail ["] {
            assert_eq!(clean(text, 4), (text.into(), vec![], 0), "{text}");
        }
    }

    #[test]
    fn streaming_in_any_pieces_gives_the_whole_answer() {
        let text = "The capital is Paris [1][7]. Code `a[2]` and\n```\nx[9]\n```\nSee [2, 12] or [ab] [3] end [8]";
        let whole = clean_citations(text, 4);
        let chars: Vec<char> = text.chars().collect();
        for size in 1..=7 {
            let mut f = CitationFilter::new(4);
            let mut out = String::new();
            for piece in chars.chunks(size) {
                out.push_str(&f.push(&piece.iter().collect::<String>()));
            }
            out.push_str(&f.finish());
            assert_eq!(out, whole.text, "pieces of {size}");
            assert_eq!((f.cited(), f.dropped()), (&whole.cited, whole.dropped));
        }
        assert_eq!(whole.text, "The capital is Paris [1]. Code `a[2]` and\n```\nx[9]\n```\nSee [2] or [ab] [3] end");
        assert_eq!(whole.dropped, 3);
    }

    #[test]
    fn a_held_marker_is_released_as_soon_as_it_is_decided() {
        let mut f = CitationFilter::new(2);
        assert_eq!(f.push("Paris "), "Paris");
        assert_eq!(f.push("[1"), "");
        assert_eq!(f.push("]."), " [1].");
        assert_eq!(f.push(" ["), "");
        assert_eq!(f.push("x"), " [x");
        assert_eq!(f.finish(), "");
    }

    #[test]
    fn the_prompt_numbers_sources_and_fits_the_budget() {
        let sources = vec![
            source(1, "/docs/geo.md", "Countries › France", "The capital of France is Paris."),
            source(2, "/docs/long.md", "", &"word ".repeat(2000)),
            source(3, "/docs/other.md", "Other", &"other ".repeat(50)),
        ];
        let p = build_prompt("What is the capital of France?", &sources, PROMPT_BUDGET_CHARS);
        assert_eq!((p.shown, p.cut), (3, 1));
        assert!(p.system.len() + p.user.len() <= PROMPT_BUDGET_CHARS, "{}", p.user.len());
        assert!(
            p.user
                .starts_with("Sources:\n\n[1] /docs/geo.md › Countries › France\nThe capital of France is Paris.\n\n")
        );
        assert!(p.user.contains("\n\n[2] /docs/long.md\nword word"), "{}", p.user);
        assert!(p.user.contains(" …\n\n[3] /docs/other.md › Other\nother other"));
        assert!(p.user.ends_with("Question: What is the capital of France?"));
        // The short sources are shown whole; the long one takes what is left.
        assert!(p.user.contains(sources[2].text.trim()));
    }

    #[test]
    fn sources_that_do_not_fit_are_left_out_from_the_lowest_rank() {
        let sources: Vec<Source> =
            (1..=10).map(|n| source(n, &format!("/d/{n}.md"), "H", &"text ".repeat(400))).collect();
        let question = "q".repeat(2048);
        let p = build_prompt(&question, &sources, 3000);
        assert!(p.shown < 10 && p.shown > 0, "{}", p.shown);
        assert!(p.system.len() + p.user.len() <= 3000);
        assert!(p.user.contains(&format!("[{}] /d/{}.md", p.shown, p.shown)));
        assert!(!p.user.contains(&format!("[{}] ", p.shown + 1)));
        // Nothing fits: no source is shown.
        assert_eq!(build_prompt(&question, &sources, 100).shown, 0);
    }

    #[test]
    fn cuts_land_on_character_and_word_boundaries() {
        assert_eq!(cut_at_word(&"word ".repeat(10), 22), "word word word word");
        assert_eq!(cut_at_word("ééééé", 3), "é");
        assert_eq!(cut_at_word("short", 10), "short");
        let long_label = source(1, &format!("/{}/file.md", "é".repeat(200)), "", "x");
        let l = label(&long_label);
        assert!(l.len() <= MAX_LABEL_CHARS && l.ends_with("/file.md"), "{l}");
        assert_eq!(fair_shares(&[10, 1000, 50], 300), vec![10, 240, 50]);
    }

    #[test]
    fn sources_carry_their_span_and_cited_flags() {
        let mut s = vec![source(1, "/a.md", "A › B", "x"), source(2, "/b.md", "", "y")];
        assert_eq!(s[0].headings, vec!["A", "B"]);
        assert!(s[1].headings.is_empty());
        let json = serde_json::to_value(&s[0]).unwrap();
        assert!(json.get("cited").is_none(), "{json}");
        mark_cited(&mut s, &BTreeSet::from([2]));
        assert_eq!((s[0].cited, s[1].cited), (Some(false), Some(true)));
        assert_eq!(serde_json::to_value(&s[1]).unwrap()["cited"], true);
    }
}
