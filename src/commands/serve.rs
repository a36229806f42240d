//! `sluice model serve`: an OpenAI-compatible HTTP API over the local models.
//!
//! Each connection is served by hyper with a header-read timeout that also bounds how long an idle
//! keep-alive connection is kept; a request body must arrive within its own timeout and size limit,
//! and a request asks for a bounded amount of work (stop sequences, messages, embedding inputs). On
//! SIGINT or SIGTERM the listener closes, connections with no request in progress (idle, or a
//! request still arriving) are closed at once, and requests in progress get a deadline to finish.
//! The limits are read from the environment ([`Limits::from_env`]).

use std::convert::Infallible;

use super::model::resolve_or_report;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Request as HttpRequest, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::stream::Stream;
use serde::Deserialize;
use serde_json::{Value as Json_, json};
use sluice_engine::redact::redact;
use sluice_nodes::llm::embed::LocalEmbedder;
use sluice_nodes::llm::local::{LocalConfig, LocalModel};
use sluice_nodes::llm::types::{
    Backend, ChatMessage, Event, GenParams, LlmError, Prompt, TokenLogprob, TokenStream, Usage,
};
use sluice_nodes::llm::{protocol, store};

use super::flow::runtime;
use super::serving::{
    self, Admission, Count, Counting, ErrorLabel, InFlight, QueueFull, RequestMetrics, Routed,
};
use crate::ExitStatus;
use crate::cli::{HttpArgs, ServeArgs};

struct Served {
    models: Vec<Arc<LocalModel>>,
    embedders: Vec<(String, Arc<LocalEmbedder>)>,
    admission: Admission,
    metrics: ModelMetrics,
}

/// The metrics of `model serve`: its requests (as every server's) and its models' tokens.
#[derive(Clone, Debug)]
struct ModelMetrics {
    /// Whether requests are counted (`--no-metrics` turns them off, and `/metrics` with them).
    on: bool,
    registry: serving::Metrics,
    http: RequestMetrics,
    /// Tokens by model and direction (`prompt`, `completion`).
    tokens: prometheus::IntCounterVec,
    /// Seconds from a request to its first generated token, by model.
    first_token_seconds: prometheus::HistogramVec,
}

impl ModelMetrics {
    fn new(on: bool) -> Result<ModelMetrics, prometheus::Error> {
        let registry = serving::Metrics::default();
        Ok(ModelMetrics {
            on,
            http: RequestMetrics::new(
                &registry,
                (
                    "sluice_serve_requests_in_flight",
                    "Requests generating or embedding now.",
                ),
            )?,
            tokens: registry.counter(
                "sluice_serve_llm_tokens_total",
                "Tokens read and generated, by model and direction (prompt, completion).",
                &["model", "direction"],
            )?,
            first_token_seconds: registry.histogram(
                "sluice_serve_llm_time_to_first_token_seconds",
                "Seconds from a request to its first generated token, by model.",
                &["model"],
            )?,
            registry,
        })
    }

    /// Counts the tokens an embedding model read.
    fn embedded(&self, model: &str, tokens: u64) {
        if self.on {
            self.tokens
                .with_label_values(&[model, "prompt"])
                .inc_by(tokens);
        }
    }

    fn usage(&self, model: &str, u: &Usage) {
        if !self.on {
            return;
        }
        self.tokens
            .with_label_values(&[model, "prompt"])
            .inc_by(u.prompt_tokens);
        self.tokens
            .with_label_values(&[model, "completion"])
            .inc_by(u.completion_tokens);
        if let Some(t) = u.time_to_first_token {
            self.first_token_seconds
                .with_label_values(&[model])
                .observe(t.as_secs_f64());
        }
    }
}
/// The most inputs one /v1/embeddings request may embed (OpenAI's limit).
const MAX_EMBEDDING_INPUTS: usize = 2048;
/// The most chat messages in one request.
const MAX_MESSAGES: usize = 4096;
/// The most choices (`n`) one request may ask for.
const MAX_CHOICES: u64 = 16;

/// Time and connection limits of the server.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// A request's headers must arrive within this; a keep-alive connection idle this long is closed.
    pub header_timeout: Duration,
    /// A request's body must arrive within this.
    pub body_timeout: Duration,
    /// On shutdown, requests in progress get this long to finish.
    pub shutdown_timeout: Duration,
    /// Connections served at once; more are closed as they arrive.
    pub max_connections: usize,
}

