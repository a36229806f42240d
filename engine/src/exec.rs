//! Running a flow: one line through the per-line nodes, then the aggregation nodes once.
//!
//! One scheduler serves both phases and every concurrency level: a node starts the moment every node it
//! depends on has finished or been bypassed; ready nodes start in topological order, at most
//! `node_concurrency` at a time, so a limit of 1 gives promptflow's serial order. Nodes of a line run as
//! futures polled by the line's task; blocking work inside a node is the node kind's to move off the
//! async threads. The first failure ends the line at once (running nodes are dropped, i.e. cancelled).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use tracing::Instrument;

use crate::error::{ErrorCode, ErrorInfo, NodeError};
use crate::model::{InputValue, ValueType};
use crate::node::{NodeContext, NodeInputs};
use crate::plan::{Flow, PlannedNode};
use crate::store::NodeMetrics;
use crate::value::{Map, Value};

/// The status of a line or a node run, as promptflow names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Status {
    Completed,
    Failed,
    Bypassed,
    Canceled,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Completed => "Completed",
            Status::Failed => "Failed",
            Status::Bypassed => "Bypassed",
            Status::Canceled => "Canceled",
        }
    }
}

/// What happened to one node in one line (or in aggregation).
#[derive(Clone, Debug, Serialize)]
pub struct NodeRunInfo {
    pub node: String,
    pub status: Status,
    /// The inputs it was called with (non-JSON values as their `repr()`); empty when bypassed.
    pub inputs: Map,
    pub output: Value,
    pub error: Option<ErrorInfo>,
    #[serde(serialize_with = "crate::json::serialize_utc")]
    pub start_time: DateTime<Utc>,
    #[serde(serialize_with = "crate::json::serialize_utc")]
    pub end_time: DateTime<Utc>,
    #[serde(serialize_with = "crate::json::serialize_line_index")]
    pub index: Option<usize>,
    /// `duration` (seconds) plus whatever the node reported (tokens, ...).
    pub system_metrics: NodeMetrics,
    /// The calls the node made to a model or service (an `llm` node's prompt), in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub api_calls: Vec<serde_json::Value>,
}

/// The result of one line.
#[derive(Clone, Debug, Serialize)]
pub struct LineResult {
    pub line_number: Option<usize>,
    pub status: Status,
    /// The flow inputs after defaults and type conversion.
    pub inputs: Map,
    /// The flow outputs; empty when the line failed.
    pub output: Map,
    pub error: Option<ErrorInfo>,
    pub node_runs: Vec<NodeRunInfo>,
    /// Values kept for the aggregation nodes, keyed by reference text (`${node.output.x}`).
    #[serde(skip)]
    pub aggregation_inputs: Map,
    #[serde(serialize_with = "crate::json::serialize_utc")]
    pub start_time: DateTime<Utc>,
    #[serde(serialize_with = "crate::json::serialize_utc")]
    pub end_time: DateTime<Utc>,
}

impl LineResult {
    pub fn duration(&self) -> Duration {
        (self.end_time - self.start_time)
            .to_std()
            .unwrap_or_default()
    }
}

/// The result of the aggregation phase.
#[derive(Clone, Debug, Serialize)]
pub struct AggregationResult {
    pub status: Status,
    pub metrics: Map,
    pub node_runs: Vec<NodeRunInfo>,
    /// The failing aggregation node and its error.
    pub error: Option<(String, ErrorInfo)>,
}

/// Watches a run as it happens (progress bars, run records). Every method has a no-op default.
pub trait RunObserver: Send + Sync {
    fn node_started(&self, _line: Option<usize>, _node: &str) {}
    fn node_finished(&self, _line: Option<usize>, _run: &NodeRunInfo) {}
}

