//! The in-process llama.cpp backend.
//!
//! A model is loaded once per process ([`LocalModel::get`]) and shared by every node and line. Each loaded
//! model owns one llama context, driven by one decode thread: requests from any task are queued to it, and
//! it runs all admitted sequences in the same batch (continuous batching: one llama context, one sequence
//! id per request, per-sequence sampling, new sequences joining as others finish). Finished sequences keep
//! their KV cache, so a later prompt that shares a prefix (a system prompt, few-shot examples) copies those
//! cells instead of evaluating the prefix again.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc as std_mpsc};
use std::time::Instant;

use async_trait::async_trait;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use sluice_engine::spawn::{run_blocking, thread};
use tokio::sync::mpsc::UnboundedSender;

use super::types::{
    Backend, ChatMessage, Event, FinishReason, GenParams, LlmError, Prompt, TokenLogprob,
    TokenStream, TokenText, Usage,
};

pub use super::local_config::LocalConfig;

impl LocalConfig {
    /// The llama context these settings describe (benchmarks build their reference loop from it too).
    pub fn context_params(&self) -> LlamaContextParams {
        LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(self.kv_cells()))
            .with_n_batch(self.n_batch)
            .with_n_ubatch(self.n_batch)
            .with_n_seq_max(self.parallel)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads)
            .with_kv_unified(self.unified_kv)
            .with_swa_full(true)
    }
}

static LOADS: AtomicUsize = AtomicUsize::new(0);

/// How many times a model file was loaded in this process (each model is loaded once).
pub fn model_loads() -> usize {
    LOADS.load(Ordering::SeqCst)
}

static LOADS_BY_NAME: Mutex<Vec<(String, usize)>> = Mutex::new(Vec::new());

/// How many times the model of this name was loaded in this process.
pub fn model_loads_of(name: &str) -> usize {
    LOADS_BY_NAME
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(n, _)| n == name)
        .map_or(0, |(_, c)| *c)
}

type PoolKey = (PathBuf, LocalConfig);
type PoolSlot = Arc<tokio::sync::OnceCell<Arc<LocalModel>>>;

fn pool() -> &'static Mutex<HashMap<PoolKey, PoolSlot>> {
    static POOL: OnceLock<Mutex<HashMap<PoolKey, PoolSlot>>> = OnceLock::new();
    POOL.get_or_init(Default::default)
}

/// The llama.cpp crate Sluice is built on, for benchmarks that drive it directly.
pub use llama_cpp_2;

/// The process's llama.cpp backend (initialised once; benchmarks share it).
pub fn llama_backend() -> Result<&'static LlamaBackend, LlmError> {
    backend()
}

/// Whether this CPU has one instruction set.
#[cfg(all(target_arch = "x86_64", not(feature = "cpu-variants")))]
type HasFeature = fn() -> bool;

/// The x86-64 instruction sets llama.cpp's CPU code is compiled with when it is built as one library
/// (without the `cpu-variants` feature): ggml's defaults for a build not tuned to the building machine.
/// A CPU without one of them would stop the process with an illegal instruction the first time a
/// model ran, so it is checked first.
#[cfg(all(target_arch = "x86_64", not(feature = "cpu-variants")))]
const CPU_FEATURES: &[(&str, HasFeature)] = &[
    ("SSE4.2", || std::arch::is_x86_feature_detected!("sse4.2")),
    ("AVX", || std::arch::is_x86_feature_detected!("avx")),
    ("AVX2", || std::arch::is_x86_feature_detected!("avx2")),
    ("FMA", || std::arch::is_x86_feature_detected!("fma")),
    ("F16C", || std::arch::is_x86_feature_detected!("f16c")),
    ("BMI2", || std::arch::is_x86_feature_detected!("bmi2")),
];

/// The instruction sets llama.cpp was compiled with that this CPU lacks.
#[cfg(not(feature = "cpu-variants"))]
fn missing_cpu_features() -> Vec<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        CPU_FEATURES
            .iter()
            .filter(|(_, has)| !has())
            .map(|(name, _)| *name)
            .collect()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Vec::new()
    }
}

/// The error for a CPU that lacks `missing`.
#[cfg(not(feature = "cpu-variants"))]
fn unsupported_cpu(missing: &[&str]) -> LlmError {
    LlmError::system(
        "LocalModelError",
        format!(
            "this CPU lacks {}, which Sluice's build of llama.cpp uses, so local models cannot run \
             here; use an OpenAI-compatible connection, or build Sluice with its `cpu-variants` \
             feature (the default), which picks llama.cpp's code for the CPU at start",
            missing.join(", ")
        ),
    )
}

/// The llama.cpp CPU backend this process runs on: the variant for this CPU, loaded once.
#[cfg(feature = "cpu-variants")]
pub fn cpu_backend() -> Result<&'static super::cpu_backend::CpuBackend, LlmError> {
    static CPU: OnceLock<Result<super::cpu_backend::CpuBackend, String>> = OnceLock::new();
    CPU.get_or_init(|| {
        route_llama_logs();
        super::cpu_backend::load().map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| LlmError::system("LocalModelError", format!("llama.cpp did not start: {e}")))
}

/// Which CPU code of llama.cpp runs, for `sluice model info`.
fn cpu_backend_details() -> serde_json::Value {
    #[cfg(feature = "cpu-variants")]
    {
        match cpu_backend() {
            Ok(b) => serde_json::json!({"variant": b.variant, "path": b.path}),
            Err(e) => serde_json::json!({"error": e.message}),
        }
    }
    #[cfg(not(feature = "cpu-variants"))]
    {
        serde_json::json!({"variant": "built-in", "path": null})
    }
}