impl Limits {
    /// `SLUICE_SERVE_HEADER_TIMEOUT` (seconds, default 30), `SLUICE_SERVE_BODY_TIMEOUT` (60),
    /// `SLUICE_SERVE_SHUTDOWN_TIMEOUT` (10), `SLUICE_SERVE_MAX_CONNECTIONS` (1024).
    pub(crate) fn from_env() -> anyhow::Result<Limits> {
        let secs = |name: &str, default: f64| -> anyhow::Result<Duration> {
            let Some(v) = std::env::var(name).ok().filter(|v| !v.trim().is_empty()) else {
                return Ok(Duration::from_secs_f64(default));
            };
            match v.trim().parse::<f64>() {
                Ok(s) if s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
                _ => bail!("{name} must be a number of seconds between 0 and 86400, got `{v}`"),
            }
        };
        let max_connections = match std::env::var("SLUICE_SERVE_MAX_CONNECTIONS") {
            Ok(v) if !v.trim().is_empty() => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=1_000_000).contains(n))
                .with_context(|| {
                    format!("SLUICE_SERVE_MAX_CONNECTIONS must be a whole number from 1 to 1000000, got `{v}`")
                })?,
            _ => 1024,
        };
        Ok(Limits {
            header_timeout: secs("SLUICE_SERVE_HEADER_TIMEOUT", 30.0)?,
            body_timeout: secs("SLUICE_SERVE_BODY_TIMEOUT", 60.0)?,
            shutdown_timeout: secs("SLUICE_SERVE_SHUTDOWN_TIMEOUT", 10.0)?,
            max_connections,
        })
    }

    /// [`Limits::from_env`], with `--drain-timeout` in place of the shutdown timeout where given.
    pub(crate) fn for_server(drain_timeout: Option<f64>) -> anyhow::Result<Limits> {
        let mut limits = Limits::from_env()?;
        if let Some(d) = drain_timeout {
            limits.shutdown_timeout = Duration::from_secs_f64(d);
        }
        Ok(limits)
    }
}

pub fn serve(args: ServeArgs) -> anyhow::Result<ExitStatus> {
    let http = &args.http;
    let (api_key, limits) = match key_and_limits(http) {
        Ok(k) => k,
        Err(status) => return Ok(status),
    };
    let mut config = LocalConfig::from_env();
    if let Some(p) = args.parallel {
        config.parallel = p.clamp(1, 256);
    }
    if let Some(c) = args.ctx {
        if config.unified_kv {
            config.n_ctx = c.max(256);
        } else {
            config.seq_ctx = c.max(64);
        }
    }
    if let Some(t) = args.threads {
        config.threads = t.max(1);
    }
    LocalConfig::set_process_default(config);
    let metrics = ModelMetrics::new(!http.no_metrics)?;
    let admission = Admission::new(http.max_inflight, http.max_queue, &metrics.http);
    let rt = runtime()?;
    rt.block_on(async move {
        let mut models = Vec::new();
        for m in &args.models {
            let (name, path) = match resolve_or_report(m, store::ModelUse::Chat, "model") {
                Ok(r) => r,
                Err(status) => return Ok(status),
            };
            models.push(LocalModel::get(&name, &path, LocalConfig::current()).await?);
        }
        let mut embedders = Vec::new();
        for m in &args.embedding_models {
            let (name, path) =
                match resolve_or_report(m, store::ModelUse::Embedding, "embedding model") {
                    Ok(r) => r,
                    Err(status) => return Ok(status),
                };
            embedders.push((name.clone(), LocalEmbedder::get(&name, &path).await?));
        }
        let state = Arc::new(Served {
            models,
            embedders,
            admission,
            metrics,
        });
        let app = Routed::new().route("/health", get(|| async { "ok" }));
        let app = if state.metrics.on {
            app.route("/metrics", get(metrics_text))
        } else {
            app
        };
        let (app, routes) = app
            .route("/v1/models", get(list_models))
            .route("/v1/models/{*id}", get(get_model))
            .route("/v1/chat/completions", post(chat))
            .route("/v1/completions", post(completions))
            .route("/v1/embeddings", post(embeddings))
            .finish();
        let counting = Counting {
            metrics: state.metrics.on.then(|| state.metrics.http.clone()),
            access_log: true,
            routes,
        };
        let app = app
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .with_state(state);
        let shutdown = shutdown_signal()?;
        let listener = tokio::net::TcpListener::bind((http.host.as_str(), http.port)).await?;
        let addr = listener.local_addr()?;
        println!("listening on http://{addr}/v1");
        use std::io::Write;
        std::io::stdout().flush()?;
        let app = with_body_limit(
            app,
            BodyLimit {
                max_bytes: http.max_body_bytes,
                timeout: limits.body_timeout,
                error: body_error,
            },
        );
        let app = with_api_key(app, api_key.as_deref(), unauthorized);
        serve_http(listener, counting.wrap(app), limits, shutdown).await;
        Ok(ExitStatus::Ok)
    })
}

/// The API key and limits a server starts with (see [`api_key`], [`Limits::for_server`]); a
/// problem with them is printed, and the server exits with status 2.
pub(crate) fn key_and_limits(http: &HttpArgs) -> Result<(Option<String>, Limits), ExitStatus> {
    let refuse = |e: &dyn std::fmt::Display| {
        eprintln!("{} {e:#}", crate::style::error_label());
        ExitStatus::Invalid
    };
    let key =
        api_key(http.api_key.as_deref(), &http.host, http.insecure).map_err(|e| refuse(&e))?;
    let limits = Limits::for_server(http.drain_timeout).map_err(|e| refuse(&format!("{e:#}")))?;
    Ok((key, limits))
}

/// A future that resolves on SIGINT or SIGTERM. The handlers are installed before this returns, so a
/// signal that arrives once the address is printed is never missed (or fatal, for SIGTERM).
pub(crate) fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

