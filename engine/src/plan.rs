//! From a [`FlowDef`] to a runnable [`Flow`]: every reference resolved, the graph checked for cycles,
//! every node built by its kind and every literal converted to its parameter's type — all before a line runs.

use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::path::Path;
use std::sync::Arc;

use petgraph::algo::tarjan_scc;
use petgraph::graph::DiGraph;

use crate::error::{FlowError, Problem};
use crate::load::VariantSelection;
use crate::model::{FlowDef, InputValue, NodeDef};
use crate::node::{BuildContext, Node, NodeRegistry, Signature};
use crate::value::Value;

/// Options for loading a flow.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// `--variant '${node.variant_id}'`.
    pub variant: Option<VariantSelection>,
    /// The `__init__` arguments of a flex flow's class entry (`--init`, a run's `init:`).
    pub init: Option<crate::value::Map>,
}

/// A node ready to run, with its inputs resolved against the graph.
#[derive(Debug)]
pub struct PlannedNode {
    pub def: NodeDef,
    pub node: Arc<dyn Node>,
    pub signature: Signature,
    /// The inputs passed on each call (literals already converted, consumed ones removed).
    pub inputs: Vec<(String, InputValue)>,
    /// Indices (into [`Flow::nodes`]) of the nodes this one waits for.
    pub deps: Vec<usize>,
    /// The longest chain of dependencies before this node (0 for a node that needs none).
    pub level: usize,
}

/// A loaded, checked flow: the nodes in a stable topological order.
#[derive(Debug)]
pub struct Flow {
    pub def: FlowDef,
    /// All nodes, topologically sorted (stable: YAML order among ready nodes).
    pub nodes: Vec<PlannedNode>,
    /// Indices of the per-line nodes.
    pub line_nodes: Vec<usize>,
    /// Indices of the aggregation nodes.
    pub aggregation_nodes: Vec<usize>,
    /// Flow outputs, minus those that reference aggregation nodes.
    pub outputs: Vec<(String, InputValue)>,
    /// Values each line keeps for the aggregation nodes (references to flow inputs and line nodes).
    pub aggregation_refs: Vec<InputValue>,
    index: HashMap<String, usize>,
}

impl Flow {
    /// Loads, checks and builds the flow at `path` (a folder or a flow file).
    pub fn load(
        path: &Path,
        registry: &NodeRegistry,
        options: &LoadOptions,
    ) -> Result<Flow, FlowError> {
        let def =
            crate::load::load_flow_def_with(path, options.variant.as_ref(), options.init.as_ref())?;
        Flow::from_def(def, registry)
    }

