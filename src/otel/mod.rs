//! OpenTelemetry spans of flow runs (`flow test`, `run create`, `flow serve`), exported over OTLP.
//!
//! A line is never held up by tracing. Spans are made after the fact from the finished line's
//! [`LineResult`], with the times the engine measured ([`spans`]), and put on a bounded queue without
//! waiting ([`Tracer::line`]); a worker thread of its own batches them and exports them over
//! OTLP/HTTP (protobuf) or gRPC. When the collector is slow or gone, the queue fills and the spans
//! of further lines are dropped and counted ([`TraceStats`]); memory stays bounded. At the end of a
//! command the queue is flushed within a short deadline ([`Tracer::shutdown`]), and what was
//! exported and dropped is printed.
//!
//! ```ignore
//! # fn f(flow: &sluice_engine::Flow, line: &sluice_engine::LineResult) -> Result<(), Box<dyn std::error::Error>> {
//! use crate::otel::{FlowInfo, LineScope, TraceConfig, Tracer};
//! if let Some(config) = TraceConfig::from_env(Some("http://127.0.0.1:6006"), true, &flow.def.name)? {
//!     let tracer = Tracer::start(config)?;
//!     tracer.line(line, &FlowInfo::of(flow), &LineScope::default());
//!     eprintln!("{}", tracer.shutdown());
//! }
//! # Ok(()) }
//! ```

mod config;
mod spans;
mod worker;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use sluice_engine::{AggregationResult, LineResult};

pub use config::{Protocol, TraceConfig, TraceError};
pub use spans::{FlowInfo, LineScope, Parent, SpanMaker, span_count};

/// What became of the spans handed to a [`Tracer`]; every count is of spans.
#[derive(Debug, Default)]
pub struct TraceStats {
    /// Put on the queue.
    pub queued: AtomicU64,
    /// Accepted by the collector.
    pub exported: AtomicU64,
    /// Dropped because the queue was full (the collector is slow or gone).
    pub dropped_queue_full: AtomicU64,
    /// Dropped because their export failed (refused, unreachable, timed out).
    pub dropped_export_failed: AtomicU64,
}

impl TraceStats {
    fn get(n: &AtomicU64) -> u64 {
        n.load(Ordering::Relaxed)
    }

    pub fn exported(&self) -> u64 {
        Self::get(&self.exported)
    }
}

/// What a tracer did, for the line printed at the end of a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceSummary {
    pub endpoint: String,
    pub exported: u64,
    pub dropped_queue_full: u64,
    pub dropped_export_failed: u64,
    /// Still queued (or being sent) when the flush deadline passed.
    pub not_flushed: u64,
}

impl TraceSummary {
    pub fn dropped(&self) -> u64 {
        self.dropped_queue_full + self.dropped_export_failed + self.not_flushed
    }
}

impl fmt::Display for TraceSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "traces: {} spans exported to {}, {} dropped",
            self.exported,
            self.endpoint,
            self.dropped()
        )?;
        if self.dropped() > 0 {
            write!(
                f,
                " (queue full {}, export failed {}, not flushed in time {})",
                self.dropped_queue_full, self.dropped_export_failed, self.not_flushed
            )?;
        }
        Ok(())
    }
}

/// Makes and exports the spans of finished lines. Cheap to share; [`Tracer::line`] never waits.
#[derive(Debug)]
pub struct Tracer {
    config: TraceConfig,
    queue: tokio::sync::mpsc::Sender<worker::Job>,
    stats: Arc<TraceStats>,
    worker: worker::Handle,
}

impl Tracer {
    /// Starts the export worker (its own thread and runtime) for `config`.
    pub fn start(config: TraceConfig) -> Result<Tracer, TraceError> {
        let stats = Arc::new(TraceStats::default());
        let maker = SpanMaker::new(config.payloads);
        let (queue, worker) = worker::start(&config, maker, stats.clone())?;
        Ok(Tracer {
            config,
            queue,
            stats,
            worker,
        })
    }

    pub fn stats(&self) -> &Arc<TraceStats> {
        &self.stats
    }

    /// Hands a finished line to the exporter, whose thread makes its spans, or drops and counts them
    /// when its queue is full. Never waits: the line's thread only copies the line.
    pub fn line(&self, line: &LineResult, flow: &FlowInfo, scope: &LineScope) {
        let count = span_count(line) as u64;
        match self.queue.try_reserve() {
            Ok(permit) => {
                self.stats.queued.fetch_add(count, Ordering::Relaxed);
                permit.send(worker::Job {
                    line: LineResult {
                        line_number: line.line_number,
                        status: line.status,
                        inputs: line.inputs.clone(),
                        output: line.output.clone(),
                        error: line.error.clone(),
                        node_runs: line.node_runs.clone(),
                        aggregation_inputs: Default::default(),
                        start_time: line.start_time,
                        end_time: line.end_time,
                    },
                    flow: flow.clone(),
                    scope: scope.clone(),
                });
            }
            Err(_) => {
                self.stats
                    .dropped_queue_full
                    .fetch_add(count, Ordering::Relaxed);
            }
        }
    }

    /// Hands a batch run's aggregation to the exporter: a trace of its own, an `aggregation` span with
    /// the metrics as its output and a span per aggregation node under it.
    pub fn aggregation(
        &self,
        result: &AggregationResult,
        (start, end): (DateTime<Utc>, DateTime<Utc>),
        flow: &FlowInfo,
        scope: &LineScope,
    ) {
        let line = LineResult {
            line_number: None,
            status: result.status,
            inputs: Default::default(),
            output: result.metrics.clone(),
            error: result.error.as_ref().map(|(_, e)| e.clone()),
            node_runs: result.node_runs.clone(),
            aggregation_inputs: Default::default(),
            start_time: start,
            end_time: end,
        };
        let scope = LineScope {
            aggregation: true,
            ..scope.clone()
        };
        self.line(&line, flow, &scope);
    }

    /// Stops taking spans, exports what is queued within the flush deadline, and says what became
    /// of every span.
    pub fn shutdown(&self) -> TraceSummary {
        self.worker.finish(self.config.flush_timeout);
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let s = &self.stats;
        let settled = get(&s.exported) + get(&s.dropped_export_failed);
        TraceSummary {
            endpoint: self.config.endpoint.clone(),
            exported: get(&s.exported),
            dropped_queue_full: get(&s.dropped_queue_full),
            dropped_export_failed: get(&s.dropped_export_failed),
            not_flushed: get(&s.queued).saturating_sub(settled),
        }
    }
}
