//! Finding and reading a flow: `flow.dag.yaml` into a [`FlowDef`], variants applied.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;

use crate::error::{FlowError, Problem};
use crate::model::*;
use crate::value::Value;
use crate::yaml::{Span, Yaml, YamlKind};

const FLOW_FILES: [&str; 4] = [
    "flow.dag.yaml",
    "flow.dag.yml",
    "flow.flex.yaml",
    "flow.flex.yml",
];

/// The keys promptflow's schema knows at the top of a flow, on a node, a flow input and a flow output;
/// any other key is a mistake (`output:` for `outputs:`) and reported as one.
const TOP_LEVEL_KEYS: &[&str] = &[
    "$schema",
    "id",
    "name",
    "description",
    "display_name",
    "tags",
    "language",
    "inputs",
    "outputs",
    "nodes",
    "node_variants",
    "environment",
    "environment_variables",
    "additional_includes",
    "message_format",
    "tools",
];
const NODE_KEYS: &[&str] = &[
    "name",
    "type",
    "source",
    "inputs",
    "connection",
    "api",
    "provider",
    "module",
    "activate",
    "aggregation",
    "reduce",
    "use_variants",
    "enable_cache",
    "comment",
    "tool",
    "description",
];
const INPUT_KEYS: &[&str] = &[
    "type",
    "default",
    "description",
    "enum",
    "is_chat_input",
    "is_chat_history",
];
const OUTPUT_KEYS: &[&str] = &[
    "type",
    "reference",
    "description",
    "is_chat_output",
    "evaluation_only",
];

/// The known word closest to `word` (edit distance at most 2, or one contains the other).
fn closest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
                prev = cur;
            }
        }
        row[b.len()]
    }
    let lower = word.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (distance(&lower, k), *k))
        .filter(|(d, k)| *d <= 2 || (lower.len() > 3 && (k.contains(&lower) || lower.contains(k))))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Finds the flow file for a `--flow` argument: a folder holding one of `flow.dag.yaml`/`.yml` and
/// `flow.flex.yaml`/`.yml` (or else exactly one `.prompty`), or the file.
pub fn locate_flow(path: &Path) -> Result<PathBuf, FlowError> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if path.is_dir() {
        if !FLOW_FILES.iter().any(|f| path.join(f).is_file()) {
            let prompty: Vec<PathBuf> = std::fs::read_dir(path)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| crate::prompty::is_prompty(p) && p.is_file())
                .collect();
            match prompty.as_slice() {
                [one] => return Ok(one.clone()),
                [] => {}
                _ => {
                    let mut files: Vec<String> = prompty
                        .iter()
                        .filter_map(|p| p.file_name())
                        .map(|n| n.to_string_lossy().into_owned())
                        .collect();
                    files.sort();
                    return Err(FlowError::Ambiguous {
                        dir: path.to_path_buf(),
                        files,
                    });
                }
            }
        }
        let found: Vec<String> = FLOW_FILES
            .iter()
            .filter(|f| path.join(f).is_file())
            .map(|f| f.to_string())
            .collect();
        return match found.len() {
            0 => Err(FlowError::NotFound {
                path: path.to_path_buf(),
            }),
            1 => Ok(path.join(&found[0])),
            _ => Err(FlowError::Ambiguous {
                dir: path.to_path_buf(),
                files: found,
            }),
        };
    }
    Err(FlowError::NotFound {
        path: path.to_path_buf(),
    })
}

/// A `--variant '${node.variant_id}'` selection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VariantSelection {
    pub node: String,
    pub variant: String,
}

impl VariantSelection {
    /// Parses `${node.variant_id}`.
    pub fn parse(text: &str) -> Option<Self> {
        let inner = text.trim().strip_prefix("${")?.strip_suffix('}')?;
        let (node, variant) = inner.split_once('.')?;
        (!node.is_empty() && !variant.is_empty()).then(|| VariantSelection {
            node: node.to_owned(),
            variant: variant.to_owned(),
        })
    }
}

/// Reads and checks the shape of a flow file. Reference and graph checks happen in [`crate::plan`].
pub fn load_flow_def(
    path: &Path,
    variant: Option<&VariantSelection>,
) -> Result<FlowDef, FlowError> {
    load_flow_def_with(path, variant, None)
}

