//! The flow model: what `flow.dag.yaml` says, typed, with the position of every part.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use indexmap::IndexMap;

use crate::value::{Map, PathStep, Value};
use crate::yaml::Span;

/// A DAG flow as written in its YAML, after the chosen variants replaced their base nodes.
#[derive(Clone, Debug)]
pub struct FlowDef {
    /// The flow file (`flow.dag.yaml`), absolute.
    pub file: PathBuf,
    /// The flow folder: the working directory of tools and the root of relative paths.
    pub dir: PathBuf,
    /// The YAML text, kept for error snippets.
    pub source: Arc<str>,
    /// `name:` or the folder name.
    pub name: String,
    pub inputs: IndexMap<String, InputDef>,
    pub outputs: IndexMap<String, OutputDef>,
    /// Nodes in YAML order.
    pub nodes: Vec<NodeDef>,
    /// Every tuning node's variants, by node name.
    pub node_variants: IndexMap<String, Variants>,
    /// The variant chosen for each node that uses variants.
    pub selected_variants: IndexMap<String, String>,
    pub environment_variables: IndexMap<String, String>,
    pub additional_includes: Vec<String>,
    /// How images are written in inputs and outputs (`message_format`).
    pub message_format: crate::image::MessageFormat,
    /// The front matter of a prompty file, when the flow is one (its single node runs it).
    pub prompty: Option<Arc<crate::prompty::PromptyDef>>,
    /// The entry of a flex flow, when the flow is one (its node runs the entry).
    pub flex: Option<Arc<crate::flex::FlexDef>>,
}

impl FlowDef {
    /// A flow read from `file` in `dir` with nothing in it yet, for a loader to fill.
    pub fn empty(file: &std::path::Path, dir: PathBuf, source: Arc<str>, name: String) -> FlowDef {
        FlowDef {
            file: file.to_path_buf(),
            dir,
            source,
            name,
            inputs: IndexMap::new(),
            outputs: IndexMap::new(),
            nodes: vec![],
            node_variants: IndexMap::new(),
            selected_variants: IndexMap::new(),
            environment_variables: IndexMap::new(),
            additional_includes: vec![],
            message_format: crate::image::MessageFormat::Basic,
            prompty: None,
            flex: None,
        }
    }
}

/// A flow input's declaration.
#[derive(Clone, Debug)]
pub struct InputDef {
    pub name: String,
    pub ty: ValueType,
    pub default: Option<Value>,
    pub description: Option<String>,
    pub is_chat_input: bool,
    pub is_chat_history: Option<bool>,
    pub span: Span,
}

/// A flow output's declaration.
#[derive(Clone, Debug)]
pub struct OutputDef {
    pub name: String,
    pub ty: ValueType,
    pub reference: InputValue,
    pub is_chat_output: bool,
    pub evaluation_only: bool,
    pub span: Span,
}

/// One node of the DAG.
#[derive(Clone, Debug)]
pub struct NodeDef {
    pub name: String,
    /// Where the node's mapping starts (its `- name:` line).
    pub span: Span,
    /// The YAML `type:`, lowercased.
    pub kind: String,
    pub kind_span: Span,
    pub source: Option<SourceDef>,
    pub inputs: IndexMap<String, InputBinding>,
    pub activate: Option<Activate>,
    pub aggregation: bool,
    pub use_variants: bool,
    pub connection: Option<String>,
    /// Where `connection:` is set.
    pub connection_span: Option<Span>,
    pub api: Option<String>,
    pub provider: Option<String>,
    pub module: Option<String>,
    /// The variant this node came from, when it uses variants.
    pub variant_id: Option<String>,
    /// Other keys, kept for node kinds that want them (e.g. `enable_cache`, `comment`).
    pub extra: Map,
}

impl NodeDef {
    /// Every node this node depends on: node references in its inputs and in `activate.when`.
    pub fn dependencies(&self) -> impl Iterator<Item = (&str, Span)> {
        let inputs = self
            .inputs
            .values()
            .filter_map(|b| b.value.node_name().map(|n| (n, b.span)));
        let activate = self
            .activate
            .iter()
            .filter_map(|a| a.when.node_name().map(|n| (n, a.when_span)));
        inputs.chain(activate)
    }
}

/// `source:` of a node.
#[derive(Clone, Debug)]
pub struct SourceDef {
    /// `code`, `package` or `package_with_prompt`.
    pub ty: String,
    pub path: Option<String>,
    pub tool: Option<String>,
    pub span: Span,
}

