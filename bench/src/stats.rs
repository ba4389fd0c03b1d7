//! Percentiles of one run, the median and range over repeated runs, and the markdown table.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

/// A target from the issue: the value must be below, or at least, a bound.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Goal {
    Below(f64),
    AtLeast(f64),
}

impl Goal {
    fn met(self, v: f64) -> bool {
        match self {
            Goal::Below(bound) => v < bound,
            Goal::AtLeast(bound) => v >= bound,
        }
    }
}

/// One number of one run.
#[derive(Clone, Debug)]
pub(crate) struct Metric {
    pub(crate) bench: &'static str,
    pub(crate) name: String,
    pub(crate) unit: &'static str,
    pub(crate) value: f64,
    /// The goal and how the table states it, e.g. `< 200 µs (#3)`.
    pub(crate) goal: Option<(Goal, &'static str)>,
}

impl Metric {
    pub(crate) fn info(bench: &'static str, name: impl Into<String>, unit: &'static str, value: f64) -> Self {
        Self { bench, name: name.into(), unit, value, goal: None }
    }

    pub(crate) fn target(
        bench: &'static str,
        name: impl Into<String>,
        unit: &'static str,
        value: f64,
        goal: Goal,
        text: &'static str,
    ) -> Self {
        Self { bench, name: name.into(), unit, value, goal: Some((goal, text)) }
    }
}

/// Latency samples of one run, in microseconds.
#[derive(Debug, Default)]
pub(crate) struct Samples(Vec<f64>);

impl Samples {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    pub(crate) fn push(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64() * 1e6);
    }

    pub(crate) fn push_us(&mut self, us: f64) {
        self.0.push(us);
    }

    pub(crate) fn extend(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Nearest-rank percentile (`p` in 0..=100): the smallest sample with at least `p` % of the
    /// samples at or below it. No interpolation, so p99 of 100 samples is the 99th, not a blend.
    pub(crate) fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.0.clone();
        sorted.sort_by(f64::total_cmp);
        if sorted.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }
}

/// The median of the values (the mean of the middle two for an even count).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Which way a shown number is rounded: never in favour of the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Round {
    Nearest,
    /// For "below" targets: a shown value is never smaller than the measured one.
    Up,
    /// For "at least" targets: a shown value is never larger than the measured one.
    Down,
}

/// Formats a count with thousands separators.
pub(crate) fn fmt_int(v: u64) -> String {
    group_thousands(&v.to_string())
}

/// Formats a number with 0 to 3 decimals depending on its size.
pub(crate) fn fmt_num(v: f64) -> String {
    fmt_round(v, Round::Nearest)
}

fn fmt_round(v: f64, round: Round) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let a = v.abs();
    // Whole numbers (counts, and sums of clock ticks that float arithmetic left at 60.000…01)
    // are shown without decimals.
    let whole = a >= 1.0 && (v - v.round()).abs() < 1e-9 * a && round == Round::Nearest;
    let decimals: i32 = if a >= 10_000.0 || whole {
        0
    } else if a >= 100.0 {
        1
    } else if a >= 1.0 {
        2
    } else {
        3
    };
    let scale = 10f64.powi(decimals);
    let r = match round {
        Round::Nearest => (v * scale).round() / scale,
        Round::Up => (v * scale).ceil() / scale,
        Round::Down => (v * scale).floor() / scale,
    };
    group_thousands(&format!("{r:.*}", decimals as usize))
}

fn group_thousands(s: &str) -> String {
    let (sign, rest) = s.strip_prefix('-').map_or(("", s), |r| ("-", r));
    let (int, frac) = rest.split_once('.').map_or((rest, None), |(i, f)| (i, Some(f)));
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

/// Renders every run's metrics as one markdown table: median and range per metric, and the
/// verdict on the median (with how many single runs met the target).
pub(crate) fn markdown(runs: &[Vec<Metric>]) -> String {
    // One row per (bench, name), in the order of first appearance, with every run's value.
    let mut rows: Vec<(&Metric, Vec<f64>)> = vec![];
    let mut index: HashMap<(&'static str, &str), usize> = HashMap::new();
    for run in runs {
        for m in run {
            let i = *index.entry((m.bench, m.name.as_str())).or_insert_with(|| {
                rows.push((m, vec![]));
                rows.len() - 1
            });
            rows[i].1.push(m.value);
        }
    }
    let mut out = String::new();
    out.push_str("| Benchmark | Metric | Median | Range (min – max) | Runs | Target | Result |\n");
    out.push_str("|---|---|---:|---|---:|---|---|\n");
    for (m, values) in &rows {
        let (unit, goal) = (m.unit, m.goal);
        let med = median(values);
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let round = match goal {
            Some((Goal::Below(_), _)) => Round::Up,
            Some((Goal::AtLeast(_), _)) => Round::Down,
            None => Round::Nearest,
        };
        let (target, result) = match goal {
            Some((g, text)) => {
                let ok = values.iter().filter(|v| g.met(**v)).count();
                let verdict = if g.met(med) { "PASS" } else { "MISS" };
                ((*text).to_owned(), format!("**{verdict}** ({ok}/{} runs)", values.len()))
            }
            None => ("—".to_owned(), "info".to_owned()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} {unit} | {} – {} | {} | {target} | {result} |",
            m.bench,
            m.name,
            fmt_round(med, round),
            fmt_round(min, round),
            fmt_round(max, round),
            values.len(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut s = Samples::default();
        for i in 1..=100 {
            s.push_us(f64::from(i));
        }
        assert_eq!(s.percentile(50.0), 50.0);
        assert_eq!(s.percentile(99.0), 99.0);
        assert_eq!(s.percentile(100.0), 100.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(fmt_num(52_345.6), "52,346");
        assert_eq!(fmt_num(199.96), "200.0");
        assert_eq!(fmt_round(199.91, Round::Down), "199.9");
        assert_eq!(fmt_round(199.91, Round::Up), "200.0");
        assert_eq!(fmt_num(0.1234), "0.123");
        assert_eq!(fmt_num(0.06 * 1e3), "60");
        assert_eq!(fmt_num(9_000.0), "9,000");
    }
}