/// How to run a line.
#[derive(Clone)]
pub struct LineOptions {
    /// The line number in a batch; `None` for a single test.
    pub line_number: Option<usize>,
    /// How many nodes of the line may run at once; 1 runs them one by one in topological order.
    pub node_concurrency: usize,
    /// Cancels the line's running nodes and fails it after this long.
    pub timeout: Option<Duration>,
    pub run_id: String,
    /// Keep stream (generator) outputs as streams instead of joining them.
    pub stream: bool,
    pub observer: Option<Arc<dyn RunObserver>>,
}

impl Default for LineOptions {
    fn default() -> Self {
        LineOptions {
            line_number: None,
            node_concurrency: 16,
            timeout: None,
            run_id: String::new(),
            stream: false,
            observer: None,
        }
    }
}

impl std::fmt::Debug for LineOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineOptions")
            .field("line_number", &self.line_number)
            .field("node_concurrency", &self.node_concurrency)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
enum NodeState {
    Done(Value),
    Bypassed,
}

/// Where references to things outside the scheduled nodes are looked up.
enum Env<'a> {
    /// A line: flow inputs are the line's typed inputs.
    Line(&'a Map),
    /// Aggregation: flow inputs and line nodes are lists over the successful lines, keyed by reference text.
    Aggregation(&'a Map),
}

/// A line-level failure that is not a node's own error.
fn line_error(error_type: &str, message: String) -> ErrorInfo {
    ErrorInfo::new(ErrorCode::UserError, error_type, message)
}

impl Flow {
    /// Applies defaults and type conversion (§3.2) to a line's inputs.
    pub fn prepare_inputs(&self, given: &Map, line: Option<usize>) -> Result<Map, ErrorInfo> {
        let mut out = given.clone();
        let where_ = line
            .map(|l| format!(" in line {l} of input data"))
            .unwrap_or_default();
        for (name, def) in &self.def.inputs {
            let value = match given.get(name) {
                Some(v) if !v.is_null() => v.clone(),
                _ => match &def.default {
                    // A flex entry's parameter defaulting to `None` (or to a value that is not
                    // JSON) gets `None`, untyped.
                    Some(Value::Null) => {
                        out.insert(name.clone(), Value::Null);
                        continue;
                    }
                    Some(d) => d.clone(),
                    None => {
                        return Err(line_error(
                            "InputNotFound",
                            format!("The value for flow input '{name}' is not provided{where_}."),
                        ));
                    }
                },
            };
            let typed = def.ty.parse(value).map_err(|e| {
                let code = if matches!(e, crate::model::TypeError::NotJson { .. }) {
                    "InputParseError"
                } else {
                    "InputTypeError"
                };
                line_error(
                    code,
                    format!("Input '{name}'{where_} of flow '{}': {e}.", self.def.name),
                )
            })?;
            // Images are read now, paths relative to the flow folder (§7.4); lists and objects
            // may hold image dicts too.
            let typed = match def.ty {
                ValueType::Image => {
                    crate::image::load(&typed, &self.def.dir, self.def.message_format)
                }
                ValueType::List | ValueType::Object => {
                    crate::image::load_nested(typed, &self.def.dir, self.def.message_format)
                }
                _ => Ok(typed),
            }
            .map_err(|e| {
                let dict = match self.def.message_format {
                    crate::image::MessageFormat::Basic => {
                        r#"{"data:image/png;path": "file.png"}"#
                    }
                    crate::image::MessageFormat::OpenaiVision => {
                        r#"{"type": "image_file", "image_file": {"path": "file.png"}}"#
                    }
                };
                line_error(
                    "LoadMultimediaDataError",
                    format!(
                        "Failed to load image for input '{name}'{where_}: {e}. Give a path (relative to the flow folder, or in batch data to the data file), an http(s) URL, a data:image/...;base64 URI or {dict}."
                    ),
                )
            })?;
            out.insert(name.clone(), typed);
        }
        Ok(out)
    }

    /// Runs one line through the per-line nodes and extracts the flow outputs.
    pub async fn run_line(&self, inputs: &Map, opts: &LineOptions) -> LineResult {
        let span = tracing::info_span!("line", flow = %self.def.name, line = opts.line_number);
        self.run_line_inner(inputs, opts).instrument(span).await
    }

    async fn run_line_inner(&self, given: &Map, opts: &LineOptions) -> LineResult {
        let start_time = Utc::now();
        // Joining a streamed output counts toward the line's timeout too.
        let deadline = opts.timeout.map(|t| tokio::time::Instant::now() + t);
        let finish =
            |inputs: Map, output, error: Option<ErrorInfo>, node_runs, aggregation_inputs| {
                LineResult {
                    line_number: opts.line_number,
                    status: if error.is_some() {
                        Status::Failed
                    } else {
                        Status::Completed
                    },
                    inputs,
                    output,
                    error,
                    node_runs,
                    aggregation_inputs,
                    start_time,
                    end_time: Utc::now(),
                }
            };
        let inputs = match self.prepare_inputs(given, opts.line_number) {
            Ok(i) => i,
            Err(e) => return finish(given.clone(), Map::new(), Some(e), vec![], Map::new()),
        };
        let env = Env::Line(&inputs);
        let outcome = self.schedule(&self.line_nodes, &env, opts, None).await;
        if let Some(error) = outcome.error {
            return finish(inputs, Map::new(), Some(error), outcome.runs, Map::new());
        }
        let mut output = Map::new();
        for (name, reference) in &self.outputs {
            let value = match self.resolve(reference, &outcome.states, &env) {
                Ok(Resolved::Value(v)) => v,
                Ok(Resolved::Bypassed) => {
                    tracing::warn!(output = %name, "the node referenced by output '{name}' is bypassed, which is not recommended");
                    if let InputValue::NodeOutput { node, path } = reference
                        && let Some(step) = path.first()
                    {
                        let err = line_error(
                            "InvalidReferenceProperty",
                            format!(
                                "Invalid property '{step}' when accessing the output of node '{node}' in '{reference}': the node was bypassed, so its output is None."
                            ),
                        );
                        return finish(inputs, Map::new(), Some(err), outcome.runs, Map::new());
                    }
                    Value::Null
                }
                Err(e) => return finish(inputs, Map::new(), Some(e), outcome.runs, Map::new()),
            };
            let value = if opts.stream {
                value
            } else {
                let joined = match deadline {
                    Some(d) => tokio::time::timeout_at(d, value.into_plain()).await,
                    None => Ok(value.into_plain().await),
                };
                let Ok(joined) = joined else {
                    let secs = opts.timeout.unwrap_or_default().as_secs_f64();
                    let err = line_error(
                        "LineExecutionTimeoutError",
                        format!(
                            "Line execution timeout after {secs} seconds, while the output '{name}' was read."
                        ),
                    );
                    return finish(inputs, Map::new(), Some(err), outcome.runs, Map::new());
                };
                match joined {
                    Ok(v) => v,
                    Err(e) => {
                        let err = line_error(
                            "FlowOutputUnserializable",
                            format!(
                                "The output '{name}' for flow is incorrect. The output value is not JSON serializable: {e}."
                            ),
                        );
                        return finish(inputs, Map::new(), Some(err), outcome.runs, Map::new());
                    }
                }
            };
            output.insert(name.clone(), value);
        }
        // A flex entry's dict is the line's outputs; any other value is the output `output`.
        if self.def.flex.is_some()
            && let Some(Value::Map(m)) = output.get("output")
            && output.len() == 1
        {
            output = m.clone();
        }
        let mut aggregation_inputs = Map::new();
        for reference in &self.aggregation_refs {
            let value = match self.resolve(reference, &outcome.states, &env) {
                Ok(Resolved::Value(v)) => v,
                _ => Value::Null,
            };
            aggregation_inputs.insert(reference.to_string(), value);
        }
        finish(inputs, output, None, outcome.runs, aggregation_inputs)
    }

    /// Runs the aggregation nodes once over the successful lines' kept values.
    pub async fn run_aggregation(&self, lines: &[&Map], opts: &LineOptions) -> AggregationResult {
        let span = tracing::info_span!("aggregation", flow = %self.def.name, lines = lines.len());
        async move {
            let mut lists = Map::new();
            for reference in &self.aggregation_refs {
                let key = reference.to_string();
                let list = lines
                    .iter()
                    .map(|l| l.get(&key).cloned().unwrap_or(Value::Null))
                    .collect();
                lists.insert(key, Value::List(list));
            }
            let metrics = Arc::new(Mutex::new(Map::new()));
            let env = Env::Aggregation(&lists);
            let outcome = self
                .schedule(&self.aggregation_nodes, &env, opts, Some(metrics.clone()))
                .await;
            let metrics = metrics.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let error = outcome.error.map(|e| {
                let node = outcome
                    .runs
                    .iter()
                    .find(|r| r.status == Status::Failed)
                    .map(|r| r.node.clone())
                    .unwrap_or_default();
                (node, e)
            });
            AggregationResult {
                status: if error.is_some() {
                    Status::Failed
                } else {
                    Status::Completed
                },
                metrics,
                node_runs: outcome.runs,
                error,
            }
        }
        .instrument(span)
        .await
    }

    /// Runs one node on its own (`flow test --node`). Its inputs come from `given`: by parameter name,
    /// by flow input name, or by upstream node name (the node's whole output, before any path).
    pub async fn run_node(
        &self,
        name: &str,
        given: &Map,
        opts: &LineOptions,
    ) -> Result<Value, ErrorInfo> {
        let i = self
            .node_index(name)
            .ok_or_else(|| line_error("NodeNotFound", format!("the flow has no node `{name}`")))?;
        let n = &self.nodes[i];
        let mut inputs = NodeInputs::new();
        let mut missing = vec![];
        for (param, value) in &n.inputs {
            let v = match (given.get(param), value) {
                (Some(v), _) => Some(v.clone()),
                (None, InputValue::Literal(v)) => Some(v.clone()),
                (None, InputValue::FlowInput(x)) => {
                    match (given.get(x), self.def.inputs.get(x)) {
                        (Some(v), Some(def)) => Some(def.ty.parse(v.clone()).map_err(|e| {
                            line_error("InputTypeError", format!("input '{x}': {e}"))
                        })?),
                        (None, Some(def)) => def.default.clone(),
                        (v, None) => v.cloned(),
                    }
                }
                (None, InputValue::NodeOutput { node, path }) => match given.get(node) {
                    Some(v) => {
                        let mut v = v.clone();
                        for step in path {
                            v = v.lookup(step).ok_or_else(|| {
                                line_error(
                                    "InvalidReferenceProperty",
                                    format!("Invalid property '{step}' in '{value}'"),
                                )
                            })?;
                        }
                        Some(v)
                    }
                    None => None,
                },
            };
            match v {
                Some(v) => {
                    inputs.insert(param.clone(), v);
                }
                None => missing.push(match value {
                    InputValue::FlowInput(x) => x.clone(),
                    InputValue::NodeOutput { node, .. } => node.clone(),
                    _ => param.clone(),
                }),
            }
        }
        if !missing.is_empty() {
            return Err(line_error(
                "InputNotFound",
                format!(
                    "node `{name}` needs values for: {}; pass them with --inputs NAME=VALUE",
                    missing.join(", ")
                ),
            ));
        }
        let cx = NodeContext {
            node: name.to_owned(),
            line: opts.line_number,
            run_id: opts.run_id.clone(),
            ..Default::default()
        };
        let span = tracing::info_span!("node", node = %name, kind = %n.def.kind);
        let output = n
            .node
            .run(inputs, &cx)
            .instrument(span)
            .await
            .map_err(|e| ErrorInfo::from_node(name, &e))?;
        if opts.stream {
            Ok(output)
        } else {
            output
                .into_plain()
                .await
                .map_err(|e| line_error("FlowOutputUnserializable", e.to_string()))
        }
    }

    fn resolve(
        &self,
        value: &InputValue,
        states: &[Option<NodeState>],
        env: &Env<'_>,
    ) -> Result<Resolved, ErrorInfo> {
        match value {
            InputValue::Literal(v) => Ok(Resolved::Value(v.clone())),
            InputValue::FlowInput(name) => match env {
                Env::Line(inputs) => Ok(Resolved::Value(
                    inputs.get(name).cloned().unwrap_or_default(),
                )),
                Env::Aggregation(lists) => Ok(Resolved::Value(
                    lists.get(&value.to_string()).cloned().unwrap_or_default(),
                )),
            },
            InputValue::NodeOutput { node, path } => {
                let i = self
                    .node_index(node)
                    .expect("references are checked at load");
                if let (Env::Aggregation(lists), false) = (env, self.nodes[i].def.aggregation) {
                    return Ok(Resolved::Value(
                        lists.get(&value.to_string()).cloned().unwrap_or_default(),
                    ));
                }
                let mut current = match &states[i] {
                    Some(NodeState::Done(v)) => v.clone(),
                    Some(NodeState::Bypassed) => return Ok(Resolved::Bypassed),
                    None => {
                        return Err(line_error(
                            "NodeOutputNotFound",
                            format!("The output of node '{node}' is not found."),
                        ));
                    }
                };
                for step in path {
                    current = current.lookup(step).ok_or_else(|| {
                        line_error(
                            "InvalidReferenceProperty",
                            format!("Invalid property '{step}' when accessing the output of node '{node}' in '{value}': the value there is {} of type {}.", current.py_repr(), current.type_name()),
                        )
                    })?;
                }
                Ok(Resolved::Value(current))
            }
        }
    }

    /// Decides, for a node whose dependencies are all settled, whether it runs or is bypassed (§4.4).
    fn should_bypass(
        &self,
        i: usize,
        members: &[usize],
        states: &[Option<NodeState>],
        env: &Env<'_>,
    ) -> Result<bool, ErrorInfo> {
        let n = &self.nodes[i];
        let is_bypassed = |name: &str| {
            self.node_index(name)
                .filter(|j| members.contains(j))
                .is_some_and(|j| matches!(states[j], Some(NodeState::Bypassed)))
        };
        if let Some(activate) = &n.def.activate {
            if activate.when.node_name().is_some_and(is_bypassed) {
                return Ok(true);
            }
            let when = match self.resolve(&activate.when, states, env)? {
                Resolved::Value(v) => v,
                Resolved::Bypassed => return Ok(true),
            };
            return Ok(!when.py_eq(&activate.is));
        }
        let refs: Vec<&str> = n
            .inputs
            .iter()
            .filter_map(|(_, v)| v.node_name())
            .filter(|name| self.node_index(name).is_some_and(|j| members.contains(&j)))
            .collect();
        Ok(!refs.is_empty() && refs.iter().all(|name| is_bypassed(name)))
    }

    /// The call inputs of a node (§4.4: a bypassed input is omitted if the parameter has a default, else None).
    fn node_inputs(
        &self,
        n: &PlannedNode,
        states: &[Option<NodeState>],
        env: &Env<'_>,
    ) -> Result<NodeInputs, ErrorInfo> {
        let mut inputs = NodeInputs::with_capacity(n.inputs.len());
        for (name, value) in &n.inputs {
            match self.resolve(value, states, env)? {
                Resolved::Value(v) => {
                    inputs.insert(name.clone(), v);
                }
                Resolved::Bypassed => {
                    if !n.signature.params.get(name).is_some_and(|p| p.has_default) {
                        tracing::warn!(node = %n.def.name, input = %name, "input `{name}` references a bypassed node; passing None");
                        inputs.insert(name.clone(), Value::Null);
                    }
                }
            }
        }
        Ok(inputs)
    }

    async fn schedule(
        &self,
        members: &[usize],
        env: &Env<'_>,
        opts: &LineOptions,
        metrics: Option<Arc<Mutex<Map>>>,
    ) -> Outcome {
        let limit = opts.node_concurrency.max(1);
        let deadline = opts.timeout.map(|t| tokio::time::Instant::now() + t);
        let mut states: Vec<Option<NodeState>> = vec![None; self.nodes.len()];
        let mut pending: Vec<usize> = members.to_vec();
        let mut runs: Vec<NodeRunInfo> = vec![];
        let mut running = FuturesUnordered::new();
        let mut running_names: Vec<(usize, DateTime<Utc>, Map)> = vec![];
        let index = if metrics.is_some() {
            None
        } else {
            opts.line_number
        };
        let fail = |runs: Vec<NodeRunInfo>, error| Outcome {
            states: vec![],
            runs,
            error: Some(error),
        };

        loop {
            // Settle every ready node: bypass what must be bypassed, start what may start.
            let mut changed = true;
            while changed {
                changed = false;
                let mut k = 0;
                while k < pending.len() {
                    let i = pending[k];
                    let ready = self.nodes[i]
                        .deps
                        .iter()
                        .all(|d| !members.contains(d) || states[*d].is_some());
                    if !ready {
                        k += 1;
                        continue;
                    }
                    let bypass = match self.should_bypass(i, members, &states, env) {
                        Ok(b) => b,
                        Err(e) => return fail(runs, e),
                    };
                    if bypass {
                        states[i] = Some(NodeState::Bypassed);
                        let now = Utc::now();
                        let run = NodeRunInfo {
                            node: self.nodes[i].def.name.clone(),
                            status: Status::Bypassed,
                            inputs: Map::new(),
                            output: Value::Null,
                            error: None,
                            start_time: now,
                            end_time: now,
                            index,
                            system_metrics: NodeMetrics::default(),
                            api_calls: Vec::new(),
                        };
                        if let Some(o) = &opts.observer {
                            o.node_finished(opts.line_number, &run);
                        }
                        runs.push(run);
                        pending.remove(k);
                        changed = true;
                        continue;
                    }
                    if running.len() >= limit {
                        k += 1;
                        continue;
                    }
                    let n = &self.nodes[i];
                    let inputs = match self.node_inputs(n, &states, env) {
                        Ok(v) => v,
                        Err(e) => return fail(runs, e),
                    };
                    let record: Map = inputs
                        .iter()
                        .map(|(k, v)| (k.clone(), v.frozen()))
                        .collect();
                    let cx = NodeContext {
                        node: n.def.name.clone(),
                        line: opts.line_number,
                        run_id: opts.run_id.clone(),
                        // Only outputs stream; a node feeding other nodes gives them its whole result.
                        stream: opts.stream
                            && self
                                .outputs
                                .iter()
                                .any(|(_, v)| v.node_name() == Some(&n.def.name)),
                        metrics: metrics.clone(),
                        system_metrics: Default::default(),
                        api_calls: Default::default(),
                    };
                    if let Some(o) = &opts.observer {
                        o.node_started(opts.line_number, &n.def.name);
                    }
                    let span = tracing::info_span!("node", node = %n.def.name, kind = %n.def.kind);
                    let node = n.node.clone();
                    running_names.push((i, Utc::now(), record));
                    running.push(async move {
                        let started = std::time::Instant::now();
                        let result = node.run(inputs, &cx).instrument(span).await;
                        (i, result, cx, started.elapsed())
                    });
                    pending.remove(k);
                    changed = true;
                }
            }
            if running.is_empty() {
                if pending.is_empty() {
                    break;
                }
                let names: Vec<&str> = pending
                    .iter()
                    .map(|&i| self.nodes[i].def.name.as_str())
                    .collect();
                return fail(
                    runs,
                    ErrorInfo::new(
                        ErrorCode::SystemError,
                        "NoNodeExecutedError",
                        format!("No nodes could run; waiting: {}", names.join(", ")),
                    ),
                );
            }
            let next = match deadline {
                Some(d) => match tokio::time::timeout_at(d, running.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        let secs = opts.timeout.unwrap_or_default().as_secs_f64();
                        let message = match opts.line_number {
                            Some(l) => {
                                format!("Line {l} execution timeout for exceeding {secs} seconds")
                            }
                            None => format!("Line execution timeout for exceeding {secs} seconds"),
                        };
                        let cancel = line_error(
                            "ToolCanceled",
                            format!(
                                "Tool execution is canceled because: Line execution timeout after {secs} seconds."
                            ),
                        );
                        cancel_running(&self.nodes, &mut runs, running_names, index, Some(cancel));
                        return fail(
                            runs,
                            ErrorInfo::new(
                                ErrorCode::UserError,
                                "LineExecutionTimeoutError",
                                message,
                            ),
                        );
                    }
                },
                None => running.next().await,
            };
            let Some((i, result, cx, elapsed)) = next else {
                continue;
            };
            let pos = running_names
                .iter()
                .position(|(j, _, _)| *j == i)
                .expect("a running node is tracked");
            let (_, start_time, record) = running_names.swap_remove(pos);
            let mut system_metrics = cx
                .system_metrics
                .into_inner()
                .unwrap_or_else(|e| e.into_inner());
            system_metrics.duration = Some(elapsed.as_secs_f64());
            let api_calls = cx.api_calls.into_inner().unwrap_or_else(|e| e.into_inner());
            let name = self.nodes[i].def.name.clone();
            let mut run = NodeRunInfo {
                node: name.clone(),
                status: Status::Completed,
                inputs: record,
                output: Value::Null,
                error: None,
                start_time,
                end_time: Utc::now(),
                index,
                system_metrics,
                api_calls,
            };
            match result {
                Ok(v) => {
                    run.output = v.clone();
                    states[i] = Some(NodeState::Done(v));
                    if let Some(o) = &opts.observer {
                        o.node_finished(opts.line_number, &run);
                    }
                    runs.push(run);
                }
                Err(e) => {
                    let error = ErrorInfo::from_node(&name, &e);
                    tracing::debug!(node = %name, error = %e, "node failed");
                    run.status = Status::Failed;
                    run.error = Some(error.clone());
                    if let Some(o) = &opts.observer {
                        o.node_finished(opts.line_number, &run);
                    }
                    runs.push(run);
                    cancel_running(&self.nodes, &mut runs, running_names, index, None);
                    return fail(runs, error);
                }
            }
        }
        Outcome {
            states,
            runs,
            error: None,
        }
    }
}

fn cancel_running(
    nodes: &[PlannedNode],
    runs: &mut Vec<NodeRunInfo>,
    running: Vec<(usize, DateTime<Utc>, Map)>,
    index: Option<usize>,
    error: Option<ErrorInfo>,
) {
    for (i, start_time, inputs) in running {
        runs.push(NodeRunInfo {
            node: nodes[i].def.name.clone(),
            status: Status::Canceled,
            inputs,
            output: Value::Null,
            error: error.clone(),
            start_time,
            end_time: Utc::now(),
            index,
            system_metrics: NodeMetrics::default(),
            api_calls: Vec::new(),
        });
    }
}

enum Resolved {
    Value(Value),
    Bypassed,
}

struct Outcome {
    states: Vec<Option<NodeState>>,
    runs: Vec<NodeRunInfo>,
    error: Option<ErrorInfo>,
}

/// Turns a node error into a line error record (for callers that run nodes themselves).
pub fn node_error_info(node: &str, error: &NodeError) -> ErrorInfo {
    ErrorInfo::from_node(node, error)
}