/// llama.cpp's own log (backends loaded, model quirks it works around, buffer sizes) goes to the
/// process's log, where it shows from `-vv` on; never to stderr unasked.
fn route_llama_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let verbose = tracing::enabled!(tracing::Level::DEBUG);
        llama_cpp_2::send_logs_to_tracing(
            llama_cpp_2::LogOptions::default().with_logs_enabled(verbose),
        );
    });
}

fn backend() -> Result<&'static LlamaBackend, LlmError> {
    #[cfg(feature = "cpu-variants")]
    cpu_backend()?;
    #[cfg(not(feature = "cpu-variants"))]
    {
        let missing = missing_cpu_features();
        if !missing.is_empty() {
            return Err(unsupported_cpu(&missing));
        }
    }
    static BACKEND: OnceLock<Result<LlamaBackend, llama_cpp_2::LlamaCppError>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            route_llama_logs();
            LlamaBackend::init()
        })
        .as_ref()
        .map_err(|e| LlmError::system("LocalModelError", format!("llama.cpp did not start: {e}")))
}

/// Why a model's worker could not set up, or a request's sampler could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SetupError {
    #[error(transparent)]
    Backend(LlmError),
    #[error("could not create a llama context")]
    Context(#[source] llama_cpp_2::LlamaContextLoadError),
    #[error("no embedding context")]
    EmbeddingContext(#[source] llama_cpp_2::LlamaContextLoadError),
    #[error("the JSON grammar did not load")]
    Grammar(#[source] llama_cpp_2::GrammarError),
}

impl From<SetupError> for LlmError {
    fn from(e: SetupError) -> Self {
        match e {
            SetupError::Backend(e) => e,
            other => LlmError::system("LocalModelError", crate::error_chain(&other)),
        }
    }
}

/// Starts a model's worker thread and waits until it reports that its llama context is ready (or why
/// it could not create one).
pub(crate) fn start_worker(
    name: String,
    work: impl FnOnce(std_mpsc::SyncSender<Result<(), SetupError>>) + Send + 'static,
) -> Result<(), LlmError> {
    let (ready_tx, ready_rx) = std_mpsc::sync_channel(1);
    thread(name.clone(), move || work(ready_tx)).map_err(|e| {
        LlmError::system(
            "LocalModelError",
            format!("cannot start thread {name}: {e}"),
        )
    })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(LlmError::system(
            "LocalModelError",
            format!("thread {name} stopped while starting"),
        )),
    }
}

/// A request waits for another request's prompt evaluation when it would share at least this many more
/// tokens of it.
const PREFIX_WAIT_MIN: usize = 16;

/// llama.cpp contexts must be created one at a time (creation mutates the model).
static CONTEXT_CREATION: Mutex<()> = Mutex::new(());

/// A loaded GGUF model and the decode thread that serves it.
pub struct LocalModel {
    name: String,
    path: PathBuf,
    model: Arc<LlamaModel>,
    template: LlamaChatTemplate,
    template_source: String,
    config: LocalConfig,
    /// The largest prompt + completion of one request.
    max_seq_tokens: u32,
    /// The texts of the model's control tokens (`<start_of_turn>`, `<|im_end|>`, ...), which message
    /// text must not turn into.
    specials: Option<regex::Regex>,
    jobs: Mutex<std_mpsc::Sender<Job>>,
}

impl fmt::Debug for LocalModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalModel")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("template", &self.template_source)
            .field("config", &self.config)
            .finish()
    }
}

impl LocalModel {
    /// The model at `path`, loading it on first use; later callers share the same instance.
    pub async fn get(
        name: &str,
        path: &Path,
        config: LocalConfig,
    ) -> Result<Arc<LocalModel>, LlmError> {
        let key = (path.to_path_buf(), config.clone());
        let cell = pool()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .clone();
        let name = name.to_owned();
        let path = path.to_path_buf();
        cell.get_or_try_init(|| async move {
            run_blocking(move || LocalModel::load(name, path, config).map(Arc::new)).await
        })
        .await
        .cloned()
    }