/// [`load_flow_def`] with the `__init__` arguments of a flex flow's class entry.
pub fn load_flow_def_with(
    path: &Path,
    variant: Option<&VariantSelection>,
    init: Option<&crate::value::Map>,
) -> Result<FlowDef, FlowError> {
    let file = locate_flow(path)?;
    let file = std::path::absolute(&file).unwrap_or(file);
    let text: Arc<str> = std::fs::read_to_string(&file)
        .map_err(|source| FlowError::Io {
            path: file.clone(),
            source,
        })?
        .into();
    if crate::prompty::is_prompty(&file) {
        if let Some(sel) = variant {
            return Err(FlowError::Invalid {
                file,
                text,
                problems: vec![
                    Problem::new(
                        "InvalidFlowError",
                        format!(
                            "variant `${{{}.{}}}` was asked for, but a prompty file has no variants",
                            sel.node, sel.variant
                        ),
                    )
                    .help("leave out `--variant`"),
                ],
            });
        }
        return crate::prompty::load(&file, text);
    }
    let yaml = Yaml::parse(&text).map_err(|source| FlowError::Yaml {
        file: file.clone(),
        span: source.span,
        text: text.clone(),
        source,
    })?;
    // Any YAML with a top-level `entry:` is a flex flow, whatever its name.
    if crate::flex::is_flex(&file) || yaml.get("entry").is_some() {
        if let Some(sel) = variant {
            return Err(FlowError::Invalid {
                file,
                text,
                problems: vec![crate::flex::no_variants(&format!(
                    "${{{}.{}}}",
                    sel.node, sel.variant
                ))],
            });
        }
        return crate::flex::load(&file, text, &yaml, init);
    }
    let mut reader = Reader { problems: vec![] };
    let def = reader.flow(&file, text.clone(), &yaml, variant);
    if reader.problems.is_empty() {
        Ok(def)
    } else {
        Err(FlowError::Invalid {
            file,
            text,
            problems: reader.problems,
        })
    }
}

pub(crate) struct Reader {
    pub(crate) problems: Vec<Problem>,
}

impl Reader {
    fn problem(&mut self, p: Problem) {
        self.problems.push(p);
    }

