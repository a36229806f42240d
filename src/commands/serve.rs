//! `sluice model serve`: an OpenAI-compatible HTTP API over the local models.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::stream::Stream;
use serde::Deserialize;
use serde_json::{Value as Json_, json};
use sluice_nodes::llm::embed::LocalEmbedder;
use sluice_nodes::llm::local::{LocalConfig, LocalModel};
use sluice_nodes::llm::store;
use sluice_nodes::llm::types::{
    Backend, ChatMessage, Event, GenParams, LlmError, Prompt, TokenStream, Usage,
};

use super::flow::runtime;
use crate::cli::ServeArgs;
use crate::exit;

struct Served {
    models: Vec<Arc<LocalModel>>,
    embedders: Vec<(String, Arc<LocalEmbedder>)>,
}

pub fn serve(args: ServeArgs) -> anyhow::Result<u8> {
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
    let rt = runtime()?;
    rt.block_on(async move {
        let mut models = Vec::new();
        for m in &args.models {
            let (name, path) = match store::resolve_model(m, std::path::Path::new(".")) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: model `{}` is not installed: {}", e.name, e.help);
                    return Ok(exit::INVALID);
                }
            };
            models.push(LocalModel::get(&name, &path, LocalConfig::current()).await?);
        }
        let mut embedders = Vec::new();
        for m in &args.embedding_models {
            let (name, path) = match store::resolve_model(m, std::path::Path::new(".")) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!(
                        "error: embedding model `{}` is not installed: {}",
                        e.name, e.help
                    );
                    return Ok(exit::INVALID);
                }
            };
            embedders.push((name.clone(), LocalEmbedder::get(&name, &path).await?));
        }
        let state = Arc::new(Served { models, embedders });
        let app = Router::new()
            .route("/health", get(|| async { "ok" }))
            .route("/v1/models", get(list_models))
            .route("/v1/chat/completions", post(chat))
            .route("/v1/completions", post(completions))
            .route("/v1/embeddings", post(embeddings))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await?;
        let addr = listener.local_addr()?;
        println!("listening on http://{addr}/v1");
        use std::io::Write;
        std::io::stdout().flush()?;
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(exit::OK)
    })
}

async fn list_models(State(s): State<Arc<Served>>) -> Json<Json_> {
    let data: Vec<_> = s
        .models
        .iter()
        .map(|m| m.name().to_owned())
        .chain(s.embedders.iter().map(|(n, _)| n.clone()))
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "sluice"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

#[derive(Debug, Deserialize)]
struct Request {
    model: Option<String>,
    messages: Option<Vec<ChatMessage>>,
    prompt: Option<Json_>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    stop: Option<Json_>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    seed: Option<i64>,
    response_format: Option<Json_>,
    #[serde(default)]
    stream: bool,
    n: Option<u32>,
}

fn api_error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": {"message": message.into(), "type": kind, "code": null}})),
    )
        .into_response()
}

impl Request {
    fn params(&self) -> Result<GenParams, Response> {
        let stop = match &self.stop {
            None | Some(Json_::Null) => vec![],
            Some(Json_::String(s)) => vec![s.clone()],
            Some(Json_::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            Some(_) => {
                return Err(api_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "`stop` must be a string or a list of strings",
                ));
            }
        };
        if self.n.is_some_and(|n| n != 1) {
            return Err(api_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "only n=1 is supported",
            ));
        }
        Ok(GenParams {
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            temperature: self.temperature.unwrap_or(1.0),
            top_p: self.top_p.unwrap_or(1.0),
            stop,
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            seed: self.seed.map(|s| s as u32),
            json_object: self
                .response_format
                .as_ref()
                .is_some_and(|f| f["type"] == "json_object"),
            model: None,
        })
    }
}

fn pick(s: &Served, wanted: Option<&str>) -> Result<Arc<LocalModel>, Response> {
    match wanted {
        None | Some("") => Ok(s.models[0].clone()),
        Some(w) => s
            .models
            .iter()
            .find(|m| m.name() == w || (w == "default" && m.name() == store::DEFAULT_MODEL))
            .cloned()
            .ok_or_else(|| {
                api_error(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    format!("The model `{w}` does not exist"),
                )
            }),
    }
}

fn llm_error(e: LlmError) -> Response {
    let status = if e.user {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    api_error(status, "server_error", e.message)
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

async fn chat(State(s): State<Arc<Served>>, Json(req): Json<Request>) -> Response {
    let Some(messages) = req.messages.clone() else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "`messages` is required",
        );
    };
    run(s, req, Prompt::Chat(messages), true).await
}