    fn load(name: String, path: PathBuf, config: LocalConfig) -> Result<LocalModel, LlmError> {
        let backend = backend()?;
        let started = Instant::now();
        let params = LlamaModelParams::default().with_n_gpu_layers(config.gpu_layers);
        let model = LlamaModel::load_from_file(backend, &path, &params).map_err(|e| {
            LlmError::user(
                "LocalModelError",
                format!("could not load the model {}: {e}", path.display()),
            )
        })?;
        LOADS.fetch_add(1, Ordering::SeqCst);
        {
            let mut by_name = LOADS_BY_NAME.lock().unwrap_or_else(|e| e.into_inner());
            match by_name.iter_mut().find(|(n, _)| *n == name) {
                Some((_, c)) => *c += 1,
                None => by_name.push((name.clone(), 1)),
            }
        }
        let model = Arc::new(model);
        let (template, template_source) = chat_template(&model);
        let per_request = if config.unified_kv {
            config.n_ctx
        } else {
            config.seq_ctx
        };
        let max_seq_tokens = per_request.min(model.n_ctx_train().max(256));
        let specials = special_texts(&model);

        let (jobs, rx) = std_mpsc::channel::<Job>();
        let loop_model = model.clone();
        let loop_config = config.clone();
        start_worker(format!("sluice-llama-{name}"), move |ready| {
            decode_thread(loop_model, loop_config, rx, ready)
        })?;
        tracing::info!(
            model = %name,
            path = %path.display(),
            template = %template_source,
            load_ms = started.elapsed().as_millis() as u64,
            "local model loaded"
        );
        Ok(LocalModel {
            name,
            path,
            model,
            template,
            template_source,
            config,
            max_seq_tokens,
            specials,
            jobs: Mutex::new(jobs),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the chat template came from: `gguf` or the name of llama.cpp's built-in template.
    pub fn template_source(&self) -> &str {
        &self.template_source
    }

    /// Formats chat messages with the model's chat template, ending with the assistant's turn.
    pub fn format_chat(&self, messages: &[ChatMessage]) -> Result<String, LlmError> {
        let mut chat = Vec::with_capacity(messages.len());
        for m in messages {
            // The rendered chat is tokenized with special tokens parsed (the template's markers are
            // special tokens), so message text that spells one is broken up first: a message cannot
            // end its turn or open another by writing `<end_of_turn>`.
            let content = match &self.specials {
                Some(re) => re
                    .replace_all(&m.content, |c: &regex::Captures| {
                        let t = &c[0];
                        let first = t.chars().next().map_or(0, char::len_utf8);
                        format!("{}\u{2060}{}", &t[..first], &t[first..])
                    })
                    .into_owned(),
                None => m.content.clone(),
            };
            let (role, content) = match m.role.as_str() {
                "system" | "user" | "assistant" => (m.role.clone(), content),
                // Local chat templates know only these roles; tool results are shown to the model as user text.
                other => (
                    "user".to_owned(),
                    format!(
                        "[{other}{}]\n{}",
                        m.name
                            .as_deref()
                            .map(|n| format!(" {n}"))
                            .unwrap_or_default(),
                        content
                    ),
                ),
            };
            chat.push(LlamaChatMessage::new(role, content).map_err(|e| {
                LlmError::user("ChatAPIInvalidRole", format!("bad chat message: {e}"))
            })?);
        }
        self.model
            .apply_chat_template(&self.template, &chat, true)
            .map_err(|e| {
                LlmError::system(
                    "LocalModelError",
                    format!("chat template `{}` failed: {e}", self.template_source),
                )
            })
    }

    /// The tokens llama.cpp evaluates for `prompt`.
    pub fn tokenize(&self, prompt: &Prompt) -> Result<Vec<LlamaToken>, LlmError> {
        let vocab = self.model.vocab();
        Ok(match prompt {
            // The template's own markers are special tokens; user text inside it is plain text.
            Prompt::Chat(messages) => {
                let text = self.format_chat(messages)?;
                vocab.tokenize(text.as_bytes(), true, true)
            }
            Prompt::Text(text) => vocab.tokenize(text.as_bytes(), true, false),
        })
    }

    /// What llama.cpp reports about the model and how it runs, for `sluice model info` and benchmarks.
    pub fn details(&self) -> serde_json::Value {
        let m = &self.model;
        serde_json::json!({
            "architecture": m.meta_val_str("general.architecture").ok(),
            "parameters": m.n_params(),
            "file_bytes": m.size(),
            "layers": m.n_layer(),
            "vocab": m.n_vocab(),
            "context_trained": m.n_ctx_train(),
            "max_tokens_per_request": self.max_seq_tokens,
            "parallel_sequences": self.config.parallel,
            "kv_cells": self.config.kv_cells(),
            "kv_unified": self.config.unified_kv,
            "threads": self.config.threads,
            "gpu_offload_supported": backend().map(|b| b.supports_gpu_offload()).unwrap_or(false),
            "gpu_layers": if self.config.gpu_layers == u32::MAX { m.n_layer() } else { self.config.gpu_layers.min(m.n_layer()) },
            "cpu_backend": cpu_backend_details(),
            "devices": llama_cpp_2::list_llama_ggml_backend_devices().iter().map(|d| format!("{d:?}")).collect::<Vec<_>>(),
        })
    }

    /// The number of tokens `text` takes.
    pub fn count_tokens(&self, text: &str) -> usize {
        self.model
            .vocab()
            .tokenize(text.as_bytes(), false, false)
            .len()
    }

    fn submit(&self, job: Job) -> Result<(), LlmError> {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .map_err(|_| LlmError::system("LocalModelError", "the decode thread has stopped"))
    }
}

#[async_trait]
impl Backend for LocalModel {
    fn describe(&self) -> String {
        format!("local:{}", self.name)
    }

    async fn generate(&self, prompt: Prompt, params: GenParams) -> Result<TokenStream, LlmError> {
        let submitted = Instant::now();
        let tokens = self.tokenize(&prompt)?;
        if tokens.is_empty() {
            return Err(LlmError::user("LocalModelError", "the prompt is empty"));
        }
        let prompt_len = tokens.len() as u32;
        if prompt_len >= self.max_seq_tokens {
            return Err(LlmError::user(
                "LocalModelError",
                format!(
                    "the prompt has {prompt_len} tokens, but one request to the local model `{}` can use at most {} (prompt + completion); shorten the prompt or raise SLUICE_LLM_CTX",
                    self.name, self.max_seq_tokens
                ),
            ));
        }
        let room = self.max_seq_tokens - prompt_len;
        let max_new = params
            .max_tokens
            .unwrap_or(self.config.default_max_tokens)
            .min(room);
        let (tx, stream) = TokenStream::channel();
        if max_new == 0 {
            let usage = Usage {
                prompt_tokens: u64::from(prompt_len),
                duration: submitted.elapsed(),
                ..Usage::default()
            };
            let _ = tx.send(Event::Done(FinishReason::Length, usage));
            return Ok(stream);
        }
        let sampling = SamplingSpec::from_params(&params);
        self.submit(Job {
            tokens,
            max_new,
            logprobs: params.logprobs.map(|k| k.min(MAX_TOP_LOGPROBS)),
            stop: params.stop.into_iter().filter(|s| !s.is_empty()).collect(),
            sampling,
            tx,
            submitted,
        })?;
        Ok(stream)
    }
}

/// A regex matching the texts of the model's control tokens that look like markup (`<...>`,
/// `[...]`, `<|...|>`), longest first; `None` when there are none. User-defined tokens (Gemma's
/// `<table>`, `<b>`, ...) are left alone: they are ordinary text.
fn special_texts(model: &LlamaModel) -> Option<regex::Regex> {
    use llama_cpp_2::token_type::LlamaTokenAttr;
    let vocab = model.vocab();
    let mut texts: Vec<String> = vocab
        .tokens()
        .filter(|&t| vocab.attr(t).contains(LlamaTokenAttr::Control))
        .filter_map(|t| String::from_utf8(vocab.token_to_piece(t, true, None)).ok())
        .filter(|t| {
            t.len() >= 3
                && !t.chars().any(char::is_whitespace)
                && ((t.starts_with('<') && t.ends_with('>'))
                    || (t.starts_with('[') && t.ends_with(']')))
        })
        .collect();
    if texts.is_empty() {
        return None;
    }
    texts.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    texts.dedup();
    let pattern = texts
        .iter()
        .map(|t| regex::escape(t))
        .collect::<Vec<_>>()
        .join("|");
    regex::RegexBuilder::new(&pattern)
        .size_limit(64 << 20)
        .build()
        .map_err(|e| tracing::warn!("special token texts: {e}"))
        .ok()
}

/// The GGUF's chat template, else llama.cpp's built-in template for the architecture.
fn chat_template(model: &LlamaModel) -> (LlamaChatTemplate, String) {
    if let Ok(t) = model.chat_template(None) {
        return (t, "gguf".to_owned());
    }
    let arch = model
        .meta_val_str("general.architecture")
        .unwrap_or_default();
    let name = builtin_template_for(&arch);
    let template = LlamaChatTemplate::new(name).expect("template names have no NUL");
    (template, name.to_owned())
}

/// llama.cpp's built-in chat template for a GGUF `general.architecture`.
fn builtin_template_for(arch: &str) -> &'static str {
    let arch = arch.to_ascii_lowercase();
    if arch.starts_with("gemma") {
        "gemma"
    } else if arch.starts_with("llama") {
        "llama3"
    } else if arch.starts_with("phi3") {
        "phi3"
    } else if arch.starts_with("mistral") {
        "mistral-v7"
    } else {
        "chatml"
    }
}

/// A JSON grammar (GBNF) that accepts one object, for `response_format: json_object`.
const JSON_OBJECT_GRAMMAR: &str = r#"
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null")
object ::= "{" ws ( string ws ":" ws value ( ws "," ws string ws ":" ws value )* )? ws "}"
array  ::= "[" ws ( value ( ws "," ws value )* )? ws "]"
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] ) )* "\""
number ::= "-"? ( [0-9] | [1-9] [0-9]{0,15} ) ( "." [0-9]+ )? ( [eE] [-+]? [0-9]{1,15} )?
ws     ::= | " " | "\n" [ \t]{0,20}
"#;