/// One node input: its value and where it is written.
#[derive(Clone, Debug)]
pub struct InputBinding {
    pub value: InputValue,
    pub span: Span,
}

/// `activate: {when, is}`.
#[derive(Clone, Debug)]
pub struct Activate {
    pub when: InputValue,
    pub when_span: Span,
    pub is: Value,
    pub span: Span,
}

/// A node's variants (`node_variants.<node>`).
#[derive(Clone, Debug)]
pub struct Variants {
    pub default_variant_id: String,
    pub ids: Vec<String>,
    pub span: Span,
}

/// The value of a node input, `activate.when` or an output reference.
#[derive(Clone, Debug, PartialEq)]
pub enum InputValue {
    /// Anything that is not a whole-string `${...}`.
    Literal(Value),
    /// `${inputs.x}` or `${flow.x}`.
    FlowInput(String),
    /// `${node}`, `${node.output}`, `${node.output.a['b'][0]}`.
    NodeOutput { node: String, path: Vec<PathStep> },
}

impl InputValue {
    /// The node this value refers to, if any.
    pub fn node_name(&self) -> Option<&str> {
        match self {
            InputValue::NodeOutput { node, .. } => Some(node),
            _ => None,
        }
    }
}

impl fmt::Display for InputValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InputValue::Literal(v) => write!(f, "{}", v.py_repr()),
            InputValue::FlowInput(name) => write!(f, "${{inputs.{name}}}"),
            InputValue::NodeOutput { node, path } => {
                write!(f, "${{{node}.output")?;
                for step in path {
                    write!(f, "{step}")?;
                }
                write!(f, "}}")
            }
        }
    }
}

/// Why a value cannot take a flow input's or a tool parameter's type.
#[derive(Debug, thiserror::Error)]
pub enum TypeError {
    #[error("value {value} does not match the expected type '{expected}'")]
    Mismatch { value: String, expected: String },
    #[error("value {value} is not valid JSON: {source}")]
    NotJson {
        value: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Why a `${...}` string is not a reference Sluice can follow.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("`{0}` refers to section `{1}` of node `{2}`; only `output` can be referenced")]
    UnsupportedSection(String, String, String),
    #[error("`{0}` has an unreadable property path at `{1}`")]
    BadPath(String, String),
    #[error("`{0}` names no flow input")]
    EmptyInput(String),
}

/// Parses a YAML value by promptflow's reference grammar: only a whole string `${...}` is a reference.
pub fn parse_input_value(value: Value) -> Result<InputValue, ReferenceError> {
    let Value::String(s) = &value else {
        return Ok(InputValue::Literal(value));
    };
    let Some(inner) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) else {
        return Ok(InputValue::Literal(value));
    };
    if s.len() <= 3 {
        return Ok(InputValue::Literal(value));
    }
    for prefix in ["inputs.", "flow."] {
        if let Some(name) = inner.strip_prefix(prefix) {
            if name.is_empty() {
                return Err(ReferenceError::EmptyInput(s.clone()));
            }
            return Ok(InputValue::FlowInput(name.to_owned()));
        }
    }
    let (node, rest) = match inner.split_once('.') {
        Some((node, rest)) => (node, Some(rest)),
        None => (inner, None),
    };
    let path = match rest {
        None => vec![],
        Some(rest) => {
            let (section, prop) = match rest.split_once('.') {
                Some((section, prop)) => (section, Some(prop)),
                None => (rest, None),
            };
            // `output['a']` and `output[0]` put the path right after the section.
            let (section, prop) = match section.find('[') {
                Some(i) if prop.is_none() => (&section[..i], Some(&section[i..])),
                _ => (section, prop),
            };
            if section != "output" {
                return Err(ReferenceError::UnsupportedSection(
                    s.clone(),
                    section.to_owned(),
                    node.to_owned(),
                ));
            }
            match prop {
                None => vec![],
                Some(prop) => {
                    parse_path(prop).map_err(|e| ReferenceError::BadPath(s.clone(), e.at))?
                }
            }
        }
    };
    Ok(InputValue::NodeOutput {
        node: node.to_owned(),
        path,
    })
}

/// Where a property path stops making sense: the rest of the text from there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unreadable property path at `{at}`")]
pub struct PathSyntaxError {
    pub at: String,
}

