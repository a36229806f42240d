//! `llm` nodes (§7.3–7.5): a Jinja template rendered with the node's inputs, parsed into chat messages
//! (`api: chat`) or sent as text (`api: completion`), answered by a backend chosen by `connection:`:
//! the in-process llama.cpp model ([`local`]) when there is none, or an OpenAI-compatible server
//! ([`openai`]).

#[cfg(feature = "local-llm")]
mod bert;
pub mod chat;
#[cfg(feature = "cpu-variants")]
pub mod cpu_backend;
// The model store and connections live in sluice-config; their old paths keep working.
pub use sluice_config::{connections, gguf, store};
#[cfg(feature = "local-llm")]
pub mod embed;
pub mod embedding_node;
#[cfg(feature = "local-llm")]
pub mod local;
mod local_config;
pub mod openai;
mod prompty;
pub mod protocol;
pub mod scripted;
pub mod types;
#[cfg(not(feature = "local-llm"))]
mod without_local;
#[cfg(not(feature = "local-llm"))]
pub use without_local::{embed, local};

use std::any::Any;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sluice_engine::{
    BuildContext, BuildError, Built, InputValue, Node, NodeContext, NodeDef, NodeError, NodeInputs,
    NodeKind, NodeMetrics, Opaque, Param, StreamError, TokenCounts, Value,
};

use crate::template::Template;
use chat::{Escaper, Images, parse_chat_with_images};
use connections::{Connection, ConnectionType};
use local::{LocalConfig, LocalModel};
use openai::{HttpBackend, HttpConfig};
use sluice_engine::prompty::PromptyResponse;
use types::{Backend, ChatMessage, Completion, Event, GenParams, Prompt, TokenStream};

/// The `llm` node kind.
#[derive(Debug, Default)]
pub struct LlmKind;

impl NodeKind for LlmKind {
    fn type_name(&self) -> &'static str {
        "llm"
    }

    fn build(&self, node: &NodeDef, cx: &BuildContext) -> Result<Built, BuildError> {
        if node
            .source
            .as_ref()
            .is_some_and(|s| s.ty == sluice_engine::prompty::SOURCE_TYPE)
            && let Some(def) = &cx.flow.prompty
        {
            return prompty::build(node, cx, def);
        }
        // A literal `prompt` input is the template; the source file is then optional.
        let literal_prompt = match node.inputs.get("prompt").map(|b| &b.value) {
            Some(InputValue::Literal(Value::String(text))) => Some(text.clone()),
            _ => None,
        };
        let path = match (&literal_prompt, &node.source) {
            (Some(_), None) => cx.flow.file.clone(),
            _ => cx.source_file(node)?,
        };
        let api = match node.api.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("chat") => Api::Chat,
            Some("completion") => Api::Completion,
            Some(other) => {
                return Err(BuildError::new(format!(
                    "node `{}` has `api: {other}`; an llm node's api is `chat` or `completion`",
                    node.name
                ))
                .help("set `api: chat` (role-separated prompt) or `api: completion` (raw text)"));
            }
        };
        let vision = Vision::of(node);
        // In a chat prompt, `![image]({{var}})` shows the image `var` (§7.3).
        let compile = |source: String, file: &std::path::Path| match api {
            Api::Chat => Template::from_source(chat::preprocess_images(&source).into_owned(), file),
            Api::Completion => Template::from_source(source, file),
        };
        // A node input named `prompt` is the template instead of the file's, as in promptflow.
        let mut prompt_input = node.inputs.contains_key("prompt");
        let template = match literal_prompt {
            Some(text) => {
                prompt_input = false;
                compile(text, &cx.flow.file)?
            }
            None => {
                let source = std::fs::read_to_string(&path).map_err(|e| {
                    BuildError::new(format!("cannot read template {}: {e}", path.display()))
                })?;
                compile(source, &path)?
            }
        };
        check_variables(&node.name, &template)?;
        // Template variables are string inputs (as for `prompt` nodes).
        let mut signature = crate::prompt::template_signature(&template)?;
        // A GPT-4V tool's `detail` is a string parameter; it reaches the template like any input.
        if vision.is_some() {
            signature.params.insert(
                "detail".to_owned(),
                Param {
                    ty: Some(sluice_engine::ValueType::String),
                    has_default: true,
                    required: false,
                },
            );
        }
        for (name, ty) in protocol::PARAMS {
            signature.params.insert(
                (*name).to_owned(),
                Param {
                    ty: Some(ty.clone()),
                    has_default: true,
                    required: false,
                },
            );
        }
        for unsupported in ["functions", "tools"] {
            if node.inputs.contains_key(unsupported) && node.connection.is_none() {
                return Err(BuildError::new(format!(
                    "node `{}` passes `{unsupported}`, which the local model does not support",
                    node.name
                ))
                .help("use an OpenAI-compatible connection for function calling"));
            }
        }
        // Flow inputs are escaped so users cannot add chat messages (§7.3).
        let escape: HashSet<String> = node
            .inputs
            .iter()
            .filter(|(_, b)| matches!(b.value, InputValue::FlowInput(_)))
            .map(|(k, _)| k.clone())
            .collect();
        let literal_model = ["model", "deployment_name"].iter().find_map(|k| {
            node.inputs.get(*k).and_then(|b| match &b.value {
                InputValue::Literal(Value::String(s)) => Some(s.clone()),
                _ => None,
            })
        });
        if let Some(v) = &vision
            && matches!(node.connection.as_deref(), None | Some("" | "local"))
        {
            return Err(BuildError::new(format!(
                "node `{}` calls {}, but has no connection: the local model cannot see images",
                node.name, v.tool
            ))
            .at(&cx.flow.file, Some(node.span))
            .help("give the node `connection:` (an azure_open_ai or open_ai connection to a vision model)"));
        }
        let backend = resolve_backend(node, cx, literal_model.as_deref(), api.model_use())?;
        if let (Some(v), BackendChoice::Local { name, .. }) = (&vision, &backend) {
            return Err(BuildError::new(format!(
                "node `{}` calls {}, but its connection runs the local model `{name}`, which cannot see images",
                node.name, v.tool
            ))
            .help("give the node an azure_open_ai or open_ai connection to a vision model"));
        }
        Ok(Built {
            signature,
            node: Arc::new(LlmNode {
                name: node.name.clone(),
                template: Arc::new(template),
                prompt_input: prompt_input.then(|| cx.flow.file.clone()),
                api,
                escape,
                backend,
                prompty: None,
                // promptflow's completion tools ask for 16 tokens when a node gives no
                // `max_tokens`; its LLM tool (`promptflow.tools.llm.llm`) passes its own default,
                // none.
                completion_max_tokens: (api == Api::Completion && !llm_tool(node)).then_some(16),
                vision,
            }),
        })
    }
}