/// Why a server will not start with the API key it was given.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    #[error(
        "refusing to listen on `{host}` (not a loopback address) without an API key: set --api-key or SLUICE_API_KEY, or pass --insecure"
    )]
    Insecure { host: String },
    #[error("the API key is empty")]
    Empty,
}

/// Whether `host` names only this machine.
pub(crate) fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Checks `--api-key` against the address: a server reachable from other machines needs a key unless
/// `insecure`. The key is registered as a secret, so it is masked in everything the process writes.
pub(crate) fn api_key(
    key: Option<&str>,
    host: &str,
    insecure: bool,
) -> Result<Option<String>, KeyError> {
    let key = match key.map(str::trim) {
        Some("") => return Err(KeyError::Empty),
        Some(k) => {
            sluice_engine::redact::register_secret(k);
            Some(k.to_owned())
        }
        None => None,
    };
    if key.is_none() && !insecure && !is_loopback(host) {
        return Err(KeyError::Insecure {
            host: host.to_owned(),
        });
    }
    Ok(key)
}

/// The key a server requires, and its answer to a request without it.
#[derive(Clone, Debug)]
struct KeyGuard {
    key: Arc<str>,
    refuse: fn() -> Response,
}

/// `app` with `Authorization: Bearer KEY` required (compared in constant time) on every route but
/// `/health`, before the request body is read; without a key, `app` as it is.
pub(crate) fn with_api_key(app: Router, key: Option<&str>, refuse: fn() -> Response) -> Router {
    match key {
        Some(k) => app.layer(axum::middleware::from_fn_with_state(
            KeyGuard {
                key: k.into(),
                refuse,
            },
            require_key,
        )),
        None => app,
    }
}

async fn require_key(State(guard): State<KeyGuard>, req: HttpRequest, next: Next) -> Response {
    use subtle::ConstantTimeEq;
    if req.uri().path() != "/health" {
        let given = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        let ok = given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(guard.key.as_bytes())));
        if !ok {
            let mut r = (guard.refuse)();
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
    }
    next.run(req).await
}

fn unauthorized() -> Response {
    api_error(
        StatusCode::UNAUTHORIZED,
        "invalid_request_error",
        "this server needs `Authorization: Bearer <key>` with its API key",
    )
}

/// How much of a request body is read, how long it may take, and how a refusal is answered.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BodyLimit {
    pub max_bytes: usize,
    pub timeout: Duration,
    /// The response for a body that is too large (413), unreadable (400) or late (408).
    pub error: fn(StatusCode, String) -> Response,
}

/// `app` with every request body read whole, within `limit`, before a handler sees it.
pub(crate) fn with_body_limit(app: Router, limit: BodyLimit) -> Router {
    app.layer(axum::middleware::from_fn_with_state(limit, read_body))
        .layer(DefaultBodyLimit::max(limit.max_bytes))
}

fn body_error(status: StatusCode, message: String) -> Response {
    api_error(status, "invalid_request_error", message)
}

/// Serves `app` (a router, its requests counted) on `listener` within `limits` until `shutdown`
/// resolves, then closes connections with no request in progress at once and gives the others
/// `limits.shutdown_timeout` to finish.
pub(crate) async fn serve_http(
    listener: tokio::net::TcpListener,
    app: Count<Router>,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while conns.try_join_next().is_some() {}
        let (stream, _) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if conns.len() >= limits.max_connections {
            tracing::warn!(
                "{} connections already open; closing a new one",
                limits.max_connections
            );
            continue;
        }
        conns.spawn(connection(stream, app.clone(), limits, stop_rx.clone()));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(limits.shutdown_timeout, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "{} requests still running after {:?}; closing them",
            conns.len(),
            limits.shutdown_timeout
        );
    }
    conns.abort_all();
}