    /// Checks and builds an already-read flow definition.
    pub fn from_def(mut def: FlowDef, registry: &NodeRegistry) -> Result<Flow, FlowError> {
        registry.apply_package_tools(&mut def);
        crate::flex::bind_signature(&mut def, registry);
        let mut problems = check_references(&def, registry);
        let order = match topological_order(&def) {
            Ok(order) => order,
            Err(p) => {
                problems.push(p);
                (0..def.nodes.len()).collect()
            }
        };
        let mut built = Vec::with_capacity(def.nodes.len());
        let cx = BuildContext { flow: &def };
        for &i in &order {
            let node = &def.nodes[i];
            let Some(kind) = registry.get(&node.kind) else {
                built.push(None);
                continue;
            };
            let _span =
                tracing::debug_span!("build", node = %node.name, kind = %node.kind).entered();
            match kind.build(node, &cx) {
                Ok(b) => match coerce_inputs(node, &b.signature) {
                    Ok(inputs) => built.push(Some((b, inputs))),
                    Err(mut ps) => {
                        problems.append(&mut ps);
                        built.push(None);
                    }
                },
                Err(e) => {
                    let mut p = Problem::new(
                        "ResolveToolError",
                        format!("tool load failed in `{}`: {}", node.name, e.message),
                    )
                    .node(&node.name);
                    p = match (&e.file, e.span) {
                        (Some(file), span) => {
                            p.file = Some(file.clone());
                            p.span = span;
                            p
                        }
                        (None, _) => p.at(node.source.as_ref().map_or(node.span, |s| s.span)),
                    };
                    if let Some(help) = &e.help {
                        p = p.help(help.clone());
                    }
                    problems.push(p);
                    built.push(None);
                }
            }
        }
        if !problems.is_empty() {
            problems.sort_by_key(|p| p.span.map(|s| (s.line, s.col)).unwrap_or((usize::MAX, 0)));
            return Err(FlowError::Invalid {
                file: def.file.clone(),
                text: def.source.clone(),
                problems,
            });
        }

        let index: HashMap<String, usize> = order
            .iter()
            .enumerate()
            .map(|(pos, &i)| (def.nodes[i].name.clone(), pos))
            .collect();
        let mut nodes: Vec<PlannedNode> = Vec::with_capacity(order.len());
        for (&i, b) in order.iter().zip(built) {
            let Some((b, inputs)) = b else {
                unreachable!("every node built when there are no problems")
            };
            let node_def = def.nodes[i].clone();
            let mut deps: Vec<usize> = node_def
                .dependencies()
                .filter_map(|(n, _)| index.get(n).copied())
                .collect();
            deps.sort_unstable();
            deps.dedup();
            let level = deps.iter().map(|&d| nodes[d].level + 1).max().unwrap_or(0);
            nodes.push(PlannedNode {
                def: node_def,
                node: b.node,
                signature: b.signature,
                inputs,
                deps,
                level,
            });
        }
        let line_nodes = (0..nodes.len())
            .filter(|&i| !nodes[i].def.aggregation)
            .collect();
        let aggregation_nodes: Vec<usize> = (0..nodes.len())
            .filter(|&i| nodes[i].def.aggregation)
            .collect();

        let mut outputs = vec![];
        for (name, out) in &def.outputs {
            if let Some(target) = out.reference.node_name()
                && index.get(target).is_some_and(|&i| nodes[i].def.aggregation)
            {
                tracing::warn!(output = %name, node = %target, "output references aggregation node `{target}`, so it will not take effect");
                continue;
            }
            outputs.push((name.clone(), out.reference.clone()));
        }

        let mut aggregation_refs: Vec<InputValue> = vec![];
        for &a in &aggregation_nodes {
            let n = &nodes[a];
            let values = n
                .inputs
                .iter()
                .map(|(_, v)| v)
                .chain(n.def.activate.iter().map(|a| &a.when));
            for v in values {
                let is_line_ref = match v {
                    InputValue::FlowInput(_) => true,
                    InputValue::NodeOutput { node, .. } => {
                        index.get(node).is_some_and(|&i| !nodes[i].def.aggregation)
                    }
                    InputValue::Literal(_) => false,
                };
                if is_line_ref && !aggregation_refs.contains(v) {
                    aggregation_refs.push(v.clone());
                }
            }
        }
        Ok(Flow {
            def,
            nodes,
            line_nodes,
            aggregation_nodes,
            outputs,
            aggregation_refs,
            index,
        })
    }

    /// The position of a node in [`Flow::nodes`].
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// Whether the flow has aggregation nodes.
    pub fn has_aggregation(&self) -> bool {
        !self.aggregation_nodes.is_empty()
    }

    /// A printable description of the plan, like a query planner's EXPLAIN.
    pub fn explain(&self) -> Explain<'_> {
        Explain(self)
    }
}

/// The plan of a flow, for `sluice flow plan`.
#[derive(Debug)]
pub struct Explain<'a>(&'a Flow);

impl fmt::Display for Explain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flow = self.0;
        writeln!(f, "flow `{}` ({})", flow.def.name, flow.def.file.display())?;
        let inputs: Vec<String> = flow
            .def
            .inputs
            .values()
            .map(|i| format!("{}: {}", i.name, i.ty))
            .collect();
        writeln!(
            f,
            "inputs: {}",
            if inputs.is_empty() {
                "none".into()
            } else {
                inputs.join(", ")
            }
        )?;
        for (phase, members) in [
            ("per line", &flow.line_nodes),
            ("aggregation, once after all lines", &flow.aggregation_nodes),
        ] {
            if members.is_empty() {
                continue;
            }
            writeln!(f, "\n{phase}:")?;
            let max_level = members
                .iter()
                .map(|&i| flow.nodes[i].level)
                .max()
                .unwrap_or(0);
            for level in 0..=max_level {
                let at: Vec<usize> = members
                    .iter()
                    .copied()
                    .filter(|&i| flow.nodes[i].level == level)
                    .collect();
                if at.is_empty() {
                    continue;
                }
                let note = if at.len() > 1 {
                    format!("  ({} run concurrently)", at.len())
                } else {
                    String::new()
                };
                writeln!(f, "  level {level}{note}")?;
                for &i in &at {
                    let n = &flow.nodes[i];
                    let mut line = format!("    {} [{}", n.def.name, n.def.kind);
                    if let Some(v) = &n.def.variant_id {
                        let _ = write!(line, ", variant {v}");
                    }
                    line.push(']');
                    if !n.deps.is_empty() {
                        let deps: Vec<&str> = n
                            .deps
                            .iter()
                            .map(|&d| flow.nodes[d].def.name.as_str())
                            .collect();
                        let _ = write!(line, " <- {}", deps.join(", "));
                    }
                    if let Some(a) = &n.def.activate {
                        let _ = write!(line, "  when {} == {}", a.when, a.is.py_repr());
                    }
                    writeln!(f, "{line}")?;
                }
            }
        }
        writeln!(f, "\noutputs:")?;
        for (name, v) in &flow.outputs {
            writeln!(f, "  {name} = {v}")?;
        }
        Ok(())
    }
}

