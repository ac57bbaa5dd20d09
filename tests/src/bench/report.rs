//! Result rows, statistics, and the two output formats (table, JSON).

use std::time::Duration;

use serde::Serialize;

/// One measured figure of a workload, next to its baseline from the same run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    /// Workload name; `--quick` runs say so in it.
    pub(crate) workload: String,
    /// The measured figure; `None` when the workload is not available in this build.
    pub(crate) value: Option<f64>,
    /// Unit of `value`, `baseline` and `bar`.
    pub(crate) unit: String,
    /// The same operation without Rathaus (or with one recipient), measured in this run.
    pub(crate) baseline: Option<f64>,
    /// `value / baseline`.
    pub(crate) ratio: Option<f64>,
    /// The DESIGN §10 bar in the unit of `value` (for bars relative to the baseline, the
    /// bar times this run's baseline); `None` where DESIGN sets no bar.
    pub(crate) bar: Option<f64>,
    /// Direction of the bar.
    pub(crate) lower_is_better: bool,
    /// What the row measures, for the table only.
    #[serde(skip)]
    pub(crate) note: String,
}

impl Row {
    pub(crate) fn new(workload: impl Into<String>, value: f64, unit: &str) -> Self {
        Self {
            workload: workload.into(),
            value: Some(value),
            unit: unit.into(),
            baseline: None,
            ratio: None,
            bar: None,
            lower_is_better: true,
            note: String::new(),
        }
    }

    /// A workload that cannot run in this build: no number is made up.
    pub(crate) fn unavailable(workload: impl Into<String>, unit: &str, why: &str) -> Self {
        Self {
            value: None,
            note: format!("not available: {why}"),
            ..Self::new(workload, 0.0, unit)
        }
    }

    pub(crate) fn baseline(mut self, baseline: f64) -> Self {
        self.baseline = Some(baseline);
        self.ratio = self.value.filter(|_| baseline != 0.0).map(|v| v / baseline);
        self
    }

    pub(crate) fn bar(mut self, bar: f64) -> Self {
        self.bar = Some(bar);
        self
    }

    pub(crate) fn higher_is_better(mut self) -> Self {
        self.lower_is_better = false;
        self
    }

    pub(crate) fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }

    /// `Some(true)` if the bar is met, `None` without a bar or a value.
    pub(crate) fn met(&self) -> Option<bool> {
        let (value, bar) = (self.value?, self.bar?);
        Some(if self.lower_is_better {
            value <= bar
        } else {
            value >= bar
        })
    }
}

/// Prints `{"results": [...]}`.
pub(crate) fn print_json(rows: &[Row]) -> anyhow::Result<()> {
    #[derive(Serialize)]
    struct Results<'a> {
        results: &'a [Row],
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&Results { results: rows })?
    );
    Ok(())
}

/// Prints an aligned table.
pub(crate) fn print_table(rows: &[Row]) {
    let header = [
        "workload", "value", "unit", "baseline", "ratio", "bar", "met", "note",
    ];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            let bar = r
                .bar
                .map(|b| format!("{} {}", if r.lower_is_better { "≤" } else { "≥" }, num(b)));
            [
                r.workload.clone(),
                r.value.map_or("n/a".into(), num),
                r.unit.clone(),
                r.baseline.map_or("-".into(), num),
                r.ratio.map_or("-".into(), |x| format!("{x:.2}")),
                bar.unwrap_or_else(|| "-".into()),
                match r.met() {
                    Some(true) => "met".into(),
                    Some(false) => "NOT MET".into(),
                    None => "-".into(),
                },
                r.note.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |row: &[String]| {
        let mut out = String::new();
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                out.push_str(c);
            } else {
                out.push_str(c);
                out.push_str(&" ".repeat(w - c.chars().count() + 2));
            }
        }
        println!("{}", out.trim_end());
    };
    line(&header.map(String::from));
    for row in &cells {
        line(row);
    }
}

/// Three significant digits, no exponent.
pub(crate) fn num(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else if x.abs() >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// Latency samples.
#[derive(Debug, Default, Clone)]
pub(crate) struct Samples(Vec<Duration>);

impl Samples {
    pub(crate) fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    pub(crate) fn extend(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// The `q` quantile (nearest rank) in milliseconds.
    pub(crate) fn quantile_ms(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let mut sorted = self.0.clone();
        sorted.sort_unstable();
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1].as_secs_f64() * 1e3
    }

    pub(crate) fn median_ms(&self) -> f64 {
        self.quantile_ms(0.5)
    }
}

/// Switches a `perf record --control fifo:PATH -D -1` recording on or off around the
/// timed phase `phase` when `RATHAUS_BENCH_PERF_CTL` names that fifo (profiling only);
/// `RATHAUS_BENCH_PERF_PHASE`, if set, names the one phase to record.
pub(crate) fn perf_control(phase: &str, command: &str) {
    let wanted = std::env::var("RATHAUS_BENCH_PERF_PHASE").map_or(true, |p| p == phase);
    if let (Some(path), true) = (std::env::var_os("RATHAUS_BENCH_PERF_CTL"), wanted) {
        if let Err(e) = std::fs::write(&path, format!("{command}\n")) {
            eprintln!("  {phase}: perf control {command}: {e}");
        }
    }
}