/// Serves one connection until it closes, or until shutdown: then at once when no request is in
/// progress on it, or after its requests finish.
async fn connection(
    stream: tokio::net::TcpStream,
    app: Count<Router>,
    limits: Limits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let busy = Arc::new(AtomicUsize::new(0));
    let in_flight = busy.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let guard = Busy::enter(&in_flight);
        let mut app = app.clone();
        async move {
            let resp = match tower_service::Service::call(&mut app, req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok::<_, Infallible>(resp.map(|inner| {
                Body::new(Tracked {
                    inner,
                    _busy: guard,
                })
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.wait_for(|s| *s) => {}
    }
    if busy.load(Ordering::SeqCst) == 0 {
        return;
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// Counts a request as in progress until its response body has been sent (or dropped).
#[derive(Debug)]
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn enter(count: &Arc<AtomicUsize>) -> Busy {
        count.fetch_add(1, Ordering::SeqCst);
        Busy(count.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted as in progress.
#[derive(Debug)]
struct Tracked {
    inner: Body,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn body_too_large(limit: &BodyLimit) -> Response {
    let size = if limit.max_bytes >= 1 << 20 && limit.max_bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", limit.max_bytes >> 20)
    } else {
        format!("{} bytes", limit.max_bytes)
    };
    (limit.error)(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is larger than {size}"),
    )
}

/// Reads the whole request body within the body timeout and size limit before a handler sees it.
async fn read_body(State(limit): State<BodyLimit>, req: HttpRequest, next: Next) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit.max_bytes as u64) {
        return body_too_large(&limit);
    }
    let (parts, body) = req.into_parts();
    let read = axum::body::to_bytes(body, limit.max_bytes);
    let bytes = match tokio::time::timeout(limit.timeout, read).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            return if too_large {
                body_too_large(&limit)
            } else {
                (limit.error)(
                    StatusCode::BAD_REQUEST,
                    format!("the request body could not be read: {e}"),
                )
            };
        }
        Err(_) => {
            return (limit.error)(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {:?}", limit.timeout),
            );
        }
    };
    next.run(HttpRequest::from_parts(parts, Body::from(bytes)))
        .await
}

fn model_json(id: &str) -> Json_ {
    json!({"id": id, "object": "model", "created": 0, "owned_by": "sluice"})
}

/// The names of every served model, chat and completion models first.
fn model_names(s: &Served) -> impl Iterator<Item = &str> {
    s.models
        .iter()
        .map(|m| m.name())
        .chain(s.embedders.iter().map(|(n, _)| n.as_str()))
}

async fn list_models(State(s): State<Arc<Served>>) -> Json<Json_> {
    let data: Vec<_> = model_names(&s).map(model_json).collect();
    Json(json!({"object": "list", "data": data}))
}

async fn get_model(State(s): State<Arc<Served>>, Path(id): Path<String>) -> Response {
    match model_names(&s).find(|n| *n == id) {
        Some(n) => Json(model_json(n)).into_response(),
        None => no_such_model(&id),
    }
}

fn no_such_model(id: &str) -> Response {
    OpenAiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("The model `{id}` does not exist"),
    )
    .code("model_not_found")
    .param("model")
    .into_response()
}

async fn metrics_text(State(s): State<Arc<Served>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            serving::METRICS_CONTENT_TYPE,
        )],
        s.metrics.registry.render(),
    )
        .into_response()
}

/// The answer to a request for a path no route takes (404), or with a method its route does not
/// take (405).
fn no_route(status: StatusCode, req: &HttpRequest) -> Response {
    let what = if status == StatusCode::NOT_FOUND {
        "Unknown request URL"
    } else {
        "Method not allowed"
    };
    let message = format!("{what}: {} {}", req.method(), req.uri().path());
    OpenAiError::new(status, "invalid_request_error", message).into_response()
}

async fn not_found(req: HttpRequest) -> Response {
    no_route(StatusCode::NOT_FOUND, &req)
}

async fn method_not_allowed(req: HttpRequest) -> Response {
    no_route(StatusCode::METHOD_NOT_ALLOWED, &req)
}

/// A chat or completion request. Its sampling parameters are the other fields, read by
/// [`protocol::from_fields`] under the same rules as an `llm` node's.
#[derive(Debug, Deserialize)]
struct Request {
    model: Option<String>,
    messages: Option<Vec<WireMessage>>,
    prompt: Option<Json_>,
    #[serde(default)]
    stream: bool,
    #[serde(flatten)]
    params: serde_json::Map<String, Json_>,
}

/// A chat message as OpenAI clients send it: `content` is text, a list of parts, or null.
#[derive(Clone, Debug, Deserialize)]
struct WireMessage {
    role: String,
    #[serde(default)]
    content: Option<Json_>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    tool_call_id: Option<String>,
}

impl WireMessage {
    /// The message as the model reads it: text parts joined in order (as OpenAI clients send a
    /// text-only message in parts); other parts (images, audio) are refused, never dropped.
    fn to_chat(&self, i: usize) -> Result<ChatMessage, Response> {
        let content = match &self.content {
            None | Some(Json_::Null) => String::new(),
            Some(Json_::String(t)) => t.clone(),
            Some(Json_::Array(parts)) => {
                let mut text = String::new();
                for (j, part) in parts.iter().enumerate() {
                    match (part["type"].as_str(), part["text"].as_str()) {
                        (Some("text"), Some(t)) => text.push_str(t),
                        (kind, _) => {
                            return Err(invalid(format!(
                                "messages[{i}].content[{j}]: a part of type {} cannot be read by the local models; send text parts",
                                kind.map_or_else(|| "(none)".to_owned(), |k| format!("`{k}`"))
                            )));
                        }
                    }
                }
                text
            }
            Some(other) => {
                return Err(invalid(format!(
                    "messages[{i}].content must be text or a list of parts, not {other}"
                )));
            }
        };
        let mut m = ChatMessage::new(self.role.clone(), content);
        m.name = self.name.clone();
        m.tool_call_id = self.tool_call_id.clone();
        Ok(m)
    }
}

