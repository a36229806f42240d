//! `sluice flow serve`: one flow as an HTTP endpoint, with promptflow's served-flow API.
//!
//! The flow is loaded and checked once; every `POST /score` runs one line of the same [`Flow`] (so
//! concurrent local-model calls join one continuous batch). At most `--max-inflight` lines run at once
//! and at most `--max-queue` requests wait for one; beyond that a request is answered 429 at once. A
//! line that runs past `--line-timeout` is cancelled and answered 504. With an API key every route but
//! `/health` needs `Authorization: Bearer KEY`. Connections, body reading and the drain on SIGINT or
//! SIGTERM are [`super::serve`]'s. Served lines are recorded in a traffic log ([`traffic`]) and counted
//! in `/metrics` ([`metrics`]).

mod metrics;
mod page;
mod swagger;
mod traffic;

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value as Json_, json};
use sluice_engine::image::MessageFormat;
use sluice_engine::redact::redact;
use sluice_engine::spawn::{SpawnedTask, run_blocking};
use sluice_engine::{
    ErrorCode, ErrorInfo, Flow, LineOptions, LineResult, Map, Status, Value, ValueType,
};

use self::metrics::Metrics;
use self::traffic::{LogPayloads, TrafficLog, TrafficOptions};
use super::Tracing;
use super::serve::{
    BodyLimit, async_stream, key_and_limits, serve_http, shutdown_signal, with_api_key,
    with_body_limit,
};
use super::serving::{Admission, Counting, ErrorLabel, InFlight, QueueFull, Routed};
use crate::ExitStatus;
use crate::cli::FlowServeArgs;
use crate::otel::{LineScope, Parent};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServeError {
    #[error("cannot listen on {host}:{port}")]
    Bind {
        host: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the metrics")]
    Metrics(#[source] prometheus::Error),
    #[error("cannot start the traffic log")]
    Traffic(#[source] traffic::TrafficError),
}

/// What every request shares.
#[derive(Debug)]
struct App {
    flow: Arc<Flow>,
    node_concurrency: usize,
    timeout: Option<Duration>,
    admission: Admission,
    metrics: Metrics,
    traffic: Option<TrafficLog>,
    /// Span export, when `--trace` or the OpenTelemetry environment asks for it.
    tracing: Option<Tracing>,
    swagger: Json_,
    api_key: Option<String>,
    /// Output names left out of responses (`evaluation_only: true`).
    evaluation_only: Vec<String>,
    page: String,
}

pub fn serve(args: FlowServeArgs) -> anyhow::Result<ExitStatus> {
    let (api_key, limits) = match key_and_limits(&args.http) {
        Ok(k) => k,
        Err(status) => return Ok(status),
    };
    let timeout = super::flow::line_timeout(args.line_timeout)?;
    super::set_isolation(&args.isolation, args.http.max_inflight);
    // A flex flow's class entry takes its `__init__` arguments from PF_FLOW_INIT_CONFIG, as in
    // promptflow's serving.
    let init = match std::env::var("PF_FLOW_INIT_CONFIG") {
        Ok(text) if !text.trim().is_empty() => {
            super::flow::parse_init(std::slice::from_ref(&text))?
        }
        _ => None,
    };
    let flow = match super::flow::load_with(
        &args.flow.flow,
        args.variant.as_deref(),
        init.as_ref(),
        &args.connections,
    ) {
        Ok(f) => f,
        Err(code) => return Ok(code),
    };
    // The home is found before the working directory moves into the flow folder (it may be relative).
    let home = super::run::sluice_home();
    let home = std::path::absolute(&home).unwrap_or(home);
    super::flow::enter_flow(&flow)?;
    let tracing = match Tracing::start(&args.trace, &flow) {
        Ok(t) => t,
        Err(code) => return Ok(code),
    };
    let metrics = Metrics::new(!args.http.no_metrics).map_err(ServeError::Metrics)?;
    let traffic = TrafficLog::start(
        &home,
        &flow.def.name,
        &flow.def.dir,
        flow.def.selected_variants.clone(),
        TrafficOptions {
            sample: args.log_sample,
            payloads: if args.no_log_payloads {
                LogPayloads::Off
            } else if args.log_node_payloads {
                LogPayloads::Nodes
            } else {
                LogPayloads::Line
            },
            max_bytes: args.log_max_bytes as u64,
            message_format: flow.def.message_format,
        },
        metrics.log_dropped.clone(),
    )
    .map_err(ServeError::Traffic)?;
    let swagger = swagger::document(&flow.def, VERSION);
    let page = page::html(&flow.def, api_key.is_some());
    let evaluation_only = flow
        .def
        .outputs
        .values()
        .filter(|o| o.evaluation_only)
        .map(|o| o.name.clone())
        .collect();
    let app = Arc::new(App {
        flow: Arc::new(flow),
        node_concurrency: args.concurrency,
        timeout,
        admission: Admission::new(args.http.max_inflight, args.http.max_queue, &metrics.http),
        metrics,
        traffic: Some(traffic),
        tracing,
        swagger,
        api_key,
        evaluation_only,
        page,
    });
    let rt = super::flow::runtime()?;
    let served = app.clone();
    let result = rt.block_on(async move {
        let router = Routed::new()
            .route("/score", post(score))
            .route("/health", get(health))
            .route("/version", get(version))
            .route("/swagger.json", get(swagger_json))
            .route("/feedback", post(feedback))
            .route("/", get(index).post(index));
        let router = if served.metrics.on {
            router.route("/metrics", get(metrics_text))
        } else {
            router
        };
        let (router, routes) = router.finish();
        let router = router.fallback(not_found).with_state(served.clone());
        let router = with_body_limit(
            router,
            BodyLimit {
                max_bytes: args.http.max_body_bytes,
                timeout: limits.body_timeout,
                error: body_error,
            },
        );
        let router = with_api_key(router, served.api_key.as_deref(), unauthorized);
        // This server writes no access log: without metrics, nothing is counted.
        let router = Counting {
            metrics: served.metrics.on.then(|| served.metrics.http.clone()),
            access_log: false,
            routes,
        }
        .wrap(router);
        let shutdown = shutdown_signal()?;
        let listener = tokio::net::TcpListener::bind((args.http.host.as_str(), args.http.port))
            .await
            .map_err(|source| ServeError::Bind {
                host: args.http.host.clone(),
                port: args.http.port,
                source,
            })?;
        let addr = listener.local_addr()?;
        if let Some(t) = &served.traffic {
            eprintln!("traffic log: {}", t.root().display());
        }
        println!("listening on http://{addr}");
        use std::io::Write;
        std::io::stdout().flush()?;
        serve_http(listener, router, limits, shutdown).await;
        anyhow::Ok(())
    });
    if let Some(t) = &app.traffic {
        t.close();
    }
    if let Some(t) = &app.tracing {
        t.finish();
    }
    result.map(|()| ExitStatus::Ok)
}

/// A refused or failed request: `{"error": {"code", "message", "innerError": {"code"}}}`, where
/// `code` is `UserError` or `SystemError` (as promptflow answers) and the inner code says what
/// happened (`MissingRequiredFlowInput`, `ToolExecutionError`, ...). Messages are redacted.
#[derive(Debug, thiserror::Error)]
#[error("{inner}: {message}")]
struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    inner: String,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn queue_full(e: QueueFull) -> ApiError {
        ApiError {
            retry_after: Some(1),
            ..ApiError::user(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                e.to_string(),
            )
        }
    }

    fn user(status: StatusCode, inner: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: ErrorCode::UserError,
            inner: inner.to_owned(),
            message: message.into(),
            retry_after: None,
        }
    }

    /// The answer for a failed line: 504 for a timeout, 500 for a system error, else 400.
    fn from_line(e: &ErrorInfo) -> ApiError {
        let status = if e.error_type == "LineExecutionTimeoutError" {
            StatusCode::GATEWAY_TIMEOUT
        } else if e.code == ErrorCode::SystemError {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError {
            status,
            code: e.code,
            inner: e.error_type.clone(),
            message: e.message.clone(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = match self.code {
            ErrorCode::UserError => "UserError",
            ErrorCode::SystemError => "SystemError",
        };
        let body = json!({"error": {
            "code": code,
            "message": redact(&self.message),
            "innerError": {"code": self.inner},
        }});
        let mut r = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r.extensions_mut().insert(ErrorLabel(self.inner));
        r
    }
}

fn body_error(status: StatusCode, message: String) -> Response {
    let inner = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "RequestEntityTooLarge",
        StatusCode::REQUEST_TIMEOUT => "RequestTimeout",
        _ => "InvalidRequestBody",
    };
    ApiError::user(status, inner, message).into_response()
}

fn unauthorized() -> Response {
    ApiError::user(
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "this endpoint needs `Authorization: Bearer <key>` with the server's API key",
    )
    .into_response()
}

/// What the client accepts.
#[derive(Clone, Copy, Debug)]
struct Accept {
    json: bool,
    event_stream: bool,
}

impl Accept {
    /// No `Accept`, `*/*` and `application/json` take JSON; `text/event-stream` takes a stream.
    fn of(headers: &HeaderMap) -> Accept {
        let text = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",")
            .to_ascii_lowercase();
        if text.trim().is_empty() {
            return Accept {
                json: true,
                event_stream: false,
            };
        }
        let types: Vec<&str> = text
            .split(',')
            .map(|t| t.split(';').next().unwrap_or("").trim())
            .collect();
        Accept {
            json: types
                .iter()
                .any(|t| matches!(*t, "application/json" | "application/*" | "*/*")),
            event_stream: types.contains(&"text/event-stream"),
        }
    }
}

fn not_acceptable() -> ApiError {
    ApiError::user(
        StatusCode::NOT_ACCEPTABLE,
        "NotAcceptable",
        "the response can be application/json, or text/event-stream when an output streams; check the Accept header",
    )
}

/// The flow inputs a request body gives: a JSON object, or for a flow with one input any other
/// body as that input's text. A flow with no inputs ignores the body.
fn inputs_of(flow: &Flow, body: &[u8]) -> Result<Map, ApiError> {
    let inputs = &flow.def.inputs;
    if inputs.is_empty() {
        return Ok(Map::new());
    }
    let bad = |m: String| ApiError::user(StatusCode::BAD_REQUEST, "InvalidRequestBody", m);
    let text =
        std::str::from_utf8(body).map_err(|_| bad("the request body is not UTF-8 text".into()))?;
    let parsed = sluice_engine::json::from_str::<Value>(text);
    let given = match parsed {
        Ok(Value::Map(m)) => m,
        _ if inputs.len() == 1 => {
            let name = inputs.keys().next().expect("one input").clone();
            [(name, Value::String(text.to_owned()))]
                .into_iter()
                .collect()
        }
        Ok(_) => {
            return Err(bad(
                "the request body must be a JSON object of flow inputs".into()
            ));
        }
        Err(e) => return Err(bad(format!("the request body is not JSON: {e}"))),
    };
    let missing: Vec<String> = inputs
        .values()
        .filter(|i| i.default.is_none() && given.get(&i.name).is_none_or(Value::is_null))
        .map(|i| format!("'{}'", i.name))
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::user(
            StatusCode::BAD_REQUEST,
            "MissingRequiredFlowInput",
            format!(
                "Required input fields [{}] are missing in the request data.",
                missing.join(", ")
            ),
        ));
    }
    // An image comes in the request (base64 or a data URI) or by URL, never as a path on the server.
    let format = flow.def.message_format;
    for (name, value) in &given {
        let nested = match inputs.get(name).map(|i| &i.ty) {
            Some(ValueType::Image) => false,
            Some(ValueType::List | ValueType::Object) => true,
            _ => continue,
        };
        if sluice_engine::image::names_a_file(value, nested, format) {
            let dict = match format {
                MessageFormat::Basic => r#"{"data:image/png;base64": "..."}"#,
                MessageFormat::OpenaiVision => {
                    r#"{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}"#
                }
            };
            return Err(ApiError::user(
                StatusCode::BAD_REQUEST,
                "InvalidImageInput",
                format!(
                    "Input '{name}' names an image file; a served flow does not read files for its clients: send the image as {dict}, a data:image/...;base64 URI or an http(s) URL."
                ),
            ));
        }
    }
    Ok(given)
}