/// How one sequence picks its tokens.
#[derive(Clone, Debug)]
struct SamplingSpec {
    temperature: f32,
    top_p: f32,
    presence: f32,
    frequency: f32,
    seed: u32,
    json: bool,
}

impl SamplingSpec {
    fn from_params(p: &GenParams) -> Self {
        SamplingSpec {
            temperature: p.temperature as f32,
            top_p: p.top_p as f32,
            presence: p.presence_penalty as f32,
            frequency: p.frequency_penalty as f32,
            // llama.cpp's seed is 32 bits; a negative or larger one wraps, as it always has.
            seed: p.seed.map_or(0x5eed, |s| s as u32),
            json: p.json_object,
        }
    }

    /// Plain greedy decoding: an argmax over the logits, no sampler chain needed.
    fn is_plain_greedy(&self) -> bool {
        self.temperature <= 0.0 && !self.json && self.presence == 0.0 && self.frequency == 0.0
    }

    fn build(&self, model: &LlamaModel) -> Result<Option<LlamaSampler>, SetupError> {
        if self.is_plain_greedy() {
            return Ok(None);
        }
        let mut chain = Vec::new();
        if self.json {
            chain.push(
                LlamaSampler::grammar(model, JSON_OBJECT_GRAMMAR, "root")
                    .map_err(SetupError::Grammar)?,
            );
        }
        if self.presence != 0.0 || self.frequency != 0.0 {
            chain.push(LlamaSampler::penalties(
                model.n_vocab(),
                256,
                1.0,
                self.frequency,
                self.presence,
            ));
        }
        if self.temperature <= 0.0 {
            chain.push(LlamaSampler::greedy());
        } else {
            if self.top_p < 1.0 {
                chain.push(LlamaSampler::top_p(self.top_p, 1));
            }
            chain.push(LlamaSampler::temp(self.temperature));
            chain.push(LlamaSampler::dist(self.seed));
        }
        Ok(Some(LlamaSampler::chain_simple(chain)))
    }
}