/// A JSON request body read whatever its `Content-Type` says (curl's `-d` sends
/// `application/x-www-form-urlencoded`, and OpenAI-compatible servers take it); a body that is not
/// the JSON expected is a 400 in OpenAI's error shape.
struct OpenAiJson<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S>
    for OpenAiJson<T>
{
    type Rejection = Response;

    async fn from_request(req: HttpRequest, state: &S) -> Result<Self, Response> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        serde_json::from_slice(&bytes)
            .map(OpenAiJson)
            .map_err(|e| invalid(format!("the request body is not the JSON expected: {e}")))
    }
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`; the message is
/// redacted.
#[derive(Debug)]
struct OpenAiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

impl OpenAiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> OpenAiError {
        OpenAiError {
            status,
            kind,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    fn param(self, param: &'static str) -> OpenAiError {
        OpenAiError {
            param: Some(param),
            ..self
        }
    }

    fn code(self, code: &'static str) -> OpenAiError {
        OpenAiError {
            code: Some(code),
            ..self
        }
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let message = redact(&self.message).into_owned();
        let body = json!({"error": {"message": message, "type": self.kind, "param": self.param, "code": self.code}});
        let mut r = (self.status, Json(body)).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        r.extensions_mut()
            .insert(ErrorLabel(self.code.unwrap_or(self.kind).to_owned()));
        r
    }
}

/// An OpenAI-style error body; the message is redacted.
fn api_error(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Response {
    OpenAiError::new(status, kind, message).into_response()
}

fn invalid(message: impl Into<String>) -> Response {
    api_error(StatusCode::BAD_REQUEST, "invalid_request_error", message)
}

/// A parameter the local models cannot honour, refused rather than ignored.
fn unsupported(param: &'static str, why: &str) -> Response {
    OpenAiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        format!("`{param}` is not supported by this server: {why}"),
    )
    .param(param)
    .code("unsupported_parameter")
    .into_response()
}

fn queue_full(e: QueueFull) -> Response {
    OpenAiError::new(StatusCode::TOO_MANY_REQUESTS, "requests", e.to_string())
        .code("rate_limit_exceeded")
        .into_response()
}

/// Whether a parameter asks for something: not absent, null, false, 0, "" or an empty list or map.
fn asks_for(v: Option<&Json_>) -> bool {
    match v {
        None | Some(Json_::Null) | Some(Json_::Bool(false)) => false,
        Some(Json_::Number(n)) => n.as_f64() != Some(0.0),
        Some(Json_::String(s)) => !s.is_empty(),
        Some(Json_::Array(a)) => !a.is_empty(),
        Some(Json_::Object(o)) => !o.is_empty(),
        Some(Json_::Bool(true)) => true,
    }
}

impl Request {
    /// Refuses what the local models cannot do (function calling, log probabilities, ...) with a
    /// 400 that names the parameter, rather than answering as if it had not been asked.
    fn refuse_unsupported(&self, chat: bool) -> Result<(), Response> {
        let p = &self.params;
        for tools in ["tools", "functions"] {
            if asks_for(p.get(tools)) {
                return Err(unsupported(
                    tools,
                    "the local models have no function calling",
                ));
            }
        }
        for choice in ["tool_choice", "function_call"] {
            if asks_for(p.get(choice)) && p.get(choice) != Some(&json!("none")) {
                return Err(unsupported(
                    choice,
                    "the local models have no function calling",
                ));
            }
        }
        if asks_for(p.get("logit_bias")) {
            return Err(unsupported(
                "logit_bias",
                "the local models sample without token biases",
            ));
        }
        if !chat {
            if asks_for(p.get("echo")) {
                return Err(unsupported("echo", "the prompt is not echoed"));
            }
            if asks_for(p.get("suffix")) {
                return Err(unsupported("suffix", "the local models do not insert text"));
            }
            if p.get("best_of").and_then(Json_::as_u64).unwrap_or(1) > 1 {
                return Err(unsupported("best_of", "ask for `n` choices instead"));
            }
        }
        Ok(())
    }

    /// `n`: how many choices to generate, 1 when absent.
    fn choices(&self) -> Result<usize, Response> {
        match self.params.get("n") {
            None | Some(Json_::Null) => Ok(1),
            Some(n) => match n.as_u64() {
                Some(n) if (1..=MAX_CHOICES).contains(&n) => Ok(n as usize),
                _ => Err(OpenAiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    format!("`n` must be a whole number from 1 to {MAX_CHOICES}, not {n}"),
                )
                .param("n")
                .into_response()),
            },
        }
    }

    /// `stream_options.include_usage`: a streamed answer ends with a chunk of usage.
    fn include_usage(&self) -> Result<bool, Response> {
        match self.params.get("stream_options") {
            None | Some(Json_::Null) => Ok(false),
            Some(Json_::Object(o)) => match o.get("include_usage") {
                None | Some(Json_::Null) => Ok(false),
                Some(Json_::Bool(b)) => Ok(*b),
                Some(_) => Err(invalid(
                    "`stream_options.include_usage` must be true or false",
                )),
            },
            Some(_) => Err(invalid("`stream_options` must be an object")),
        }
    }

    fn params(&self) -> Result<GenParams, Response> {
        if self
            .messages
            .as_ref()
            .is_some_and(|m| m.len() > MAX_MESSAGES)
        {
            return Err(invalid(format!(
                "a request takes at most {MAX_MESSAGES} messages"
            )));
        }
        // `n` is answered here, with one generation per choice.
        let fields = self.params.iter().filter(|(k, _)| k.as_str() != "n");
        let mut params = protocol::from_fields(fields).map_err(|e| invalid(e.to_string()))?;
        // The model is chosen by name among the served ones, not passed on.
        params.model = None;
        params.logprobs = self.logprobs()?;
        Ok(params)
    }

    /// How many alternatives each token's log probability comes with, if they are asked for: chat's
    /// `logprobs: true` with `top_logprobs` (0 to 20), or a completion's `logprobs` (0 to 5).
    fn logprobs(&self) -> Result<Option<u8>, Response> {
        let p = &self.params;
        let bad = |param: &'static str, expected: &str| {
            OpenAiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("`{param}` must be {expected}"),
            )
            .param(param)
            .into_response()
        };
        let count = |param: &'static str, most: u64| match p.get(param) {
            None | Some(Json_::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n <= most => Ok(Some(n as u8)),
                _ => Err(bad(param, &format!("a whole number from 0 to {most}"))),
            },
        };
        if self.messages.is_none() {
            return count("logprobs", 5);
        }
        let on = match p.get("logprobs") {
            None | Some(Json_::Null) => false,
            Some(Json_::Bool(b)) => *b,
            Some(_) => return Err(bad("logprobs", "true or false")),
        };
        match (on, count("top_logprobs", 20)?) {
            (true, top) => Ok(Some(top.unwrap_or(0))),
            (false, None) => Ok(None),
            (false, Some(_)) => Err(bad("top_logprobs", "given only with `logprobs: true`")),
        }
    }
}

/// The log probabilities of a choice's tokens as OpenAI writes them: for chat, `{"content": [{token,
/// logprob, bytes, top_logprobs}]}`; for a completion, `{tokens, token_logprobs, top_logprobs,
/// text_offset}` (offsets in the generated text).
fn logprobs_json(chat: bool, tokens: &[TokenLogprob]) -> Json_ {
    if chat {
        let one = |t: &sluice_nodes::llm::types::TokenText, lp: f32| json!({"token": t.text, "logprob": lp, "bytes": t.bytes});
        let content: Vec<Json_> = tokens
            .iter()
            .map(|t| {
                let mut v = one(&t.token, t.logprob);
                v["top_logprobs"] = t.top.iter().map(|(a, lp)| one(a, *lp)).collect();
                v
            })
            .collect();
        json!({"content": content, "refusal": null})
    } else {
        let top: Vec<Json_> = tokens
            .iter()
            .map(|t| {
                let m: serde_json::Map<String, Json_> = t
                    .top
                    .iter()
                    .map(|(a, lp)| (a.text.clone(), json!(lp)))
                    .collect();
                Json_::Object(m)
            })
            .collect();
        json!({
            "tokens": tokens.iter().map(|t| t.token.text.clone()).collect::<Vec<_>>(),
            "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
            "top_logprobs": top,
            "text_offset": tokens.iter().map(|t| t.offset).collect::<Vec<_>>(),
        })
    }
}

/// The served model a request names; `default` is the default model for the request's api.
fn pick(
    s: &Served,
    wanted: Option<&str>,
    use_: store::ModelUse,
) -> Result<Arc<LocalModel>, Response> {
    match wanted {
        None | Some("") => Ok(s.models[0].clone()),
        Some(w) => s
            .models
            .iter()
            .find(|m| m.name() == w || (w == "default" && m.name() == store::default_model(use_)))
            .cloned()
            .ok_or_else(|| no_such_model(w)),
    }
}

fn llm_error(e: LlmError) -> Response {
    let (status, kind) = if e.user {
        (StatusCode::BAD_REQUEST, "invalid_request_error")
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, "server_error")
    };
    api_error(status, kind, e.message)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn id() -> String {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{n:x}")
}

fn usage_json(u: &Usage) -> Json_ {
    json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
           "total_tokens": u.prompt_tokens + u.completion_tokens,
           "prompt_tokens_details": {"cached_tokens": u.cached_tokens}})
}

/// The usage of a request answered with several choices: the prompt once, every completion.
fn total_usage(all: &[Usage]) -> Usage {
    let mut total = all.first().cloned().unwrap_or_default();
    total.completion_tokens = all.iter().map(|u| u.completion_tokens).sum();
    total
}

async fn chat(State(s): State<Arc<Served>>, OpenAiJson(req): OpenAiJson<Request>) -> Response {
    let Some(wire) = &req.messages else {
        return invalid("`messages` is required");
    };
    let messages = match wire.iter().enumerate().map(|(i, m)| m.to_chat(i)).collect() {
        Ok(m) => m,
        Err(response) => return response,
    };
    run(s, req, Prompt::Chat(messages), true).await
}

async fn completions(
    State(s): State<Arc<Served>>,
    OpenAiJson(req): OpenAiJson<Request>,
) -> Response {
    let prompt = match &req.prompt {
        Some(Json_::String(p)) => p.clone(),
        Some(Json_::Array(a)) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().unwrap_or_default().to_owned()
        }
        _ => return invalid("`prompt` must be a string"),
    };
    run(s, req, Prompt::Text(prompt), false).await
}

