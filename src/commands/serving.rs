//! What `model serve` and `flow serve` share above the connection handling of [`super::serve`]:
//! admission (requests in flight and a bounded queue, beyond which a request is refused at once),
//! the Prometheus registry with the request counters every server has, and the access log.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Latency buckets, in seconds, of every histogram.
pub(crate) const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    120.0,
];

/// The content type of [`Metrics::render`].
pub(crate) const METRICS_CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// A Prometheus registry that metrics are made in.
#[derive(Clone, Debug, Default)]
pub(crate) struct Metrics {
    registry: Registry,
}

impl Metrics {
    pub(crate) fn counter(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, prometheus::Error> {
        let c = IntCounterVec::new(Opts::new(name, help), labels)?;
        self.registry.register(Box::new(c.clone()))?;
        Ok(c)
    }

    pub(crate) fn histogram(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<HistogramVec, prometheus::Error> {
        let h = HistogramVec::new(
            HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
            labels,
        )?;
        self.registry.register(Box::new(h.clone()))?;
        Ok(h)
    }

    pub(crate) fn gauge(&self, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
        let g = IntGauge::new(name, help)?;
        self.registry.register(Box::new(g.clone()))?;
        Ok(g)
    }

    /// The text exposition (format 0.0.4) of every metric.
    pub(crate) fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!("cannot encode the metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The metrics every server keeps of its requests.
#[derive(Clone, Debug)]
pub(crate) struct RequestMetrics {
    /// Requests answered, by route and status code.
    pub requests: IntCounterVec,
    /// Seconds from a request's arrival to its answer's head, by route.
    pub request_seconds: HistogramVec,
    /// Requests turned away, by reason (`queue_full`, `unauthorized`, ...).
    pub rejected: IntCounterVec,
    /// Failed requests, by error code.
    pub errors: IntCounterVec,
    /// Requests (or lines) running now.
    pub in_flight: IntGauge,
    /// Requests waiting for their turn.
    pub queued: IntGauge,
}

impl RequestMetrics {
    /// The request metrics in `m`; `in_flight` names the gauge of what runs (lines or requests).
    pub(crate) fn new(
        m: &Metrics,
        (in_flight, in_flight_help): (&str, &str),
    ) -> Result<RequestMetrics, prometheus::Error> {
        Ok(RequestMetrics {
            requests: m.counter(
                "sluice_serve_requests_total",
                "HTTP requests answered, by route and status code.",
                &["route", "status"],
            )?,
            request_seconds: m.histogram(
                "sluice_serve_request_duration_seconds",
                "Seconds from a request's arrival to its answer (to its first byte, for a stream), by route.",
                &["route"],
            )?,
            rejected: m.counter(
                "sluice_serve_rejections_total",
                "Requests turned away before they ran, by reason.",
                &["reason"],
            )?,
            errors: m.counter(
                "sluice_serve_errors_total",
                "Failed requests and lines, by error code.",
                &["code"],
            )?,
            in_flight: m.gauge(in_flight, in_flight_help)?,
            queued: m.gauge(
                "sluice_serve_queue_depth",
                "Requests waiting for their turn.",
            )?,
        })
    }
}

/// The error code of an answered error, for the error counter.
#[derive(Clone, Debug)]
pub(crate) struct ErrorLabel(pub String);

/// What the request counter needs of a server: its metrics, and whether to write the access log.
#[derive(Clone, Debug)]
pub(crate) struct Counting {
    pub metrics: RequestMetrics,
    /// One line per request on stderr: method, path, status and duration.
    pub access_log: bool,
}

/// Counts every answer by route and status, refusals by reason and errors by code, and writes the
/// access log line. The query string is left out of the log (it may carry anything).
pub(crate) async fn count(State(c): State<Counting>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = next.run(req).await;
    let m = &c.metrics;
    let status = response.status();
    let elapsed = started.elapsed();
    m.requests
        .with_label_values(&[route.as_str(), status.as_str()])
        .inc();
    m.request_seconds
        .with_label_values(&[route.as_str()])
        .observe(elapsed.as_secs_f64());
    let reason = match status {
        StatusCode::UNAUTHORIZED => Some("unauthorized"),
        StatusCode::PAYLOAD_TOO_LARGE => Some("body_too_large"),
        StatusCode::TOO_MANY_REQUESTS => Some("queue_full"),
        StatusCode::REQUEST_TIMEOUT => Some("body_timeout"),
        _ => None,
    };
    if let Some(r) = reason {
        m.rejected.with_label_values(&[r]).inc();
    }
    if let Some(ErrorLabel(code)) = response.extensions().get::<ErrorLabel>() {
        m.errors.with_label_values(&[code.as_str()]).inc();
    }
    if c.access_log {
        eprintln!(
            "{method} {} {} {:.1}ms",
            sluice_engine::redact::redact(&path),
            status.as_u16(),
            elapsed.as_secs_f64() * 1e3
        );
    }
    response
}

/// Requests in flight and the requests waiting for a place among them.
#[derive(Debug)]
pub(crate) struct Admission {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_queue: usize,
    in_flight: IntGauge,
    queued: IntGauge,
}

/// A request refused because as many are running and waiting as may.
#[derive(Debug, thiserror::Error)]
#[error("too many requests are running or waiting; retry later")]
pub(crate) struct QueueFull;

/// A request's place among those in flight, counted in the gauge while it lasts.
#[derive(Debug)]
pub(crate) struct InFlight {
    _permit: OwnedSemaphorePermit,
    gauge: IntGauge,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// A request's place in the queue, given up when it starts or goes away.
struct Queued<'a>(&'a Admission);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
        self.0.queued.dec();
    }
}

impl Admission {
    pub(crate) fn new(max_inflight: usize, max_queue: usize, m: &RequestMetrics) -> Admission {
        Admission {
            permits: Arc::new(Semaphore::new(max_inflight)),
            waiting: AtomicUsize::new(0),
            max_queue,
            in_flight: m.in_flight.clone(),
            queued: m.queued.clone(),
        }
    }

    /// Waits for a place in flight, or refuses at once when the queue is full.
    pub(crate) async fn enter(&self) -> Result<InFlight, QueueFull> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_queue {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    return Err(QueueFull);
                }
                self.queued.inc();
                let _queued = Queued(self);
                self.permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed")
            }
        };
        self.in_flight.inc();
        Ok(InFlight {
            _permit: permit,
            gauge: self.in_flight.clone(),
        })
    }
}
