//! The OpenAI-compatible HTTP backend: OpenAI, Azure OpenAI's deployment URLs, and any server that speaks
//! `/v1/chat/completions` and `/v1/completions` (vLLM, Ollama, `sluice model serve`).
//!
//! Retries follow promptflow (§7.5): 429, 5xx, timeouts and dropped connections are retried, waiting for
//! `Retry-After` when the server sends it and otherwise backing off exponentially with jitter; 429
//! `insufficient_quota` and other 4xx are not. Each connection has a concurrency limit. Embeddings
//! (`/embeddings`) go through the same path.
//!
//! The key goes only where `api_base` points: a redirect to another origin (scheme, host, port) is not
//! followed, so neither `Authorization` nor Azure's `api-key` reaches a third party. Response bodies
//! are read up to a cap ([`MAX_RESPONSE_BYTES`]; error bodies [`MAX_ERROR_BYTES`]), and every error
//! text passes through [`sluice_engine::redact`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Value as Json, json};
use sluice_engine::redact::redact;
use sluice_engine::spawn::SpawnedTask;
use tokio::sync::Semaphore;
use tokio::sync::mpsc::UnboundedSender;

use super::connections::{Connection, ConnectionType};
use super::protocol::{Provider, encode_request};
use super::types::{Backend, Event, FinishReason, GenParams, LlmError, Prompt, TokenStream, Usage};

/// The most bytes read from a successful response (JSON, or one server-sent event line).
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// The most bytes read from an error response; the rest is not waited for.
pub const MAX_ERROR_BYTES: usize = 64 << 10;
/// Same-origin redirects followed before giving up.
const MAX_REDIRECTS: usize = 10;

/// Settings of one HTTP endpoint.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    pub kind: ConnectionType,
    /// e.g. `https://api.openai.com/v1`, or the Azure resource URL.
    pub api_base: String,
    pub api_key: Option<String>,
    pub api_version: String,
    pub organization: Option<String>,
    /// Per attempt.
    pub timeout: Duration,
    /// Attempts after the first.
    pub max_retries: u32,
    /// First backoff when the server gives no `Retry-After`; doubles per attempt, at most 60 s.
    pub backoff_base: Duration,
    pub max_concurrency: usize,
}

/// Why a URL did not parse (the `url` crate's error, as reqwest uses it).
pub type UrlError = <reqwest::Url as std::str::FromStr>::Err;

/// Why a connection cannot be used for HTTP requests.
#[derive(Debug, thiserror::Error)]
pub enum HttpConfigError {
    /// A setting could not be read (an environment variable it names is not set, ...).
    #[error(transparent)]
    Setting(#[from] crate::llm::connections::ConnectionError),
    #[error("connection `{connection}` has no `api_base`")]
    NoApiBase { connection: String },
    #[error(
        "connection `{connection}`: `{key}` must be a number from {min} to {max}, got `{value}`"
    )]
    OutOfRange {
        connection: String,
        key: &'static str,
        min: f64,
        max: f64,
        value: String,
    },
    /// `api_base` is shown redacted.
    #[error("connection `{connection}`: `api_base` {api_base} is not a URL")]
    NotAUrl {
        connection: String,
        api_base: String,
        #[source]
        source: UrlError,
    },
    #[error("connection `{connection}`: the HTTP client could not be set up")]
    Client {
        connection: String,
        #[source]
        source: reqwest::Error,
    },
}