fn json_response(value: &impl serde::Serialize) -> Response {
    let text = sluice_engine::json::to_string(value).unwrap_or_else(|_| "null".into());
    (
        [(header::CONTENT_TYPE, "application/json")],
        redact(&text).into_owned(),
    )
        .into_response()
}

async fn score(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    match run_score(app, &headers, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn run_score(app: Arc<App>, headers: &HeaderMap, body: &[u8]) -> Result<Response, ApiError> {
    let accept = Accept::of(headers);
    if !accept.json && !accept.event_stream {
        return Err(not_acceptable());
    }
    let inputs = inputs_of(&app.flow, body)?;
    let parent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(Parent::from_traceparent);
    let in_flight = app.admission.enter().await.map_err(ApiError::queue_full)?;
    let opts = LineOptions {
        node_concurrency: app.node_concurrency,
        timeout: app.timeout,
        run_id: "serve".into(),
        stream: accept.event_stream,
        ..LineOptions::default()
    };
    let mut line = app.flow.run_line(&inputs, &opts).await;
    app.metrics.line(&line);
    if let Some(e) = &line.error {
        let error = ApiError::from_line(e);
        app.log(line, parent);
        return Err(error);
    }
    let streams: Vec<String> = line
        .output
        .iter()
        .filter(|(_, v)| matches!(v, Value::Opaque(o) if o.is_stream()))
        .map(|(k, _)| k.clone())
        .filter(|k| !app.evaluation_only.contains(k))
        .collect();
    if streams.len() > 1 {
        return Err(ApiError::user(
            StatusCode::BAD_REQUEST,
            "MultipleStreamOutputFieldsNotSupported",
            format!(
                "Multiple stream output fields not supported: {}; at most one output may stream.",
                streams.join(", ")
            ),
        ));
    }
    if let Some(field) = streams.into_iter().next() {
        return Ok(stream_response(app, line, field, in_flight, parent));
    }
    if !accept.json {
        return Err(not_acceptable());
    }
    let output = std::mem::take(&mut line.output);
    // Most outputs are plain already; only Python objects and streams need a blocking thread.
    let plain = if output.values().all(Value::is_plain) {
        Ok(output)
    } else {
        run_blocking(move || {
            output
                .into_iter()
                .map(|(k, v)| v.to_plain().map(|p| (k.clone(), p)).map_err(|e| (k, e)))
                .collect::<Result<Map, _>>()
        })
        .await
    };
    match plain {
        Ok(output) => {
            line.output = output;
            let format = app.flow.def.message_format;
            let visible = Value::Map(app.visible(&line.output));
            let response = json_response(&sluice_engine::image::for_client(visible, format));
            app.log(line, parent);
            Ok(response)
        }
        Err((name, e)) => {
            let error = ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                code: ErrorCode::SystemError,
                inner: "FlowOutputUnserializable".into(),
                message: format!("The output '{name}' for flow is not JSON serializable: {e}."),
                retry_after: None,
            };
            line.status = Status::Failed;
            line.error = Some(ErrorInfo::new(
                ErrorCode::SystemError,
                "FlowOutputUnserializable",
                error.message.clone(),
            ));
            app.log(line, parent);
            Err(error)
        }
    }
}

impl App {
    /// The outputs a client sees: all but the `evaluation_only` ones.
    fn visible(&self, output: &Map) -> Map {
        output
            .iter()
            .filter(|(k, _)| !self.evaluation_only.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Records a finished line: its spans (under `parent`, a request's `traceparent`) and its
    /// place in the traffic log.
    fn log(&self, line: LineResult, parent: Option<Parent>) {
        if let Some(t) = &self.tracing {
            let scope = LineScope {
                parent,
                server: true,
                ..LineScope::default()
            };
            t.line(&line, &scope);
        }
        if let Some(t) = &self.traffic
            && !t.line(line)
        {
            self.metrics.log_dropped.inc();
        }
    }
}

/// Server-sent events: the other outputs first (if any), then one event per chunk of the streaming
/// output, `{"<field>": "<chunk>"}`. The line keeps its place among those in flight until the stream
/// ends; it is then logged with the stream's whole text and the tokens the stream reported. A stream
/// still running at the line's timeout is cancelled: the events end with a
/// `LineExecutionTimeoutError`, and the line is logged as failed with it.
fn stream_response(
    app: Arc<App>,
    mut line: LineResult,
    field: String,
    in_flight: InFlight,
    parent: Option<Parent>,
) -> Response {
    let Some(Value::Opaque(stream)) = line.output.get(&field).cloned() else {
        unreachable!("the field was picked as a stream");
    };
    let timeout = app.timeout;
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t.saturating_sub(line.duration()));
    let first: Map = line
        .output
        .iter()
        .filter(|(k, _)| **k != field && !app.evaluation_only.contains(k))
        .map(|(k, v)| {
            (
                k.clone(),
                v.to_plain().unwrap_or_else(|_| Value::String(v.py_str())),
            )
        })
        .collect();
    let events = async_stream(move |tx| async move {
        let _in_flight = in_flight;
        let event = |v: &Map| {
            let text = sluice_engine::json::to_string(v).unwrap_or_default();
            SseEvent::default().data(&*redact(&text))
        };
        if !first.is_empty() {
            let _ = tx.send(event(&first));
        }
        let (chunk_tx, mut chunks) = tokio::sync::mpsc::channel::<String>(64);
        let reader = stream.clone();
        let drain = SpawnedTask::spawn(run_blocking(move || {
            let mut text = String::new();
            let result = reader.for_each_chunk(&mut |chunk| {
                text.push_str(chunk);
                let _ = chunk_tx.blocking_send(chunk.to_owned());
            });
            result.map(|()| text)
        }));
        let mut client_gone = false;
        loop {
            let next = match deadline {
                Some(d) => tokio::time::timeout_at(d, chunks.recv()).await,
                None => Ok(chunks.recv().await),
            };
            let Ok(next) = next else {
                // Past the line's timeout: the stream stops and the line fails.
                stream.cancel();
                drop(chunks);
                let secs = timeout.map_or(0.0, |t| t.as_secs_f64());
                let error = ErrorInfo::new(
                    ErrorCode::UserError,
                    "LineExecutionTimeoutError",
                    format!(
                        "Line execution timeout after {secs} seconds, while the output '{field}' streamed."
                    ),
                );
                let _ = tx.send(app.fail_stream(&mut line, error));
                app.log(line, parent);
                return;
            };
            let Some(chunk) = next else {
                break;
            };
            if client_gone {
                continue;
            }
            let one: Map = [(field.clone(), Value::String(chunk))]
                .into_iter()
                .collect();
            client_gone = tx.send(event(&one)).is_err();
        }
        match drain.await {
            Ok(Ok(text)) => {
                if let Some(m) = stream.metrics() {
                    app.metrics.count_tokens(&m.tokens);
                    let made_it = line
                        .node_runs
                        .iter_mut()
                        .find(|r| matches!(&r.output, Value::Opaque(o) if Arc::ptr_eq(o, &stream)));
                    if let Some(run) = made_it {
                        run.system_metrics.add(&m);
                    }
                }
                line.output.insert(field, Value::String(text));
                for (k, v) in first {
                    line.output.insert(k, v);
                }
            }
            Ok(Err(e)) => {
                let message = format!("The output '{field}' stopped streaming: {e}");
                let error = ErrorInfo::new(ErrorCode::UserError, "FlowOutputStreamError", message);
                let _ = tx.send(app.fail_stream(&mut line, error));
            }
            Err(_) => return,
        }
        app.log(line, parent);
    });
    Sse::new(events).into_response()
}

impl App {
    /// Marks a streamed line failed with `error`, counts the error, and returns the event that ends
    /// the stream with it (in the shape of an error answer).
    fn fail_stream(&self, line: &mut LineResult, error: ErrorInfo) -> SseEvent {
        self.metrics
            .http
            .errors
            .with(&[error.error_type.as_str()], prometheus::IntCounter::inc);
        let event = json!({"error": {"code": "UserError", "message": redact(&error.message),
                                     "innerError": {"code": error.error_type}}});
        line.status = Status::Failed;
        line.output = Map::new();
        line.error = Some(error);
        SseEvent::default().data(event.to_string())
    }
}

async fn health() -> Json<Json_> {
    Json(json!({"status": "Healthy", "version": VERSION}))
}

async fn version() -> Json<Json_> {
    let build_info = std::env::var("BUILD_INFO")
        .ok()
        .map(|b| serde_json::from_str::<Json_>(&b).unwrap_or(Json_::String(b)))
        .unwrap_or(Json_::String(String::new()));
    Json(json!({"status": "Healthy", "build_info": build_info, "version": VERSION}))
}

async fn swagger_json(State(app): State<Arc<App>>) -> Json<Json_> {
    Json(app.swagger.clone())
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    if let Some(t) = &app.tracing {
        app.metrics.trace_counts(t.tracer.stats());
    }
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        app.metrics.render(),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct FeedbackQuery {
    flatten: Option<String>,
}

/// Records the body with the trace headers it came with (`feedback.jsonl` of the traffic log).
async fn feedback(
    State(app): State<Arc<App>>,
    Query(q): Query<FeedbackQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let text = String::from_utf8_lossy(&body);
    let value = serde_json::from_str::<Json_>(&text).unwrap_or(Json_::String(text.into_owned()));
    let header_text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let record = json!({
        "time": chrono::Utc::now(),
        "flatten": q.flatten.as_deref().is_some_and(|f| f.eq_ignore_ascii_case("true")),
        "traceparent": header_text("traceparent"),
        "tracestate": header_text("tracestate"),
        "feedback": value,
    });
    if let Some(t) = &app.traffic
        && !t.feedback(record)
    {
        app.metrics.log_dropped.inc();
    }
    Json(json!({"status": "Feedback received."})).into_response()
}

async fn index(State(app): State<Arc<App>>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
            ),
        ],
        app.page.clone(),
    )
        .into_response()
}

async fn not_found(req: Request) -> Response {
    ApiError::user(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!(
            "no route {} {}; see /swagger.json",
            req.method(),
            req.uri().path()
        ),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers_choose_json_or_a_stream() {
        let of = |v: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(v) = v {
                h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
            }
            let a = Accept::of(&h);
            (a.json, a.event_stream)
        };
        assert_eq!(of(None), (true, false));
        assert_eq!(of(Some("*/*")), (true, false));
        assert_eq!(of(Some("text/event-stream")), (false, true));
        assert_eq!(
            of(Some("text/event-stream, application/json;q=0.9")),
            (true, true)
        );
        assert_eq!(of(Some("text/html")), (false, false));
    }

    #[test]
    fn only_loopback_hosts_count_as_local() {
        use crate::commands::serve::is_loopback;
        for h in ["127.0.0.1", "localhost", "::1", "[::1]", "127.1.2.3"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["0.0.0.0", "::", "10.0.0.1", "example.com"] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}