/// What a request asks of a model, checked.
struct Asked {
    params: GenParams,
    choices: usize,
    include_usage: bool,
}

impl Request {
    fn asked(&self, chat: bool) -> Result<Asked, Response> {
        self.refuse_unsupported(chat)?;
        Ok(Asked {
            params: self.params()?,
            choices: self.choices()?,
            include_usage: self.include_usage()?,
        })
    }
}

async fn run(s: Arc<Served>, req: Request, prompt: Prompt, chat: bool) -> Response {
    let use_ = if chat {
        store::ModelUse::Chat
    } else {
        store::ModelUse::Completion
    };
    let model = match pick(&s, req.model.as_deref(), use_) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let asked = match req.asked(chat) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let in_flight = match s.admission.enter().await {
        Ok(g) => g,
        Err(e) => return queue_full(e),
    };
    // One generation per choice, decoded together; each after the first samples with a seed of
    // its own, so that the choices differ where sampling is random.
    let mut streams = Vec::with_capacity(asked.choices);
    for i in 0..asked.choices {
        let mut params = asked.params.clone();
        if i > 0 {
            params.seed = Some(params.seed.unwrap_or(0).wrapping_add(i as i64));
        }
        match model.generate(prompt.clone(), params).await {
            Ok(st) => streams.push(st),
            Err(e) => return llm_error(e),
        }
    }
    let name = model.name().to_owned();
    let shape = Shape { chat, model: name };
    if req.stream {
        let events = sse(
            streams,
            shape,
            (asked.include_usage, asked.params.logprobs.is_some()),
            (s.clone(), in_flight),
        );
        return Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response();
    }
    let done = futures::future::join_all(streams.into_iter().map(TokenStream::collect)).await;
    drop(in_flight);
    let mut choices = Vec::with_capacity(done.len());
    let mut usages = Vec::with_capacity(done.len());
    for (i, d) in done.into_iter().enumerate() {
        match d {
            Ok(d) => {
                s.metrics.usage(&shape.model, &d.usage);
                let logprobs = asked.params.logprobs.map(|_| d.logprobs.as_slice());
                choices.push(shape.choice(
                    i,
                    &d.text,
                    Some(d.finish_reason.as_str()),
                    false,
                    logprobs,
                ));
                usages.push(d.usage);
            }
            Err(e) => return llm_error(e),
        }
    }
    let object = if chat {
        "chat.completion"
    } else {
        "text_completion"
    };
    Json(json!({"id": format!("sluice-{}", id()), "object": object, "created": now(), "model": shape.model,
                "choices": choices, "usage": usage_json(&total_usage(&usages))}))
        .into_response()
}