/// The most alternatives a token's log probability comes with (OpenAI's limit).
const MAX_TOP_LOGPROBS: u8 = 20;

/// One request for the decode thread.
struct Job {
    tokens: Vec<LlamaToken>,
    max_new: u32,
    /// Send each token's log probability with this many alternatives.
    logprobs: Option<u8>,
    stop: Vec<String>,
    sampling: SamplingSpec,
    tx: UnboundedSender<Event>,
    submitted: Instant,
}

/// A sequence id in the llama context, and what its KV cells hold.
struct Slot {
    id: i32,
    /// Tokens whose KV cells this sequence holds, in position order.
    cache: Vec<LlamaToken>,
    /// Last time it was used, to pick which idle cache to give up.
    used_at: u64,
    active: Option<Active>,
}

/// A request being served by a slot.
struct Active {
    job: Job,
    sampler: Option<LlamaSampler>,
    /// Prompt tokens already in the cache.
    fed: usize,
    cached: usize,
    /// The sampled token that is the next to decode.
    pending: Option<LlamaToken>,
    /// Where this sequence's logits are in the current batch.
    logits_at: Option<i32>,
    /// Tokens this sequence put in the current batch.
    in_batch: Vec<LlamaToken>,
    generated: u32,
    bytes: Vec<u8>,
    text: String,
    emitted: usize,
    first_token: Option<Instant>,
    /// Cells counted against the context for this request.
    charge: usize,
}

fn decode_thread(
    model: Arc<LlamaModel>,
    config: LocalConfig,
    rx: std_mpsc::Receiver<Job>,
    ready: std_mpsc::SyncSender<Result<(), SetupError>>,
) {
    let backend = match backend() {
        Ok(b) => b,
        Err(e) => {
            let _ = ready.send(Err(SetupError::Backend(e)));
            return;
        }
    };
    let params = config.context_params();
    let ctx = {
        let _guard = CONTEXT_CREATION.lock().unwrap_or_else(|e| e.into_inner());
        model.new_context(backend, params)
    };
    let ctx = match ctx {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(SetupError::Context(e)));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let mut state = DecodeLoop {
        model: &model,
        ctx,
        batch: LlamaBatch::new(config.n_batch as usize, 1),
        slots: (0..config.parallel as i32)
            .map(|id| Slot {
                id,
                cache: Vec::new(),
                used_at: 0,
                active: None,
            })
            .collect(),
        queue: VecDeque::new(),
        clock: 0,
        n_ctx: config.kv_cells() as usize,
        unified: config.unified_kv,
        n_batch: config.n_batch as usize,
        n_vocab: model.n_vocab() as usize,
    };
    state.run(&rx);
}

struct DecodeLoop<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    slots: Vec<Slot>,
    queue: VecDeque<Job>,
    clock: u64,
    n_ctx: usize,
    unified: bool,
    n_batch: usize,
    n_vocab: usize,
}