/// §2.7: names, references, node types.
fn check_references(def: &FlowDef, registry: &NodeRegistry) -> Vec<Problem> {
    let mut problems = vec![];
    let mut seen: HashMap<&str, &NodeDef> = HashMap::new();
    for node in &def.nodes {
        if let Some(first) = seen.insert(&node.name, node) {
            problems.push(
                Problem::new(
                    "DuplicateNodeName",
                    format!(
                        "node name `{}` is used more than once (first at line {})",
                        node.name, first.span.line
                    ),
                )
                .node(&node.name)
                .at(node.span)
                .help("give each node a unique name"),
            );
        }
    }
    let aggregation: HashSet<&str> = def
        .nodes
        .iter()
        .filter(|n| n.aggregation)
        .map(|n| n.name.as_str())
        .collect();
    for node in &def.nodes {
        if registry.get(&node.kind).is_none() {
            problems.push(
                Problem::new(
                    "ResolveToolError",
                    format!("node `{}` has unknown type `{}`", node.name, node.kind),
                )
                .node(&node.name)
                .at(node.kind_span)
                .help(format!("known node types: {}", registry.names().join(", "))),
            );
        }
        let bindings = node.inputs.values().map(|b| (&b.value, b.span, false));
        let when = node.activate.iter().map(|a| (&a.when, a.when_span, true));
        for (value, span, is_when) in bindings.chain(when) {
            match value {
                InputValue::FlowInput(name) if !def.inputs.contains_key(name) => problems.push(
                    Problem::new(
                        "InputReferenceNotFound",
                        format!(
                            "node `{}` references flow input `{name}`, which is not defined",
                            node.name
                        ),
                    )
                    .node(&node.name)
                    .at(span)
                    .help(format!("flow inputs: {}", key_list(def.inputs.keys()))),
                ),
                InputValue::NodeOutput { node: target, .. } => {
                    if !seen.contains_key(target.as_str()) {
                        problems.push(
                            Problem::new(
                                "NodeReferenceNotFound",
                                format!(
                                    "node `{}` references node `{target}`, which does not exist",
                                    node.name
                                ),
                            )
                            .node(&node.name)
                            .at(span)
                            .help(format!(
                                "nodes: {}",
                                key_list(def.nodes.iter().map(|n| &n.name))
                            )),
                        );
                    } else if !node.aggregation && aggregation.contains(target.as_str()) {
                        problems.push(
                            Problem::new("InvalidNodeReference", format!("node `{}` runs per line but references aggregation node `{target}`, which runs once after all lines", node.name))
                                .node(&node.name)
                                .at(span)
                                .help("only aggregation nodes can use aggregation outputs"),
                        );
                    } else if node.aggregation && is_when && !aggregation.contains(target.as_str())
                    {
                        problems.push(
                            Problem::new("InvalidNodeReference", format!("the `activate.when` of aggregation node `{}` references per-line node `{target}`", node.name))
                                .node(&node.name)
                                .at(span)
                                .help("an aggregation node can only be activated by flow inputs or other aggregation nodes"),
                        );
                    }
                }
                _ => {}
            }
        }
    }
    for out in def.outputs.values() {
        match &out.reference {
            InputValue::FlowInput(name) if !def.inputs.contains_key(name) => problems.push(
                Problem::new(
                    "OutputReferenceNotFound",
                    format!(
                        "flow output `{}` references flow input `{name}`, which is not defined",
                        out.name
                    ),
                )
                .at(out.span),
            ),
            InputValue::NodeOutput { node, .. } if !seen.contains_key(node.as_str()) => problems
                .push(
                    Problem::new(
                        "OutputReferenceNotFound",
                        format!(
                            "flow output `{}` references node `{node}`, which does not exist",
                            out.name
                        ),
                    )
                    .at(out.span)
                    .help(format!(
                        "nodes: {}",
                        key_list(def.nodes.iter().map(|n| &n.name))
                    )),
                ),
            _ => {}
        }
    }
    problems
}

