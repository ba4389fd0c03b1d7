//! Stop strings over streamed text: text that could still turn into a stop string is held back,
//! so a stop string split over several tokens never leaks a prefix to the client.

/// Accumulates generated text and says how much of it is safe to emit.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    text: String,
    /// Bytes of `text` already handed out.
    emitted: usize,
}

/// What one piece of text did.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Text safe to emit now (possibly empty).
    Emit(String),
    /// A stop string appeared: emit this last text (before the stop string) and finish.
    Stop(String),
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self { stops, text: String::new(), emitted: 0 }
    }

    /// Adds generated text.
    pub fn push(&mut self, piece: &str) -> Step {
        self.text.push_str(piece);
        // A stop string can only start at or after `emitted`: everything before it was emitted
        // because no stop string could begin there.
        let tail = &self.text[self.emitted..];
        if let Some(at) = self.stops.iter().filter_map(|s| tail.find(s.as_str())).min() {
            let out = tail[..at].to_owned();
            self.text.truncate(self.emitted + at);
            self.emitted = self.text.len();
            return Step::Stop(out);
        }
        let hold = self.held_back(tail);
        let safe = tail.len() - hold;
        let out = tail[..safe].to_owned();
        self.emitted += safe;
        Step::Emit(out)
    }

    /// Text still held back (at the end of generation it is emitted after all).
    pub fn flush(&mut self) -> String {
        let out = self.text[self.emitted..].to_owned();
        self.emitted = self.text.len();
        out
    }

    /// The whole text so far, up to (not including) a stop string.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Length of the longest suffix of `tail` that is a proper prefix of some stop string.
    fn held_back(&self, tail: &str) -> usize {
        let mut best = 0;
        for stop in &self.stops {
            let max = stop.len().saturating_sub(1).min(tail.len());
            for len in (best + 1..=max).rev() {
                let start = tail.len() - len;
                if tail.is_char_boundary(start) && stop.starts_with(&tail[start..]) {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_text_through_without_stops() {
        let mut m = StopMatcher::new(vec![]);
        assert_eq!(m.push("Hello"), Step::Emit("Hello".into()));
        assert_eq!(m.push(" world"), Step::Emit(" world".into()));
        assert_eq!(m.flush(), "");
        assert_eq!(m.text(), "Hello world");
    }

    #[test]
    fn holds_back_a_split_stop_string() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("abc E"), Step::Emit("abc ".into()));
        assert_eq!(m.push("N"), Step::Emit(String::new()));
        assert_eq!(m.push("D and more"), Step::Stop(String::new()));
        assert_eq!(m.text(), "abc ");
    }

    #[test]
    fn releases_a_false_alarm_and_stops_inside_a_piece() {
        let mut m = StopMatcher::new(vec!["\n\n".into(), "stop".into()]);
        assert_eq!(m.push("a\n"), Step::Emit("a".into()));
        assert_eq!(m.push("b st"), Step::Emit("\nb ".into()));
        assert_eq!(m.push("ay. x stop y"), Step::Stop("stay. x ".into()));
        assert_eq!(m.text(), "a\nb stay. x ");
    }

    #[test]
    fn flush_emits_what_was_held_back() {
        let mut m = StopMatcher::new(vec!["ééé".into()]);
        assert_eq!(m.push("xé"), Step::Emit("x".into()));
        assert_eq!(m.flush(), "é");
        assert_eq!(m.text(), "xé");
    }
}