    fn flow(
        &mut self,
        file: &Path,
        source: Arc<str>,
        yaml: &Yaml,
        variant: Option<&VariantSelection>,
    ) -> FlowDef {
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let folder_name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut def = FlowDef::empty(file, dir, source, folder_name);
        if !matches!(yaml.kind, YamlKind::Map(_)) {
            self.problem(
                Problem::new(
                    "InvalidFlowError",
                    format!(
                        "the flow file must be a mapping, found {}",
                        yaml.type_name()
                    ),
                )
                .at(yaml.span),
            );
            return def;
        }
        self.unknown_keys(yaml, TOP_LEVEL_KEYS, "a flow", None);
        if let Some(name) = yaml.get("name").and_then(Yaml::as_str) {
            def.name = name.to_owned();
        }
        if let Some(inputs) = yaml.get("inputs") {
            for (key, value) in self.mapping(inputs, "inputs") {
                if let Some(input) = self.input(key, value) {
                    def.inputs.insert(input.name.clone(), input);
                }
            }
        }
        if let Some(outputs) = yaml.get("outputs") {
            for (key, value) in self.mapping(outputs, "outputs") {
                if let Some(output) = self.output(key, value) {
                    def.outputs.insert(output.name.clone(), output);
                }
            }
        }
        let variants_yaml = yaml.get("node_variants").filter(|v| !v.is_null());
        if let Some(vs) = variants_yaml {
            for (key, value) in self.mapping(vs, "node_variants") {
                if let Some(v) = self.variants(key, value) {
                    def.node_variants.insert(key.key_string(), v);
                }
            }
        }
        if let Some(sel) = variant {
            match def.node_variants.get(&sel.node) {
                None => self.problem(
                    Problem::new(
                        "InvalidFlowError",
                        format!(
                            "variant `${{{}.{}}}` names node `{}`, which has no variants",
                            sel.node, sel.variant, sel.node
                        ),
                    )
                    .help(format!(
                        "nodes with variants: {}",
                        names_or_none(def.node_variants.keys())
                    )),
                ),
                Some(v) if !v.ids.contains(&sel.variant) => self.problem(
                    Problem::new(
                        "InvalidFlowError",
                        format!("node `{}` has no variant `{}`", sel.node, sel.variant),
                    )
                    .at(v.span)
                    .help(format!("its variants: {}", v.ids.join(", "))),
                ),
                Some(_) => {}
            }
        }
        match yaml.get("nodes") {
            None => {}
            Some(nodes) => match &nodes.kind {
                YamlKind::Seq(items) => {
                    for item in items {
                        if let Some(node) = self.node(item, None) {
                            def.nodes.push(node);
                        }
                    }
                }
                YamlKind::Null => {}
                _ => self.problem(
                    Problem::new(
                        "InvalidFlowError",
                        format!("`nodes` must be a list, found {}", nodes.type_name()),
                    )
                    .at(nodes.span),
                ),
            },
        }
        // Swap each `use_variants` node for its chosen variant, wholesale (§2.6).
        for i in 0..def.nodes.len() {
            if !def.nodes[i].use_variants {
                continue;
            }
            let base = def.nodes[i].clone();
            let Some(variants) = def.node_variants.get(&base.name) else {
                if variants_yaml.and_then(|v| v.get(&base.name)).is_some() {
                    continue; // its entry is there but invalid, and already reported
                }
                self.problem(
                    Problem::new("InvalidFlowError", format!("node `{}` uses variants but `node_variants` has none for it", base.name))
                        .node(&base.name)
                        .at(base.span)
                        .help(format!("add `node_variants: {{{}: {{default_variant_id: ..., variants: ...}}}}` or remove `use_variants`", base.name)),
                );
                continue;
            };
            let chosen = match variant {
                Some(sel) if sel.node == base.name => sel.variant.clone(),
                _ => variants.default_variant_id.clone(),
            };
            let node_yaml = variants_yaml
                .and_then(|v| v.get(&base.name))
                .and_then(|v| v.get("variants"))
                .and_then(|v| v.get(&chosen))
                .and_then(|v| v.get("node"));
            let Some(node_yaml) = node_yaml else { continue };
            if let Some(mut node) = self.node(node_yaml, Some(&base.name)) {
                node.variant_id = Some(chosen.clone());
                node.use_variants = false;
                def.selected_variants.insert(base.name.clone(), chosen);
                def.nodes[i] = node;
            }
        }
        if let Some(env) = yaml.get("environment_variables") {
            def.environment_variables = self.environment_variables(env, &def.dir);
        }
        if let Some(format) = yaml.get("message_format") {
            match format.as_str().and_then(crate::image::MessageFormat::parse) {
                Some(f) => def.message_format = f,
                None => self.problem(
                    Problem::new(
                        "InvalidMessageFormatType",
                        format!(
                            "Invalid message format '{}'. Supported message formats are ['basic', 'openai-vision'].",
                            format.to_value().py_str()
                        ),
                    )
                    .at(format.span)
                    .help("set `message_format: basic` (promptflow's image dicts) or `message_format: openai-vision` (OpenAI's content parts), or leave it out"),
                ),
            }
        }
        if let Some(includes) = yaml.get("additional_includes")
            && let YamlKind::Seq(items) = &includes.kind
        {
            def.additional_includes = items.iter().map(Yaml::key_string).collect();
        }
        def
    }

    /// Reports every key of `yaml` (a mapping) that is not in `known`, with the closest known key.
    fn unknown_keys(&mut self, yaml: &Yaml, known: &[&str], owner: &str, node: Option<&str>) {
        let YamlKind::Map(entries) = &yaml.kind else {
            return;
        };
        for (key, _) in entries {
            let k = key.key_string();
            if known.contains(&k.as_str()) {
                continue;
            }
            let mut p = Problem::new(
                "UnknownField",
                format!("{owner} has an unknown field `{k}`"),
            )
            .at(key.span);
            if let Some(n) = node {
                p = p.node(n);
            }
            p = match closest(&k, known) {
                Some(c) => p.help(format!("did you mean `{c}`?")),
                None => p.help(format!("the fields are: {}", known.join(", "))),
            };
            self.problem(p);
        }
    }