impl HttpConfig {
    pub fn from_connection(c: &Connection) -> Result<HttpConfig, HttpConfigError> {
        let get = |k: &str| c.get(k).map_err(HttpConfigError::Setting);
        let api_base = match (c.kind, get("api_base")?) {
            // As promptflow does, a serverless endpoint is called as OpenAI under `/v1`.
            (ConnectionType::Serverless, Some(b)) => {
                let b = b.trim_end_matches('/');
                if b.ends_with("/v1") {
                    b.to_owned()
                } else {
                    format!("{b}/v1")
                }
            }
            (_, Some(b)) => b,
            (ConnectionType::OpenAi, None) => "https://api.openai.com/v1".to_owned(),
            _ => {
                return Err(HttpConfigError::NoApiBase {
                    connection: c.name.clone(),
                });
            }
        };
        // Each setting is a finite number in its range: `timeout: inf` or `max_concurrency: 1e30`
        // would otherwise panic when it becomes a Duration or a semaphore.
        let num = |key: &'static str, d: f64| -> Result<f64, HttpConfigError> {
            let (min, max) = match key {
                "timeout" => (0.001, 1e9),
                "retry_backoff" => (0.0, 3600.0),
                "max_retries" => (0.0, 100.0),
                _ => (1.0, 4096.0),
            };
            match get(key)? {
                Some(v) => match v.trim().parse::<f64>() {
                    Ok(n) if (min..=max).contains(&n) => Ok(n),
                    _ => Err(HttpConfigError::OutOfRange {
                        connection: c.name.clone(),
                        key,
                        min,
                        max,
                        value: v,
                    }),
                },
                None => Ok(d),
            }
        };
        Ok(HttpConfig {
            kind: match c.kind {
                ConnectionType::Serverless => ConnectionType::OpenAi,
                kind => kind,
            },
            api_base: api_base.trim_end_matches('/').to_owned(),
            api_key: get("api_key")?,
            api_version: get("api_version")?.unwrap_or_else(|| "2024-02-01".to_owned()),
            organization: get("organization")?,
            timeout: Duration::from_secs_f64(num("timeout", 600.0)?.max(0.001)),
            max_retries: num("max_retries", 10.0)? as u32,
            backoff_base: Duration::from_secs_f64(num("retry_backoff", 1.0)?.max(0.0)),
            max_concurrency: num("max_concurrency", 64.0)?.max(1.0) as usize,
        })
    }
}

/// A client for one connection; cheap to clone, shares its concurrency limit.
#[derive(Clone, Debug)]
pub struct HttpBackend {
    name: String,
    config: Arc<HttpConfig>,
    /// `api_base`, parsed: endpoints go under its path, before its query.
    base: reqwest::Url,
    client: reqwest::Client,
    limit: Arc<Semaphore>,
}

impl HttpBackend {
    pub fn new(name: &str, config: HttpConfig) -> Result<HttpBackend, HttpConfigError> {
        let base =
            reqwest::Url::parse(&config.api_base).map_err(|source| HttpConfigError::NotAUrl {
                connection: name.to_owned(),
                api_base: redact(&config.api_base).into_owned(),
                source,
            })?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10).min(config.timeout))
            .redirect(reqwest::redirect::Policy::custom(same_origin_redirects))
            .build()
            .map_err(|source| HttpConfigError::Client {
                connection: name.to_owned(),
                source,
            })?;
        Ok(HttpBackend {
            name: name.to_owned(),
            limit: Arc::new(Semaphore::new(config.max_concurrency)),
            config: Arc::new(config),
            base,
            client,
        })
    }

    /// The endpoint `leaf` (`chat/completions`, `completions`, `embeddings`): under `api_base`'s path
    /// (its query string, if any, kept after it), or under an Azure deployment named by `model`.
    fn url(&self, leaf: &str, model: Option<&str>) -> Result<String, LlmError> {
        let mut url = self.base.clone();
        let dir = url.path().trim_end_matches('/').to_owned();
        url.set_fragment(None);
        match self.config.kind {
            ConnectionType::AzureOpenAi => {
                let dep = model.ok_or_else(|| {
                    LlmError::user("ValidationError", "Azure OpenAI needs `deployment_name`")
                })?;
                url.set_path(&format!("{dir}/openai/deployments/{dep}/{leaf}"));
                if !url.query_pairs().any(|(k, _)| k == "api-version") {
                    url.query_pairs_mut()
                        .append_pair("api-version", &self.config.api_version);
                }
            }
            _ => url.set_path(&format!("{dir}/{leaf}")),
        }
        Ok(url.into())
    }
}

