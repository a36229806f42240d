//! `retrieval` nodes: `query`, `index` (a name from `sluice index build`), `top_k` (default 3),
//! `filter` (metadata that hits must have, like `{tags: runs}`) and `hybrid` (BM25 fused with vectors)
//! give a list of `{text, source, score, metadata}`.

use std::sync::Arc;

use async_trait::async_trait;
use sluice_engine::{
    BuildContext, BuildError, Built, InputValue, Map, Node, NodeContext, NodeDef, NodeError,
    NodeInputs, NodeKind, Param, Signature, Value, ValueType,
};
use tokio::sync::Mutex;

use super::filter::Filter;
use super::index::{Index, index_path};

/// The `retrieval` node kind.
#[derive(Debug, Default)]
pub struct RetrievalKind;

#[derive(Debug)]
struct RetrievalNode {
    index: Arc<Mutex<Index>>,
}

impl NodeKind for RetrievalKind {
    fn type_name(&self) -> &'static str {
        "retrieval"
    }

    fn build(&self, node: &NodeDef, _cx: &BuildContext) -> Result<Built, BuildError> {
        let name = match node.inputs.get("index").map(|b| &b.value) {
            Some(InputValue::Literal(Value::String(s))) => s.clone(),
            _ => {
                return Err(BuildError::new(format!(
                    "node `{}` needs `index: NAME` (a literal index name)",
                    node.name
                ))
                .help("build one with `sluice index build --source DOCS --out NAME`"));
            }
        };
        let path = index_path(&name).map_err(BuildError::new)?;
        if !path.is_file() {
            return Err(BuildError::new(format!(
                "node `{}` uses the index `{name}`, which does not exist ({})",
                node.name,
                path.display()
            ))
            .help(format!(
                "build it with `sluice index build --source DOCS --out {name}`"
            )));
        }
        let index = Index::open(&path).map_err(BuildError::new)?;
        // A literal filter is checked now, not at the first line.
        if let Some(InputValue::Literal(v)) = node.inputs.get("filter").map(|b| &b.value)
            && !matches!(v, Value::Null)
        {
            Filter::from_json(&v.to_json_lossy()).map_err(|e| {
                BuildError::new(format!("node `{}`: {e}", node.name))
                    .help("write `filter: {KEY: VALUE}`; a list of values matches any of them")
            })?;
        }
        if matches!(
            node.inputs.get("hybrid").map(|b| &b.value),
            Some(InputValue::Literal(Value::Bool(true)))
        ) && index.meta("store").is_some()
        {
            return Err(BuildError::new(format!(
                "node `{}` asks for hybrid search, but the index `{name}` keeps its vectors in Chroma",
                node.name
            ))
            .help("hybrid (BM25) search needs the embedded store: drop `hybrid: true` or build the index without --store"));
        }
        let mut signature = Signature::default();
        for (p, ty, required) in [
            ("query", ValueType::String, true),
            ("index", ValueType::String, true),
            ("top_k", ValueType::Int, false),
            ("hybrid", ValueType::Bool, false),
            ("filter", ValueType::Object, false),
        ] {
            signature.params.insert(
                p.to_owned(),
                Param {
                    ty: Some(ty),
                    has_default: !required,
                    required,
                },
            );
        }
        Ok(Built {
            signature,
            node: Arc::new(RetrievalNode {
                index: Arc::new(Mutex::new(index)),
            }),
        })
    }
}

#[async_trait]
impl Node for RetrievalNode {
    async fn run(&self, inputs: NodeInputs, _cx: &NodeContext) -> Result<Value, NodeError> {
        let query = match inputs.get("query") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.py_str(),
            None => {
                return Err(NodeError::user(
                    "InputNotFound",
                    "a retrieval node needs `query`",
                ));
            }
        };
        let k = match inputs.get("top_k") {
            Some(Value::Int(n)) if *n > 0 => *n as usize,
            _ => 3,
        };
        let hybrid = matches!(inputs.get("hybrid"), Some(Value::Bool(true)));
        let filter = match inputs.get("filter") {
            None | Some(Value::Null) => Filter::default(),
            Some(v) => Filter::from_json(&v.to_json_lossy())
                .map_err(|e| NodeError::user("InvalidFilter", e))?,
        };
        let hits = self
            .index
            .lock()
            .await
            .query(&query, k, hybrid, &filter)
            .await
            .map_err(|e| NodeError::user("RetrievalError", e))?;
        Ok(Value::List(
            hits.into_iter()
                .map(|h| {
                    let mut meta = Map::new();
                    for (key, v) in h.metadata {
                        meta.insert(key, Value::from(v));
                    }
                    meta.insert("start".into(), Value::Int(h.start as i64));
                    meta.insert("end".into(), Value::Int(h.end as i64));
                    if let Some(heading) = h.heading {
                        meta.insert("heading".into(), Value::String(heading));
                    }
                    let mut m = Map::new();
                    m.insert("text".into(), Value::String(h.text));
                    m.insert("source".into(), Value::String(h.source));
                    m.insert("score".into(), Value::Float((h.score * 1e6).round() / 1e6));
                    m.insert("metadata".into(), Value::Map(meta));
                    Value::Map(m)
                })
                .collect(),
        ))
    }
}