/// Whether the node calls promptflow's LLM tool (`custom_llm` with `promptflow.tools.llm.llm`).
fn llm_tool(node: &NodeDef) -> bool {
    node.source
        .as_ref()
        .and_then(|s| s.tool.as_deref())
        .is_some_and(|t| t == "promptflow.tools.llm.llm")
}

/// promptflow's GPT-4V chat tools, which Sluice runs as `llm` nodes (`custom_llm` nodes with
/// `source: {type: package_with_prompt, tool: ...}`).
pub const VISION_TOOLS: [&str; 2] = [
    "promptflow.tools.aoai_gpt4v.AzureOpenAI.chat",
    "promptflow.tools.openai_gpt4v.OpenAI.chat",
];

/// How a node that stands in for a GPT-4V tool calls the model: every sampling parameter is sent,
/// with the tool's defaults, as the tool sends them.
#[derive(Clone, Debug)]
struct Vision {
    tool: &'static str,
    /// The model when none is given (`gpt-4-vision-preview` for OpenAI's tool).
    default_model: Option<&'static str>,
}

impl Vision {
    fn of(node: &NodeDef) -> Option<Vision> {
        let tool = node.source.as_ref()?.tool.as_deref()?;
        let tool = VISION_TOOLS.into_iter().find(|t| *t == tool)?;
        Some(Vision {
            tool,
            default_model: tool
                .contains("openai_gpt4v")
                .then_some("gpt-4-vision-preview"),
        })
    }

