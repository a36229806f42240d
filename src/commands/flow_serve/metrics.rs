//! `GET /metrics`: the served flow's counters in Prometheus' text format (0.0.4).

use prometheus::{HistogramVec, IntCounterVec};
use sluice_engine::LineResult;

use crate::commands::serving::{self, RequestMetrics};

/// Every metric of a served flow.
#[derive(Clone, Debug)]
pub(super) struct Metrics {
    registry: serving::Metrics,
    /// Requests by route and status, rejections, errors, lines in flight and the queue.
    pub http: RequestMetrics,
    /// Seconds a line ran, by its status.
    pub line_seconds: HistogramVec,
    /// Seconds a node ran, by node.
    pub node_seconds: HistogramVec,
    /// LLM tokens, by direction (`prompt`, `completion`).
    pub tokens: IntCounterVec,
    /// Traffic log records dropped because the writer fell behind or failed.
    pub log_dropped: prometheus::IntCounter,
}

impl Metrics {
    pub(super) fn new() -> Result<Metrics, prometheus::Error> {
        let registry = serving::Metrics::default();
        let log_dropped = registry
            .counter(
                "sluice_serve_traffic_log_dropped_total",
                "Served lines left out of the traffic log because its writer fell behind or failed.",
                &[],
            )?
            .with_label_values(&[] as &[&str]);
        Ok(Metrics {
            http: RequestMetrics::new(
                &registry,
                ("sluice_serve_lines_in_flight", "Lines running now."),
            )?,
            line_seconds: registry.histogram(
                "sluice_serve_line_duration_seconds",
                "Seconds a served line ran, by line status.",
                &["status"],
            )?,
            node_seconds: registry.histogram(
                "sluice_serve_node_duration_seconds",
                "Seconds a node of a served line ran, by node.",
                &["node"],
            )?,
            tokens: registry.counter(
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

    /// Records the tokens of a streamed output, known once its stream has ended.
    pub(super) fn stream_tokens(&self, t: &sluice_engine::TokenCounts) {
        if let Some(n) = t.prompt_tokens {
            self.tokens.with_label_values(&["prompt"]).inc_by(n);
        }
        if let Some(n) = t.completion_tokens {
            self.tokens.with_label_values(&["completion"]).inc_by(n);
        }
    }

    /// The text exposition of every metric.
    pub(super) fn render(&self) -> String {
        self.registry.render()
    }
}

/// The content type of [`Metrics::render`].
pub(super) const CONTENT_TYPE: &str = serving::METRICS_CONTENT_TYPE;
