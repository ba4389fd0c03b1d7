//! The bounded ring of recent lines of one plug-in (bounded in lines and in message bytes).

use std::collections::VecDeque;
use std::sync::Arc;

use super::LogLine;

pub(super) struct Ring {
    lines: VecDeque<Arc<LogLine>>,
    bytes: usize,
    max_lines: usize,
    max_bytes: usize,
    next_seq: u64,
}

impl Ring {
    pub(super) fn new(max_lines: usize, max_bytes: usize) -> Self {
        Self { lines: VecDeque::new(), bytes: 0, max_lines, max_bytes, next_seq: 1 }
    }

    /// Sequence number for the next line; sequence numbers start at 1.
    pub(super) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub(super) fn push(&mut self, line: Arc<LogLine>) {
        self.next_seq = line.seq + 1;
        self.bytes += line.msg.len();
        self.lines.push_back(line);
        while self.lines.len() > self.max_lines || (self.bytes > self.max_bytes && self.lines.len() > 1) {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.msg.len();
            }
        }
    }

    pub(super) fn tail(&self, n: usize) -> Vec<Arc<LogLine>> {
        let skip = self.lines.len().saturating_sub(n);
        self.lines.iter().skip(skip).cloned().collect()
    }

    /// Lines with `seq > after` (the last `tail` of them when `after` is `None`), and how many
    /// lines the caller asked for that are no longer in the ring.
    pub(super) fn after(&self, after: Option<u64>, tail: usize) -> (Vec<Arc<LogLine>>, u64) {
        let Some(after) = after else { return (self.tail(tail), 0) };
        let oldest = self.lines.front().map_or(self.next_seq, |l| l.seq);
        let gap = oldest.saturating_sub(after + 1);
        let lines = self.lines.iter().filter(|l| l.seq > after).cloned().collect();
        (lines, gap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::Level;

    fn line(seq: u64, msg: &str) -> Arc<LogLine> {
        Arc::new(LogLine {
            seq,
            plugin: Arc::from("p"),
            ts: String::new(),
            level: Level::Info,
            msg: msg.into(),
            fields: None,
            stream: "stderr",
            raw: true,
            truncated: false,
        })
    }

    #[test]
    fn bounded_by_lines_and_bytes() {
        let mut r = Ring::new(3, 10);
        for i in 1..=5 {
            r.push(line(i, "ab"));
        }
        assert_eq!(r.tail(10).iter().map(|l| l.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        r.push(line(6, "0123456789"));
        assert_eq!(r.tail(10).iter().map(|l| l.seq).collect::<Vec<_>>(), vec![6]);
    }

    #[test]
    fn resume_reports_the_gap() {
        let mut r = Ring::new(3, 1000);
        for i in 1..=10 {
            r.push(line(i, "x"));
        }
        let (lines, gap) = r.after(Some(2), 100);
        assert_eq!(lines.iter().map(|l| l.seq).collect::<Vec<_>>(), vec![8, 9, 10]);
        assert_eq!(gap, 5); // 3..=7 are gone
        let (lines, gap) = r.after(Some(9), 100);
        assert_eq!((lines.len(), gap), (1, 0));
        let (lines, gap) = r.after(Some(10), 100);
        assert_eq!((lines.len(), gap), (0, 0));
    }
}