async fn completions(State(s): State<Arc<Served>>, Json(req): Json<Request>) -> Response {
    let prompt = match &req.prompt {
        Some(Json_::String(p)) => p.clone(),
        Some(Json_::Array(a)) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().unwrap_or_default().to_owned()
        }
        _ => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "`prompt` must be a string",
            );
        }
    };
    run(s, req, Prompt::Text(prompt), false).await
}

async fn run(s: Arc<Served>, req: Request, prompt: Prompt, chat: bool) -> Response {
    let model = match pick(&s, req.model.as_deref()) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let params = match req.params() {
        Ok(p) => p,
        Err(r) => return r,
    };
    let stream = match model.generate(prompt, params).await {
        Ok(s) => s,
        Err(e) => return llm_error(e),
    };
    let name = model.name().to_owned();
    if req.stream {
        return Sse::new(sse(stream, name, chat))
            .keep_alive(KeepAlive::default())
            .into_response();
    }
    match stream.collect().await {
        Ok(done) => {
            let choice = if chat {
                json!({"index": 0, "message": {"role": "assistant", "content": done.text}, "finish_reason": done.finish_reason.as_str()})
            } else {
                json!({"index": 0, "text": done.text, "finish_reason": done.finish_reason.as_str(), "logprobs": null})
            };
            let object = if chat {
                "chat.completion"
            } else {
                "text_completion"
            };
            Json(json!({"id": format!("sluice-{}", id()), "object": object, "created": now(), "model": name,
                        "choices": [choice], "usage": usage_json(&done.usage)}))
                .into_response()
        }
        Err(e) => llm_error(e),
    }
}

fn sse(
    mut stream: TokenStream,
    model: String,
    chat: bool,
) -> impl Stream<Item = Result<SseEvent, std::convert::Infallible>> {
    let rid = format!("sluice-{}", id());
    let object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    async_stream(move |tx| async move {
        let chunk = |choice: Json_, usage: Option<Json_>| {
            let mut v = json!({"id": rid, "object": object, "created": now(), "model": model, "choices": [choice]});
            if let Some(u) = usage {
                v["usage"] = u;
            }
            SseEvent::default().data(v.to_string())
        };
        if chat {
            let _ = tx.send(chunk(json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}), None));
        }
        while let Some(ev) = stream.next().await {
            match ev {
                Event::Text(t) => {
                    let choice = if chat {
                        json!({"index": 0, "delta": {"content": t}, "finish_reason": null})
                    } else {
                        json!({"index": 0, "text": t, "finish_reason": null})
                    };
                    if tx.send(chunk(choice, None)).is_err() {
                        return;
                    }
                }
                Event::Done(reason, usage) => {
                    let choice = if chat {
                        json!({"index": 0, "delta": {}, "finish_reason": reason.as_str()})
                    } else {
                        json!({"index": 0, "text": "", "finish_reason": reason.as_str()})
                    };
                    let _ = tx.send(chunk(choice, Some(usage_json(&usage))));
                    let _ = tx.send(SseEvent::default().data("[DONE]"));
                    return;
                }
                Event::Error(e) => {
                    let _ = tx.send(
                        SseEvent::default()
                            .data(json!({"error": {"message": e.message}}).to_string()),
                    );
                    return;
                }
            }
        }
    })
}

/// A stream fed by an async producer through a channel; the producer stops when the client goes away.
fn async_stream<F, Fut>(
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
}

async fn embeddings(State(s): State<Arc<Served>>, Json(req): Json<EmbeddingRequest>) -> Response {
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
            None => {
                return api_error(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    format!("The model `{w}` does not exist"),
                );
            }
        },
    };
    let texts: Vec<String> = match &req.input {
        Json_::String(t) => vec![t.clone()],
        Json_::Array(items) if items.iter().all(Json_::is_string) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_owned))
            .collect(),
        _ => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "`input` must be a string or a list of strings",
            );
        }
    };
    match embedder.1.embed(texts).await {
        Ok(vectors) => {
            let data: Vec<_> = vectors
                .into_iter()
                .enumerate()
                .map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v}))
                .collect();
            Json(json!({"object": "list", "data": data, "model": embedder.0,
                        "usage": {"prompt_tokens": 0, "total_tokens": 0}}))
            .into_response()
        }
        Err(e) => llm_error(e),
    }
}
