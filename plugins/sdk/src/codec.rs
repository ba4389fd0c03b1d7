//! Bounded newline framing for both the protocol (stdout/stdin) and log capture (stderr).
//!
//! `tokio_util::codec::LinesCodec` caps lines, but after `MaxLineLengthExceeded` a `FramedRead`
//! yields `None` once (tokio#3976) and callers take that for EOF. This decoder never errors:
//! an over-long line is reported as an *item* and reading carries on, and it never holds more
//! than `max` bytes of one line in memory, whatever the peer writes.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

/// One decoded item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete line without its `\n` (and without a trailing `\r`).
    Line(Bytes),
    /// A line longer than the cap was discarded; the count is how many bytes it had
    /// (reported once the terminating `\n` or EOF is seen).
    Oversized(usize),
    /// The first `max` bytes of a line that is longer than the cap (split mode); the rest of the
    /// line follows as further `Truncated` pieces and a final `Line`.
    Truncated(Bytes),
}

/// What to do with lines longer than the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Drop the line up to the next `\n` without buffering it (protocol frames).
    Discard,
    /// Emit it in pieces of at most `max` bytes (log lines: never lose text, never stall).
    Split,
}

/// A newline decoder with a hard cap on buffered bytes.
#[derive(Debug)]
pub struct LineDecoder {
    max: usize,
    overflow: Overflow,
    /// How far into the buffer we already searched for `\n`.
    scanned: usize,
    /// `Some(n)`: we are discarding an oversized line and have dropped `n` bytes so far.
    discarding: Option<usize>,
}

impl LineDecoder {
    pub fn new(max: usize, overflow: Overflow) -> Self {
        Self { max: max.max(1), overflow, scanned: 0, discarding: None }
    }
}

fn strip_cr(mut line: BytesMut) -> Bytes {
    if line.last() == Some(&b'\r') {
        line.truncate(line.len() - 1);
    }
    line.freeze()
}

impl Decoder for LineDecoder {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        loop {
            let newline = buf[self.scanned..].iter().position(|b| *b == b'\n').map(|i| i + self.scanned);
            if let Some(dropped) = self.discarding {
                match newline {
                    Some(pos) => {
                        buf.advance(pos + 1);
                        self.scanned = 0;
                        self.discarding = None;
                        return Ok(Some(Frame::Oversized(dropped + pos)));
                    }
                    None => {
                        // Drop everything buffered; memory stays bounded by one read.
                        self.discarding = Some(dropped + buf.len());
                        buf.clear();
                        self.scanned = 0;
                        return Ok(None);
                    }
                }
            }
            match newline {
                Some(pos) if pos <= self.max => {
                    let mut line = buf.split_to(pos + 1);
                    line.truncate(pos);
                    self.scanned = 0;
                    // Empty lines are skipped (protocol.md §2.2).
                    if line.is_empty() || line[..] == b"\r"[..] {
                        continue;
                    }
                    return Ok(Some(Frame::Line(strip_cr(line))));
                }
                _ if buf.len() > self.max => match self.overflow {
                    Overflow::Discard => {
                        self.discarding = Some(0);
                        continue;
                    }
                    Overflow::Split => {
                        let piece = buf.split_to(self.max).freeze();
                        self.scanned = 0;
                        return Ok(Some(Frame::Truncated(piece)));
                    }
                },
                _ => {
                    self.scanned = buf.len();
                    return Ok(None);
                }
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        if let Some(dropped) = self.discarding.take() {
            buf.clear();
            self.scanned = 0;
            return Ok(Some(Frame::Oversized(dropped)));
        }
        if buf.is_empty() {
            return Ok(None);
        }
        // A last line without a newline still counts.
        let line = buf.split_to(buf.len());
        self.scanned = 0;
        Ok(Some(Frame::Line(strip_cr(line))))
    }
}

/// Most bytes coalesced into one write by [`coalesce`].
pub const MAX_BATCH: usize = 256 * 1024;

/// Fills `batch` with `first` and whatever else is already queued (up to [`MAX_BATCH`]), so a
/// writer task issues one `write` for a burst of messages. Used by both sides' writer tasks.
pub fn coalesce(batch: &mut Vec<u8>, first: &[u8], rx: &mut tokio::sync::mpsc::Receiver<Vec<u8>>) {
    batch.clear();
    batch.extend_from_slice(first);
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(more) => batch.extend_from_slice(&more),
            Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(max: usize, overflow: Overflow, chunks: &[&[u8]]) -> Vec<Frame> {
        let mut dec = LineDecoder::new(max, overflow);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                out.push(f);
            }
            assert!(buf.len() <= max + chunk.len(), "buffer must stay bounded");
        }
        while let Some(f) = dec.decode_eof(&mut buf).unwrap() {
            out.push(f);
        }
        out
    }

    fn line(s: &str) -> Frame {
        Frame::Line(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn splits_lines_across_reads_and_strips_cr() {
        let frames = run(64, Overflow::Discard, &[b"ab", b"c\r\nd\n\n", b"tail"]);
        assert_eq!(frames, vec![line("abc"), line("d"), line("tail")]);
    }

    #[test]
    fn discards_oversized_line_and_resynchronises() {
        let big = vec![b'x'; 100];
        let frames = run(10, Overflow::Discard, &[b"ok\n", &big, &big, b"yy\nnext\n"]);
        assert_eq!(frames, vec![line("ok"), Frame::Oversized(202), line("next")]);
    }

    #[test]
    fn oversized_at_eof_is_reported() {
        let frames = run(4, Overflow::Discard, &[b"123456789"]);
        assert_eq!(frames, vec![Frame::Oversized(9)]);
    }

    #[test]
    fn split_mode_keeps_every_byte() {
        let frames = run(4, Overflow::Split, &[b"abcdefghij\nk\n"]);
        assert_eq!(
            frames,
            vec![
                Frame::Truncated(Bytes::from_static(b"abcd")),
                Frame::Truncated(Bytes::from_static(b"efgh")),
                line("ij"),
                line("k"),
            ]
        );
    }

    #[test]
    fn line_of_exactly_max_bytes_is_accepted() {
        let frames = run(3, Overflow::Discard, &[b"abc\n"]);
        assert_eq!(frames, vec![line("abc")]);
    }
}
