//! The contracts between the engine and node kinds.
//!
//! The engine knows node kinds only through [`NodeKind`] (builds a node from its definition when the flow
//! is loaded) and [`Node`] (runs it for one line), looked up in a [`NodeRegistry`] by the YAML `type:`.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use indexmap::IndexMap;

use crate::error::{BuildError, NodeError};
use crate::model::{FlowDef, NodeDef, ValueType};
use crate::store::NodeMetrics;
use crate::value::{Map, Value};

/// The inputs of one node call, by parameter name.
pub type NodeInputs = IndexMap<String, Value>;

/// A node ready to run lines.
#[async_trait]
pub trait Node: Send + Sync + Debug {
    /// Runs one line. Cancel-safe: dropping the future abandons the work.
    async fn run(&self, inputs: NodeInputs, cx: &NodeContext) -> Result<Value, NodeError>;
}

/// A kind of node (`prompt`, `python`, `llm`, ...): builds nodes from their definitions.
pub trait NodeKind: Send + Sync + 'static {
    /// The YAML `type:` this kind handles, lowercase.
    fn type_name(&self) -> &'static str;
    /// Builds a node, checking everything that can be checked before a line runs.
    fn build(&self, node: &NodeDef, cx: &BuildContext) -> Result<Built, BuildError>;
}

/// What a node kind gives back for a node: the runnable node and its call signature.
#[derive(Debug)]
pub struct Built {
    pub node: Arc<dyn Node>,
    pub signature: Signature,
}

/// The parameters a node accepts, so the engine can coerce literals (§3.3) and apply bypass rules (§4.4).
#[derive(Clone, Debug, Default)]
pub struct Signature {
    pub params: IndexMap<String, Param>,
    /// Whether unknown inputs are accepted (`**kwargs`).
    pub accepts_kwargs: bool,
    /// Literal inputs the kind consumed at build time (e.g. a `ToolProvider`'s `__init__` arguments);
    /// they are not passed on each call.
    pub consumed: Vec<String>,
    /// Default values of parameters that have JSON-shaped ones, by name (a flex flow's inputs
    /// take them).
    pub defaults: IndexMap<String, Value>,
    /// Whether the node's entry also aggregates the lines' outputs (a flex flow class with
    /// `__aggregate__`).
    pub aggregates: bool,
}

impl Signature {
    /// A signature of named parameters, `(name, type, required)`; those not required have defaults.
    pub fn fixed<'a>(params: impl IntoIterator<Item = (&'a str, Option<ValueType>, bool)>) -> Self {
        let mut signature = Signature::default();
        for (name, ty, required) in params {
            signature.params.insert(
                name.to_owned(),
                Param {
                    ty,
                    has_default: !required,
                    required,
                },
            );
        }
        signature
    }
}

/// One parameter of a node.
#[derive(Clone, Debug, Default)]
pub struct Param {
    /// The declared type; literals are converted to it. `None` passes them unchanged.
    pub ty: Option<ValueType>,
    /// Whether the parameter has a default: an input that references a bypassed node is then omitted
    /// rather than passed as `None`.
    pub has_default: bool,
    /// Whether the flow must bind this parameter; checked when the flow is loaded.
    pub required: bool,
}

/// What a node kind may use while building nodes.
#[derive(Debug)]
pub struct BuildContext<'a> {
    pub flow: &'a FlowDef,
}

impl BuildContext<'_> {
    /// The flow folder, against which `source.path` is resolved.
    pub fn flow_dir(&self) -> &Path {
        &self.flow.dir
    }

    /// Resolves a node's `source.path`, checking that the file exists.
    ///
    /// Paths are relative to the flow folder; files brought in by `additional_includes` are found as
    /// promptflow finds them in its merged copy of the folder: an included file by its name, a file in an
    /// included folder by `<folder name>/<path inside it>`.
    pub fn source_file(&self, node: &NodeDef) -> Result<PathBuf, BuildError> {
        let path = node
            .source
            .as_ref()
            .and_then(|s| s.path.as_deref())
            .ok_or_else(|| {
                BuildError::new(format!("node `{}` has no `source.path`", node.name))
                    .help("add `source: {type: code, path: <file>}` to the node")
            })?;
        self.resolve_path(path).ok_or_else(|| {
            BuildError::new(format!(
                "source file `{path}` of node `{}` does not exist",
                node.name
            ))
            .help(format!(
                "create {} or fix `source.path`",
                self.flow.dir.join(path).display()
            ))
        })
    }

    /// Finds a file of the flow by its path relative to the flow folder, `additional_includes` included.
    pub fn resolve_path(&self, path: &str) -> Option<PathBuf> {
        let direct = self.flow.dir.join(path);
        if direct.is_file() {
            return Some(direct);
        }
        let wanted = Path::new(path);
        for include in &self.flow.additional_includes {
            let inc = self.flow.dir.join(include);
            let Some(name) = inc.file_name() else {
                continue;
            };
            if inc.is_file() && wanted == Path::new(name) {
                return Some(inc);
            }
            if inc.is_dir()
                && let Ok(rest) = wanted.strip_prefix(name)
                && inc.join(rest).is_file()
            {
                return Some(inc.join(rest));
            }
        }
        None
    }
}