/// How an answer is written: chat or completion, and the model's name.
#[derive(Clone, Debug)]
struct Shape {
    chat: bool,
    model: String,
}

impl Shape {
    /// Choice `i` with `text`: a whole message, or a chunk's delta when `delta`; with the log
    /// probabilities of its tokens where they were asked for.
    fn choice(
        &self,
        i: usize,
        text: &str,
        finish: Option<&str>,
        delta: bool,
        logprobs: Option<&[TokenLogprob]>,
    ) -> Json_ {
        let mut choice = self.bare_choice(i, text, finish, delta);
        if let Some(l) = logprobs {
            choice["logprobs"] = logprobs_json(self.chat, l);
        }
        choice
    }

    fn bare_choice(&self, i: usize, text: &str, finish: Option<&str>, delta: bool) -> Json_ {
        match (self.chat, delta) {
            (true, false) => {
                json!({"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": null})
            }
            (true, true) if text.is_empty() && finish.is_some() => {
                json!({"index": i, "delta": {}, "finish_reason": finish, "logprobs": null})
            }
            (true, true) => {
                json!({"index": i, "delta": {"content": text}, "finish_reason": finish, "logprobs": null})
            }
            (false, _) => {
                json!({"index": i, "text": text, "finish_reason": finish, "logprobs": null})
            }
        }
    }
}

/// The chunks of a streamed answer with `streams.len()` choices: for chat, a first chunk per
/// choice with the role; a chunk per piece of text; a last chunk per choice with why it ended; with
/// `include_usage`, a chunk with no choices and the usage (and `"usage": null` on the others), as
/// OpenAI streams it; then `[DONE]`. The request keeps its place in flight until the end.
fn sse(
    streams: Vec<TokenStream>,
    shape: Shape,
    (include_usage, logprobs_asked): (bool, bool),
    (served, in_flight): (Arc<Served>, InFlight),
) -> impl Stream<Item = Result<SseEvent, std::convert::Infallible>> {
    let rid = format!("sluice-{}", id());
    let object = if shape.chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    async_stream(move |tx| async move {
        let _in_flight = in_flight;
        let n = streams.len();
        let chunk = |choices: Vec<Json_>, usage: Option<Json_>| {
            let mut v = json!({"id": rid, "object": object, "created": now(), "model": shape.model, "choices": choices});
            if include_usage {
                v["usage"] = usage.unwrap_or(Json_::Null);
            }
            SseEvent::default().data(v.to_string())
        };
        if shape.chat {
            for i in 0..n {
                let first = json!({"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": null, "logprobs": null});
                let _ = tx.send(chunk(vec![first], None));
            }
        }
        // Each choice's log probabilities wait for the text that holds their tokens.
        let mut pending: Vec<Vec<TokenLogprob>> = vec![Vec::new(); n];
        let mut sent = vec![0usize; n];
        let mut merged =
            futures::stream::select_all(streams.into_iter().enumerate().map(|(i, st)| {
                Box::pin(futures::stream::unfold(st, move |mut st| async move {
                    st.next().await.map(|ev| ((i, ev), st))
                }))
            }));
        let mut usages = Vec::with_capacity(n);
        while let Some((i, ev)) = futures::StreamExt::next(&mut merged).await {
            match ev {
                Event::Text(t) => {
                    sent[i] += t.len();
                    let logprobs = logprobs_asked.then(|| {
                        let covered = pending[i].partition_point(|l| l.offset < sent[i]);
                        pending[i].drain(..covered).collect::<Vec<_>>()
                    });
                    if tx
                        .send(chunk(
                            vec![shape.choice(i, &t, None, true, logprobs.as_deref())],
                            None,
                        ))
                        .is_err()
                    {
                        return;
                    }
                }
                Event::Logprob(l) => pending[i].push(l),
                Event::Done(reason, usage) => {
                    served.metrics.usage(&shape.model, &usage);
                    let _ = tx.send(chunk(
                        vec![shape.choice(i, "", Some(reason.as_str()), true, None)],
                        None,
                    ));
                    usages.push(usage);
                    if usages.len() == n {
                        break;
                    }
                }
                Event::Message(_) | Event::Reply(_) => {}
                Event::Error(e) => {
                    let kind = if e.user {
                        "invalid_request_error"
                    } else {
                        "server_error"
                    };
                    let _ = tx.send(SseEvent::default().data(
                        json!({"error": {"message": redact(&e.message), "type": kind, "param": null, "code": null}})
                            .to_string(),
                    ));
                    return;
                }
            }
        }
        if include_usage {
            let _ = tx.send(chunk(Vec::new(), Some(usage_json(&total_usage(&usages)))));
        }
        let _ = tx.send(SseEvent::default().data("[DONE]"));
    })
}

