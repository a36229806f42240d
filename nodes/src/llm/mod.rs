//! `llm` nodes (§7.3–7.5): a Jinja template rendered with the node's inputs, parsed into chat messages
//! (`api: chat`) or sent as text (`api: completion`), answered by a backend chosen by `connection:`:
//! the in-process llama.cpp model ([`local`]) when there is none, or an OpenAI-compatible server
//! ([`openai`]).

pub mod chat;
// The model store and connections live in sluice-config; their old paths keep working.
pub use sluice_config::{connections, gguf, store};
pub mod embed;
pub mod embedding_node;
pub mod local;
pub mod openai;
pub mod scripted;
pub mod types;

use std::any::Any;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sluice_engine::{
    BuildContext, BuildError, Built, InputValue, Node, NodeContext, NodeDef, NodeError, NodeInputs,
    NodeKind, Opaque, Param, Value, ValueType,
};

use crate::template::Template;
use chat::{Escaper, parse_chat};
use connections::{Connection, ConnectionType};
use local::{LocalConfig, LocalModel};
use openai::{HttpBackend, HttpConfig};
use types::{Backend, Completion, Event, GenParams, Prompt, TokenStream};

/// The `llm` node kind.
#[derive(Debug, Default)]
pub struct LlmKind;

/// API parameters and their types; every other input is a template variable.
const API_PARAMS: &[(&str, ValueType)] = &[
    ("model", ValueType::String),
    ("deployment_name", ValueType::String),
    ("temperature", ValueType::Double),
    ("top_p", ValueType::Double),
    ("max_tokens", ValueType::Int),
    ("stop", ValueType::List),
    ("presence_penalty", ValueType::Double),
    ("frequency_penalty", ValueType::Double),
    ("seed", ValueType::Int),
    ("response_format", ValueType::Object),
    ("n", ValueType::Int),
    ("logit_bias", ValueType::Object),
    ("user", ValueType::String),
    ("best_of", ValueType::Int),
    ("echo", ValueType::Bool),
    ("logprobs", ValueType::Int),
    ("suffix", ValueType::String),
    ("functions", ValueType::List),
    ("function_call", ValueType::Object),
    ("tools", ValueType::List),
    ("tool_choice", ValueType::Object),
];