    fn mapping<'y>(&mut self, yaml: &'y Yaml, what: &str) -> Vec<(&'y Yaml, &'y Yaml)> {
        match &yaml.kind {
            YamlKind::Map(entries) => entries.iter().map(|(k, v)| (k, v)).collect(),
            YamlKind::Null => vec![],
            _ => {
                self.problem(
                    Problem::new(
                        "InvalidFlowError",
                        format!("`{what}` must be a mapping, found {}", yaml.type_name()),
                    )
                    .at(yaml.span),
                );
                vec![]
            }
        }
    }

    fn value_type(
        &mut self,
        owner: &str,
        yaml: Option<&Yaml>,
        at: Span,
        required: bool,
    ) -> Option<ValueType> {
        let Some(t) = yaml else {
            if required {
                self.problem(
                    Problem::new("InvalidFlowError", format!("{owner} has no `type`"))
                        .at(at)
                        .help("add `type: string` (or int, double, bool, list, object, image)"),
                );
                return None;
            }
            return Some(ValueType::String);
        };
        match t.as_str().and_then(ValueType::from_name) {
            Some(ty) => Some(ty),
            None => {
                self.problem(
                    Problem::new(
                        "InvalidFlowError",
                        format!("{owner} has unknown type {}", t.to_value().py_repr()),
                    )
                    .at(t.span)
                    .help("use one of: string, int, double, bool, list, object, image"),
                );
                None
            }
        }
    }

    fn input(&mut self, key: &Yaml, value: &Yaml) -> Option<InputDef> {
        let name = key.key_string();
        let owner = format!("flow input `{name}`");
        self.unknown_keys(value, INPUT_KEYS, &owner, None);
        let ty = self.value_type(&owner, value.get("type"), key.span, true)?;
        Some(InputDef {
            default: value
                .get("default")
                .map(Yaml::to_value)
                .filter(|v| !v.is_null()),
            description: value
                .get("description")
                .and_then(Yaml::as_str)
                .map(str::to_owned),
            is_chat_input: value
                .get("is_chat_input")
                .and_then(Yaml::as_bool)
                .unwrap_or(false),
            is_chat_history: value.get("is_chat_history").and_then(Yaml::as_bool),
            ty,
            name,
            span: key.span,
        })
    }

    fn output(&mut self, key: &Yaml, value: &Yaml) -> Option<OutputDef> {
        let name = key.key_string();
        let owner = format!("flow output `{name}`");
        self.unknown_keys(value, OUTPUT_KEYS, &owner, None);
        let ty = self.value_type(&owner, value.get("type"), key.span, false)?;
        let reference = match value.get("reference") {
            None => None,
            Some(r) if r.is_null() || r.as_str() == Some("") => None,
            Some(r) => Some(r),
        };
        let Some(reference) = reference else {
            self.problem(
                Problem::new(
                    "EmptyOutputReference",
                    format!("flow output `{name}` has no reference"),
                )
                .at(key.span)
                .help("add `reference: ${<node>.output}`"),
            );
            return None;
        };
        let parsed = match parse_input_value(reference.to_value()) {
            Ok(v) => v,
            Err(e) => {
                self.problem(Problem::new("InvalidReference", e.to_string()).at(reference.span));
                return None;
            }
        };
        Some(OutputDef {
            name,
            ty,
            reference: parsed,
            is_chat_output: value
                .get("is_chat_output")
                .and_then(Yaml::as_bool)
                .unwrap_or(false),
            evaluation_only: value
                .get("evaluation_only")
                .and_then(Yaml::as_bool)
                .unwrap_or(false),
            span: reference.span,
        })
    }

    fn variants(&mut self, key: &Yaml, value: &Yaml) -> Option<Variants> {
        let node = key.key_string();
        let ids: Vec<String> = match value.get("variants").map(|v| &v.kind) {
            Some(YamlKind::Map(entries)) => entries.iter().map(|(k, _)| k.key_string()).collect(),
            _ => {
                self.problem(
                    Problem::new(
                        "InvalidFlowError",
                        format!("`node_variants.{node}` has no `variants` mapping"),
                    )
                    .at(key.span),
                );
                return None;
            }
        };
        let default = value.get("default_variant_id").map(Yaml::key_string);
        let default_variant_id = match default {
            Some(d) if ids.contains(&d) => d,
            Some(d) => {
                self.problem(
                    Problem::new(
                        "InvalidFlowError",
                        format!(
                            "default variant `{d}` of node `{node}` is not one of its variants"
                        ),
                    )
                    .at(value.get("default_variant_id").map_or(key.span, |v| v.span))
                    .help(format!("its variants: {}", ids.join(", "))),
                );
                return None;
            }
            None => {
                self.problem(
                    Problem::new(
                        "InvalidFlowError",
                        format!("`node_variants.{node}` has no `default_variant_id`"),
                    )
                    .at(key.span),
                );
                return None;
            }
        };
        Some(Variants {
            default_variant_id,
            ids,
            span: key.span,
        })
    }

    /// Reads a node mapping; `name` is given for a variant body, which has none of its own.
    fn node(&mut self, yaml: &Yaml, name: Option<&str>) -> Option<NodeDef> {
        let YamlKind::Map(entries) = &yaml.kind else {
            self.problem(
                Problem::new(
                    "InvalidFlowError",
                    format!("a node must be a mapping, found {}", yaml.type_name()),
                )
                .at(yaml.span),
            );
            return None;
        };
        let name = match name {
            Some(n) => n.to_owned(),
            None => match yaml.get("name").and_then(Yaml::as_str) {
                Some(n) if !n.is_empty() => n.to_owned(),
                _ => {
                    self.problem(
                        Problem::new("InvalidFlowError", "a node has no `name`")
                            .at(yaml.span)
                            .help("add `name: <node name>`"),
                    );
                    return None;
                }
            },
        };
        self.unknown_keys(yaml, NODE_KEYS, &format!("node `{name}`"), Some(&name));
        let use_variants = yaml
            .get("use_variants")
            .and_then(Yaml::as_bool)
            .unwrap_or(false);
        let (kind, kind_span) = match yaml.entry("type") {
            Some((_, v)) => (v.key_string().to_ascii_lowercase(), v.span),
            None if use_variants => (String::new(), yaml.span),
            None => {
                self.problem(
                    Problem::new("InvalidFlowError", format!("node `{name}` has no `type`"))
                        .node(&name)
                        .at(yaml.span)
                        .help("add `type: python` (or prompt, llm)"),
                );
                return None;
            }
        };
        let source = yaml.get("source").and_then(|s| match &s.kind {
            YamlKind::Map(_) => Some(SourceDef {
                ty: s
                    .get("type")
                    .map(Yaml::key_string)
                    .unwrap_or_else(|| "code".into()),
                path: s.get("path").map(Yaml::key_string),
                tool: s.get("tool").map(Yaml::key_string),
                span: s.get("path").or(s.get("tool")).map_or(s.span, |p| p.span),
            }),
            _ => None,
        });
        let mut inputs = IndexMap::new();
        if let Some(ins) = yaml.get("inputs") {
            for (k, v) in self.mapping(ins, &format!("inputs of node `{name}`")) {
                match parse_input_value(v.to_value()) {
                    Ok(value) => {
                        inputs.insert(
                            k.key_string(),
                            InputBinding {
                                value,
                                span: v.span,
                            },
                        );
                    }
                    Err(e) => self.problem(
                        Problem::new("InvalidReference", e.to_string())
                            .node(&name)
                            .at(v.span)
                            .help(
                                "reference a node's output as ${node.output} or ${node.output.key}",
                            ),
                    ),
                }
            }
        }
        let activate = match yaml.entry("activate") {
            None => None,
            Some((key, a)) => {
                let when = a.entry("when");
                let is = a.get("is");
                match (when, is) {
                    (Some((_, when)), Some(is)) => match parse_input_value(when.to_value()) {
                        Ok(w) => Some(Activate {
                            when: w,
                            when_span: when.span,
                            is: is.to_value(),
                            span: key.span,
                        }),
                        Err(e) => {
                            self.problem(
                                Problem::new("InvalidReference", e.to_string())
                                    .node(&name)
                                    .at(when.span),
                            );
                            None
                        }
                    },
                    _ => {
                        self.problem(
                            Problem::new("FlowDefinitionError", format!("the definition of activate config for node `{name}` is incorrect: it needs both `when` and `is`"))
                                .node(&name)
                                .at(key.span)
                                .help("write `activate: {when: ${inputs.x}, is: <value>}`"),
                        );
                        None
                    }
                }
            }
        };
        let known = [
            "name",
            "type",
            "source",
            "inputs",
            "activate",
            "aggregation",
            "reduce",
            "use_variants",
            "connection",
            "api",
            "provider",
            "module",
        ];
        let extra = entries
            .iter()
            .filter(|(k, _)| !known.contains(&k.key_string().as_str()))
            .map(|(k, v)| (k.key_string(), v.to_value()))
            .collect();
        let flag = |key: &str| yaml.get(key).and_then(Yaml::as_bool).unwrap_or(false);
        let text = |key: &str| yaml.get(key).filter(|v| !v.is_null()).map(Yaml::key_string);
        Some(NodeDef {
            span: yaml.get("name").map_or(yaml.span, |n| n.span),
            kind,
            kind_span,
            source,
            inputs,
            activate,
            aggregation: flag("aggregation") || flag("reduce"),
            use_variants,
            connection: text("connection"),
            connection_span: yaml.get("connection").map(|c| c.span),
            api: text("api"),
            provider: text("provider"),
            module: text("module"),
            variant_id: None,
            extra,
            name,
        })
    }

    pub(crate) fn environment_variables(
        &mut self,
        yaml: &Yaml,
        dir: &Path,
    ) -> IndexMap<String, String> {
        match &yaml.kind {
            YamlKind::Map(entries) => entries
                .iter()
                .map(|(k, v)| {
                    let value = match v.to_value() {
                        s @ Value::String(_) => s.py_str(),
                        v @ (Value::List(_) | Value::Map(_)) => crate::value::py_json_dumps(&v),
                        Value::Null => String::new(),
                        v => v.py_str(),
                    };
                    (k.key_string(), value)
                })
                .collect(),
            YamlKind::Str(path) => match std::fs::read_to_string(dir.join(path)) {
                Ok(text) => parse_dotenv(&text),
                Err(e) => {
                    self.problem(
                        Problem::new(
                            "InvalidFlowError",
                            format!("cannot read environment file `{path}`: {e}"),
                        )
                        .at(yaml.span),
                    );
                    IndexMap::new()
                }
            },
            _ => IndexMap::new(),
        }
    }
}

