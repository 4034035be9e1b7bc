//! A small Prometheus registry: labelled counters and histograms whose series are atomics
//! behind a read-mostly map, rendered in the text exposition format 0.0.4.
//!
//! Measured against `prometheus-client` 0.26 with the same five updates per request
//! (callgrind): 4,170 instructions here, 3,090 there, and its rendering is about 4x faster.
//! Not swapped yet because it writes only OpenMetrics 1.0 (another content type, `# TYPE`
//! names without `_total`, `# EOF`), which changes what scrapers and the e2e test read.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Separates label values inside a series key (never appears in sane label values; if it
/// does, the series merely shares a key with an equally odd one).
const SEP: char = '\u{1f}';

/// A series map: a read lock to find an existing series, a write lock only to add one.
struct Series<T> {
    map: RwLock<HashMap<String, Arc<T>>>,
}

impl<T> Series<T> {
    fn new() -> Self {
        Series {
            map: RwLock::new(HashMap::new()),
        }
    }

    /// The series for `values`, made with `make` the first time.
    fn get(&self, values: &[&str], make: impl FnOnce() -> T) -> Arc<T> {
        thread_local! {
            /// The key being looked up, reused so that finding an existing series allocates nothing.
            static KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        KEY.with(|key| {
            let mut key = key.borrow_mut();
            key.clear();
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    key.push(SEP);
                }
                key.push_str(v);
            }
            if let Some(s) = self
                .map
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(key.as_str())
            {
                return s.clone();
            }
            self.map
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key.clone())
                .or_insert_with(|| Arc::new(make()))
                .clone()
        })
    }

    /// Every series, sorted by label values, for stable output.
    fn sorted(&self) -> Vec<(Vec<String>, Arc<T>)> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map
            .iter()
            .map(|(k, s)| (k.split(SEP).map(str::to_string).collect(), s.clone()))
            .collect();
        v.sort_by(|a: &(Vec<String>, _), b| a.0.cmp(&b.0));
        v
    }
}

/// A counter with labels.
pub struct CounterVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    series: Series<AtomicU64>,
}

impl CounterVec {
    /// A counter family; `labels` are the label names, in the order values are passed.
    pub fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        CounterVec {
            name,
            help,
            labels,
            series: Series::new(),
        }
    }

    /// Adds `n` to the series with these label values.
    pub fn inc_by(&self, values: &[&str], n: u64) {
        debug_assert_eq!(values.len(), self.labels.len());
        self.series
            .get(values, AtomicU64::default)
            .fetch_add(n, Ordering::Relaxed);
    }

    /// The current value of one series (0 when it does not exist yet).
    pub fn get(&self, values: &[&str]) -> u64 {
        self.series
            .get(values, AtomicU64::default)
            .load(Ordering::Relaxed)
    }

    /// Appends HELP, TYPE and one line per series.
    pub fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "counter");
        for (values, v) in self.series.sorted() {
            let labels = label_set(self.labels, &values, None);
            let _ = writeln!(out, "{}{labels} {}", self.name, v.load(Ordering::Relaxed));
        }
    }
}

/// Upper bounds (seconds) of request duration buckets.
pub const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// One histogram series: a count per bucket (not cumulative), the sum and the count.
pub struct HistogramSeries {
    buckets: Vec<AtomicU64>,
    sum_bits: AtomicU64,
    count: AtomicU64,
}

/// A histogram with labels.
pub struct HistogramVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    bounds: &'static [f64],
    series: Series<HistogramSeries>,
}

impl HistogramVec {
    /// A histogram family with bucket upper bounds `bounds` (ascending; `+Inf` is implied).
    pub fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        bounds: &'static [f64],
    ) -> Self {
        HistogramVec {
            name,
            help,
            labels,
            bounds,
            series: Series::new(),
        }
    }

    /// Records one observation of `value` in the series with these label values.
    pub fn observe(&self, values: &[&str], value: f64) {
        let s = self.series.get(values, || HistogramSeries {
            buckets: self.bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_bits: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
        });
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            s.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        let _ = s
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
        s.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Appends HELP, TYPE and the `_bucket`, `_sum` and `_count` lines of every series.
    pub fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "histogram");
        for (values, s) in self.series.sorted() {
            let mut cumulative = 0;
            for (i, bound) in self.bounds.iter().enumerate() {
                cumulative += s.buckets.get(i).map_or(0, |b| b.load(Ordering::Relaxed));
                let le = format_float(*bound);
                let labels = label_set(self.labels, &values, Some(&le));
                let _ = writeln!(out, "{}_bucket{labels} {cumulative}", self.name);
            }
            let count = s.count.load(Ordering::Relaxed);
            let labels = label_set(self.labels, &values, Some("+Inf"));
            let _ = writeln!(out, "{}_bucket{labels} {count}", self.name);
            let plain = label_set(self.labels, &values, None);
            let sum = f64::from_bits(s.sum_bits.load(Ordering::Relaxed));
            let _ = writeln!(out, "{}_sum{plain} {}", self.name, format_float(sum));
            let _ = writeln!(out, "{}_count{plain} {count}", self.name);
        }
    }
}

/// Appends the HELP and TYPE lines of a family.
pub fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A whole single-value family (a gauge, or a counter without labels).
pub fn single(out: &mut String, name: &str, help: &str, kind: &str, value: u64) {
    header(out, name, help, kind);
    let _ = writeln!(out, "{name} {value}");
}

/// `{a="x",b="y"}` (with `le` last when given), or nothing for no labels.
fn label_set(names: &[&str], values: &[String], le: Option<&str>) -> String {
    let mut parts: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// Escapes a label value: backslash, double quote and newline.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn format_float(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_sorted_with_escaped_labels() {
        let c = CounterVec::new("t_total", "Things.", &["a", "b"]);
        c.inc_by(&["y", "q\"\\\n"], 2);
        c.inc_by(&["x", "1"], 1);
        c.inc_by(&["x", "1"], 1);
        let mut out = String::new();
        c.render(&mut out);
        assert_eq!(
            out,
            "# HELP t_total Things.\n# TYPE t_total counter\n\
             t_total{a=\"x\",b=\"1\"} 2\n\
             t_total{a=\"y\",b=\"q\\\"\\\\\\n\"} 2\n"
        );
        assert_eq!(c.get(&["x", "1"]), 2);
    }

    #[test]
    fn histograms_are_cumulative_with_inf_sum_and_count() {
        let h = HistogramVec::new("d_seconds", "Time.", &["s"], &[0.1, 1.0]);
        h.observe(&["a"], 0.05);
        h.observe(&["a"], 0.5);
        h.observe(&["a"], 7.0);
        let mut out = String::new();
        h.render(&mut out);
        assert_eq!(
            out,
            "# HELP d_seconds Time.\n# TYPE d_seconds histogram\n\
             d_seconds_bucket{s=\"a\",le=\"0.1\"} 1\n\
             d_seconds_bucket{s=\"a\",le=\"1\"} 2\n\
             d_seconds_bucket{s=\"a\",le=\"+Inf\"} 3\n\
             d_seconds_sum{s=\"a\"} 7.55\n\
             d_seconds_count{s=\"a\"} 3\n"
        );
    }

    #[test]
    fn single_values() {
        let mut out = String::new();
        single(&mut out, "g", "A gauge.", "gauge", 4);
        assert_eq!(out, "# HELP g A gauge.\n# TYPE g gauge\ng 4\n");
    }
}
