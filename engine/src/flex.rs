//! Flex flows (`flow.flex.yaml`, §10) read as flows.
//!
//! A flex flow names a Python function or class as its `entry:` (`module:function`,
//! `module:ClassName`). It becomes a flow of one node of kind [`NODE_KIND`]: the node kind imports
//! the entry (making the class instance with the `init` arguments), and the planner takes the flow
//! inputs from the entry's signature unless the YAML declares them ([`bind_signature`]). A class
//! with `__aggregate__` gets a second, aggregation node of the same kind that turns the list of
//! line outputs into the run's metrics. Each line's output is the entry's return value: a dict (a
//! dataclass or TypedDict included) gives one flow output per key, anything else the single output
//! `output`.

use std::path::Path;
use std::sync::Arc;

use crate::error::{FlowError, Problem};
use crate::model::*;
use crate::node::NodeRegistry;
use crate::value::{Map, Value};
use crate::yaml::{Span, Yaml, YamlKind};

/// The node kind that runs a flex flow's entry.
pub const NODE_KIND: &str = "flex";

/// The `extra` key marking the node that runs `__aggregate__`.
pub const AGGREGATE_KEY: &str = "flex_aggregate";

/// The name of the node that runs `__aggregate__`.
pub const AGGREGATE_NODE: &str = "__aggregate__";

/// The keys a `flow.flex.yaml` may have.
const KEYS: &[&str] = &[
    "$schema",
    "entry",
    "name",
    "display_name",
    "description",
    "tags",
    "language",
    "path",
    "inputs",
    "outputs",
    "init",
    "sample",
    "environment_variables",
    "additional_includes",
    "environment",
];

/// What a flex flow's YAML says, checked, for the node kind that runs its entry.
#[derive(Clone, Debug)]
pub struct FlexDef {
    /// The entry's module, dotted (`pkg.mod`).
    pub module: String,
    /// The function or class in the module.
    pub attr: String,
    /// Where `entry:` is written.
    pub entry_span: Span,
    /// The `__init__` arguments of a class entry: given to the command, or else the sample's.
    pub init: Map,
    /// Where the init arguments come from, for error messages (`--init`, `sample.init`).
    pub init_from: String,
    /// The sample inputs, which `flow test` uses when it is given none.
    pub sample: Option<Map>,
    /// Whether `inputs:` is declared; otherwise the entry's signature gives them.
    pub declared_inputs: bool,
}

/// Whether `path` names a flex flow file.
pub fn is_flex(path: &Path) -> bool {
    path.file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|n| n == "flow.flex.yaml" || n == "flow.flex.yml")
}

/// Reads a flex flow into a one-node flow. `init` (from `--init` or a run's `init:`) replaces the
/// sample's init arguments.
pub(crate) fn load(
    file: &Path,
    text: Arc<str>,
    yaml: &Yaml,
    init: Option<&Map>,
) -> Result<FlowDef, FlowError> {
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut r = crate::prompty::Reader {
        problems: vec![],
        dir: &dir,
        code: "InvalidFlexFlowError",
    };
    let mut env = crate::load::Reader { problems: vec![] };
    let def = flow(&mut r, &mut env, file, &text, yaml, init);
    let mut problems = r.problems;
    problems.append(&mut env.problems);
    if problems.is_empty() {
        Ok(def)
    } else {
        Err(FlowError::Invalid {
            file: file.to_path_buf(),
            text,
            problems,
        })
    }
}