    /// The request's parameters, as the tool builds them: temperature, top_p, n, stream and the
    /// penalties always (an untouched penalty is the integer 0), then stop, max_tokens and seed when
    /// given.
    fn raw_params(
        &self,
        p: &mut GenParams,
        given: &dyn Fn(&str) -> bool,
    ) -> serde_json::Map<String, serde_json::Value> {
        use serde_json::json;
        if p.model.is_none() {
            p.model = self.default_model.map(str::to_owned);
        }
        if self.tool.contains("aoai_gpt4v") {
            p.headers.push((
                "ms-azure-ai-promptflow-called-from".to_owned(),
                "aoai-gpt4v-tool".to_owned(),
            ));
        }
        let mut raw = serde_json::Map::new();
        raw.insert("temperature".into(), json!(p.temperature));
        raw.insert("top_p".into(), json!(p.top_p));
        raw.insert("n".into(), json!(1));
        raw.insert("stream".into(), json!(false));
        for (k, v) in [
            ("presence_penalty", p.presence_penalty),
            ("frequency_penalty", p.frequency_penalty),
        ] {
            raw.insert(k.into(), if given(k) { json!(v) } else { json!(0) });
        }
        if !p.stop.is_empty() {
            raw.insert("stop".into(), json!(p.stop));
        }
        if let Some(n) = p.max_tokens {
            raw.insert("max_tokens".into(), json!(n));
        }
        if let Some(s) = p.seed {
            raw.insert("seed".into(), json!(s));
        }
        raw
    }
}