/// Follows a redirect only to the origin the request was sent to (and at most [`MAX_REDIRECTS`]):
/// reqwest drops `Authorization` on a cross-host redirect but would send Azure's `api-key` header along.
fn same_origin_redirects(attempt: reqwest::redirect::Attempt) -> reqwest::redirect::Action {
    let same = attempt.previous().first().is_some_and(|first| {
        first.scheme() == attempt.url().scheme()
            && first.host_str() == attempt.url().host_str()
            && first.port_or_known_default() == attempt.url().port_or_known_default()
    });
    if !same {
        attempt.stop()
    } else if attempt.previous().len() > MAX_REDIRECTS {
        attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
    } else {
        attempt.follow()
    }
}

/// Reads at most `cap` bytes of a body; the flag says whether more was left unread.
async fn read_capped(
    resp: &mut reqwest::Response,
    cap: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > cap {
            body.extend_from_slice(&chunk[..cap - body.len()]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// The words for a body over [`MAX_RESPONSE_BYTES`].
fn too_large() -> String {
    format!(
        "the response is larger than {} MiB; Sluice does not read further",
        MAX_RESPONSE_BYTES >> 20
    )
}

/// A JSON body of a successful response, read up to [`MAX_RESPONSE_BYTES`].
async fn read_json(mut resp: reqwest::Response) -> Result<Json, LlmError> {
    let bad = |m: String| LlmError::system("WrappedOpenAIError", redact(&m).into_owned());
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
    {
        return Err(bad(too_large()));
    }
    let (bytes, more) = read_capped(&mut resp, MAX_RESPONSE_BYTES)
        .await
        .map_err(|e| bad(format!("the response broke off: {e}")))?;
    if more {
        return Err(bad(too_large()));
    }
    serde_json::from_slice(&bytes).map_err(|e| bad(format!("the response is not JSON: {e}")))
}

#[async_trait]
impl Backend for HttpBackend {
    fn describe(&self) -> String {
        format!("{}:{}", self.config.kind.as_str(), self.name)
    }

    async fn generate(&self, prompt: Prompt, params: GenParams) -> Result<TokenStream, LlmError> {
        let chat = matches!(prompt, Prompt::Chat(_));
        let leaf = if chat {
            "chat/completions"
        } else {
            "completions"
        };
        // Azure routes by deployment (`deployment_name` before `model`); OpenAI by `model`.
        let model = match self.config.kind {
            ConnectionType::AzureOpenAi => params.deployment_name.clone().or(params.model.clone()),
            _ => params.model.clone(),
        };
        let url = self.url(leaf, model.as_deref())?;
        // A reply streams when the caller reads it as it comes, or when parameters sent as written
        // (a prompty's) ask for it, as promptflow sends them.
        let stream = params.stream
            || params
                .raw
                .as_ref()
                .is_some_and(|raw| raw.get("stream").and_then(Json::as_bool) == Some(true));
        let provider = match self.config.kind {
            ConnectionType::AzureOpenAi => Provider::AzureOpenAi,
            _ => Provider::OpenAi,
        };
        let mut request = encode_request(&prompt, &params, stream, provider);
        if let Some(m) = model {
            request["model"] = json!(m);
        }
        let message = chat
            && (params.passthrough.contains_key("functions")
                || params.passthrough.contains_key("tools"));
        let headers = params.headers.clone();
        let (tx, stream) = TokenStream::channel();
        let this = self.clone();
        let task = SpawnedTask::spawn(async move {
            let started = Instant::now();
            let reply = Reply::Stream {
                chat,
                message,
                tx: &tx,
                started,
            };
            match this
                .exchange(&url, &request, &headers, reply)
                .await
                .map(|_| ())
            {
                Ok(()) => {}
                Err(e) => {
                    let _ = tx.send(Event::Error(e));
                }
            }
        });
        Ok(stream.with_task(task))
    }
}

impl HttpBackend {
    /// The kind of connection it calls (a serverless one is called as OpenAI).
    pub fn kind(&self) -> ConnectionType {
        self.config.kind
    }

    /// Embeds `inputs` with `/embeddings` (OpenAI's endpoint, or an Azure deployment's), with the
    /// same retries, timeouts and concurrency limit as completions. Vectors come back in input order.
    pub async fn embed(
        &self,
        inputs: &[String],
        model: Option<&str>,
    ) -> Result<Embeddings, LlmError> {
        self.embeddings(json!(inputs), model).await
    }

    /// Embeds one text, sent as a string (`"input": "text"`), as promptflow's embedding tool does.
    pub async fn embed_text(
        &self,
        input: &str,
        model: Option<&str>,
    ) -> Result<Embeddings, LlmError> {
        self.embeddings(json!(input), model).await
    }

    async fn embeddings(&self, input: Json, model: Option<&str>) -> Result<Embeddings, LlmError> {
        let url = self.url("embeddings", model)?;
        let mut body = json!({"input": input});
        if let Some(m) = model {
            body["model"] = json!(m);
        }
        // As the `openai` client promptflow calls through asks: little-endian f32s in base64 (a
        // server that answers with lists of numbers is read too).
        body["encoding_format"] = json!("base64");
        match self.exchange(&url, &body, &[], Reply::Embeddings).await? {
            Outcome::Embeddings(e) => Ok(e),
            Outcome::Streamed => unreachable!("an embeddings exchange returns embeddings"),
        }
    }

    async fn read_embeddings(
        &self,
        resp: reqwest::Response,
    ) -> Result<Embeddings, (LlmError, bool)> {
        let bad = |m: String| (LlmError::system("WrappedOpenAIError", m), false);
        let v = read_json(resp).await.map_err(|e| (e, false))?;
        let mut rows: Vec<(u64, Vec<f32>)> = Vec::new();
        for (i, item) in v["data"].as_array().into_iter().flatten().enumerate() {
            let vector = match &item["embedding"] {
                Json::String(b64) => decode_f32s(b64).ok_or_else(|| {
                    bad("an embedding is not base64 of little-endian f32s".into())
                })?,
                v => v
                    .as_array()
                    .ok_or_else(|| bad("an embedding is not a list of numbers".into()))?
                    .iter()
                    .map(|x| x.as_f64().map(|f| f as f32))
                    .collect::<Option<Vec<f32>>>()
                    .ok_or_else(|| bad("an embedding is not a list of numbers".into()))?,
            };
            rows.push((item["index"].as_u64().unwrap_or(i as u64), vector));
        }
        rows.sort_by_key(|(i, _)| *i);
        Ok(Embeddings {
            vectors: rows.into_iter().map(|(_, v)| v).collect(),
            prompt_tokens: v["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
        })
    }

    /// Sends `request` until it succeeds, retrying as promptflow does, and reads the reply.
    async fn exchange(
        &self,
        url: &str,
        request: &Json,
        headers: &[(String, String)],
        reply: Reply<'_>,
    ) -> Result<Outcome, LlmError> {
        let _permit = self
            .limit
            .acquire()
            .await
            .map_err(|_| LlmError::system("LlmBackendError", "the connection was closed"))?;
        let mut attempt = 0u32;
        let mut unprocessable = 0u32;
        loop {
            let mut req = self
                .client
                .post(url)
                .json(request)
                .timeout(self.config.timeout);
            if let Some(key) = &self.config.api_key {
                req = match self.config.kind {
                    ConnectionType::AzureOpenAi => req.header("api-key", key),
                    _ => req.bearer_auth(key),
                };
            }
            if let Some(org) = &self.config.organization {
                req = req.header("OpenAI-Organization", org);
            }
            for (name, value) in headers {
                req = req.header(name, value);
            }
            let outcome = match req.send().await {
                Ok(resp) if resp.status().is_success() => {
                    let handled = match &reply {
                        Reply::Stream {
                            chat,
                            message,
                            tx,
                            started,
                        } => self
                            .forward(resp, (*chat, *message), tx, *started)
                            .await
                            .map(|()| Outcome::Streamed),
                        Reply::Embeddings => {
                            self.read_embeddings(resp).await.map(Outcome::Embeddings)
                        }
                    };
                    match handled {
                        Ok(o) => return Ok(o),
                        // Nothing reached the caller yet: the attempt can be repeated.
                        Err((e, false)) => Retry::After(None, e),
                        Err((e, true)) => return Err(e),
                    }
                }
                Ok(resp) if resp.status().is_redirection() => {
                    let status = resp.status().as_u16();
                    let to = resp
                        .headers()
                        .get(reqwest::header::LOCATION)
                        .and_then(|v| v.to_str().ok())
                        .map(|l| redact(l).into_owned())
                        .unwrap_or_default();
                    Retry::Never(LlmError::user(
                        "WrappedOpenAIError",
                        format!(
                            "the server redirected to another origin ({to}); Sluice does not follow it, so the key is not sent there: set `api_base` to the final address [status {status}]"
                        ),
                    ))
                }
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = retry_after(resp.headers());
                    let (bytes, _) = read_capped(&mut resp, MAX_ERROR_BYTES)
                        .await
                        .unwrap_or_default();
                    let text = String::from_utf8_lossy(&bytes);
                    let message = error_message(&text);
                    let e = LlmError::user(
                        "WrappedOpenAIError",
                        redact(&format!(
                            "OpenAI API hits {}: {message} [status {status}]",
                            status_name(status)
                        ))
                        .into_owned(),
                    );
                    match status {
                        429 if text.contains("insufficient_quota") => Retry::Never(e),
                        422 => {
                            unprocessable += 1;
                            if unprocessable > 3 {
                                Retry::Never(e)
                            } else {
                                Retry::After(retry_after, e)
                            }
                        }
                        429 | 500..=599 => Retry::After(retry_after, e),
                        _ => Retry::Never(e),
                    }
                }
                Err(e) => {
                    let kind = if e.is_timeout() {
                        "timed out"
                    } else {
                        "failed"
                    };
                    Retry::After(
                        None,
                        LlmError::system(
                            "WrappedOpenAIError",
                            redact(&format!("the request to {url} {kind}: {e}")).into_owned(),
                        ),
                    )
                }
            };
            match outcome {
                Retry::Never(e) => return Err(e),
                Retry::After(wait, e) => {
                    if attempt >= self.config.max_retries {
                        return Err(LlmError::system(
                            "ExceedMaxRetryTimes",
                            format!("Exceed max retry times. {}", e.message),
                        ));
                    }
                    let wait = wait.unwrap_or_else(|| backoff(self.config.backoff_base, attempt));
                    let url = redact(url);
                    tracing::warn!(%url, attempt, wait_ms = wait.as_millis() as u64, error = %e, "retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    /// Reads a successful response (SSE or JSON) and sends its text (and, where `message`, the whole
    /// reply message). The flag in the error says whether any text was already sent.
    async fn forward(
        &self,
        mut resp: reqwest::Response,
        (chat, message): (bool, bool),
        tx: &UnboundedSender<Event>,
        started: Instant,
    ) -> Result<(), (LlmError, bool)> {
        let is_sse = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let broken = |e: reqwest::Error, sent: bool| {
            (
                LlmError::system(
                    "WrappedOpenAIError",
                    redact(&format!("the response broke off: {e}")).into_owned(),
                ),
                sent,
            )
        };
        if !is_sse {
            let v = read_json(resp).await.map_err(|e| (e, false))?;
            let choice = &v["choices"][0];
            let reply = &choice["message"];
            if chat && message {
                let _ = tx.send(Event::Message(reply_message(reply)));
            }
            if chat && (!reply["tool_calls"].is_null() || !reply["function_call"].is_null()) {
                let _ = tx.send(Event::Text(reply.to_string()));
                let _ = tx.send(Event::Done(
                    FinishReason::ToolCalls,
                    usage(&v, Some(started.elapsed()), started),
                ));
                return Ok(());
            }
            let content = if chat {
                reply["content"].as_str()
            } else {
                choice["text"].as_str()
            };
            let _ = tx.send(Event::Text(content.unwrap_or_default().to_owned()));
            let reason = finish(choice["finish_reason"].as_str());
            let use_ = usage(&v, Some(started.elapsed()), started);
            let _ = tx.send(Event::Reply(v));
            let _ = tx.send(Event::Done(reason, use_));
            return Ok(());
        }
        let mut buf = String::new();
        let mut sent = false;
        let mut first = None;
        let mut reason = FinishReason::Stop;
        let mut use_ = Usage::default();
        loop {
            let chunk = resp.chunk().await.map_err(|e| broken(e, sent))?;
            let Some(chunk) = chunk else {
                break;
            };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            if buf.len() > MAX_RESPONSE_BYTES {
                return Err((LlmError::system("WrappedOpenAIError", too_large()), sent));
            }
            while let Some(nl) = buf.find('\n') {
                let line = buf[..nl].trim_end_matches('\r').to_owned();
                buf.drain(..=nl);
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim();
                if data == "[DONE]" {
                    use_.duration = started.elapsed();
                    use_.time_to_first_token = first;
                    let _ = tx.send(Event::Done(reason, use_));
                    return Ok(());
                }
                let Ok(v) = serde_json::from_str::<Json>(data) else {
                    continue;
                };
                if v["usage"].is_object() {
                    use_ = usage(&v, None, started);
                } else if use_.response_model.is_none() {
                    use_.response_model = v["model"].as_str().map(str::to_owned);
                }
                // With `n` > 1 the choices' chunks interleave; the text is the first choice's.
                let Some(choice) = v["choices"]
                    .as_array()
                    .and_then(|cs| cs.iter().find(|c| c["index"].as_u64().unwrap_or(0) == 0))
                else {
                    continue;
                };
                let delta = if chat {
                    choice["delta"]["content"].as_str()
                } else {
                    choice["text"].as_str()
                };
                if let Some(d) = delta.filter(|d| !d.is_empty()) {
                    first.get_or_insert_with(|| started.elapsed());
                    sent = true;
                    let _ = tx.send(Event::Text(d.to_owned()));
                }
                if let Some(f) = choice["finish_reason"].as_str() {
                    reason = finish(Some(f));
                }
            }
        }
        use_.duration = started.elapsed();
        use_.time_to_first_token = first;
        let _ = tx.send(Event::Done(reason, use_));
        Ok(())
    }
}

/// Vectors from an embeddings endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: u64,
}

/// The reply message as promptflow returns it with functions or tools (the OpenAI SDK's
/// `message.model_dump()`): the server's message, with `content`, `function_call` and `tool_calls`
/// present (null where absent).
fn reply_message(m: &Json) -> Json {
    let mut out = m.as_object().cloned().unwrap_or_default();
    out.entry("role").or_insert(json!("assistant"));
    for key in ["content", "function_call", "tool_calls"] {
        out.entry(key).or_insert(Json::Null);
    }
    Json::Object(out)
}

/// What to do with a successful response.
enum Reply<'a> {
    Stream {
        chat: bool,
        /// Send the whole reply message too (the request offered functions or tools).
        message: bool,
        tx: &'a UnboundedSender<Event>,
        started: Instant,
    },
    Embeddings,
}

enum Outcome {
    Streamed,
    Embeddings(Embeddings),
}

enum Retry {
    Never(LlmError),
    After(Option<Duration>, LlmError),
}

fn finish(f: Option<&str>) -> FinishReason {
    match f {
        Some("length") => FinishReason::Length,
        _ => FinishReason::Stop,
    }
}

/// The usage of a reply (or of the chunk of a streamed reply that carries it), with the model that
/// answered.
fn usage(reply: &Json, ttft: Option<Duration>, started: Instant) -> Usage {
    let u = &reply["usage"];
    Usage {
        response_model: reply["model"].as_str().map(str::to_owned),
        prompt_tokens: u["prompt_tokens"].as_u64().unwrap_or(0),
        completion_tokens: u["completion_tokens"].as_u64().unwrap_or(0),
        cached_tokens: u["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0),
        time_to_first_token: ttft,
        duration: started.elapsed(),
    }
}

fn status_name(status: u16) -> &'static str {
    match status {
        400 => "BadRequestError",
        401 => "AuthenticationError",
        403 => "PermissionDeniedError",
        404 => "NotFoundError",
        422 => "UnprocessableEntityError",
        429 => "RateLimitError",
        500..=599 => "InternalServerError",
        _ => "APIStatusError",
    }
}

fn error_message(body: &str) -> String {
    serde_json::from_str::<Json>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(500).collect())
}

/// `Retry-After` (seconds or an HTTP date is not supported) or `retry-after-ms`.
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    // NaN and infinities are no delay at all (a NaN clamps to NaN, which no Duration takes).
    let finite = |v: &reqwest::header::HeaderValue| {
        v.to_str()
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|n| n.is_finite())
    };
    if let Some(ms) = h.get("retry-after-ms").and_then(finite) {
        return Some(Duration::from_secs_f64((ms / 1000.0).clamp(0.0, 600.0)));
    }
    h.get(reqwest::header::RETRY_AFTER)
        .and_then(finite)
        .map(|s| Duration::from_secs_f64(s.clamp(0.0, 600.0)))
}

/// `base * 2^attempt`, at most 60 s, with ±25% jitter so concurrent lines do not retry in lockstep.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let raw = base.as_secs_f64() * 2f64.powi(attempt.min(16) as i32);
    let capped = raw.min(60.0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter = 0.75 + f64::from(nanos % 1000) / 2000.0;
    Duration::from_secs_f64(capped * jitter)
}

/// Little-endian `f32`s from base64 text (`encoding_format: base64`).
fn decode_f32s(b64: &str) -> Option<Vec<f32>> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    (bytes.len() % 4 == 0).then(|| {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Duration::from_secs(1);
        assert!(backoff(b, 0) <= Duration::from_millis(1250));
        assert!(backoff(b, 3) >= Duration::from_secs(6));
        assert!(backoff(b, 30) <= Duration::from_secs(75));
    }

    fn connection_with(key: &str, value: &str) -> Connection {
        Connection::from_yaml(
            &format!("name: c\ntype: open_ai\napi_key: k\n{key}: {value}\n"),
            std::path::Path::new("c.yaml"),
        )
        .unwrap()
    }

    #[test]
    fn numbers_out_of_range_in_a_connection_are_errors_not_panics() {
        for (key, value) in [
            ("timeout", "inf"),
            ("timeout", ".inf"),
            ("timeout", ".nan"),
            ("timeout", "1e300"),
            ("max_concurrency", "1e30"),
            ("max_concurrency", "0"),
            ("max_retries", "-1"),
            ("retry_backoff", "nan"),
        ] {
            let err = HttpConfig::from_connection(&connection_with(key, value))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("`{key}` must be a number from")),
                "{err}"
            );
        }
        let ok = HttpConfig::from_connection(&connection_with("timeout", "2.5")).unwrap();
        assert_eq!(ok.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn a_retry_after_that_is_not_finite_is_ignored() {
        for value in ["NaN", "nan", "inf", "-inf", "1e400"] {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert("retry-after-ms", value.parse().unwrap());
            h.insert(reqwest::header::RETRY_AFTER, value.parse().unwrap());
            assert_eq!(retry_after(&h), None, "{value}");
        }
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after-ms", "1500".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
    }
}