fn flow(
    r: &mut crate::prompty::Reader<'_>,
    env: &mut crate::load::Reader,
    file: &Path,
    text: &Arc<str>,
    yaml: &Yaml,
    init: Option<&Map>,
) -> FlowDef {
    let folder = r
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut def = FlowDef::empty(file, r.dir.to_path_buf(), text.clone(), folder);
    if !matches!(yaml.kind, YamlKind::Map(_)) {
        r.problem(
            format!(
                "the flow file must be a mapping, found {}",
                yaml.type_name()
            ),
            yaml.span,
        );
        return def;
    }
    if let YamlKind::Map(entries) = &yaml.kind {
        for (k, _) in entries {
            let key = k.key_string();
            if !KEYS.contains(&key.as_str()) {
                r.problem(format!("a flex flow has an unknown field `{key}`"), k.span)
                    .help = Some(format!("the fields are: {}", KEYS.join(", ")));
            }
        }
    }
    if let Some(name) = yaml.get("name").and_then(Yaml::as_str) {
        def.name = name.to_owned();
    }
    let start = Span { line: 1, col: 1 };
    let Some((module, attr, entry_span)) = entry(r, yaml) else {
        return def;
    };

    let sample = yaml.get("sample").filter(|s| !s.is_null()).and_then(|s| {
        let at = s.span;
        r.sample(s).map(|m| (m, at))
    });
    // `sample` is `{inputs: ..., init: ...}`; a sample of plain input values is read as inputs.
    let (sample_inputs, sample_init) = match sample {
        Some((m, at)) if m.contains_key("inputs") || m.contains_key("init") => {
            let part = |r: &mut crate::prompty::Reader<'_>, key: &str| match m.get(key) {
                None | Some(Value::Null) => None,
                Some(Value::Map(v)) => Some(v.clone()),
                Some(other) => {
                    r.problem(
                        format!(
                            "`sample.{key}` must be a mapping, found {}",
                            other.type_name()
                        ),
                        at,
                    );
                    None
                }
            };
            (part(r, "inputs"), part(r, "init"))
        }
        Some((m, _)) => (Some(m), None),
        None => (None, None),
    };

    let declared_inputs = match yaml.get("inputs").filter(|i| !i.is_null()) {
        Some(inputs) => {
            r.inputs(inputs, &mut def);
            true
        }
        None => false,
    };
    if let Some(i) = yaml.get("init").filter(|i| !i.is_null())
        && !matches!(i.kind, YamlKind::Map(_))
    {
        r.problem(
            format!("`init` must be a mapping, found {}", i.type_name()),
            i.span,
        );
    }
    if let Some(vars) = yaml.get("environment_variables").filter(|v| !v.is_null()) {
        def.environment_variables = env.environment_variables(vars, r.dir);
    }
    if let Some(includes) = yaml.get("additional_includes") {
        def.additional_includes = match includes.to_value() {
            Value::List(items) => items.iter().map(Value::py_str).collect(),
            _ => vec![],
        };
    }

    let (init, init_from) = match (init, sample_init) {
        (Some(given), _) => (given.clone(), "the init arguments".to_owned()),
        (None, Some(s)) => (s, "`sample.init`".to_owned()),
        (None, None) => (Map::new(), String::new()),
    };
    let node_span = entry_span;
    def.outputs.insert(
        "output".into(),
        OutputDef {
            name: "output".into(),
            ty: ValueType::Object,
            reference: InputValue::NodeOutput {
                node: attr.clone(),
                path: vec![],
            },
            is_chat_output: false,
            evaluation_only: false,
            span: yaml.get("outputs").map_or(start, |o| o.span),
        },
    );
    let inputs = def
        .inputs
        .iter()
        .map(|(k, i)| {
            (
                k.clone(),
                InputBinding {
                    value: InputValue::FlowInput(k.clone()),
                    span: i.span,
                },
            )
        })
        .collect();
    def.nodes
        .push(entry_node(&attr, &module, node_span, inputs));
    def.flex = Some(Arc::new(FlexDef {
        module,
        attr,
        entry_span,
        init,
        init_from,
        sample: sample_inputs,
        declared_inputs,
    }));
    def
}

/// `entry: module:attr`, checked.
fn entry(r: &mut crate::prompty::Reader<'_>, yaml: &Yaml) -> Option<(String, String, Span)> {
    let Some(e) = yaml.get("entry") else {
        r.problem(
            "a flex flow needs `entry: <module>:<function or class>`",
            yaml.span,
        )
        .help = Some("e.g. `entry: flow:my_flow` for `def my_flow(...)` in flow.py".into());
        return None;
    };
    let text = e.as_str().unwrap_or_default().trim();
    let ident = |s: &str, dots: bool| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || (dots && c == '.'))
    };
    match text.split_once(':') {
        Some((module, attr)) if ident(module, true) && ident(attr, false) => {
            Some((module.to_owned(), attr.to_owned(), e.span))
        }
        _ => {
            r.problem(
                format!(
                    "`entry` is {}; it must be `<module>:<function or class>`",
                    e.to_value().py_repr()
                ),
                e.span,
            )
            .help = Some(
                "e.g. `entry: flow:my_flow` for `def my_flow(...)` in flow.py, or `entry: flow:MyFlow` for a class"
                    .into(),
            );
            None
        }
    }
}

fn entry_node(
    attr: &str,
    module: &str,
    span: Span,
    inputs: indexmap::IndexMap<String, InputBinding>,
) -> NodeDef {
    NodeDef {
        name: attr.to_owned(),
        span,
        kind: NODE_KIND.into(),
        kind_span: span,
        source: Some(SourceDef {
            ty: NODE_KIND.into(),
            path: Some(module.to_owned()),
            tool: None,
            span,
        }),
        inputs,
        activate: None,
        aggregation: false,
        use_variants: false,
        connection: None,
        connection_span: None,
        api: None,
        provider: None,
        module: None,
        variant_id: None,
        extra: Map::new(),
    }
}

