//! What `model serve` and `flow serve` share above the connection handling of [`super::serve`]:
//! admission (requests in flight and a bounded queue, beyond which a request is refused at once),
//! the Prometheus registry with the request counters every server has, and the access log.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Instant;

use axum::Router;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::MethodRouter;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
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

/// A metric made and registered, or why not.
type Made<T> = Result<T, prometheus::Error>;

/// A vector of metrics by label values.
pub(crate) trait Vector {
    type Child: Clone;
    fn child(&self, labels: &[&str]) -> Self::Child;
}

impl Vector for IntCounterVec {
    type Child = IntCounter;
    fn child(&self, labels: &[&str]) -> IntCounter {
        self.with_label_values(labels)
    }
}

impl Vector for HistogramVec {
    type Child = Histogram;
    fn child(&self, labels: &[&str]) -> Histogram {
        self.with_label_values(labels)
    }
}

/// The most sets of label values a [`Labeled`] keeps (more are looked up on each use).
const KEPT: usize = 64;

/// A vector of metrics whose children are kept once looked up: the vector's own lookup hashes the
/// label values, takes a lock and clones the child on every call, which cost a served request
/// (five lookups) about 2% of its CPU. Keeps up to [`KEPT`] sets of label values, found again by
/// comparing them without a lock (each kept set is written once, before it is counted in); the
/// labels of these servers (routes, status codes, nodes, reasons) stay below that, and a vector
/// past it still counts right.
#[derive(Clone)]
pub(crate) struct Labeled<V: Vector> {
    vec: V,
    kept: Arc<Kept<V::Child>>,
}

/// A set of label values.
type Key = Box<[Box<str>]>;

/// Children by their label values: the first `len` slots are set.
struct Kept<C> {
    slots: [OnceLock<(Key, C)>; KEPT],
    len: AtomicUsize,
    /// Held while a slot is added.
    adding: Mutex<()>,
}

impl<C> Default for Kept<C> {
    fn default() -> Self {
        Kept {
            slots: std::array::from_fn(|_| OnceLock::new()),
            len: AtomicUsize::new(0),
            adding: Mutex::new(()),
        }
    }
}

impl<C> Kept<C> {
    /// The children kept so far, with their label values.
    fn kept(&self) -> impl Iterator<Item = &(Key, C)> {
        let len = self.len.load(Ordering::Acquire);
        self.slots[..len].iter().filter_map(OnceLock::get)
    }

    /// The child kept for `labels`.
    fn find(&self, labels: &[&str]) -> Option<&C> {
        let same = |kept: &[Box<str>]| {
            kept.len() == labels.len() && kept.iter().zip(labels).all(|(k, l)| **k == **l)
        };
        self.kept().find(|(k, _)| same(k)).map(|(_, child)| child)
    }

    /// The sets of label values kept.
    #[cfg(test)]
    fn keys(&self) -> Vec<Key> {
        self.kept().map(|(k, _)| k.clone()).collect()
    }
}

impl<V: Vector> std::fmt::Debug for Labeled<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Labeled").finish_non_exhaustive()
    }
}

impl<V: Vector> Labeled<V> {
    fn new(vec: V) -> Self {
        Labeled {
            vec,
            kept: Arc::default(),
        }
    }

    /// Calls `f` with the child of `labels`.
    pub(crate) fn with<R>(&self, labels: &[&str], f: impl FnOnce(&V::Child) -> R) -> R {
        if let Some(child) = self.kept.find(labels) {
            return f(child);
        }
        let child = self.vec.child(labels);
        let adding = self
            .kept
            .adding
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let len = self.kept.len.load(Ordering::Acquire);
        if len < KEPT && self.kept.find(labels).is_none() {
            let key = labels.iter().map(|l| Box::from(*l)).collect();
            if self.kept.slots[len].set((key, child.clone())).is_ok() {
                self.kept.len.store(len + 1, Ordering::Release);
            }
        }
        drop(adding);
        f(&child)
    }
}