/// A stream fed by an async producer through a channel; the producer stops when the client goes away.
pub(crate) fn async_stream<F, Fut>(
    producer: F,
) -> impl Stream<Item = Result<SseEvent, std::convert::Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::UnboundedSender<SseEvent>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = sluice_engine::spawn::SpawnedTask::spawn(producer(tx));
    futures::stream::unfold((rx, task), |(mut rx, task)| async move {
        rx.recv().await.map(|ev| (Ok(ev), (rx, task)))
    })
}

#[derive(Debug, Deserialize)]
struct EmbeddingRequest {
    model: Option<String>,
    input: Json_,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<Json_>,
}

/// An embedding as OpenAI sends it: a list of numbers, or with `encoding_format: base64` the
/// little-endian `f32`s in base64.
fn embedding_json(v: &[f32], base64: bool) -> Json_ {
    if base64 {
        use base64::Engine as _;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        Json_::String(base64::engine::general_purpose::STANDARD.encode(bytes))
    } else {
        json!(v)
    }
}

async fn embeddings(
    State(s): State<Arc<Served>>,
    OpenAiJson(req): OpenAiJson<EmbeddingRequest>,
) -> Response {
    if req
        .input
        .as_array()
        .is_some_and(|a| a.len() > MAX_EMBEDDING_INPUTS)
    {
        return invalid(format!(
            "`input` takes at most {MAX_EMBEDDING_INPUTS} items"
        ));
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return OpenAiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("`encoding_format` must be `float` or `base64`, not `{other}`"),
            )
            .param("encoding_format")
            .into_response();
        }
    };
    let embedder = match req.model.as_deref() {
        _ if s.embedders.is_empty() => {
            return api_error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "this server has no embedding model: start it with --embedding-model NAME",
            );
        }
        None | Some("") => s.embedders[0].clone(),
        Some(w) => match s.embedders.iter().find(|(n, _)| n == w) {
            Some(e) => e.clone(),
            None => return no_such_model(w),
        },
    };
    if let Some(d) = &req.dimensions
        && !d.is_null()
        && d.as_u64() != Some(embedder.1.dims() as u64)
    {
        return unsupported(
            "dimensions",
            &format!(
                "`{}` makes vectors of {} dimensions only",
                embedder.0,
                embedder.1.dims()
            ),
        );
    }
    let texts: Vec<String> = match &req.input {
        Json_::String(t) => vec![t.clone()],
        Json_::Array(items) if items.iter().all(Json_::is_string) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_owned))
            .collect(),
        _ => return invalid("`input` must be a string or a list of strings"),
    };
    let in_flight = match s.admission.enter().await {
        Ok(g) => g,
        Err(e) => return queue_full(e),
    };
    // The tokens each text is read as, up to the longest text the model reads whole.
    let read = embedder.1.max_tokens().saturating_sub(2);
    let tokens: u64 = embedder
        .1
        .token_counts(&texts.iter().map(String::as_str).collect::<Vec<_>>())
        .into_iter()
        .map(|n| n.min(read) as u64)
        .sum();
    let result = embedder.1.embed(texts).await;
    drop(in_flight);
    match result {
        Ok(vectors) => {
            s.metrics.embedded(&embedder.0, tokens);
            let data: Vec<_> = vectors
                .iter()
                .enumerate()
                .map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": embedding_json(v, base64)}))
                .collect();
            Json(json!({"object": "list", "data": data, "model": embedder.0,
                        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
            .into_response()
        }
        Err(e) => llm_error(e),
    }
}
