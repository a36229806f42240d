//! `GET /metrics`: the served flow's counters in Prometheus' text format (0.0.4).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use prometheus::{HistogramVec, IntCounterVec};

use crate::commands::serving::Labeled;
use sluice_engine::LineResult;

use crate::otel::TraceStats;

use crate::commands::serving::{self, RequestMetrics};

/// Every metric of a served flow.
#[derive(Clone, Debug)]
pub(super) struct Metrics {
    /// Whether lines are counted (`--no-metrics` turns them off, and `/metrics` with them).
    pub on: bool,
    registry: serving::Metrics,
    /// Requests by route and status, rejections, errors, lines in flight and the queue.
    pub http: RequestMetrics,
    /// Seconds a line ran, by its status.
    pub line_seconds: Labeled<HistogramVec>,
    /// Seconds a node ran, by node.
    pub node_seconds: Labeled<HistogramVec>,
    /// LLM tokens, by direction (`prompt`, `completion`).
    pub tokens: Labeled<IntCounterVec>,
    /// Traffic log records dropped because the writer fell behind or failed.
    pub log_dropped: prometheus::IntCounter,
    /// Spans exported, and dropped by reason (`queue_full`, `export_failed`), copied from the
    /// tracer's counters when the metrics are read.
    trace_exported: prometheus::IntCounter,
    trace_dropped: IntCounterVec,
    trace_sync: Arc<Mutex<()>>,
}

impl Metrics {
    /// The metrics, counted if `on`.
    pub(super) fn new(on: bool) -> Result<Metrics, prometheus::Error> {
        let registry = serving::Metrics::default();
        let log_dropped = registry
            .counter(
                "sluice_serve_traffic_log_dropped_total",
                "Served lines left out of the traffic log because its writer fell behind or failed.",
                &[],
            )?
            .with_label_values(&[] as &[&str]);
        Ok(Metrics {
            on,
            http: RequestMetrics::new(
                &registry,
                ("sluice_serve_lines_in_flight", "Lines running now."),
            )?,
            line_seconds: registry.histograms(
                "sluice_serve_line_duration_seconds",
                "Seconds a served line ran, by line status.",
                &["status"],
            )?,
            node_seconds: registry.histograms(
                "sluice_serve_node_duration_seconds",
                "Seconds a node of a served line ran, by node.",
                &["node"],
            )?,
            tokens: registry.counters(
                "sluice_serve_llm_tokens_total",
                "LLM tokens of served lines, by direction (prompt, completion).",
                &["direction"],
            )?,
            log_dropped,
            trace_exported: registry
                .counter(
                    "sluice_trace_spans_exported_total",
                    "OpenTelemetry spans the collector accepted.",
                    &[],
                )?
                .with_label_values(&[] as &[&str]),
            trace_dropped: registry.counter(
                "sluice_trace_spans_dropped_total",
                "OpenTelemetry spans dropped, by reason: queue_full (the exporter fell behind; lines never wait for it) or export_failed.",
                &["reason"],
            )?,
            trace_sync: Arc::default(),
            registry,
        })
    }

    /// Brings the span counters up to the tracer's.
    pub(super) fn trace_counts(&self, stats: &TraceStats) {
        let _one_at_a_time = self.trace_sync.lock();
        let raise = |c: &prometheus::IntCounter, to: u64| c.inc_by(to.saturating_sub(c.get()));
        raise(&self.trace_exported, stats.exported());
        for (reason, n) in [
            ("queue_full", &stats.dropped_queue_full),
            ("export_failed", &stats.dropped_export_failed),
        ] {
            raise(
                &self.trace_dropped.with_label_values(&[reason]),
                n.load(Ordering::Relaxed),
            );
        }
    }

    /// Records a finished line: its latency, its nodes' latencies and its tokens.
    pub(super) fn line(&self, line: &LineResult) {
        if !self.on {
            return;
        }
        let seconds = line.duration().as_secs_f64();
        self.line_seconds
            .with(&[line.status.as_str()], |h| h.observe(seconds));
        for run in &line.node_runs {
            if let Some(d) = run.system_metrics.duration {
                self.node_seconds.with(&[&run.node], |h| h.observe(d));
            }
            self.count_tokens(&run.system_metrics.tokens);
        }
    }

    /// Counts LLM tokens: a node's, or a streamed output's once its stream has ended.
    pub(super) fn count_tokens(&self, t: &sluice_engine::TokenCounts) {
        if !self.on {
            return;
        }
        if let Some(n) = t.prompt_tokens {
            self.tokens.with(&["prompt"], |c| c.inc_by(n));
        }
        if let Some(n) = t.completion_tokens {
            self.tokens.with(&["completion"], |c| c.inc_by(n));
        }
    }

    /// The text exposition of every metric.
    pub(super) fn render(&self) -> String {
        self.registry.render()
    }
}

/// The content type of [`Metrics::render`].
pub(super) const CONTENT_TYPE: &str = serving::METRICS_CONTENT_TYPE;
