//! `GET /metrics`: the served flow's counters in Prometheus' text format (0.0.4).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use sluice_engine::LineResult;

/// Every metric of a served flow.
#[derive(Clone, Debug)]
pub(super) struct Metrics {
    registry: Registry,
    /// Requests answered, by route and status code.
    pub requests: IntCounterVec,
    /// Seconds a line ran, by its status.
    pub line_seconds: HistogramVec,
    /// Seconds a node ran, by node.
    pub node_seconds: HistogramVec,
    pub in_flight: IntGauge,
    pub queued: IntGauge,
    /// Requests turned away before their line ran, by reason (`queue_full`, `unauthorized`, ...).
    pub rejected: IntCounterVec,
    /// Failed requests and lines, by error code.
    pub errors: IntCounterVec,
    /// LLM tokens, by direction (`prompt`, `completion`).
    pub tokens: IntCounterVec,
    /// Traffic log records dropped because the writer fell behind or failed.
    pub log_dropped: prometheus::IntCounter,
}

const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    120.0,
];

impl Metrics {
    pub(super) fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                labels,
            )?;
            registry.register(Box::new(h.clone()))?;
            Ok::<_, prometheus::Error>(h)
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let log_dropped = prometheus::IntCounter::new(
            "sluice_serve_traffic_log_dropped_total",
            "Served lines left out of the traffic log because its writer fell behind or failed.",
        )?;
        registry.register(Box::new(log_dropped.clone()))?;
        Ok(Metrics {
            requests: counter(
                "sluice_serve_requests_total",
                "HTTP requests answered, by route and status code.",
                &["route", "status"],
            )?,
            line_seconds: histogram(
                "sluice_serve_line_duration_seconds",
                "Seconds a served line ran, by line status.",
                &["status"],
            )?,
            node_seconds: histogram(
                "sluice_serve_node_duration_seconds",
                "Seconds a node of a served line ran, by node.",
                &["node"],
            )?,
            in_flight: gauge("sluice_serve_lines_in_flight", "Lines running now.")?,
            queued: gauge(
                "sluice_serve_queue_depth",
                "Requests waiting for a line to start.",
            )?,
            rejected: counter(
                "sluice_serve_rejections_total",
                "Requests turned away before their line ran, by reason.",
                &["reason"],
            )?,
            errors: counter(
                "sluice_serve_errors_total",
                "Failed requests and lines, by error code.",
                &["code"],
            )?,
            tokens: counter(
                "sluice_serve_llm_tokens_total",
                "LLM tokens of served lines, by direction (prompt, completion).",
                &["direction"],
            )?,
            log_dropped,
            registry,
        })
    }

    /// Records a finished line: its latency, its nodes' latencies and its tokens.
    pub(super) fn line(&self, line: &LineResult) {
        self.line_seconds
            .with_label_values(&[line.status.as_str()])
            .observe(line.duration().as_secs_f64());
        for run in &line.node_runs {
            if let Some(d) = run.system_metrics.duration {
                self.node_seconds.with_label_values(&[&run.node]).observe(d);
            }
            let t = &run.system_metrics.tokens;
            if let Some(n) = t.prompt_tokens {
                self.tokens.with_label_values(&["prompt"]).inc_by(n);
            }
            if let Some(n) = t.completion_tokens {
                self.tokens.with_label_values(&["completion"]).inc_by(n);
            }
        }
    }

    /// The text exposition of every metric.
    pub(super) fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!("cannot encode the metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The content type of [`Metrics::render`].
pub(super) const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;
