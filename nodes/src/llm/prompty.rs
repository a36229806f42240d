//! The node a prompty file becomes (§10): its template is the file's body, its backend comes from
//! `model.configuration` (a named connection, explicit keys, the environment, or, with no
//! configuration at all, the local model), `model.parameters` are sent to a server as written, and
//! the reply is shaped as promptflow shapes it (`response: first|all`, a JSON object restricted to
//! the declared `outputs`, the whole message when the model calls tools). With `n` > 1, a server is
//! asked for that many choices: `response: first` gives the first, `response: all` the whole reply;
//! the local model, which answers one choice per call, refuses it when the flow loads.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde_json::{Value as Json, json};
use sluice_engine::prompty::{PromptyApi, PromptyDef, PromptyResponse};
use sluice_engine::{BuildContext, BuildError, Built, NodeDef, NodeError, Param, Signature, Value};

use super::connections::{Connection, ConnectionType};
use super::openai::{HttpBackend, HttpConfig};
use super::types::{Completion, FinishReason, GenParams};
use super::{Api, BackendChoice, LlmNode, protocol, resolve_backend};
use crate::template::Template;

/// What a prompty node does besides rendering and asking: its fixed parameters and how it shapes
/// the reply.
#[derive(Debug)]
pub(super) struct Settings {
    /// `model.parameters`, read (for the local model) and kept as written (for a server).
    pub params: GenParams,
    pub response: PromptyResponse,
    pub outputs: Vec<String>,
    pub json_object: bool,
}

/// Why a reply could not be shaped into the prompty's output.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReplyError {
    #[error("the reply is not a JSON object, as `response_format: json_object` asks: {source}")]
    NotJson {
        #[source]
        source: serde_json::Error,
    },
    #[error("the reply is JSON but not an object, as `response_format: json_object` asks")]
    NotAnObject,
    #[error("Cannot find {key} in response {keys:?}")]
    MissingOutput { key: String, keys: Vec<String> },
}

impl From<ReplyError> for NodeError {
    fn from(e: ReplyError) -> Self {
        let code = match e {
            ReplyError::MissingOutput { .. } => "InvalidOutputKeyError",
            _ => "JSONDecodeError",
        };
        NodeError::user(code, e.to_string())
    }
}