/// What a running node can see and report.
#[derive(Debug, Default)]
pub struct NodeContext {
    pub node: String,
    /// The line number in a batch, `None` for a single test run and for aggregation.
    pub line: Option<usize>,
    pub run_id: String,
    /// Whether the caller wants a streaming result (a generator) from this node.
    pub stream: bool,
    /// Metrics logged with `log_metric`, collected only while aggregation nodes run.
    pub metrics: Option<Arc<Mutex<Map>>>,
    /// What a node reports about its own work (tokens, time to first token), summed per run.
    pub system_metrics: Mutex<NodeMetrics>,
    /// What the node sent to a model or service (an `llm` node's rendered prompt), recorded with its
    /// run so that a run's details show what was asked.
    pub api_calls: Mutex<Vec<serde_json::Value>>,
}

impl NodeContext {
    /// Records one call the node made (see [`NodeContext::api_calls`]); returns its place, for
    /// [`NodeContext::complete_call`].
    pub fn record_call(&self, call: serde_json::Value) -> usize {
        let mut calls = self.api_calls.lock().unwrap_or_else(|e| e.into_inner());
        calls.push(call);
        calls.len() - 1
    }

    /// Adds what became known when a recorded call ended (its end time, tokens, the model that
    /// answered) to the call's record.
    pub fn complete_call(&self, index: usize, fields: serde_json::Map<String, serde_json::Value>) {
        let mut calls = self.api_calls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(serde_json::Value::Object(call)) = calls.get_mut(index) {
            call.extend(fields);
        }
    }

    /// Adds to this node's system metrics (see [`NodeMetrics::add`]).
    pub fn add_metrics(&self, more: &NodeMetrics) {
        self.system_metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(more);
    }
}

/// A promptflow package tool (`source: {type: package, tool: ID}`) that a node kind stands in for.
#[derive(Clone, Copy, Debug)]
pub struct PackageTool {
    /// The type name of the kind that runs it.
    pub kind: &'static str,
    /// The tool's parameter names that the kind calls otherwise: (tool's, kind's).
    pub renames: &'static [(&'static str, &'static str)],
}

/// Node kinds by YAML `type:`, and the package tools they stand in for.
#[derive(Clone, Default)]
pub struct NodeRegistry {
    kinds: BTreeMap<String, Arc<dyn NodeKind>>,
    package_tools: BTreeMap<String, PackageTool>,
}

impl Debug for NodeRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.kinds.keys()).finish()
    }
}

impl NodeRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a kind under its type name, replacing any kind of that name.
    pub fn register(&mut self, kind: impl NodeKind) -> &mut Self {
        self.kinds
            .insert(kind.type_name().to_owned(), Arc::new(kind));
        self
    }

    /// The kind for a YAML `type:` (case-insensitive).
    pub fn get(&self, type_name: &str) -> Option<&Arc<dyn NodeKind>> {
        self.kinds.get(&type_name.to_ascii_lowercase())
    }

    /// The registered type names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.kinds.keys().map(String::as_str).collect()
    }

    /// Lets flows written for promptflow call `tool` (a package tool id) and get `with` instead.
    pub fn register_package_tool(&mut self, tool: &str, with: PackageTool) -> &mut Self {
        self.package_tools.insert(tool.to_owned(), with);
        self
    }

    /// The package tool ids that have a stand-in, sorted.
    pub fn package_tools(&self) -> impl Iterator<Item = (&str, &PackageTool)> {
        self.package_tools.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Turns nodes that call a registered package tool into nodes of the kind that stands in for it:
    /// the type changes, inputs are renamed, and a literal `connection` input (how promptflow's tools
    /// take their connection) becomes the node's connection; for an `llm` stand-in, a literal `api`
    /// input (`chat` or `completion`, how promptflow's LLM tool takes it) becomes the node's `api`.
    pub fn apply_package_tools(&self, def: &mut FlowDef) {
        for node in &mut def.nodes {
            let Some(source) = &node.source else { continue };
            if !matches!(source.ty.as_str(), "package" | "package_with_prompt") {
                continue;
            }
            let Some(with) = source
                .tool
                .as_deref()
                .and_then(|t| self.package_tools.get(t))
            else {
                continue;
            };
            node.kind = with.kind.to_owned();
            // A prompt tool's template stays the node's source (the kind reads it as a `code`
            // source); the tool id stays too, for kinds that stand in for several tools.
            node.source = node.source.take().and_then(|mut s| {
                (s.ty == "package_with_prompt" && s.path.is_some()).then(|| {
                    s.ty = "code".to_owned();
                    s
                })
            });
            let inputs = std::mem::take(&mut node.inputs);
            for (name, binding) in inputs {
                if name == "connection"
                    && node.connection.is_none()
                    && let crate::InputValue::Literal(Value::String(c)) = &binding.value
                {
                    node.connection = Some(c.clone());
                    continue;
                }
                if name == "api"
                    && with.kind == "llm"
                    && node.api.is_none()
                    && let crate::InputValue::Literal(Value::String(api)) = &binding.value
                {
                    node.api = Some(api.clone());
                    continue;
                }
                let name = with
                    .renames
                    .iter()
                    .find(|(from, _)| *from == name)
                    .map_or(name, |(_, to)| (*to).to_owned());
                node.inputs.insert(name, binding);
            }
        }
    }
}
