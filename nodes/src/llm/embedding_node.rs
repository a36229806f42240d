//! `embedding` nodes: text (or a list of texts) to L2-normalised vectors, on a local GGUF embedding
//! model (`model:`, default `minilm`) or an OpenAI-compatible `/embeddings` endpoint (`connection:`).

use std::sync::Arc;

use async_trait::async_trait;
use sluice_engine::{
    BuildContext, BuildError, Built, InputValue, Node, NodeContext, NodeDef, NodeError, NodeInputs,
    NodeKind, NodeMetrics, Signature, TokenCounts, Value, ValueType,
};

use super::connections::{self, ConnectionType};
use super::embed::LocalEmbedder;
use super::openai::{HttpBackend, HttpConfig};
use super::store;
use super::types::Backend as _;

/// The `embedding` node kind.
#[derive(Debug, Default)]
pub struct EmbeddingKind;

#[derive(Debug)]
enum Target {
    Local {
        name: String,
        path: std::path::PathBuf,
    },
    Http {
        backend: HttpBackend,
        model: Option<String>,
    },
}

#[derive(Debug)]
struct EmbeddingNode {
    target: Target,
}

impl NodeKind for EmbeddingKind {
    fn type_name(&self) -> &'static str {
        "embedding"
    }

    fn build(&self, node: &NodeDef, cx: &BuildContext) -> Result<Built, BuildError> {
        let literal = |k: &str| {
            node.inputs.get(k).and_then(|b| match &b.value {
                InputValue::Literal(Value::String(s)) => Some(s.clone()),
                _ => None,
            })
        };
        let model = literal("model").or_else(|| literal("deployment_name"));
        let target = match node.connection.as_deref() {
            None | Some("local") | Some("") => {
                let wanted = model.unwrap_or_else(|| "default".to_owned());
                super::require_local_models(&node.name, &wanted)?;
                let (name, path) =
                    store::resolve_model(&wanted, cx.flow_dir(), store::ModelUse::Embedding)
                        .map_err(|e| {
                            BuildError::new(format!(
                                "node `{}` needs the embedding model `{}`, which is not installed",
                                node.name, e.name
                            ))
                            .help(e.help)
                        })?;
                Target::Local { name, path }
            }
            Some(conn) => {
                let c = connections::load(conn)
                    .map_err(|e| BuildError::new(e.to_string()))?
                    .ok_or_else(|| {
                        BuildError::new(format!(
                            "node `{}` uses connection `{conn}`, which does not exist",
                            node.name
                        ))
                        .help("create it with `sluice connection create -f <file.yaml>`")
                    })?;
                if !matches!(c.kind, ConnectionType::OpenAi | ConnectionType::AzureOpenAi) {
                    return Err(BuildError::new(format!(
                        "node `{}`: an embedding connection must be open_ai or azure_open_ai",
                        node.name
                    )));
                }
                let config = HttpConfig::from_connection(&c)
                    .map_err(|e| BuildError::new(crate::error_chain(&e)))?;
                // As promptflow's embedding tool: Azure asks the deployment, OpenAI the model.
                let model = match c.kind {
                    ConnectionType::AzureOpenAi => {
                        literal("deployment_name").or_else(|| literal("model"))
                    }
                    _ => model,
                };
                Target::Http {
                    backend: HttpBackend::new(&c.name, config)
                        .map_err(|e| BuildError::new(crate::error_chain(&e)))?,
                    model,
                }
            }
        };
        let signature = Signature::fixed([
            ("input", None, true),
            ("model", Some(ValueType::String), false),
            ("deployment_name", Some(ValueType::String), false),
        ]);
        Ok(Built {
            signature,
            node: Arc::new(EmbeddingNode { target }),
        })
    }
}

#[async_trait]
impl Node for EmbeddingNode {
    async fn run(&self, inputs: NodeInputs, cx: &NodeContext) -> Result<Value, NodeError> {
        let (texts, single) = match inputs.get("input") {
            Some(Value::String(s)) => (vec![s.clone()], true),
            Some(Value::List(items)) => (items.iter().map(Value::py_str).collect(), false),
            Some(other) => (vec![other.py_str()], true),
            None => {
                return Err(NodeError::user(
                    "InputNotFound",
                    "an embedding node needs `input` (a string or a list of strings)",
                ));
            }
        };
        let (backend_name, model_name) = match &self.target {
            Target::Local { name, .. } => (format!("local:{name}"), Some(name.clone())),
            Target::Http { backend, model } => (backend.describe(), model.clone()),
        };
        let call = cx.record_call(serde_json::json!({
            "type": "Embedding",
            "api": "embeddings",
            "backend": backend_name,
            "model": model_name,
            "inputs": texts.len(),
            "start_time": super::epoch_seconds(),
        }));
        let mut done = serde_json::Map::new();
        let vectors = match &self.target {
            Target::Local { name, path } => {
                LocalEmbedder::get(name, path).await?.embed(texts).await?
            }
            Target::Http { backend, model } => {
                let e = if single {
                    backend.embed_text(&texts[0], model.as_deref()).await?
                } else {
                    backend.embed(&texts, model.as_deref()).await?
                };
                cx.add_metrics(&NodeMetrics {
                    tokens: TokenCounts {
                        prompt_tokens: Some(e.prompt_tokens),
                        ..TokenCounts::default()
                    },
                    ..NodeMetrics::default()
                });
                done.insert(
                    "usage".into(),
                    serde_json::json!({"prompt_tokens": e.prompt_tokens, "total_tokens": e.prompt_tokens}),
                );
                e.vectors
            }
        };
        done.insert("end_time".into(), super::epoch_seconds().into());
        cx.complete_call(call, done);
        let as_value =
            |v: Vec<f32>| Value::List(v.into_iter().map(|x| Value::Float(f64::from(x))).collect());
        let mut vectors = vectors.into_iter().map(as_value);
        Ok(if single {
            vectors.next().unwrap_or(Value::List(vec![]))
        } else {
            Value::List(vectors.collect())
        })
    }
}