/// Tokenises a property path like `a['b c'][0].d` into steps.
pub fn parse_path(text: &str) -> Result<Vec<PathStep>, PathSyntaxError> {
    let fail = |rest: &str| PathSyntaxError {
        at: rest.to_owned(),
    };
    let mut steps = vec![];
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            rest = r;
            continue;
        }
        if let Some(r) = rest.strip_prefix('[') {
            let quote = r.chars().next().filter(|c| *c == '\'' || *c == '"');
            if let Some(q) = quote {
                let body = &r[1..];
                let end = body.find(&format!("{q}]")).ok_or_else(|| fail(rest))?;
                steps.push(PathStep::Key(body[..end].to_owned()));
                rest = &body[end + 2..];
            } else {
                let end = r.find(']').ok_or_else(|| fail(rest))?;
                let index = r[..end].parse::<usize>().map_err(|_| fail(rest))?;
                steps.push(PathStep::Index(index));
                rest = &r[end + 1..];
            }
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end == 0 {
            return Err(fail(rest));
        }
        steps.push(PathStep::Key(rest[..end].to_owned()));
        rest = &rest[end..];
    }
    Ok(steps)
}

/// promptflow's `ValueType`: the declared type of a flow input or a tool parameter.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ValueType {
    String,
    Int,
    Double,
    Bool,
    List,
    Object,
    Image,
    /// `secret`, `prompt_template`, `file_path`, connection types: passed unchanged.
    Other(String),
}

impl ValueType {
    /// Parses a type name; flow inputs use the exact lowercase names.
    pub fn from_name(name: &str) -> Option<ValueType> {
        Some(match name.to_ascii_lowercase().as_str() {
            "string" => ValueType::String,
            "int" => ValueType::Int,
            "double" => ValueType::Double,
            "bool" => ValueType::Bool,
            "list" => ValueType::List,
            "object" => ValueType::Object,
            "image" => ValueType::Image,
            "secret" | "prompt_template" | "file_path" | "assistant_definition" => {
                ValueType::Other(name.to_ascii_lowercase())
            }
            _ => return None,
        })
    }

    pub fn name(&self) -> &str {
        match self {
            ValueType::String => "string",
            ValueType::Int => "int",
            ValueType::Double => "double",
            ValueType::Bool => "bool",
            ValueType::List => "list",
            ValueType::Object => "object",
            ValueType::Image => "image",
            ValueType::Other(name) => name,
        }
    }