fn names_or_none<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let list: Vec<&str> = names.map(String::as_str).collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

/// Reads `KEY=VALUE` lines (comments and blank lines skipped, surrounding quotes removed).
fn parse_dotenv(text: &str) -> IndexMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("export ").unwrap_or(l).split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .unwrap_or(v);
            (k.trim().to_owned(), v.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_selection_parses() {
        assert_eq!(
            VariantSelection::parse("${summarize.variant_1}"),
            Some(VariantSelection {
                node: "summarize".into(),
                variant: "variant_1".into()
            })
        );
        assert_eq!(VariantSelection::parse("summarize.variant_1"), None);
    }

    #[test]
    fn the_closest_field_is_suggested() {
        assert_eq!(closest("output", TOP_LEVEL_KEYS), Some("outputs"));
        assert_eq!(closest("inptus", NODE_KEYS), Some("inputs"));
        assert_eq!(closest("activte", NODE_KEYS), Some("activate"));
        assert_eq!(closest("zzzzzz", NODE_KEYS), None);
    }

    #[test]
    fn dotenv_lines_parse() {
        let env = parse_dotenv("# c\nA=1\nexport B=\"two\"\n\n");
        assert_eq!(env.get("A").map(String::as_str), Some("1"));
        assert_eq!(env.get("B").map(String::as_str), Some("two"));
    }
}