fn key_list<'a>(keys: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = keys.map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// promptflow's stable topological sort: repeatedly take the first node, in YAML order, whose
/// dependencies are all taken. A cycle is reported with the nodes on it.
fn topological_order(def: &FlowDef) -> Result<Vec<usize>, Problem> {
    let by_name: HashMap<&str, usize> = def
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    let deps: Vec<Vec<usize>> = def
        .nodes
        .iter()
        .map(|n| {
            n.dependencies()
                .filter_map(|(d, _)| by_name.get(d).copied())
                .collect()
        })
        .collect();
    let mut taken = vec![false; def.nodes.len()];
    let mut order = Vec::with_capacity(def.nodes.len());
    while order.len() < def.nodes.len() {
        let next = (0..def.nodes.len()).find(|&i| !taken[i] && deps[i].iter().all(|&d| taken[d]));
        match next {
            Some(i) => {
                taken[i] = true;
                order.push(i);
            }
            None => break,
        }
    }
    if order.len() == def.nodes.len() {
        return Ok(order);
    }
    let mut graph = DiGraph::<usize, ()>::new();
    let ids: Vec<_> = (0..def.nodes.len()).map(|i| graph.add_node(i)).collect();
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            graph.add_edge(ids[d], ids[i], ());
        }
    }
    let mut cycles: Vec<Vec<String>> = tarjan_scc(&graph)
        .into_iter()
        .filter(|c| c.len() > 1 || deps[graph[c[0]]].contains(&graph[c[0]]))
        .map(|c| {
            let mut names: Vec<String> = c
                .iter()
                .map(|&n| def.nodes[graph[n]].name.clone())
                .collect();
            names.sort();
            names
        })
        .collect();
    cycles.sort();
    let first = cycles
        .first()
        .and_then(|c| c.first())
        .and_then(|n| def.nodes.iter().find(|d| &d.name == n));
    let text: Vec<String> = cycles.iter().map(|c| c.join(", ")).collect();
    let mut p = Problem::new(
        "NodeCircularDependency",
        format!("nodes depend on each other in a cycle: {}", text.join("; ")),
    )
    .help("remove one of the references that closes the cycle");
    if let Some(n) = first {
        p = p.node(&n.name).at(n.span);
    }
    Err(p)
}

/// §3.3: drop empty literals, convert the rest to their parameters' types; reject unknown inputs.
fn coerce_inputs(
    node: &NodeDef,
    sig: &Signature,
) -> Result<Vec<(String, InputValue)>, Vec<Problem>> {
    let mut problems = vec![];
    let mut out = vec![];
    for (name, binding) in &node.inputs {
        if sig.consumed.contains(name) {
            continue;
        }
        let param = sig.params.get(name);
        if param.is_none() && !sig.accepts_kwargs {
            problems.push(
                Problem::new(
                    "NodeInputValidationError",
                    format!(
                        "node `{}` has input `{name}`, which its tool does not take",
                        node.name
                    ),
                )
                .node(&node.name)
                .at(binding.span)
                .help(format!(
                    "the tool's parameters: {}",
                    key_list(sig.params.keys())
                )),
            );
            continue;
        }
        match &binding.value {
            InputValue::Literal(Value::Null) => continue,
            InputValue::Literal(Value::String(s)) if s.is_empty() => continue,
            InputValue::Literal(v) => match param.and_then(|p| p.ty.as_ref()) {
                Some(ty) => match ty.parse(v.clone()) {
                    Ok(v) => out.push((name.clone(), InputValue::Literal(v))),
                    Err(e) => problems.push(
                        Problem::new(
                            "NodeInputValidationError",
                            format!("input `{name}` of node `{}`: {e}", node.name),
                        )
                        .node(&node.name)
                        .at(binding.span),
                    ),
                },
                None => out.push((name.clone(), binding.value.clone())),
            },
            other => out.push((name.clone(), other.clone())),
        }
    }
    for (name, param) in &sig.params {
        if param.required && !node.inputs.contains_key(name) && !sig.consumed.contains(name) {
            problems.push(
                Problem::new(
                    "NodeInputValidationError",
                    format!("node `{}` does not set required input `{name}`", node.name),
                )
                .node(&node.name)
                .at(node.span)
                .help(format!("add `{name}: ...` under the node's `inputs`")),
            );
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}
