//! Prometheus metrics in the text exposition format, without a client library: counters
//! and gauges with labels, one process-wide registry, rendered on `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{LazyLock, Mutex};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

#[derive(Debug)]
struct Family {
    help: &'static str,
    kind: Kind,
    series: BTreeMap<Vec<(String, String)>, f64>,
}

/// A set of metric families.
#[derive(Debug, Default)]
pub struct Registry {
    families: Mutex<BTreeMap<&'static str, Family>>,
}

/// The process's registry.
pub static METRICS: LazyLock<Registry> = LazyLock::new(Registry::default);

fn key(labels: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut k: Vec<(String, String)> = labels
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    k.sort();
    k
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Registry {
    fn with(
        &self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        f: impl FnOnce(&mut BTreeMap<Vec<(String, String)>, f64>),
    ) {
        let mut families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let family = families.entry(name).or_insert_with(|| Family {
            help,
            kind,
            series: BTreeMap::new(),
        });
        f(&mut family.series);
    }

    /// Adds to a counter.
    pub fn inc(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)], by: f64) {
        self.with(name, help, Kind::Counter, |s| {
            *s.entry(key(labels)).or_default() += by
        });
    }

    /// Declares a counter at zero so it shows before it first moves.
    pub fn declare(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)]) {
        self.with(name, help, Kind::Counter, |s| {
            s.entry(key(labels)).or_default();
        });
    }

    /// Sets a counter to a running total kept elsewhere (monotonic for the process).
    pub fn set_counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        total: f64,
    ) {
        self.with(name, help, Kind::Counter, |s| {
            s.insert(key(labels), total);
        });
    }

    /// Sets a gauge.
    pub fn set(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)], value: f64) {
        self.with(name, help, Kind::Gauge, |s| {
            s.insert(key(labels), value);
        });
    }

    /// Drops every series of a gauge family (before setting the current ones).
    pub fn clear(&self, name: &'static str) {
        if let Some(f) = self
            .families
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(name)
        {
            f.series.clear();
        }
    }

    /// The current value of a series (tests).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.families
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)?
            .series
            .get(&key(labels))
            .copied()
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for (name, f) in families.iter() {
            let kind = match f.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP {name} {}", f.help);
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in &f.series {
                let labels: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                    .collect();
                let labels = if labels.is_empty() {
                    String::new()
                } else {
                    format!("{{{}}}", labels.join(","))
                };
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges_with_labels() {
        let r = Registry::default();
        r.inc("x_total", "Things.", &[("pool", "a\"b")], 1.0);
        r.inc("x_total", "Things.", &[("pool", "a\"b")], 2.0);
        r.set("y", "Level.", &[], 7.0);
        r.declare("z_total", "Zero.", &[("reason", "out_of_ips")]);
        let text = r.render();
        assert!(
            text.contains("# TYPE x_total counter\nx_total{pool=\"a\\\"b\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE y gauge\ny 7\n"), "{text}");
        assert!(
            text.contains("z_total{reason=\"out_of_ips\"} 0\n"),
            "{text}"
        );
        assert_eq!(r.get("x_total", &[("pool", "a\"b")]), Some(3.0));
    }
}
