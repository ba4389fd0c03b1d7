//! Packing blocks into chunks: sections by headings, paragraphs, then sentences (or lines of
//! code), then words, with overlap inside a paragraph.
//!
//! Rules:
//! - A heading starts a new section, and a chunk never spans two sections, except that a
//!   section too small to stand alone (a heading directly followed by a sub-heading, say) is
//!   merged into the next one.
//! - Inside a section, whole units (sentences of prose, lines of code) are packed up to the
//!   target word count. A cut prefers the last paragraph boundary that still leaves the chunk at
//!   least half full; otherwise it falls between sentences.
//! - When a cut falls inside a paragraph, the next chunk repeats the paragraph's trailing
//!   sentences up to the overlap budget. Across paragraph boundaries there is no overlap.
//! - A single sentence longer than the target is cut at whitespace into target-sized windows.
//!
//! Chunks are byte ranges of the text; their text is exactly `text[start..end]`, trimmed.

use crate::blocks::{Block, BlockKind, trim_range};
use crate::config::ChunkParams;

/// One chunk: a byte range of the text and the headings it sits under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkSpan {
    pub start: usize,
    pub end: usize,
    /// Heading titles from the top level down, e.g. `["Ownership", "The Stack and the Heap"]`.
    pub headings: Vec<String>,
}

/// A unit: the smallest piece the packer moves (a sentence, a line of code, a heading).
#[derive(Debug, Clone, Copy)]
struct Unit {
    start: usize,
    end: usize,
    words: usize,
    /// First unit of its block: a cut before it is a paragraph boundary.
    block_start: bool,
}

fn words(s: &str) -> usize {
    s.split_whitespace().count()
}

