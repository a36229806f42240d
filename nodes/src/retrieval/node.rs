//! `retrieval` nodes: `query`, `index` (a name from `sluice index build`), `top_k` (default 3),
//! `filter` (metadata that hits must have, like `{tags: runs}`) and `hybrid` (BM25 fused with vectors)
//! give a list of `{text, source, score, metadata}`.

use std::sync::Arc;

use async_trait::async_trait;
use sluice_engine::spawn::run_blocking;
use sluice_engine::{
    BuildContext, BuildError, Built, InputValue, Map, Node, NodeContext, NodeDef, NodeError,
    NodeInputs, NodeKind, Signature, Value, ValueType,
};
use tokio::sync::Mutex;

use super::error::{IndexError, StoreError};
use super::filter::Filter;
use super::index::{Index, index_path};
use super::store::Search;

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
        let path = index_path(&name).map_err(|e| {
            BuildError::new(format!("node `{}`: {e}", node.name)).help(
                "a retrieval node searches a Sluice index by name; for a flow written for promptflow's \
                 index lookup tools, build one from the same documents with \
                 `sluice index build --source DOCS --out NAME` and give NAME as the index (`path` or `mlindex_content`)",
            )
        })?;
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
        let index = Index::open(&path).map_err(|e| BuildError::new(e.to_string()))?;
        // A literal filter is checked now, not at the first line.
        if let Some(InputValue::Literal(v)) = node.inputs.get("filter").map(|b| &b.value)
            && !matches!(v, Value::Null)
        {
            Filter::from_json(&v.to_json_lossy()).map_err(|e| {
                BuildError::new(format!("node `{}`: {e}", node.name))
                    .help("write `filter: {KEY: VALUE}`; a list of values matches any of them")
            })?;
        }
        let literal_hybrid = match node.inputs.get("query_type").map(|b| &b.value) {
            Some(InputValue::Literal(Value::String(t))) => {
                hybrid_of(t).map_err(|e| BuildError::new(format!("node `{}`: {e}", node.name)))?
            }
            _ => false,
        };
        if (literal_hybrid
            || matches!(
                node.inputs.get("hybrid").map(|b| &b.value),
                Some(InputValue::Literal(Value::Bool(true)))
            ))
            && index.meta("store").is_some()
        {
            return Err(BuildError::new(format!(
                "node `{}` asks for hybrid search, but the index `{name}` keeps its vectors in Chroma",
                node.name
            ))
            .help("hybrid (BM25) search needs the embedded store: drop `hybrid: true` or build the index without --store"));
        }
        let signature = Signature::fixed([
            // A text, a list of texts, or a vector.
            ("query", None, true),
            ("index", Some(ValueType::String), true),
            ("top_k", Some(ValueType::Int), false),
            ("hybrid", Some(ValueType::Bool), false),
            ("filter", Some(ValueType::Object), false),
            ("query_type", Some(ValueType::String), false),
        ]);
        Ok(Built {
            signature,
            node: Arc::new(RetrievalNode {
                index: Arc::new(Mutex::new(index)),
            }),
        })
    }
}

/// What a `query` input asks.
enum Query {
    Text(String),
    /// A vector from the index's embedding model (promptflow's vector lookups).
    Vector(Vec<f32>),
    /// Several texts (promptflow's Index Lookup `queries`): a list of hit lists comes back.
    Texts(Vec<String>),
}

fn query_of(v: &Value) -> Result<Query, NodeError> {
    let number = |x: &Value| match x {
        Value::Int(i) => Some(*i as f32),
        Value::Float(f) => Some(*f as f32),
        _ => None,
    };
    Ok(match v {
        Value::String(s) => Query::Text(s.clone()),
        Value::List(items) if !items.is_empty() && items.iter().all(|x| number(x).is_some()) => {
            Query::Vector(items.iter().filter_map(number).collect())
        }
        Value::List(items) if items.iter().all(|x| matches!(x, Value::String(_))) => Query::Texts(
            items
                .iter()
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    _ => unreachable!("all strings"),
                })
                .collect(),
        ),
        Value::List(_) => {
            return Err(NodeError::user(
                "InvalidQuery",
                "`query` is a text, a list of texts, or a vector (a list of numbers)",
            ));
        }
        other => Query::Text(other.py_str()),
    })
}

/// promptflow's Index Lookup `query_type`: vector or hybrid search; keyword-only search is not offered.
fn hybrid_of(query_type: &str) -> Result<bool, NodeError> {
    let t = query_type.to_ascii_lowercase();
    if t.contains("hybrid") {
        Ok(true)
    } else if t.contains("vector") || t.contains("dense") || t.is_empty() {
        Ok(false)
    } else {
        Err(NodeError::user(
            "InvalidQueryType",
            format!(
                "query_type `{query_type}` is not offered: use `Vector` or `Hybrid (vector + keyword)`"
            ),
        ))
    }
}