/// Builds the entry once to learn its signature: the flow inputs (unless declared) and the entry
/// node's inputs come from its parameters, and a class with `__aggregate__` gets the aggregation
/// node. A build that fails is left for the planner to report.
pub(crate) fn bind_signature(def: &mut FlowDef, registry: &NodeRegistry) {
    let Some(flex) = def.flex.clone() else { return };
    let Some(kind) = registry.get(NODE_KIND) else {
        return;
    };
    let Some(node) = def.nodes.first() else {
        return;
    };
    let built = match kind.build(node, &crate::node::BuildContext { flow: def }) {
        Ok(b) => b,
        Err(_) => return,
    };
    let sig = built.signature;
    if !flex.declared_inputs {
        for (name, param) in &sig.params {
            let default = sig
                .defaults
                .get(name)
                .cloned()
                .or_else(|| param.has_default.then_some(Value::Null));
            def.inputs.insert(
                name.clone(),
                InputDef {
                    name: name.clone(),
                    ty: param.ty.clone().unwrap_or(ValueType::Object),
                    default,
                    description: None,
                    is_chat_input: false,
                    is_chat_history: None,
                    span: flex.entry_span,
                },
            );
        }
    }
    let entry = &mut def.nodes[0];
    for name in def.inputs.keys() {
        if sig.accepts_kwargs || sig.params.contains_key(name) {
            entry.inputs.insert(
                name.clone(),
                InputBinding {
                    value: InputValue::FlowInput(name.clone()),
                    span: def.inputs[name].span,
                },
            );
        }
    }
    if sig.aggregates {
        let mut agg = entry_node(
            AGGREGATE_NODE,
            &flex.module,
            flex.entry_span,
            [(
                "line_results".to_owned(),
                InputBinding {
                    value: InputValue::NodeOutput {
                        node: flex.attr.clone(),
                        path: vec![],
                    },
                    span: flex.entry_span,
                },
            )]
            .into_iter()
            .collect(),
        );
        agg.aggregation = true;
        agg.extra.insert(AGGREGATE_KEY.into(), Value::Bool(true));
        def.nodes.push(agg);
    }
}

/// The problem of a `--variant` given for a flex flow, which has none.
pub(crate) fn no_variants(variant: &str) -> Problem {
    Problem::new(
        "InvalidFlowError",
        format!("variant `{variant}` was asked for, but a flex flow has no variants"),
    )
    .help("leave out `--variant`")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str, init: Option<&Map>) -> Result<FlowDef, FlowError> {
        let yaml = Yaml::parse(text).unwrap();
        load(
            Path::new("/flows/f/flow.flex.yaml"),
            text.into(),
            &yaml,
            init,
        )
    }

    #[test]
    fn an_entry_becomes_one_node_and_the_sample_splits_into_inputs_and_init() {
        let def = load_text(
            "entry: pkg.mod:Judge\nsample:\n  inputs: {q: hi}\n  init: {k: 1}\n",
            None,
        )
        .unwrap();
        let flex = def.flex.as_ref().unwrap();
        assert_eq!(
            (flex.module.as_str(), flex.attr.as_str()),
            ("pkg.mod", "Judge")
        );
        assert_eq!(flex.init.get("k"), Some(&Value::Int(1)));
        assert_eq!(
            flex.sample.as_ref().unwrap().get("q"),
            Some(&Value::from("hi"))
        );
        assert_eq!(def.nodes.len(), 1);
        assert_eq!(def.nodes[0].kind, NODE_KIND);
        assert!(!flex.declared_inputs);
    }

    #[test]
    fn given_init_replaces_the_samples_and_a_plain_sample_is_inputs() {
        let given: Map = [("k".to_owned(), Value::Int(2))].into_iter().collect();
        let def = load_text("entry: m:f\nsample: {q: hi}\n", Some(&given)).unwrap();
        let flex = def.flex.as_ref().unwrap();
        assert_eq!(flex.init.get("k"), Some(&Value::Int(2)));
        assert_eq!(
            flex.sample.as_ref().unwrap().get("q"),
            Some(&Value::from("hi"))
        );
    }

    #[test]
    fn a_malformed_entry_is_refused_where_it_is_written() {
        for text in [
            "entry: m.f\n",
            "entry: 'm:f:g'\n",
            "entry: ':f'\n",
            "name: x\n",
        ] {
            let Err(FlowError::Invalid { problems, .. }) = load_text(text, None) else {
                panic!("{text} was accepted");
            };
            assert_eq!(problems[0].code, "InvalidFlexFlowError", "{text}");
        }
        let Err(FlowError::Invalid { problems, .. }) = load_text("# c\nentry: 3\n", None) else {
            panic!("accepted");
        };
        assert_eq!(problems[0].span, Some(Span { line: 2, col: 8 }));
    }
}