/// Builds the node of a prompty flow.
pub(super) fn build(
    node: &NodeDef,
    cx: &BuildContext,
    def: &PromptyDef,
) -> Result<Built, BuildError> {
    let file = &cx.flow.file;
    let api = match def.api {
        PromptyApi::Chat => Api::Chat,
        PromptyApi::Completion => Api::Completion,
    };
    // In a chat prompt, `![image]({{var}})` shows the image `var`, as in an `llm` node (§7.3).
    let source = match api {
        Api::Chat => super::chat::preprocess_images(&def.template).into_owned(),
        Api::Completion => def.template.clone(),
    };
    let template = Template::from_source(source, file).map_err(|mut e| {
        // Template lines count from the body; the file has the front matter above it.
        if let Some(span) = e.span.as_mut() {
            span.line += def.template_line.saturating_sub(1);
        }
        e
    })?;
    let mut params = protocol::from_fields(def.parameters.iter()).map_err(|e| {
        BuildError::new(format!("`model.parameters`: {e}")).at(file, Some(def.parameters_span))
    })?;
    params.model = None;
    let mut raw = match Value::Map(def.parameters.clone()).to_json_lossy() {
        Json::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    // The older form names the deployment among the parameters; it goes out as `model`.
    let named_in_parameters = ["deployment_name", "model"]
        .iter()
        .find_map(|k| raw.get(*k).and_then(Json::as_str).map(str::to_owned));
    raw.remove("deployment_name");
    let conf = def.configuration.as_ref();
    let field = |k: &str| {
        conf.and_then(|c| c.fields.get(k))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let kind = conf.and_then(|c| c.kind.as_deref());
    let deployment = match kind {
        Some("azure_openai") => field("azure_deployment").or_else(|| field("model")),
        _ => field("model").or_else(|| field("azure_deployment")),
    }
    .or(named_in_parameters)
    .map(|m| env_or_literal(&m));
    let backend = match (kind, conf.and_then(|c| c.connection.as_deref())) {
        (_, Some(_)) => resolve_backend(node, cx, deployment.as_deref(), api.model_use())?,
        (None | Some("local"), None) => {
            resolve_backend(node, cx, field("model").as_deref(), api.model_use())?
        }
        (Some(kind), None) => {
            let c = explicit_connection(&cx.flow.name, kind, &field);
            let config = HttpConfig::from_connection(&c).map_err(|e| {
                BuildError::new(format!("`model.configuration`: {}", crate::error_chain(&e)))
                    .at(file, conf.map(|c| c.span))
            })?;
            BackendChoice::Http(
                HttpBackend::new(&c.name, config)
                    .map_err(|e| BuildError::new(crate::error_chain(&e)))?,
            )
        }
    };
    if let BackendChoice::Http(_) = backend {
        params.model = deployment;
        params.raw = Some(raw);
    } else {
        if params.n > 1 {
            return Err(BuildError::new(format!(
                "`model.parameters` has `n: {}`, but the local model answers one choice per call",
                params.n
            ))
            .at(file, Some(def.parameters_span))
            .help("set `n: 1`, or give `model.configuration` an OpenAI-compatible endpoint"));
        }
        for unsupported in ["functions", "tools"] {
            if def.parameters.contains_key(unsupported) {
                return Err(BuildError::new(format!(
                    "`model.parameters` has `{unsupported}`, which the local model does not support"
                ))
                .at(file, Some(def.parameters_span))
                .help(
                    "give `model.configuration` an OpenAI-compatible endpoint for function calling",
                ));
            }
        }
    }
    let signature = Signature {
        params: node
            .inputs
            .keys()
            .map(|k| {
                (
                    k.clone(),
                    Param {
                        ty: None,
                        has_default: true,
                        required: false,
                    },
                )
            })
            .collect(),
        accepts_kwargs: true,
        ..Signature::default()
    };
    let escape: HashSet<String> = node.inputs.keys().cloned().collect();
    Ok(Built {
        signature,
        node: Arc::new(LlmNode {
            name: node.name.clone(),
            template: Arc::new(template),
            api,
            escape,
            backend,
            prompt_input: None,
            prompty: Some(Arc::new(Settings {
                params,
                response: def.response,
                outputs: def.outputs.clone(),
                json_object: def.json_object(),
            })),
            vision: None,
            completion_max_tokens: None,
        }),
    })
}

/// `${env:VAR}` as the variable's value when it is set, else the text as written (promptflow's rule
/// for the model and deployment names).
fn env_or_literal(text: &str) -> String {
    text.strip_prefix("${env:")
        .and_then(|r| r.strip_suffix('}'))
        .and_then(|var| std::env::var(var.trim()).ok())
        .unwrap_or_else(|| text.to_owned())
}

/// A connection made from `model.configuration`'s keys; keys left empty come from promptflow's
/// environment variables (`AZURE_OPENAI_ENDPOINT`, `AZURE_OPENAI_API_KEY`, `OPENAI_API_VERSION`;
/// `OPENAI_API_KEY`, `OPENAI_BASE_URL`), and an unset one is reported when the flow loads.
fn explicit_connection(
    name: &str,
    kind: &str,
    field: &dyn Fn(&str) -> Option<String>,
) -> Connection {
    let env = |var: &str| format!("${{env:{var}}}");
    let env_if_set = |var: &str| std::env::var_os(var).map(|_| env(var));
    let mut configs = BTreeMap::new();
    let mut secrets = BTreeMap::new();
    let azure = kind == "azure_openai";
    let (base, key) = if azure {
        (
            field("azure_endpoint")
                .or_else(|| field("api_base"))
                .or_else(|| Some(env("AZURE_OPENAI_ENDPOINT"))),
            field("api_key").unwrap_or_else(|| env("AZURE_OPENAI_API_KEY")),
        )
    } else {
        (
            field("base_url")
                .or_else(|| field("api_base"))
                .or_else(|| env_if_set("OPENAI_BASE_URL")),
            field("api_key").unwrap_or_else(|| env("OPENAI_API_KEY")),
        )
    };
    if let Some(b) = base {
        configs.insert("api_base".to_owned(), b);
    }
    secrets.insert("api_key".to_owned(), key);
    let version =
        field("api_version").or_else(|| azure.then(|| env_if_set("OPENAI_API_VERSION")).flatten());
    if let Some(v) = version {
        configs.insert("api_version".to_owned(), v);
    }
    for k in [
        "organization",
        "timeout",
        "max_retries",
        "retry_backoff",
        "max_concurrency",
    ] {
        if let Some(v) = field(k) {
            configs.insert(k.to_owned(), v);
        }
    }
    Connection {
        name: name.to_owned(),
        kind: if azure {
            ConnectionType::AzureOpenAi
        } else {
            ConnectionType::OpenAi
        },
        configs,
        secrets,
    }
}

impl Settings {
    /// The node's output for a finished reply.
    pub(super) fn shape(&self, api: Api, done: Completion) -> Result<Value, ReplyError> {
        if done.finish_reason == FinishReason::ToolCalls {
            // The whole message, as promptflow returns it when the model calls tools.
            if let Ok(message @ Json::Object(_)) = serde_json::from_str::<Json>(&done.text) {
                return Ok(Value::from(message));
            }
        }
        if self.response == PromptyResponse::All {
            // A server's reply as it came, every choice in it, as promptflow returns it.
            if let Some(reply) = done.reply {
                return Ok(Value::from(reply));
            }
            let u = &done.usage;
            let choice = match api {
                Api::Chat => json!({"index": 0, "finish_reason": done.finish_reason.as_str(),
                                    "message": {"role": "assistant", "content": done.text}}),
                Api::Completion => json!({"index": 0, "finish_reason": done.finish_reason.as_str(),
                                          "text": done.text}),
            };
            return Ok(Value::from(json!({
                "object": match api { Api::Chat => "chat.completion", Api::Completion => "text_completion" },
                "model": self.params.model,
                "choices": [choice],
                "usage": {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                          "total_tokens": u.prompt_tokens + u.completion_tokens},
            })));
        }
        if !self.json_object {
            return Ok(Value::String(done.text));
        }
        let parsed: Json = serde_json::from_str(done.text.trim())
            .map_err(|source| ReplyError::NotJson { source })?;
        let Json::Object(mut object) = parsed else {
            return Err(ReplyError::NotAnObject);
        };
        if self.outputs.is_empty() {
            return Ok(Value::from(Json::Object(object)));
        }
        let keys: Vec<String> = object.keys().cloned().collect();
        let mut restricted = serde_json::Map::new();
        for key in &self.outputs {
            match object.remove(key) {
                Some(v) => {
                    restricted.insert(key.clone(), v);
                }
                None => {
                    return Err(ReplyError::MissingOutput {
                        key: key.clone(),
                        keys,
                    });
                }
            }
        }
        Ok(Value::from(Json::Object(restricted)))
    }
}