impl DecodeLoop<'_> {
    fn run(&mut self, rx: &std_mpsc::Receiver<Job>) {
        loop {
            let busy = self.slots.iter().any(|s| s.active.is_some()) || !self.queue.is_empty();
            if !busy {
                match rx.recv() {
                    Ok(job) => self.queue.push_back(job),
                    Err(_) => return,
                }
            }
            while let Ok(job) = rx.try_recv() {
                self.queue.push_back(job);
            }
            self.drop_cancelled();
            self.admit();
            if self.slots.iter().all(|s| s.active.is_none()) {
                continue;
            }
            self.step();
        }
    }

    /// Frees slots whose caller went away (a cancelled line, a closed HTTP connection).
    fn drop_cancelled(&mut self) {
        self.queue.retain(|j| !j.tx.is_closed());
        for slot in &mut self.slots {
            if slot.active.as_ref().is_some_and(|a| a.job.tx.is_closed()) {
                slot.active = None;
            }
        }
    }

    fn charged(&self) -> usize {
        self.slots
            .iter()
            .map(|s| match &s.active {
                Some(a) => a.charge,
                None => s.cache.len(),
            })
            .sum()
    }

    /// Starts queued requests while there are free slots and room in the KV cache.
    fn admit(&mut self) {
        while let Some(job) = self.queue.front() {
            let need_upper = job.tokens.len() + job.max_new as usize;
            if need_upper > self.n_ctx {
                let job = self.queue.pop_front().expect("front exists");
                let _ = job.tx.send(Event::Error(LlmError::user(
                    "LocalModelError",
                    format!(
                        "the request needs {need_upper} tokens of context, more than the model's {}",
                        self.n_ctx
                    ),
                )));
                continue;
            }
            if !self.slots.iter().any(|s| s.active.is_none()) {
                return;
            }
            // The longest cached prefix of this prompt, in any slot; one prompt token is always evaluated
            // so there are logits to sample from.
            let limit = job.tokens.len() - 1;
            let (source, lcp) = self
                .slots
                .iter()
                .enumerate()
                .map(|(i, s)| (i, common_prefix(&s.cache, &job.tokens).min(limit)))
                .max_by_key(|&(i, l)| (l, self.slots[i].active.is_none()))
                .unwrap_or((0, 0));
            // A running request whose prompt shares a longer prefix is still being evaluated: wait for it
            // (one decode step) and share its cells instead of evaluating the same prefix twice.
            let prefilling = self
                .slots
                .iter()
                .filter_map(|s| s.active.as_ref())
                .filter(|a| a.fed < a.job.tokens.len())
                .map(|a| common_prefix(&a.job.tokens, &job.tokens).min(limit))
                .max()
                .unwrap_or(0);
            if prefilling >= lcp + PREFIX_WAIT_MIN {
                return;
            }
            // The target: the source itself when idle, else the idle slot whose cache is least recently used.
            let target = if self.slots[source].active.is_none() && lcp > 0 {
                source
            } else {
                self.slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.active.is_none())
                    .min_by_key(|(_, s)| (s.used_at, s.cache.len()))
                    .map(|(i, _)| i)
                    .expect("an idle slot exists")
            };
            // Cells this request may use. A prefix copied from another slot shares that slot's cells, but
            // they outlive that slot's own charge when it is evicted, so they are counted in full.
            let charge = job.tokens.len() + job.max_new as usize;
            // Room: give up idle caches (least recently used first) until the request fits.
            // With one KV stream per sequence, a request that fits its stream always fits.
            let mut held = if self.unified {
                self.charged() - self.slots[target].cache.len()
            } else {
                0
            };
            while self.unified && held + charge > self.n_ctx {
                let victim = self
                    .slots
                    .iter()
                    .enumerate()
                    .filter(|(i, s)| {
                        // The source is kept only when its prefix is about to be copied.
                        s.active.is_none()
                            && *i != target
                            && (lcp == 0 || *i != source)
                            && !s.cache.is_empty()
                    })
                    .min_by_key(|(_, s)| s.used_at)
                    .map(|(i, _)| i);
                match victim {
                    Some(v) => {
                        held -= self.slots[v].cache.len();
                        self.clear_slot(v);
                    }
                    None => break,
                }
            }
            if self.unified && held + charge > self.n_ctx {
                if self.slots.iter().all(|s| s.active.is_none()) {
                    // Nothing will free cells: the request can never fit.
                    let job = self.queue.pop_front().expect("front exists");
                    let _ = job.tx.send(Event::Error(LlmError::user(
                        "LocalModelError",
                        format!(
                            "the request needs {charge} tokens of context, more than the {} free",
                            self.n_ctx - held
                        ),
                    )));
                    continue;
                }
                // Wait for running sequences to finish.
                return;
            }
            let job = self.queue.pop_front().expect("front exists");
            let sampler = match job.sampling.build(self.model) {
                Ok(s) => s,
                Err(e) => {
                    let _ = job.tx.send(Event::Error(e.into()));
                    continue;
                }
            };
            let target_id = self.slots[target].id;
            if target == source {
                self.remove_cells(target, lcp);
                self.slots[target].cache.truncate(lcp);
            } else {
                self.clear_slot(target);
                if lcp > 0 {
                    let src_id = self.slots[source].id;
                    if self.unified {
                        // Shared cells: the target sequence is added to the prefix's cells.
                        let _ =
                            self.ctx
                                .kv_cache_seq_cp(src_id, target_id, Some(0), Some(lcp as u32));
                    } else {
                        // Separate streams: llama.cpp copies the whole stream; the tail is dropped.
                        let _ = self.ctx.kv_cache_seq_cp(src_id, target_id, None, None);
                        let _ = self.ctx.clear_kv_cache_seq(
                            Some(target_id as u32),
                            Some(lcp as u32),
                            None,
                        );
                    }
                    let prefix = self.slots[source].cache[..lcp].to_vec();
                    self.slots[target].cache = prefix;
                }
            }
            self.clock += 1;
            let slot = &mut self.slots[target];
            slot.used_at = self.clock;
            slot.active = Some(Active {
                sampler,
                fed: lcp,
                cached: lcp,
                pending: None,
                logits_at: None,
                in_batch: Vec::new(),
                generated: 0,
                bytes: Vec::new(),
                text: String::new(),
                emitted: 0,
                first_token: None,
                charge,
                job,
            });
        }
    }

    fn remove_cells(&mut self, slot: usize, from: usize) {
        let id = self.slots[slot].id;
        let _ = self
            .ctx
            .clear_kv_cache_seq(Some(id as u32), Some(from as u32), None);
    }

    fn clear_slot(&mut self, slot: usize) {
        self.remove_cells(slot, 0);
        self.slots[slot].cache.clear();
    }

    /// One decode call: each generating sequence's next token, then prompt chunks in the remaining room.
    /// One loop iteration. With a shared KV cache, generating sequences and prompt chunks go into one
    /// decode call. With a stream per sequence, llama.cpp splits a batch into equal per-sequence slices,
    /// so a prompt mixed with one-token steps would be evaluated a token at a time: prompts are then
    /// evaluated in a call of their own, and the generating sequences step together in another.
    fn step(&mut self) {
        if self.unified {
            self.decode_once(true, usize::MAX);
        } else {
            let prefilling = self.slots.iter().any(|s| {
                s.active
                    .as_ref()
                    .is_some_and(|a| a.pending.is_none() && a.fed < a.job.tokens.len())
            });
            if prefilling {
                self.decode_once(false, usize::MAX);
            }
            if self
                .slots
                .iter()
                .any(|s| s.active.as_ref().is_some_and(|a| a.pending.is_some()))
            {
                self.decode_once(true, 0);
            }
        }
    }

    /// Builds one batch (the generating sequences' next tokens if `steps`, then up to `prompts` prompt
    /// chunks), decodes it and samples where logits were asked for.
    fn decode_once(&mut self, steps: bool, prompts: usize) {
        self.batch.clear();
        let mut n = 0usize;
        for slot in &mut self.slots {
            let Some(a) = slot.active.as_mut() else {
                continue;
            };
            a.in_batch.clear();
            a.logits_at = None;
            if steps
                && let Some(tok) = a.pending
                && n < self.n_batch
            {
                let pos = slot.cache.len() as i32;
                if self.batch.add(tok, pos, &[slot.id], true).is_ok() {
                    a.in_batch.push(tok);
                    a.logits_at = Some(n as i32);
                    n += 1;
                }
            }
        }
        // Prompt chunks, least recently admitted first.
        let mut order: Vec<usize> = (0..self.slots.len())
            .filter(|&i| {
                self.slots[i]
                    .active
                    .as_ref()
                    .is_some_and(|a| a.pending.is_none() && a.fed < a.job.tokens.len())
            })
            .collect();
        order.sort_by_key(|&i| self.slots[i].used_at);
        for i in order.into_iter().take(prompts) {
            let room = self.n_batch - n;
            if room == 0 {
                break;
            }
            let slot = &mut self.slots[i];
            let a = slot.active.as_mut().expect("filtered above");
            let end = (a.fed + room).min(a.job.tokens.len());
            let base = slot.cache.len();
            for (k, &tok) in a.job.tokens[a.fed..end].iter().enumerate() {
                let last = a.fed + k + 1 == a.job.tokens.len();
                if self
                    .batch
                    .add(tok, (base + k) as i32, &[slot.id], last)
                    .is_err()
                {
                    break;
                }
                a.in_batch.push(tok);
                if last {
                    a.logits_at = Some(n as i32);
                }
                n += 1;
            }
        }
        if n == 0 {
            return;
        }
        if let Err(e) = self.ctx.decode(&mut self.batch) {
            self.fail_batch(format!("llama.cpp could not decode: {e}"));
            return;
        }
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            let Some(a) = slot.active.as_mut() else {
                continue;
            };
            let added = std::mem::take(&mut a.in_batch);
            if a.pending.is_some() && !added.is_empty() {
                a.pending = None;
            } else {
                a.fed += added.len();
            }
            slot.cache.extend_from_slice(&added);
            if let Some(at) = a.logits_at.take() {
                self.sample(i, at);
            }
        }
    }

    fn fail_batch(&mut self, message: String) {
        for i in 0..self.slots.len() {
            let in_batch = self.slots[i]
                .active
                .as_ref()
                .is_some_and(|a| !a.in_batch.is_empty());
            if in_batch {
                let a = self.slots[i].active.take().expect("checked");
                let _ = a.job.tx.send(Event::Error(LlmError::system(
                    "LocalModelError",
                    message.clone(),
                )));
                self.clear_slot(i);
            }
        }
    }

    fn sample(&mut self, i: usize, at: i32) {
        let vocab = self.model.vocab();
        let slot = &mut self.slots[i];
        let a = slot.active.as_mut().expect("sampling an active slot");
        let token = match a.sampler.as_mut() {
            Some(s) => s.sample(&self.ctx, at),
            None => argmax(self.ctx.get_logits_ith(at), self.n_vocab),
        };
        let now = Instant::now();
        if a.first_token.is_none() {
            a.first_token = Some(now);
        }
        let finish = if vocab.is_eog(token) {
            Some(FinishReason::Stop)
        } else {
            if let Some(top) = a.job.logprobs {
                let offset = a.text.len() + a.bytes.len();
                let piece = |t: LlamaToken| TokenText::new(vocab.token_to_piece(t, false, None));
                let (logprob, best) =
                    log_softmax_at(self.ctx.get_logits_ith(at), self.n_vocab, token, top);
                let _ = a.job.tx.send(Event::Logprob(TokenLogprob {
                    offset,
                    token: piece(token),
                    logprob,
                    top: best.into_iter().map(|(t, lp)| (piece(t), lp)).collect(),
                }));
            }
            a.generated += 1;
            a.bytes
                .extend_from_slice(&vocab.token_to_piece(token, false, None));
            take_utf8(&mut a.bytes, &mut a.text);
            if let Some(cut) = find_stop(&a.text, a.emitted, &a.job.stop) {
                a.text.truncate(cut);
                Some(FinishReason::Stop)
            } else if a.generated >= a.job.max_new {
                Some(FinishReason::Length)
            } else {
                a.pending = Some(token);
                None
            }
        };
        match finish {
            None => {
                let hold = a.job.stop.iter().map(|s| s.len()).max().unwrap_or(1) - 1;
                let mut safe = a.text.len().saturating_sub(hold).max(a.emitted);
                while !a.text.is_char_boundary(safe) {
                    safe -= 1;
                }
                if safe > a.emitted {
                    let piece = a.text[a.emitted..safe].to_owned();
                    a.emitted = safe;
                    let _ = a.job.tx.send(Event::Text(piece));
                }
            }
            Some(reason) => {
                let a = slot.active.take().expect("checked");
                if a.emitted < a.text.len() {
                    let _ = a.job.tx.send(Event::Text(a.text[a.emitted..].to_owned()));
                }
                let usage = Usage {
                    prompt_tokens: a.job.tokens.len() as u64,
                    completion_tokens: u64::from(a.generated),
                    cached_tokens: a.cached as u64,
                    time_to_first_token: a.first_token.map(|t| t - a.job.submitted),
                    duration: now - a.job.submitted,
                    response_model: None,
                };
                let _ = a.job.tx.send(Event::Done(reason, usage));
            }
        }
    }
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The log probability of `token` under the softmax of `logits`, and the `top` most likely tokens
/// with theirs, most likely first.
fn log_softmax_at(
    logits: &[f32],
    n_vocab: usize,
    token: LlamaToken,
    top: u8,
) -> (f32, Vec<(LlamaToken, f32)>) {
    let logits = &logits[..n_vocab.min(logits.len())];
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let log_z = max + sum.ln() as f32;
    let lp = |l: f32| l - log_z;
    let chosen = logits
        .get(token.0 as usize)
        .map_or(f32::NEG_INFINITY, |&l| lp(l));
    let mut best: Vec<(usize, f32)> = Vec::with_capacity(usize::from(top) + 1);
    if top > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if best.len() < usize::from(top) || l > best[best.len() - 1].1 {
                let at = best.partition_point(|&(_, b)| b >= l);
                best.insert(at, (i, l));
                best.truncate(usize::from(top));
            }
        }
    }
    let best = best
        .into_iter()
        .map(|(i, l)| (LlamaToken(i as i32), lp(l)))
        .collect();
    (chosen, best)
}