/// Heading text without Markdown markers (`## Title ##` → `Title`) or setext underlines.
pub fn heading_title(s: &str) -> String {
    let first = s.lines().next().unwrap_or("").trim();
    let t = first.trim_start_matches('#').trim_end_matches('#').trim();
    t.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Splits `text[start..end]` into sentences: a sentence ends after `.`, `!` or `?` (optionally
/// followed by closing quotes or brackets) that is followed by whitespace.
fn sentences(text: &str, start: usize, end: usize, out: &mut Vec<(usize, usize)>) {
    let s = &text[start..end];
    let b = s.as_bytes();
    let mut from = 0;
    let mut i = 0;
    while i < b.len() {
        if matches!(b[i], b'.' | b'!' | b'?') {
            let mut j = i + 1;
            while j < b.len() && matches!(b[j], b'"' | b'\'' | b')' | b']') {
                j += 1;
            }
            if j < b.len() && b[j].is_ascii_whitespace() {
                if let Some(r) = trim_range(text, start + from, start + j) {
                    out.push(r);
                }
                from = j;
                i = j;
                continue;
            }
        }
        i += 1;
    }
    if let Some(r) = trim_range(text, start + from, end) {
        out.push(r);
    }
}

/// Splits `text[start..end]` into lines (for code).
fn code_lines(text: &str, start: usize, end: usize, out: &mut Vec<(usize, usize)>) {
    let mut from = start;
    for (i, b) in text[start..end].bytes().enumerate() {
        if b == b'\n' {
            if let Some(r) = trim_range(text, from, start + i) {
                out.push(r);
            }
            from = start + i + 1;
        }
    }
    if let Some(r) = trim_range(text, from, end) {
        out.push(r);
    }
}

/// Cuts a piece longer than `max` words into windows of `max` words at whitespace.
fn push_units(text: &str, pieces: &[(usize, usize)], max: usize, first_is_block_start: bool, out: &mut Vec<Unit>) {
    for (n, &(s, e)) in pieces.iter().enumerate() {
        let block_start = first_is_block_start && n == 0;
        let w = words(&text[s..e]);
        if w <= max {
            out.push(Unit { start: s, end: e, words: w, block_start });
            continue;
        }
        // Word windows: find the byte offsets of word starts.
        let piece = &text[s..e];
        let mut word_starts = Vec::with_capacity(w);
        let mut in_word = false;
        for (i, c) in piece.char_indices() {
            if c.is_whitespace() {
                in_word = false;
            } else if !in_word {
                in_word = true;
                word_starts.push(i);
            }
        }
        let mut k = 0;
        while k < word_starts.len() {
            let a = s + word_starts[k];
            let next = k + max;
            let b = if next < word_starts.len() { s + word_starts[next] } else { e };
            if let Some((a, b)) = trim_range(text, a, b) {
                out.push(Unit { start: a, end: b, words: words(&text[a..b]), block_start: block_start && k == 0 });
            }
            k = next;
        }
    }
}

/// Chunks a document given its blocks (see the module docs).
pub fn chunk(text: &str, blocks: &[Block], params: ChunkParams) -> Vec<ChunkSpan> {
    let target = params.target_words.max(1);
    // Sections: (heading level, heading title, units).
    struct Section {
        level: u8,
        title: Option<String>,
        units: Vec<Unit>,
        words: usize,
    }
    let mut sections: Vec<Section> = vec![Section { level: 0, title: None, units: Vec::new(), words: 0 }];
    let mut pieces = Vec::new();
    for block in blocks {
        let before = sections.last().map_or(0, |s| s.units.len());
        match block.kind {
            BlockKind::Heading(level) => {
                let title = heading_title(&text[block.start..block.end]);
                let mut section = Section { level, title: Some(title), units: Vec::new(), words: 0 };
                pieces.clear();
                pieces.push((block.start, block.end));
                push_units(text, &pieces, target, true, &mut section.units);
                sections.push(section);
                continue;
            }
            BlockKind::Paragraph => {
                pieces.clear();
                sentences(text, block.start, block.end, &mut pieces);
            }
            BlockKind::Code => {
                pieces.clear();
                code_lines(text, block.start, block.end, &mut pieces);
            }
        }
        if let Some(section) = sections.last_mut() {
            push_units(text, &pieces, target, true, &mut section.units);
            debug_assert!(section.units.len() >= before);
        }
    }
    for s in &mut sections {
        s.words = s.units.iter().map(|u| u.words).sum();
    }

    let min_section = (target / 8).max(8);
    let mut out = Vec::new();
    // The heading path: titles of the enclosing sections by level.
    let mut path: Vec<(u8, String)> = Vec::new();
    let mut carried: Vec<Unit> = Vec::new();
    let count = sections.len();
    for (idx, section) in sections.into_iter().enumerate() {
        if let Some(title) = &section.title {
            while path.last().is_some_and(|(l, _)| *l >= section.level) {
                path.pop();
            }
            path.push((section.level, title.clone()));
        }
        let mut units = std::mem::take(&mut carried);
        units.extend(section.units.iter().copied());
        let total: usize = units.iter().map(|u| u.words).sum();
        // Too small to stand alone: carry into the next section.
        if idx + 1 < count && total < min_section && section.words < min_section {
            carried = units;
            continue;
        }
        let headings: Vec<String> = path.iter().map(|(_, t)| t.clone()).collect();
        pack(&units, target, params.overlap_words, &headings, &mut out);
    }
    out
}

fn pack(units: &[Unit], target: usize, overlap: usize, headings: &[String], out: &mut Vec<ChunkSpan>) {
    let n = units.len();
    let mut i = 0;
    while i < n {
        let mut j = i;
        let mut total = 0;
        while j < n && (j == i || total + units[j].words <= target) {
            total += units[j].words;
            j += 1;
        }
        if j < n {
            // Prefer the last paragraph boundary that leaves the chunk at least half full.
            let mut acc = 0;
            let mut best = None;
            for (k, u) in units.iter().enumerate().take(j).skip(i) {
                if k > i && u.block_start && acc * 2 >= target {
                    best = Some(k);
                }
                acc += u.words;
            }
            if let Some(k) = best {
                j = k;
            }
        }
        out.push(ChunkSpan { start: units[i].start, end: units[j - 1].end, headings: headings.to_vec() });
        if j >= n {
            break;
        }
        // Overlap: repeat trailing units of the same paragraph, never the whole chunk.
        let mut next = j;
        let mut budget = 0;
        while next > i + 1 && !units[next].block_start && budget + units[next - 1].words <= overlap {
            budget += units[next - 1].words;
            next -= 1;
        }
        i = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::{Format, parse};

    fn params(target: usize, overlap: usize) -> ChunkParams {
        ChunkParams { target_words: target, overlap_words: overlap }
    }

    fn chunks_of(text: &str, format: Format, p: ChunkParams) -> Vec<ChunkSpan> {
        let chunks = chunk(text, &parse(text, format), p);
        for c in &chunks {
            let t = &text[c.start..c.end];
            assert_eq!(t, t.trim(), "chunks are trimmed");
            assert!(!t.is_empty());
        }
        chunks
    }

    #[test]
    fn sections_do_not_mix_and_tiny_sections_merge_forward() {
        let text = "# Guide\n\n## Install\n\nRun the installer. It takes a minute and asks nothing at all, really nothing.\n\n## Use\n\nStart it with the command and wait for the prompt to appear on screen.\n";
        let chunks = chunks_of(text, Format::Markdown, params(100, 10));
        let texts: Vec<&str> = chunks.iter().map(|c| &text[c.start..c.end]).collect();
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert!(texts[0].starts_with("# Guide\n\n## Install"), "the bare title merges into the next section");
        assert!(texts[1].starts_with("## Use"));
        assert_eq!(chunks[0].headings, vec!["Guide", "Install"]);
        assert_eq!(chunks[1].headings, vec!["Guide", "Use"]);
    }

    #[test]
    fn long_paragraphs_split_at_sentences_with_overlap() {
        let sentence = |i: usize| format!("Sentence number {i} has exactly seven words.");
        let para: Vec<String> = (0..20).map(sentence).collect();
        let text = para.join(" ");
        let chunks = chunks_of(&text, Format::Text, params(30, 7));
        assert!(chunks.len() > 4);
        for pair in chunks.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert!(b.start < a.end, "consecutive chunks of one paragraph overlap");
            assert!(b.start > a.start, "progress");
            assert!(text[b.start..].starts_with("Sentence"), "chunks start at a sentence");
            assert!(words(&text[a.start..a.end]) <= 30);
        }
        assert_eq!(chunks.last().unwrap().end, text.len());
    }

    #[test]
    fn paragraph_boundaries_are_preferred_and_not_overlapped() {
        let p = |n: usize, w: &str| vec![w; n].join(" ") + ".";
        let text = format!("{}\n\n{}\n\n{}", p(12, "alpha"), p(12, "beta"), p(12, "gamma"));
        let chunks = chunks_of(&text, Format::Text, params(30, 10));
        let texts: Vec<&str> = chunks.iter().map(|c| &text[c.start..c.end]).collect();
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert!(texts[0].ends_with("beta.") && texts[1].starts_with("gamma"), "{texts:?}");
    }

    #[test]
    fn giant_sentences_and_code_lines_are_cut() {
        let text = vec!["word"; 250].join(" ");
        let chunks = chunks_of(&text, Format::Text, params(100, 10));
        assert_eq!(chunks.len(), 3);
        assert!(chunks.iter().all(|c| words(&text[c.start..c.end]) <= 100));
        let code = (0..200).map(|i| format!("let x{i} = {i};")).collect::<Vec<_>>().join("\n");
        let chunks = chunks_of(&code, Format::Code, params(40, 8));
        assert!(chunks.len() >= 20);
        assert!(chunks.iter().all(|c| code[c.start..c.end].starts_with("let ")), "code cuts at lines");
    }

    #[test]
    fn multibyte_text_keeps_char_boundaries() {
        let text = "Überschrift — naïve café. ".repeat(40) + "\n\n# 見出し\n\n日本語の文。 もう一つ。";
        let chunks = chunks_of(&text, Format::Markdown, params(20, 5));
        for c in &chunks {
            assert!(text.is_char_boundary(c.start) && text.is_char_boundary(c.end));
        }
        assert_eq!(chunks.last().unwrap().headings, vec!["見出し"]);
    }
}