/// Refuses a template variable named like an API parameter, `prompt` (the template itself)
/// included, as promptflow does (§7.5).
fn check_variables(node: &str, template: &Template) -> Result<(), BuildError> {
    match template
        .variables()
        .iter()
        .find(|v| protocol::is_param(v) || *v == "prompt")
    {
        Some(var) => Err(BuildError::new(format!(
            "the template of node `{node}` uses a variable named `{var}`, which is an LLM API parameter"
        ))
        .at(template.path(), None)
        .help("rename the template variable")),
        None => Ok(()),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    Chat,
    Completion,
}

impl Api {
    /// Which model `default` means for this api.
    fn model_use(self) -> store::ModelUse {
        match self {
            Api::Chat => store::ModelUse::Chat,
            Api::Completion => store::ModelUse::Completion,
        }
    }
}

/// Where a node's requests go, decided when the flow loads.
#[derive(Debug, Clone)]
enum BackendChoice {
    /// Replies from a script in the flow folder (`model: scripted:<file>`), for tests.
    Scripted(scripted::ScriptedBackend),
    /// The in-process model at this path, loaded on first use.
    Local {
        name: String,
        path: PathBuf,
        flow_dir: PathBuf,
    },
    Http(HttpBackend),
}

fn resolve_backend(
    node: &NodeDef,
    cx: &BuildContext,
    literal_model: Option<&str>,
    use_: store::ModelUse,
) -> Result<BackendChoice, BuildError> {
    if let Some(file) = literal_model.and_then(|m| m.strip_prefix("scripted:")) {
        return scripted::ScriptedBackend::load(&cx.flow_dir().join(file))
            .map(BackendChoice::Scripted)
            .map_err(|e| BuildError::new(crate::error_chain(&e)));
    }
    let conn = match node.connection.as_deref() {
        None | Some("local") | Some("") => None,
        Some(name) => match connections::load(name) {
            Ok(Some(c)) => Some(c),
            Ok(None) => {
                return Err(BuildError::new(format!(
                    "node `{}` uses connection `{name}`, which does not exist",
                    node.name
                ))
                .at(&cx.flow.file, node.connection_span)
                .help(format!(
                    "create it with `sluice connection create -f <file.yaml>` (stored in {}), or remove `connection:` to use the local model",
                    connections::connections_dir().display()
                )));
            }
            Err(e) => return Err(BuildError::new(e.to_string())),
        },
    };
    match conn {
        Some(c) if c.kind != ConnectionType::Local => {
            if !matches!(
                c.kind,
                ConnectionType::OpenAi | ConnectionType::AzureOpenAi | ConnectionType::Serverless
            ) {
                return Err(BuildError::new(format!(
                    "node `{}` uses the {} connection `{}`; an llm node needs an open_ai, azure_open_ai, serverless or local connection",
                    node.name,
                    c.kind.as_str(),
                    c.name
                )));
            }
            let config = HttpConfig::from_connection(&c)
                .map_err(|e| BuildError::new(crate::error_chain(&e)))?;
            let backend = HttpBackend::new(&c.name, config)
                .map_err(|e| BuildError::new(crate::error_chain(&e)))?;
            Ok(BackendChoice::Http(backend))
        }
        c => {
            let model = literal_model
                .map(str::to_owned)
                .or_else(|| {
                    c.as_ref()
                        .and_then(|c: &Connection| c.configs.get("model").cloned())
                })
                .unwrap_or_else(|| "default".to_owned());
            require_local_models(&node.name, &model)?;
            let (name, path) = store::resolve_model(&model, cx.flow_dir(), use_).map_err(|e| {
                BuildError::new(format!(
                    "node `{}` needs the local model `{}`, which is not installed",
                    node.name, e.name
                ))
                .help(e.help)
            })?;
            Ok(BackendChoice::Local {
                name,
                path,
                flow_dir: cx.flow_dir().to_path_buf(),
            })
        }
    }
}

/// Refuses a node that needs a local model when this build has none (no `local-llm` feature), as
/// the flow loads.
pub(crate) fn require_local_models(node: &str, model: &str) -> Result<(), BuildError> {
    if cfg!(feature = "local-llm") {
        return Ok(());
    }
    Err(BuildError::new(format!(
        "node `{node}` uses the local model `{model}`, but this sluice was built without local models"
    ))
    .help("give the node an OpenAI-compatible `connection:`, or build sluice with the `local-llm` feature"))
}

#[derive(Debug)]
struct LlmNode {
    name: String,
    template: Arc<Template>,
    /// The node's `prompt` input replaces the template; the flow file names it in errors.
    prompt_input: Option<PathBuf>,
    api: Api,
    escape: HashSet<String>,
    backend: BackendChoice,
    /// Set for the node of a prompty file: fixed parameters and the shape of its output.
    prompty: Option<Arc<prompty::Settings>>,
    /// Set for a node that stands in for a GPT-4V tool.
    vision: Option<Vision>,
    /// `max_tokens` sent to a server when the node gives none (completion nodes).
    completion_max_tokens: Option<u32>,
}

impl LlmNode {
    async fn backend(&self, model: Option<&str>) -> Result<Arc<dyn Backend>, NodeError> {
        match &self.backend {
            BackendChoice::Scripted(s) => Ok(Arc::new(s.clone())),
            BackendChoice::Http(h) => Ok(Arc::new(h.clone())),
            BackendChoice::Local {
                name,
                path,
                flow_dir,
            } => {
                // A model given by reference is only known now.
                let (name, path) = match model {
                    Some(m) if m != name && path.file_stem().is_none_or(|s| s != m) => {
                        store::resolve_model(m, flow_dir, self.api.model_use()).map_err(|e| {
                            NodeError::user(
                                "LocalModelError",
                                format!(
                                    "the local model `{}` is not installed: {}",
                                    e.name, e.help
                                ),
                            )
                        })?
                    }
                    _ => (name.clone(), path.clone()),
                };
                let model = LocalModel::get(&name, &path, LocalConfig::current()).await?;
                Ok(model)
            }
        }
    }
}

#[async_trait]
impl Node for LlmNode {
    async fn run(&self, mut inputs: NodeInputs, cx: &NodeContext) -> Result<Value, NodeError> {
        let mut params = match &self.prompty {
            Some(p) => p.params.clone(),
            None => protocol::from_fields(inputs.iter().filter(|(k, _)| protocol::is_param(k)))
                .map_err(|e| NodeError::user("InputTypeError", e.to_string()))?,
        };
        params.stream = cx.stream;
        if let BackendChoice::Http(http) = &self.backend
            && self.prompty.is_none()
            && self.vision.is_none()
        {
            if params.max_tokens.is_none() {
                params.max_tokens = self.completion_max_tokens;
            }
            // promptflow's Azure OpenAI tools name themselves to the service.
            if http.kind() == ConnectionType::AzureOpenAi {
                params.headers.push((
                    "ms-azure-ai-promptflow-called-from".to_owned(),
                    "aoai-tool".to_owned(),
                ));
            }
        }
        if params.n > 1 && !matches!(self.backend, BackendChoice::Http(_)) {
            return Err(NodeError::user(
                "InputTypeError",
                format!(
                    "node `{}` asks for n={} choices; the local model answers one choice per call",
                    self.name, params.n
                ),
            ));
        }
        if let Some(vision) = &self.vision {
            let given = |k: &str| inputs.get(k).is_some_and(|v| !v.is_null());
            params.raw = Some(vision.raw_params(&mut params, &given));
        }
        let model = params.model.clone();
        let template = match &self.prompt_input {
            Some(file) => match inputs.shift_remove("prompt") {
                Some(Value::String(text)) => Arc::new(
                    Template::from_source(text, file)
                        .map_err(|e| NodeError::user("InvalidPrompt", e.message))?,
                ),
                _ => self.template.clone(),
            },
            None => self.template.clone(),
        };
        let mut vars: Vec<(String, Value)> = Vec::new();
        let escaper = Escaper::new();
        for (k, v) in inputs.drain(..) {
            if self.prompty.is_none() && protocol::is_param(&k) {
                continue;
            } else if self.api == Api::Chat && self.escape.contains(&k) {
                vars.push((k, escaper.escape(v)));
            } else {
                vars.push((k, v));
            }
        }
        let pairs = vars.iter().map(|(k, v)| (k.as_str(), v));
        // promptflow's GPT-4V tools print a list input as its items, one a line (a question that
        // is a list of text and images becomes text and image lines).
        let text = match self.vision {
            Some(_) => template.render_chat_lists(pairs)?,
            None => template.render(pairs)?,
        };
        let prompt = match self.api {
            Api::Chat => {
                // promptflow's GPT-4V tools hand their `detail` input to the template, not to the
                // image parts (promptflow-tools 1.6.1 passes it as `detail=` where `image_detail=`
                // is read), so every image part asks for `auto`.
                let images = Images::collect(vars.iter().map(|(_, v)| v), "auto");
                Prompt::Chat(parse_chat_with_images(&text, Some(&escaper), &images)?)
            }
            Api::Completion => Prompt::Text(text),
        };
        if let (BackendChoice::Local { name, .. }, Prompt::Chat(messages)) =
            (&self.backend, &prompt)
            && messages.iter().any(ChatMessage::has_images)
        {
            return Err(NodeError::user(
                "LocalModelError",
                format!(
                    "node `{}` sends an image to the local model `{name}`, which cannot see images; give the node `connection:` (an azure_open_ai or open_ai connection to a vision model)",
                    self.name
                ),
            ));
        }
        // A prompty streams to a caller that streams, unless its reply is parsed as a whole.
        let stream_out = cx.stream
            && self
                .prompty
                .as_ref()
                .is_none_or(|p| !p.json_object && p.response == PromptyResponse::First);
        if stream_out && let Some(raw) = params.raw.as_mut() {
            raw.insert("stream".into(), serde_json::Value::Bool(true));
        }
        let backend = self.backend(model.as_deref()).await?;
        tracing::debug!(node = %self.name, backend = %backend.describe(), "llm request");
        let call = cx.record_call(call_record(self.api, &*backend, &prompt, &params));
        let stream = backend.generate(prompt, params).await?;
        if stream_out {
            return Ok(Value::Opaque(Arc::new(LlmStream::new(stream))));
        }
        let done = stream.collect().await?;
        record_usage(cx, &done);
        cx.complete_call(call, call_outcome(&done));
        match &self.prompty {
            Some(p) => Ok(p.shape(self.api, done)?),
            // With functions or tools, promptflow returns the whole message (it may hold calls).
            None => Ok(match done.message {
                Some(message) => Value::from(message),
                None if done.finish_reason == types::FinishReason::ToolCalls => {
                    serde_json::from_str::<serde_json::Value>(&done.text)
                        .map(Value::from)
                        .unwrap_or(Value::String(done.text))
                }
                None => Value::String(done.text),
            }),
        }
    }
}

/// What the node asks the model, for the run's details: the api, the backend, the prompt as sent (the
/// chat messages after role lines were split, or the completion text) and the sampling parameters.
fn call_record(
    api: Api,
    backend: &dyn Backend,
    prompt: &Prompt,
    p: &GenParams,
) -> serde_json::Value {
    let prompt = match prompt {
        Prompt::Chat(messages) => serde_json::to_value(messages).unwrap_or_default(),
        Prompt::Text(text) => serde_json::Value::String(text.clone()),
    };
    serde_json::json!({
        "type": "LLM",
        "api": match api { Api::Chat => "chat", Api::Completion => "completion" },
        "backend": backend.describe(),
        "model": p.model.as_deref().or(p.deployment_name.as_deref()),
        "start_time": epoch_seconds(),
        "prompt": prompt,
        "params": {
            "max_tokens": p.max_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "stop": p.stop,
            "seed": p.seed,
            "json_object": p.json_object,
        },
    })
}

/// Now, in seconds since the Unix epoch (the time stamps of promptflow's `api_calls`).
pub(crate) fn epoch_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What a finished call adds to its record: when it ended, its tokens, why it stopped and the model
/// that answered.
fn call_outcome(done: &Completion) -> serde_json::Map<String, serde_json::Value> {
    let u = &done.usage;
    let mut out = serde_json::Map::new();
    out.insert("end_time".into(), epoch_seconds().into());
    out.insert(
        "usage".into(),
        serde_json::json!({
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
        }),
    );
    out.insert("finish_reason".into(), done.finish_reason.as_str().into());
    if let Some(m) = &u.response_model {
        out.insert("response_model".into(), m.clone().into());
    }
    if let Some(t) = u.time_to_first_token {
        out.insert(
            "time_to_first_token_ms".into(),
            ((t.as_secs_f64() * 1000.0).round() as u64).into(),
        );
    }
    out
}

/// Token counts and timings as the node's system metrics (summed per line and per run).
fn record_usage(cx: &NodeContext, done: &Completion) {
    cx.add_metrics(&usage_metrics(&done.usage));
}

/// Token counts and timings of a model call, as a node's system metrics.
fn usage_metrics(u: &types::Usage) -> NodeMetrics {
    let secs = u.duration.as_secs_f64();
    let ms = |secs: f64| (secs * 1000.0).round() as u64;
    NodeMetrics {
        tokens: TokenCounts {
            prompt_tokens: Some(u.prompt_tokens),
            completion_tokens: Some(u.completion_tokens),
            total_tokens: Some(u.prompt_tokens + u.completion_tokens),
            cached_tokens: (u.cached_tokens > 0).then_some(u.cached_tokens),
        },
        time_to_first_token_ms: u.time_to_first_token.map(|t| ms(t.as_secs_f64())),
        llm_duration_ms: Some(ms(secs)),
        completion_tokens_per_s: (secs > 0.0 && u.completion_tokens > 0)
            .then(|| (u.completion_tokens as f64 / secs * 10.0).round() / 10.0),
        ..NodeMetrics::default()
    }
}

/// A streaming llm output: the flow-output printer reads its chunks as they are generated. Once
/// read to its end it holds the call's tokens and timings.
#[derive(Debug)]
pub struct LlmStream {
    stream: Mutex<Option<TokenStream>>,
    usage: Mutex<Option<NodeMetrics>>,
    cancelled: std::sync::atomic::AtomicBool,
}

impl LlmStream {
    fn new(stream: TokenStream) -> LlmStream {
        LlmStream {
            stream: Mutex::new(Some(stream)),
            usage: Mutex::new(None),
            cancelled: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl Opaque for LlmStream {
    fn type_name(&self) -> String {
        "generator".to_owned()
    }

    fn to_str(&self) -> String {
        self.drain().map(|v| v.concat()).unwrap_or_default()
    }

    fn is_stream(&self) -> bool {
        true
    }

    fn drain(&self) -> Result<Vec<String>, StreamError> {
        let mut out = Vec::new();
        self.for_each_chunk(&mut |t| out.push(t.to_owned()))?;
        Ok(out)
    }

    fn for_each_chunk(&self, f: &mut dyn FnMut(&str)) -> Result<(), StreamError> {
        let Some(mut stream) = self.stream.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return Err(StreamError::new("the stream was already read"));
        };
        while let Some(ev) = futures::executor::block_on(stream.next()) {
            if self.cancelled.load(std::sync::atomic::Ordering::SeqCst) {
                // Dropping the stream cancels the generation.
                return Err(StreamError::new("the stream was cancelled"));
            }
            match ev {
                Event::Text(t) => f(&t),
                Event::Done(_, usage) => {
                    *self.usage.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(usage_metrics(&usage));
                    return Ok(());
                }
                Event::Message(_) | Event::Reply(_) | Event::Logprob(_) => {}
                Event::Error(e) => return Err(StreamError::new(e.message)),
            }
        }
        Ok(())
    }

    fn metrics(&self) -> Option<NodeMetrics> {
        self.usage.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn cancel(&self) {
        self.cancelled
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_local_model_needs_a_build_with_local_models() {
        let checked = super::require_local_models("answer", "default");
        if cfg!(feature = "local-llm") {
            assert!(checked.is_ok());
        } else {
            let e = checked.unwrap_err();
            assert!(
                e.message
                    .contains("node `answer` uses the local model `default`, but this sluice was built without local models"),
                "{}",
                e.message
            );
        }
    }
}