impl NodeKind for LlmKind {
    fn type_name(&self) -> &'static str {
        "llm"
    }

    fn build(&self, node: &NodeDef, cx: &BuildContext) -> Result<Built, BuildError> {
        let path = cx.source_file(node)?;
        let template = Template::from_file(&path)?;
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
        // Template variables are string inputs (as for `prompt` nodes); a variable named like an API
        // parameter is an error (§7.5).
        let mut signature = crate::prompt::template_signature(&template)?;
        if let Some(var) = template
            .variables()
            .iter()
            .find(|v| API_PARAMS.iter().any(|(p, _)| p == v))
        {
            return Err(BuildError::new(format!(
                "the template of node `{}` uses a variable named `{var}`, which is an LLM API parameter",
                node.name
            ))
            .at(template.path(), None)
            .help("rename the template variable"));
        }
        for (name, ty) in API_PARAMS {
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
        let backend = resolve_backend(node, cx, literal_model.as_deref(), api.model_use())?;
        Ok(Built {
            signature,
            node: Arc::new(LlmNode {
                name: node.name.clone(),
                template: Arc::new(template),
                api,
                escape,
                backend,
            }),
        })
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
            .map_err(BuildError::new);
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
            Err(e) => return Err(BuildError::new(e)),
        },
    };
    match conn {
        Some(c) if c.kind != ConnectionType::Local => {
            if c.kind == ConnectionType::Custom {
                return Err(BuildError::new(format!(
                    "node `{}` uses the custom connection `{}`; an llm node needs an open_ai, azure_open_ai or local connection",
                    node.name, c.name
                )));
            }
            let config = HttpConfig::from_connection(&c).map_err(BuildError::new)?;
            let backend = HttpBackend::new(&c.name, config).map_err(BuildError::new)?;
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

#[derive(Debug)]
struct LlmNode {
    name: String,
    template: Arc<Template>,
    api: Api,
    escape: HashSet<String>,
    backend: BackendChoice,
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
        let mut params = GenParams::default();
        let mut model = None;
        let mut vars: Vec<(String, Value)> = Vec::new();
        let escaper = Escaper::new();
        for (k, v) in inputs.drain(..) {
            if API_PARAMS.iter().any(|(p, _)| *p == k) {
                apply_param(&mut params, &mut model, &k, v)?;
            } else if self.api == Api::Chat && self.escape.contains(&k) {
                vars.push((k, escaper.escape(v)));
            } else {
                vars.push((k, v));
            }
        }
        params.model = model.clone();
        let text = self
            .template
            .render(vars.iter().map(|(k, v)| (k.as_str(), v)))?;
        let prompt = match self.api {
            Api::Chat => Prompt::Chat(parse_chat(&text, Some(&escaper))?),
            Api::Completion => Prompt::Text(text),
        };
        let backend = self.backend(model.as_deref()).await?;
        tracing::debug!(node = %self.name, backend = %backend.describe(), "llm request");
        cx.record_call(call_record(self.api, &*backend, &prompt, &params));
        let stream = backend.generate(prompt, params).await?;
        if cx.stream {
            return Ok(Value::Opaque(Arc::new(LlmStream {
                stream: Mutex::new(Some(stream)),
            })));
        }
        let done = stream.collect().await?;
        record_usage(cx, &done);
        Ok(Value::String(done.text))
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

/// Token counts and timings as the node's system metrics (summed per line and per run).
fn record_usage(cx: &NodeContext, done: &Completion) {
    let u = &done.usage;
    cx.add_metric("prompt_tokens", u.prompt_tokens as f64);
    cx.add_metric("completion_tokens", u.completion_tokens as f64);
    cx.add_metric(
        "total_tokens",
        (u.prompt_tokens + u.completion_tokens) as f64,
    );
    if u.cached_tokens > 0 {
        cx.add_metric("cached_tokens", u.cached_tokens as f64);
    }
    if let Some(t) = u.time_to_first_token {
        cx.add_metric("time_to_first_token_ms", (t.as_secs_f64() * 1000.0).round());
    }
    let secs = u.duration.as_secs_f64();
    cx.add_metric("llm_duration_ms", (secs * 1000.0).round());
    if secs > 0.0 && u.completion_tokens > 0 {
        cx.add_metric(
            "completion_tokens_per_s",
            (u.completion_tokens as f64 / secs * 10.0).round() / 10.0,
        );
    }
}

fn apply_param(
    p: &mut GenParams,
    model: &mut Option<String>,
    key: &str,
    v: Value,
) -> Result<(), NodeError> {
    let bad = |what: &str| {
        NodeError::user(
            "InputTypeError",
            format!("the llm parameter `{key}` must be {what}"),
        )
    };
    let num = |v: &Value| -> Option<f64> {
        match v {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
        .filter(|f: &f64| f.is_finite())
    };
    if matches!(v, Value::Null) {
        return Ok(());
    }
    match key {
        "model" | "deployment_name" => match v {
            Value::String(s) if !s.is_empty() => *model = Some(s),
            Value::String(_) => {}
            _ => return Err(bad("a string")),
        },
        "temperature" => p.temperature = num(&v).ok_or_else(|| bad("a number"))? as f32,
        "top_p" => p.top_p = num(&v).ok_or_else(|| bad("a number"))? as f32,
        "presence_penalty" => p.presence_penalty = num(&v).ok_or_else(|| bad("a number"))? as f32,
        "frequency_penalty" => p.frequency_penalty = num(&v).ok_or_else(|| bad("a number"))? as f32,
        "max_tokens" => {
            let n = num(&v).ok_or_else(|| bad("an integer"))?;
            if n < 1.0 {
                return Err(bad("a positive integer"));
            }
            p.max_tokens = Some(n as u32);
        }
        "seed" => p.seed = Some(num(&v).ok_or_else(|| bad("an integer"))? as i64 as u32),
        "stop" => {
            p.stop = match v {
                Value::String(s) => vec![s],
                Value::List(items) => items
                    .into_iter()
                    .map(|i| match i {
                        Value::String(s) => Ok(s),
                        _ => Err(bad("a list of strings")),
                    })
                    .collect::<Result<_, _>>()?,
                _ => return Err(bad("a string or a list of strings")),
            }
        }
        "response_format" => {
            let ty = match &v {
                Value::Map(m) => m.get("type").and_then(|t| match t {
                    Value::String(s) => Some(s.clone()),
                    _ => None,
                }),
                Value::String(s) => Some(s.clone()),
                _ => None,
            };
            match ty.as_deref() {
                Some("json_object") => p.json_object = true,
                Some("text") | None => {}
                Some(other) => {
                    return Err(NodeError::user(
                        "InputTypeError",
                        format!(
                            "response_format type `{other}` is not supported; use `text` or `json_object`"
                        ),
                    ));
                }
            }
        }
        "n" if num(&v) != Some(1.0) => return Err(bad("1 (one choice per call)")),
        // Accepted for compatibility; they do not change local generation.
        _ => {}
    }
    Ok(())
}

/// A streaming llm output: the flow-output printer reads its chunks as they are generated.
#[derive(Debug)]
pub struct LlmStream {
    stream: Mutex<Option<TokenStream>>,
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

    fn drain(&self) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        self.for_each_chunk(&mut |t| out.push(t.to_owned()))?;
        Ok(out)
    }

    fn for_each_chunk(&self, f: &mut dyn FnMut(&str)) -> Result<(), String> {
        let Some(mut stream) = self.stream.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return Err("the stream was already read".to_owned());
        };
        while let Some(ev) = futures::executor::block_on(stream.next()) {
            match ev {
                Event::Text(t) => f(&t),
                Event::Done(..) => return Ok(()),
                Event::Error(e) => return Err(e.message),
            }
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