fn hits_value(hits: Vec<super::index::Hit>) -> Value {
    Value::List(
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
    )
}

#[async_trait]
impl Node for RetrievalNode {
    async fn run(&self, inputs: NodeInputs, _cx: &NodeContext) -> Result<Value, NodeError> {
        let query = match inputs.get("query") {
            Some(v) => query_of(v)?,
            None => {
                return Err(NodeError::user(
                    "InputNotFound",
                    "a retrieval node needs `query`",
                ));
            }
        };
        let k = top_k(inputs.get("top_k"))?;
        let mut hybrid = matches!(inputs.get("hybrid"), Some(Value::Bool(true)));
        if let Some(Value::String(t)) = inputs.get("query_type") {
            hybrid |= hybrid_of(t)?;
        }
        let filter = match inputs.get("filter") {
            None | Some(Value::Null) => Filter::default(),
            Some(v) => Filter::from_json(&v.to_json_lossy())
                .map_err(|e| NodeError::user("InvalidFilter", e.to_string()))?,
        };
        let err = |e: IndexError| NodeError::user("RetrievalError", e.to_string());
        // Queries are embedded without holding the index, so concurrent lines embed together; only
        // the search itself takes the index.
        let (texts, vectors): (Vec<Option<String>>, Vec<Vec<f32>>) = match &query {
            Query::Vector(v) => {
                let v = self.index.lock().await.prepare_vector(v.clone());
                (vec![None], vec![v.map_err(err)?])
            }
            Query::Text(q) => (vec![Some(q.clone())], self.embed(vec![q.clone()]).await?),
            Query::Texts(qs) => (
                qs.iter().cloned().map(Some).collect(),
                self.embed(qs.clone()).await?,
            ),
        };
        let mut all = if self.index.lock().await.is_local() {
            // The index file's own store searches SQLite and memory: blocking work, kept off the
            // async worker threads.
            let index = Arc::clone(&self.index);
            let filter = filter.clone();
            run_blocking(move || {
                let mut index = index.blocking_lock();
                texts
                    .iter()
                    .zip(vectors)
                    .map(|(text, v)| {
                        let s = Search {
                            q: &v,
                            text: text.as_deref(),
                            k,
                            hybrid,
                            filter: &filter,
                        };
                        index
                            .query_embedded_blocking(s)
                            .unwrap_or(Err(IndexError::Store(StoreError::NotLocal)))
                            .map(hits_value)
                    })
                    .collect::<Result<Vec<Value>, IndexError>>()
            })
            .await
            .map_err(err)?
        } else {
            self.query_store(&texts, vectors, k, hybrid, &filter)
                .await
                .map_err(err)?
        };
        Ok(match query {
            Query::Texts(_) => Value::List(all),
            _ => all.pop().unwrap_or(Value::Null),
        })
    }
}

impl RetrievalNode {
    /// Embeds query texts with the index's model, without holding the index while they are embedded
    /// (the embedder batches concurrent lines' queries together).
    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, NodeError> {
        let embedder = self.index.lock().await.embedder().await;
        let embedder = embedder.map_err(|e| NodeError::user("RetrievalError", e.to_string()))?;
        embedder
            .embed(texts)
            .await
            .map_err(|e| NodeError::user("RetrievalError", e.message))
    }

    /// Searches a store elsewhere (Chroma), one query after another.
    async fn query_store(
        &self,
        texts: &[Option<String>],
        vectors: Vec<Vec<f32>>,
        k: usize,
        hybrid: bool,
        filter: &Filter,
    ) -> Result<Vec<Value>, IndexError> {
        let mut index = self.index.lock().await;
        let mut all = Vec::with_capacity(texts.len());
        for (text, v) in texts.iter().zip(vectors) {
            let hits = match text {
                Some(text) => index.query_embedded(v, text, k, hybrid, filter).await?,
                None => index.query_vector(v, k, filter).await?,
            };
            all.push(hits_value(hits));
        }
        Ok(all)
    }
}

/// `top_k`: 3 when absent, else a whole number from 1 to 10,000 (0, a negative number or another type
/// is an error, not silently 3).
fn top_k(v: Option<&Value>) -> Result<usize, NodeError> {
    let n = match v {
        None | Some(Value::Null) => return Ok(3),
        Some(Value::Int(n)) => Some(*n),
        Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
        Some(_) => None,
    };
    match n {
        Some(n) if (1..=10_000).contains(&n) => Ok(n as usize),
        _ => Err(NodeError::user(
            "InvalidTopK",
            format!(
                "top_k must be a whole number from 1 to 10000; got {}",
                v.map(Value::py_repr).unwrap_or_default()
            ),
        )),
    }
}