    /// Converts a value to this type as promptflow's `ValueType.parse` does (§3.2).
    pub fn parse(&self, value: Value) -> Result<Value, TypeError> {
        let fail = |v: &Value| {
            Err(TypeError::Mismatch {
                value: v.py_repr(),
                expected: self.name().to_owned(),
            })
        };
        match self {
            ValueType::Int => match value {
                Value::Int(_) => Ok(value),
                Value::Bool(b) => Ok(Value::Int(i64::from(b))),
                Value::Float(f) if f.is_finite() => Ok(Value::Int(f.trunc() as i64)),
                Value::String(ref s) => match parse_py_int(s) {
                    Some(i) => Ok(Value::Int(i)),
                    None => fail(&value),
                },
                ref v => fail(v),
            },
            ValueType::Double => match value {
                Value::Float(_) => Ok(value),
                Value::Int(i) => Ok(Value::Float(i as f64)),
                Value::Bool(b) => Ok(Value::Float(f64::from(u8::from(b)))),
                Value::String(ref s) => match parse_py_float(s) {
                    Some(f) => Ok(Value::Float(f)),
                    None => fail(&value),
                },
                ref v => fail(v),
            },
            ValueType::Bool => match value {
                Value::Bool(_) => Ok(value),
                Value::String(ref s) if s.eq_ignore_ascii_case("true") => Ok(Value::Bool(true)),
                Value::String(ref s) if s.eq_ignore_ascii_case("false") => Ok(Value::Bool(false)),
                ref v => fail(v),
            },
            ValueType::String => match value {
                Value::String(_) => Ok(value),
                v => Ok(Value::String(v.py_str())),
            },
            ValueType::List => {
                let parsed = match value {
                    Value::String(ref s) => match serde_json::from_str::<serde_json::Value>(s) {
                        Ok(v) => Value::from(v),
                        Err(source) => {
                            return Err(TypeError::NotJson {
                                value: value.py_repr(),
                                source,
                            });
                        }
                    },
                    v => v,
                };
                match parsed {
                    Value::List(_) => Ok(parsed),
                    ref v => fail(v),
                }
            }
            ValueType::Object => match value {
                Value::String(ref s) => Ok(serde_json::from_str::<serde_json::Value>(s)
                    .map(Value::from)
                    .unwrap_or(value)),
                v => Ok(v),
            },
            ValueType::Image | ValueType::Other(_) => Ok(value),
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Python's `int(str)`: surrounding whitespace, a sign and `_` separators are allowed; `"3.0"` is not.
fn parse_py_int(s: &str) -> Option<i64> {
    let t = s.trim();
    let (sign, digits) = match t.strip_prefix('-') {
        Some(d) => (-1, d),
        None => (1, t.strip_prefix('+').unwrap_or(t)),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
    {
        return None;
    }
    if !digits.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
        return None;
    }
    digits
        .replace('_', "")
        .parse::<i64>()
        .ok()
        .map(|v| sign * v)
}

/// Python's `float(str)`.
fn parse_py_float(s: &str) -> Option<f64> {
    let t = s.trim().replace('_', "");
    match t.to_ascii_lowercase().trim_start_matches(['+', '-']) {
        "inf" | "infinity" | "nan" => {
            let neg = t.starts_with('-');
            let v = if t.to_ascii_lowercase().contains("nan") {
                f64::NAN
            } else {
                f64::INFINITY
            };
            return Some(if neg { -v } else { v });
        }
        _ => {}
    }
    if t.bytes()
        .any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E')
    {
        return None;
    }
    t.parse::<f64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> InputValue {
        parse_input_value(Value::from(s)).unwrap()
    }

    #[test]
    fn only_whole_strings_are_references() {
        assert_eq!(
            parse("hello ${inputs.x}"),
            InputValue::Literal(Value::from("hello ${inputs.x}"))
        );
        assert_eq!(parse("${}"), InputValue::Literal(Value::from("${}")));
        assert_eq!(parse("${inputs.x}"), InputValue::FlowInput("x".into()));
        assert_eq!(parse("${flow.x}"), InputValue::FlowInput("x".into()));
        assert_eq!(
            parse("${n}"),
            InputValue::NodeOutput {
                node: "n".into(),
                path: vec![]
            }
        );
        assert_eq!(
            parse("${n.output}"),
            InputValue::NodeOutput {
                node: "n".into(),
                path: vec![]
            }
        );
    }

    #[test]
    fn property_paths_tokenise_like_promptflow() {
        let v = parse("${n.output.items[0]['a b'].c}");
        assert_eq!(
            v,
            InputValue::NodeOutput {
                node: "n".into(),
                path: vec![
                    PathStep::Key("items".into()),
                    PathStep::Index(0),
                    PathStep::Key("a b".into()),
                    PathStep::Key("c".into())
                ]
            }
        );
        let v = parse("${n.output[\"k\"]}");
        assert_eq!(
            v,
            InputValue::NodeOutput {
                node: "n".into(),
                path: vec![PathStep::Key("k".into())]
            }
        );
    }

    #[test]
    fn other_sections_are_rejected() {
        assert!(matches!(
            parse_input_value(Value::from("${n.result}")),
            Err(ReferenceError::UnsupportedSection(..))
        ));
    }

    #[test]
    fn int_parsing_matches_python_quirks() {
        let t = ValueType::Int;
        assert_eq!(t.parse(Value::from("3")).unwrap(), Value::Int(3));
        assert_eq!(t.parse(Value::Float(3.7)).unwrap(), Value::Int(3));
        assert!(t.parse(Value::from("3.0")).is_err());
        assert_eq!(t.parse(Value::from(" 1_000 ")).unwrap(), Value::Int(1000));
    }

    #[test]
    fn bool_parsing_rejects_numbers() {
        let t = ValueType::Bool;
        assert_eq!(t.parse(Value::from("TRUE")).unwrap(), Value::Bool(true));
        assert!(t.parse(Value::Int(1)).is_err());
        assert!(t.parse(Value::from("yes")).is_err());
    }

    #[test]
    fn string_parsing_uses_python_str() {
        let t = ValueType::String;
        assert_eq!(t.parse(Value::Int(4)).unwrap(), Value::from("4"));
        assert_eq!(t.parse(Value::Float(4.5)).unwrap(), Value::from("4.5"));
        assert_eq!(t.parse(Value::Bool(true)).unwrap(), Value::from("True"));
    }

    #[test]
    fn list_and_object_parse_json_strings() {
        assert_eq!(
            ValueType::List.parse(Value::from("[1]")).unwrap(),
            Value::List(vec![Value::Int(1)])
        );
        assert!(ValueType::List.parse(Value::from("{}")).is_err());
        assert_eq!(
            ValueType::Object.parse(Value::from("not json")).unwrap(),
            Value::from("not json")
        );
        assert_eq!(
            ValueType::Double.parse(Value::from("1e3")).unwrap(),
            Value::Float(1000.0)
        );
    }
}