impl Metrics {
    fn register<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> Made<C> {
        self.registry.register(Box::new(c.clone()))?;
        Ok(c)
    }

    pub(crate) fn counter(&self, name: &str, help: &str, labels: &[&str]) -> Made<IntCounterVec> {
        self.register(IntCounterVec::new(Opts::new(name, help), labels)?)
    }

    pub(crate) fn histogram(&self, name: &str, help: &str, labels: &[&str]) -> Made<HistogramVec> {
        let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
        self.register(HistogramVec::new(opts, labels)?)
    }

    /// [`Metrics::counter`], its children kept.
    pub(crate) fn counters(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Made<Labeled<IntCounterVec>> {
        self.counter(name, help, labels).map(Labeled::new)
    }

    /// [`Metrics::histogram`], its children kept.
    pub(crate) fn histograms(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Made<Labeled<HistogramVec>> {
        self.histogram(name, help, labels).map(Labeled::new)
    }

    pub(crate) fn gauge(&self, name: &str, help: &str) -> Made<IntGauge> {
        self.register(IntGauge::new(name, help)?)
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
    pub requests: Labeled<IntCounterVec>,
    /// Seconds from a request's arrival to its answer's head, by route.
    pub request_seconds: Labeled<HistogramVec>,
    /// Requests turned away, by reason (`queue_full`, `unauthorized`, ...).
    pub rejected: Labeled<IntCounterVec>,
    /// Failed requests, by error code.
    pub errors: Labeled<IntCounterVec>,
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
            requests: m.counters(
                "sluice_serve_requests_total",
                "HTTP requests answered, by route and status code.",
                &["route", "status"],
            )?,
            request_seconds: m.histograms(
                "sluice_serve_request_duration_seconds",
                "Seconds from a request's arrival to its answer (to its first byte, for a stream), by route.",
                &["route"],
            )?,
            rejected: m.counters(
                "sluice_serve_rejections_total",
                "Requests turned away before they ran, by reason.",
                &["reason"],
            )?,
            errors: m.counters(
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

/// A router built route by route, keeping the paths of its routes: the request counter wraps the
/// whole router and labels each request by the route its path matches ([`Routes`]).
pub(crate) struct Routed<S> {
    router: Router<S>,
    paths: Vec<&'static str>,
}

impl<S: Clone + Send + Sync + 'static> Routed<S> {
    pub(crate) fn new() -> Self {
        Routed {
            router: Router::new(),
            paths: Vec::new(),
        }
    }

    /// Adds a route: `path` is a fixed path, or one that ends in a wildcard, `{*name}`.
    pub(crate) fn route(mut self, path: &'static str, method_router: MethodRouter<S>) -> Self {
        debug_assert!(
            path.find('{').is_none_or(|at| path[at..].starts_with("{*")),
            "the request counter labels fixed paths and trailing wildcards only: {path}"
        );
        self.router = self.router.route(path, method_router);
        self.paths.push(path);
        self
    }

    /// The router, and its routes for the request counter.
    pub(crate) fn finish(self) -> (Router<S>, Routes) {
        (self.router, Routes(self.paths.into()))
    }
}

/// The routes of a server, by which its requests are counted.
#[derive(Clone, Debug, Default)]
pub(crate) struct Routes(Box<[&'static str]>);

/// The route label of a request no route matches.
const UNMATCHED: &str = "unmatched";

impl Routes {
    /// The route `path` matches, as the router matches it (a wildcard takes a non-empty rest), or
    /// [`UNMATCHED`]: its place in [`Routes::labels`].
    fn of(&self, path: &str) -> usize {
        let matches = |route: &str| match route.find("{*") {
            Some(at) => path.len() > at && path.starts_with(&route[..at]),
            None => route == path,
        };
        self.0
            .iter()
            .position(|r| matches(r))
            .unwrap_or(self.0.len())
    }

    /// Each route's label, then [`UNMATCHED`].
    fn labels(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.iter().copied().chain([UNMATCHED])
    }

    /// The label of the route at `route` (a place [`Routes::of`] gave).
    fn label(&self, route: usize) -> &'static str {
        self.0.get(route).copied().unwrap_or(UNMATCHED)
    }
}

/// What the request counter needs of a server: its metrics (none when it keeps none), whether to
/// write the access log, and its routes.
#[derive(Clone, Debug)]
pub(crate) struct Counting {
    pub metrics: Option<RequestMetrics>,
    /// One line per request on stderr: method, path, status and duration.
    pub access_log: bool,
    pub routes: Routes,
}

impl Counting {
    /// `router` with every request counted. The counter wraps the router from outside: a layer
    /// of the router's own boxes each request's future once more, and a middleware function also
    /// clones its state, which cost a served request more than the counting does.
    pub(crate) fn wrap<S>(self, router: S) -> Count<S> {
        let route_seconds = self.metrics.as_ref().map_or_else(Box::default, |m| {
            self.routes
                .labels()
                .map(|route| m.request_seconds.with(&[route], Histogram::clone))
                .collect()
        });
        Count {
            inner: router,
            counter: Arc::new(Counter {
                counting: self,
                route_seconds,
            }),
        }
    }
}

/// What [`Count`] counts with: the counting, and each route's latency histogram, looked up once
/// ([`UNMATCHED`] last; none without metrics).
#[derive(Debug)]
struct Counter {
    counting: Counting,
    route_seconds: Box<[Histogram]>,
}

impl Counter {
    /// Counts an answer by route and status, a refusal by reason and an error by code, and writes
    /// the access log line. The query string is left out of the log (it may carry anything).
    fn answered(&self, asked: Asked, response: &Response) {
        let status = response.status();
        let elapsed = asked.started.elapsed();
        let c = &self.counting;
        if let Some(m) = &c.metrics {
            let route = c.routes.label(asked.route);
            m.requests.with(&[route, status.as_str()], IntCounter::inc);
            if let Some(h) = self.route_seconds.get(asked.route) {
                h.observe(elapsed.as_secs_f64());
            }
            let reason = match status {
                StatusCode::UNAUTHORIZED => Some("unauthorized"),
                StatusCode::PAYLOAD_TOO_LARGE => Some("body_too_large"),
                StatusCode::TOO_MANY_REQUESTS => Some("queue_full"),
                StatusCode::REQUEST_TIMEOUT => Some("body_timeout"),
                _ => None,
            };
            if let Some(r) = reason {
                m.rejected.with(&[r], IntCounter::inc);
            }
            if let Some(ErrorLabel(code)) = response.extensions().get::<ErrorLabel>() {
                m.errors.with(&[code.as_str()], IntCounter::inc);
            }
        }
        if let Some((method, path)) = asked.access {
            eprintln!(
                "{method} {} {} {:.1}ms",
                sluice_engine::redact::redact(&path),
                status.as_u16(),
                elapsed.as_secs_f64() * 1e3
            );
        }
    }
}

/// A service with every request counted ([`Counting::wrap`]).
#[derive(Clone, Debug)]
pub(crate) struct Count<S> {
    inner: S,
    counter: Arc<Counter>,
}

/// What is known of a request when it arrives.
#[derive(Debug)]
struct Asked {
    started: Instant,
    /// Its place among the server's routes ([`Routes::of`]).
    route: usize,
    /// Its method and path, for the access log.
    access: Option<(axum::http::Method, String)>,
}

impl<S, B> tower_service::Service<axum::http::Request<B>> for Count<S>
where
    S: tower_service::Service<axum::http::Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Counted<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        let c = &self.counter.counting;
        let asked = (c.metrics.is_some() || c.access_log).then(|| {
            let asked = Asked {
                started: Instant::now(),
                route: c.routes.of(req.uri().path()),
                access: c
                    .access_log
                    .then(|| (req.method().clone(), req.uri().path().to_owned())),
            };
            (asked, self.counter.clone())
        });
        Counted {
            inner: self.inner.call(req),
            asked,
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's answer, counted once it is ready.
    pub(crate) struct Counted<F> {
        #[pin]
        inner: F,
        asked: Option<(Asked, Arc<Counter>)>,
    }
}

impl<F, E> std::future::Future for Counted<F>
where
    F: std::future::Future<Output = Result<Response, E>>,
{
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        if let (Ok(response), Some((asked, counter))) = (&out, this.asked.take()) {
            counter.answered(asked, response);
        }
        std::task::Poll::Ready(out)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_labelled_by_the_route_the_router_matches() {
        use axum::extract::MatchedPath;
        // Each route answers the path it was matched by, as the router has it.
        let matched = |m: Option<MatchedPath>| async move {
            m.map_or("unmatched".to_owned(), |m| m.as_str().to_owned())
        };
        let (router, routes) = Routed::<()>::new()
            .route("/score", axum::routing::get(matched))
            .route("/", axum::routing::get(matched))
            .route("/v1/models", axum::routing::get(matched))
            .route("/v1/models/{*id}", axum::routing::get(matched))
            .finish();
        let mut router = router.fallback(|| async { "unmatched" });
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for path in [
            "/score",
            "/",
            "/v1/models",
            "/v1/models/gemma",
            "/v1/models/org/model",
            "/v1/models/",
            "/score/",
            "/scores",
            "/nope",
        ] {
            let req = axum::http::Request::get(path)
                .body(axum::body::Body::empty())
                .unwrap();
            let answer = rt.block_on(async {
                let response = tower_service::Service::call(&mut router, req)
                    .await
                    .unwrap();
                axum::body::to_bytes(response.into_body(), 1024)
                    .await
                    .unwrap()
            });
            assert_eq!(
                routes.label(routes.of(path)).as_bytes(),
                &answer[..],
                "{path}"
            );
        }
    }

    #[test]
    fn children_kept_from_many_threads_at_once_count_each_increment_once() {
        let m = Metrics::default();
        let c = m.counters("t_total", "t", &["n"]).unwrap();
        let sets = KEPT + 16;
        std::thread::scope(|scope| {
            for t in 0..4 {
                let c = &c;
                scope.spawn(move || {
                    for i in 0..200 {
                        // Each thread walks the label sets from another place.
                        let n = (i * 7 + t * 13) % sets;
                        c.with(&[&n.to_string()], IntCounter::inc);
                    }
                });
            }
        });
        let mut keys = c.kept.keys();
        assert_eq!(keys.len(), KEPT);
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), KEPT, "a set of label values kept twice");
        let total: u64 = (0..sets)
            .map(|n| c.vec.with_label_values(&[&n.to_string()]).get())
            .sum();
        assert_eq!(total, 4 * 200);
    }

    #[test]
    fn kept_children_count_as_the_vectors_own_past_as_many_as_are_kept() {
        let m = Metrics::default();
        let c = m.counters("c_total", "c", &["a", "b"]).unwrap();
        for _ in 0..3 {
            c.with(&["x", "1"], IntCounter::inc);
        }
        c.with(&["x", "2"], |c| c.inc_by(5));
        // Label values that a kept set starts with are another set.
        c.with(&["x", "12"], IntCounter::inc);
        for i in 0..KEPT + 10 {
            c.with(&["many", &i.to_string()], IntCounter::inc);
        }
        c.with(&["many", &(KEPT + 5).to_string()], IntCounter::inc);
        assert_eq!(c.kept.keys().len(), KEPT);
        let get = |a: &str, b: &str| c.vec.with_label_values(&[a, b]).get();
        assert_eq!(get("x", "1"), 3);
        assert_eq!(get("x", "2"), 5);
        assert_eq!(get("x", "12"), 1);
        assert_eq!(get("many", "0"), 1);
        assert_eq!(get("many", &(KEPT + 5).to_string()), 2);
        let h = m.histograms("h_seconds", "h", &["route"]).unwrap();
        h.with(&["/score"], |h| h.observe(0.002));
        h.with(&["/score"], |h| h.observe(0.2));
        assert!(m.render().contains("h_seconds_count{route=\"/score\"} 2"));
    }
}
