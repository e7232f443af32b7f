//! Logging: `tracing` to stderr, filtered by `RUST_LOG` (default `info`),
//! as text for people or JSON lines for machines (`--log-format json`).

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global subscriber (`default_level` applies when `RUST_LOG` is unset).
/// Safe to call more than once (later calls are no-ops).
pub fn init(format: LogFormat, default_level: &str) {
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| default_level.to_string());
    // hyper warns of every connection its header timeout closes: idle
    // keep-alive clients and slowloris alike, routine for a server that
    // sets one (`http/server.rs`). Only its errors are worth a line,
    // unless RUST_LOG names hyper itself.
    let spec = if spec.contains("hyper") {
        spec
    } else {
        format!("{spec},hyper=error")
    };
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// A Prometheus registry with helpers to publish values read from state at
/// scrape time (counters kept monotonic, gauges set).
pub struct Metrics {
    registry: prometheus::Registry,
    counters: parking_lot::Mutex<std::collections::HashMap<String, prometheus::IntCounter>>,
    gauges: parking_lot::Mutex<std::collections::HashMap<String, prometheus::IntGauge>>,
    counter_vecs: parking_lot::Mutex<std::collections::HashMap<String, prometheus::IntCounterVec>>,
    gauge_vecs: parking_lot::Mutex<std::collections::HashMap<String, prometheus::IntGaugeVec>>,
    series: parking_lot::Mutex<std::collections::HashMap<String, prometheus::GaugeVec>>,
}

/// The label every per-index metric carries.
pub const INDEX_LABEL: &str = "index";

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            registry: prometheus::Registry::new(),
            counters: Default::default(),
            gauges: Default::default(),
            counter_vecs: Default::default(),
            gauge_vecs: Default::default(),
            series: Default::default(),
        }
    }

    /// A counter with an `index` label, which the caller increments.
    pub fn counter_vec(&self, name: &str, help: &str) -> prometheus::IntCounterVec {
        let c = prometheus::IntCounterVec::new(prometheus::Opts::new(name, help), &[INDEX_LABEL])
            .unwrap_or_else(|_| {
                prometheus::IntCounterVec::new(
                    prometheus::Opts::new("indexswarm_invalid_metric_total", "bad metric name"),
                    &[INDEX_LABEL],
                )
                .expect("static name")
            });
        let _ = self.registry.register(Box::new(c.clone()));
        c
    }

    /// A histogram (seconds) with an `index` label.
    pub fn histogram_vec(&self, name: &str, help: &str) -> prometheus::HistogramVec {
        let opts = prometheus::HistogramOpts::new(name, help).buckets(vec![
            0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
        ]);
        let h = prometheus::HistogramVec::new(opts, &[INDEX_LABEL]).unwrap_or_else(|_| {
            prometheus::HistogramVec::new(
                prometheus::HistogramOpts::new("indexswarm_invalid_histogram", "bad"),
                &[INDEX_LABEL],
            )
            .expect("static name")
        });
        let _ = self.registry.register(Box::new(h.clone()));
        h
    }

    /// Raises counter `name{index=...}` to `value`.
    pub fn set_counter_for(&self, name: &str, help: &str, index: &str, value: u64) {
        let mut map = self.counter_vecs.lock();
        let v = map
            .entry(name.to_string())
            .or_insert_with(|| self.counter_vec(name, help));
        let c = v.with_label_values(&[index]);
        let cur = c.get();
        if value > cur {
            c.inc_by(value - cur);
        }
    }

    /// Sets gauge `name{index=...}`.
    pub fn set_gauge_for(&self, name: &str, help: &str, index: &str, value: i64) {
        let mut map = self.gauge_vecs.lock();
        let v = map.entry(name.to_string()).or_insert_with(|| {
            let g = prometheus::IntGaugeVec::new(prometheus::Opts::new(name, help), &[INDEX_LABEL])
                .unwrap_or_else(|_| {
                    prometheus::IntGaugeVec::new(
                        prometheus::Opts::new("indexswarm_invalid_gauge", "bad metric name"),
                        &[INDEX_LABEL],
                    )
                    .expect("static name")
                });
            let _ = self.registry.register(Box::new(g.clone()));
            g
        });
        v.with_label_values(&[index]).set(value);
    }

    /// Replaces every series of gauge `name` (labels `labels`) with
    /// `series`: series not given disappear (a replica that left, a state
    /// nobody is in), so the label sets stay as bounded as `series`.
    pub fn set_gauge_series(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        series: &[(Vec<String>, f64)],
    ) {
        let mut map = self.series.lock();
        let v = map.entry(name.to_string()).or_insert_with(|| {
            let g = prometheus::GaugeVec::new(prometheus::Opts::new(name, help), labels)
                .unwrap_or_else(|_| {
                    prometheus::GaugeVec::new(
                        prometheus::Opts::new("indexswarm_invalid_gauge_series", "bad metric"),
                        labels,
                    )
                    .expect("static name")
                });
            let _ = self.registry.register(Box::new(g.clone()));
            g
        });
        v.reset();
        for (values, value) in series {
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            if let Ok(g) = v.get_metric_with_label_values(&values) {
                g.set(*value);
            }
        }
    }

    /// A counter the caller increments.
    pub fn counter(&self, name: &str, help: &str) -> prometheus::IntCounter {
        let c = prometheus::IntCounter::new(name, help).unwrap_or_else(|_| {
            prometheus::IntCounter::new("indexswarm_invalid_metric_total", "bad metric name")
                .expect("static name")
        });
        let _ = self.registry.register(Box::new(c.clone()));
        c
    }

    pub fn histogram(&self, name: &str, help: &str) -> prometheus::Histogram {
        let opts = prometheus::HistogramOpts::new(name, help).buckets(vec![
            0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
        ]);
        let h = prometheus::Histogram::with_opts(opts).unwrap_or_else(|_| {
            prometheus::Histogram::with_opts(prometheus::HistogramOpts::new(
                "indexswarm_invalid_histogram",
                "bad",
            ))
            .expect("static name")
        });
        let _ = self.registry.register(Box::new(h.clone()));
        h
    }

    /// Raises counter `name` to `value` (counters never go down).
    pub fn set_counter(&self, name: &str, help: &str, value: u64) {
        let mut map = self.counters.lock();
        let c = map
            .entry(name.to_string())
            .or_insert_with(|| self.counter(name, help));
        let cur = c.get();
        if value > cur {
            c.inc_by(value - cur);
        }
    }

    pub fn set_gauge(&self, name: &str, help: &str, value: i64) {
        let mut map = self.gauges.lock();
        let g = map.entry(name.to_string()).or_insert_with(|| {
            let g = prometheus::IntGauge::new(name, help).unwrap_or_else(|_| {
                prometheus::IntGauge::new("indexswarm_invalid_gauge", "bad metric name")
                    .expect("static name")
            });
            let _ = self.registry.register(Box::new(g.clone()));
            g
        });
        g.set(value);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