fn argmax(logits: &[f32], n_vocab: usize) -> LlamaToken {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().take(n_vocab).enumerate() {
        if v > best_v {
            best_v = v;
            best = i;
        }
    }
    LlamaToken(best as i32)
}

/// Moves the longest valid UTF-8 prefix of `bytes` into `text`; an incomplete character waits.
fn take_utf8(bytes: &mut Vec<u8>, text: &mut String) {
    match std::str::from_utf8(bytes) {
        Ok(s) => {
            text.push_str(s);
            bytes.clear();
        }
        Err(e) => {
            let valid = e.valid_up_to();
            text.push_str(std::str::from_utf8(&bytes[..valid]).expect("valid prefix"));
            if e.error_len().is_some() {
                // Not UTF-8 at all: replace the bad bytes rather than waiting forever.
                let bad = valid + e.error_len().unwrap_or(1);
                text.push('\u{fffd}');
                bytes.drain(..bad);
                take_utf8(bytes, text);
            } else {
                bytes.drain(..valid);
            }
        }
    }
}

/// The byte offset where the first stop sequence starts, searching text not yet emitted.
fn find_stop(text: &str, emitted: usize, stops: &[String]) -> Option<usize> {
    let longest = stops.iter().map(|s| s.len()).max()?;
    let mut from = emitted.saturating_sub(longest);
    while !text.is_char_boundary(from) {
        from -= 1;
    }
    stops
        .iter()
        .filter_map(|s| text[from..].find(s.as_str()).map(|p| p + from))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(not(feature = "cpu-variants"))]
    #[test]
    fn a_cpu_without_what_llama_cpp_was_built_for_gets_an_error_not_a_crash() {
        // The machines the tests run on have every instruction set the build uses.
        assert_eq!(missing_cpu_features(), Vec::<&str>::new());
        let e = unsupported_cpu(&["AVX2", "FMA"]);
        assert_eq!(e.code, "LocalModelError");
        assert!(!e.user);
        assert!(e.message.starts_with("this CPU lacks AVX2, FMA, "), "{e}");
        assert!(e.message.contains("`cpu-variants` feature"), "{e}");
    }

    #[test]
    fn log_probabilities_are_a_log_softmax_with_the_best_first() {
        let logits = [1.0f32, 3.0, 2.0, 0.5];
        let z: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
        let (chosen, best) = log_softmax_at(&logits, 4, LlamaToken(2), 2);
        assert!(
            (f64::from(chosen) - (2.0 - z.ln())).abs() < 1e-5,
            "{chosen}"
        );
        assert_eq!(best.len(), 2);
        assert_eq!((best[0].0, best[1].0), (LlamaToken(1), LlamaToken(2)));
        assert!((f64::from(best[0].1) - (3.0 - z.ln())).abs() < 1e-5);
        let total: f64 = logits
            .iter()
            .map(|&l| f64::from(l) - z.ln())
            .map(f64::exp)
            .sum();
        assert!((total - 1.0).abs() < 1e-9);
        // No alternatives asked for: only the chosen token's.
        assert!(log_softmax_at(&logits, 4, LlamaToken(0), 0).1.is_empty());
    }

    #[test]
    fn stops_are_found_across_emitted_text() {
        let stops = vec!["\n\n".to_owned(), "Q:".to_owned()];
        assert_eq!(find_stop("Paris\n\nQ:", 5, &stops), Some(5));
        assert_eq!(find_stop("Paris", 0, &stops), None);
        assert_eq!(find_stop("abcQ:", 4, &stops), Some(3));
        assert_eq!(find_stop("anything", 0, &[]), None);
    }

    #[test]
    fn incomplete_utf8_waits_for_the_rest() {
        let mut bytes = "é".as_bytes()[..1].to_vec();
        let mut text = String::new();
        take_utf8(&mut bytes, &mut text);
        assert_eq!(text, "");
        bytes.push("é".as_bytes()[1]);
        take_utf8(&mut bytes, &mut text);
        assert_eq!(text, "é");
        let mut bad = vec![0xff, b'a'];
        take_utf8(&mut bad, &mut text);
        assert_eq!(text, "é\u{fffd}a");
    }

    #[test]
    fn builtin_templates_by_architecture() {
        assert_eq!(builtin_template_for("gemma3"), "gemma");
        assert_eq!(builtin_template_for("qwen2"), "chatml");
    }
}
