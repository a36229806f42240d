//! Prompty files (`*.prompty`, §10) read as flows.
//!
//! A prompty is YAML front matter between `---` lines followed by a Jinja chat (or completion)
//! template. It becomes a flow of one `llm` node: the flow inputs are the front matter's `inputs`
//! (with their defaults, or inferred from `sample`), the node's template is the file's body, and the
//! flow output is `output` (or, when the reply is a JSON object and `outputs` are declared, one flow
//! output per declared key). Batch runs, records and reports then work as for any flow.
//!
//! The loader checks the front matter's shape here, with the line and column of every problem in
//! the `.prompty` file; the `llm` node kind reads [`PromptyDef`] from the flow to pick its backend
//! and parameters.

use std::path::Path;
use std::sync::Arc;

use indexmap::IndexMap;

use crate::error::{FlowError, Problem};
use crate::model::*;
use crate::value::{Map, PathStep, Value};
use crate::yaml::{Span, Yaml, YamlKind};

/// The `source.type` the loader gives the node a prompty becomes.
pub const SOURCE_TYPE: &str = "prompty";

/// What a prompty's front matter says, checked, for the node kind that runs it.
#[derive(Clone, Debug)]
pub struct PromptyDef {
    /// The template: the file's text after the front matter.
    pub template: String,
    /// The line of the `.prompty` file the template starts on (1-based).
    pub template_line: usize,
    /// `model.api`.
    pub api: PromptyApi,
    /// `model.configuration`, when given.
    pub configuration: Option<ModelConfiguration>,
    /// `model.parameters`, as written; they are sent to a server as given.
    pub parameters: Map,
    /// Where `model.parameters` is written (the front matter's start when absent).
    pub parameters_span: Span,
    /// `model.response`.
    pub response: PromptyResponse,
    /// The keys of `outputs:`, in order.
    pub outputs: Vec<String>,
    /// `sample:`, the inputs `flow test` uses when it is given none.
    pub sample: Option<Map>,
}

impl PromptyDef {
    /// Whether `parameters.response_format` asks for a JSON object.
    pub fn json_object(&self) -> bool {
        match self.parameters.get("response_format") {
            Some(Value::String(s)) => s == "json_object",
            Some(Value::Map(m)) => m.get("type").and_then(Value::as_str) == Some("json_object"),
            _ => false,
        }
    }
}

/// `model.api`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptyApi {
    Chat,
    Completion,
}

/// `model.response`: the first choice's content, or the whole response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptyResponse {
    First,
    All,
}

/// `model.configuration`.
#[derive(Clone, Debug, Default)]
pub struct ModelConfiguration {
    /// `type:` (`azure_openai`, `openai`, or `local`), lowercased; `None` when not given.
    pub kind: Option<String>,
    /// `connection: <name>`.
    pub connection: Option<String>,
    pub connection_span: Option<Span>,
    /// The other keys (`azure_deployment`, `api_key`, `base_url`, `model`, ...), their values as
    /// text with `${file:...}` read; `${env:...}` is left for the connection to resolve.
    pub fields: IndexMap<String, String>,
    pub span: Span,
}

/// Whether `path` names a prompty file.
pub fn is_prompty(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("prompty"))
}

/// The front matter and the body of a prompty file: the YAML text with every line outside the front
/// matter blanked (so YAML positions are positions in the file) and the body with its first line.
fn split(text: &str) -> Option<(String, String, usize)> {
    let is_fence = |l: &str| {
        let l = l.trim_end_matches(['\n', '\r', ' ', '\t']);
        l.len() >= 3 && l.bytes().all(|b| b == b'-')
    };
    let mut yaml = String::new();
    let mut open = None;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let end = offset + line.len();
        match open {
            None if line.trim().is_empty() => yaml.push('\n'),
            None if is_fence(line) => {
                open = Some(i);
                yaml.push('\n');
            }
            None => return None,
            Some(_) if is_fence(line) => {
                return Some((yaml, text[end..].to_owned(), i + 2));
            }
            Some(_) => yaml.push_str(line),
        }
        offset = end;
    }
    None
}

/// Reads a prompty file into a one-node flow.
pub(crate) fn load(file: &Path, text: Arc<str>) -> Result<FlowDef, FlowError> {
    let invalid = |problems| FlowError::Invalid {
        file: file.to_path_buf(),
        text: text.clone(),
        problems,
    };
    let Some((front, template, template_line)) = split(&text) else {
        return Err(invalid(vec![
            Problem::new(
                "InvalidPromptyError",
                "a prompty file starts with YAML front matter between `---` lines",
            )
            .at(Span { line: 1, col: 1 })
            .help("write `---`, the front matter (name, model, inputs), `---`, then the template"),
        ]));
    };
    let yaml = Yaml::parse(&front).map_err(|source| FlowError::Yaml {
        file: file.to_path_buf(),
        span: source.span,
        text: text.clone(),
        source,
    })?;
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut r = Reader {
        problems: vec![],
        dir: &dir,
        code: "InvalidPromptyError",
    };
    let def = r.flow(file, &text, &yaml, template, template_line);
    if r.problems.is_empty() {
        Ok(def)
    } else {
        Err(invalid(r.problems))
    }
}

/// Reads the parts prompty files and flex flows share (`${file:...}` values, input declarations),
/// collecting problems with the error code of the file kind.
pub(crate) struct Reader<'a> {
    pub(crate) problems: Vec<Problem>,
    pub(crate) dir: &'a Path,
    pub(crate) code: &'static str,
}

impl Reader<'_> {
    pub(crate) fn problem(&mut self, message: impl Into<String>, at: Span) -> &mut Problem {
        self.problems.push(Problem::new(self.code, message).at(at));
        self.problems.last_mut().expect("just pushed")
    }

    fn flow(
        &mut self,
        file: &Path,
        text: &Arc<str>,
        yaml: &Yaml,
        template: String,
        template_line: usize,
    ) -> FlowDef {
        let stem = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut def = FlowDef::empty(file, self.dir.to_path_buf(), text.clone(), stem.clone());
        let start = Span { line: 1, col: 1 };
        match &yaml.kind {
            YamlKind::Map(_) => {}
            YamlKind::Null => {}
            _ => {
                self.problem(
                    format!(
                        "the front matter must be a mapping, found {}",
                        yaml.type_name()
                    ),
                    yaml.span,
                );
                return def;
            }
        }
        if let Some(name) = yaml.get("name").and_then(Yaml::as_str) {
            def.name = name.to_owned();
        }
        if let Some(t) = yaml.get("template").filter(|t| !t.is_null()) {
            let engine = match &t.kind {
                YamlKind::Map(_) => t.get("format").or(t.get("type")).and_then(Yaml::as_str),
                _ => t.as_str(),
            };
            if engine.is_some_and(|e| !e.eq_ignore_ascii_case("jinja2")) {
                self.problem(
                    format!(
                        "template engine `{}` is not supported",
                        engine.unwrap_or_default()
                    ),
                    t.span,
                )
                .help = Some("prompty templates are `jinja2`".into());
            }
        }

        let model = yaml.get("model").filter(|m| !m.is_null());
        if let Some(m) = model
            && !matches!(m.kind, YamlKind::Map(_))
        {
            self.problem(
                format!("`model` must be a mapping, found {}", m.type_name()),
                m.span,
            );
        }
        let api = match model.and_then(|m| m.get("api")) {
            None => PromptyApi::Chat,
            Some(a) => match a.as_str().map(str::to_ascii_lowercase).as_deref() {
                Some("chat") => PromptyApi::Chat,
                Some("completion") => PromptyApi::Completion,
                _ => {
                    self.problem(
                        format!(
                            "`model.api` is {}; it must be `chat` or `completion`",
                            a.to_value().py_repr()
                        ),
                        a.span,
                    );
                    PromptyApi::Chat
                }
            },
        };
        let response = match model.and_then(|m| m.get("response")) {
            None => PromptyResponse::First,
            Some(a) => match a.as_str().map(str::to_ascii_lowercase).as_deref() {
                Some("first") => PromptyResponse::First,
                Some("all") => PromptyResponse::All,
                _ => {
                    self.problem(
                        format!(
                            "`model.response` is {}; it must be `first` or `all`",
                            a.to_value().py_repr()
                        ),
                        a.span,
                    );
                    PromptyResponse::First
                }
            },
        };
        let (parameters, parameters_span) = match model.and_then(|m| m.get("parameters")) {
            None => (Map::new(), model.map_or(start, |m| m.span)),
            Some(p) if p.is_null() => (Map::new(), p.span),
            Some(p) => match p.to_value() {
                // `tools: ${file:tools.json}` and the like are read, as promptflow reads them.
                Value::Map(m) => (
                    m.into_iter()
                        .map(|(k, v)| (k, self.file_references(v, p.span)))
                        .collect(),
                    p.span,
                ),
                _ => {
                    self.problem(
                        format!(
                            "`model.parameters` must be a mapping, found {}",
                            p.type_name()
                        ),
                        p.span,
                    );
                    (Map::new(), p.span)
                }
            },
        };
        let mut configuration = model
            .and_then(|m| m.get("configuration"))
            .filter(|c| !c.is_null())
            .and_then(|c| self.configuration(c));
        // The older form: `model.connection: <name>` beside the parameters.
        if let Some(c) = model
            .and_then(|m| m.get("connection"))
            .filter(|c| !c.is_null())
        {
            let conf = configuration.get_or_insert_with(|| ModelConfiguration {
                kind: None,
                connection: None,
                connection_span: None,
                fields: IndexMap::new(),
                span: c.span,
            });
            if conf.connection.is_none() {
                conf.connection = Some(c.key_string());
                conf.connection_span = Some(c.span);
            }
        }

        let sample = yaml
            .get("sample")
            .filter(|s| !s.is_null())
            .and_then(|s| self.sample(s));
        if let Some(inputs) = yaml.get("inputs").filter(|i| !i.is_null()) {
            self.inputs(inputs, &mut def);
        } else if let Some(sample) = &sample {
            // Without `inputs:`, the sample's keys are the inputs.
            let at = yaml.get("sample").map_or(start, |s| s.span);
            for (name, value) in sample {
                def.inputs.insert(
                    name.clone(),
                    InputDef {
                        name: name.clone(),
                        ty: type_of(value),
                        default: None,
                        description: None,
                        is_chat_input: false,
                        is_chat_history: None,
                        span: at,
                    },
                );
            }
        }

        let mut outputs = vec![];
        if let Some(outs) = yaml.get("outputs").filter(|o| !o.is_null()) {
            match &outs.kind {
                YamlKind::Map(entries) => {
                    outputs = entries.iter().map(|(k, _)| k.key_string()).collect();
                }
                _ => {
                    self.problem(
                        format!("`outputs` must be a mapping, found {}", outs.type_name()),
                        outs.span,
                    );
                }
            }
        }

        let node_name = node_name(&stem);
        let prompty = PromptyDef {
            template,
            template_line,
            api,
            configuration,
            parameters,
            parameters_span,
            response,
            outputs,
            sample,
        };
        let node_span = yaml.entry("model").map_or(start, |(k, _)| k.span);
        if prompty.json_object()
            && response == PromptyResponse::First
            && !prompty.outputs.is_empty()
        {
            for key in &prompty.outputs {
                def.outputs.insert(
                    key.clone(),
                    output(key, &node_name, vec![PathStep::Key(key.clone())], node_span),
                );
            }
        } else {
            def.outputs.insert(
                "output".into(),
                output("output", &node_name, vec![], node_span),
            );
        }
        let connection = prompty
            .configuration
            .as_ref()
            .and_then(|c| c.connection.clone());
        let connection_span = prompty
            .configuration
            .as_ref()
            .and_then(|c| c.connection_span);
        def.nodes.push(NodeDef {
            name: node_name,
            span: node_span,
            kind: "llm".into(),
            kind_span: node_span,
            source: Some(SourceDef {
                ty: SOURCE_TYPE.into(),
                path: file.file_name().map(|n| n.to_string_lossy().into_owned()),
                tool: None,
                span: node_span,
            }),
            inputs: def
                .inputs
                .keys()
                .map(|k| {
                    (
                        k.clone(),
                        InputBinding {
                            value: InputValue::FlowInput(k.clone()),
                            span: def.inputs[k].span,
                        },
                    )
                })
                .collect(),
            activate: None,
            aggregation: false,
            use_variants: false,
            connection,
            connection_span,
            api: Some(
                match api {
                    PromptyApi::Chat => "chat",
                    PromptyApi::Completion => "completion",
                }
                .into(),
            ),
            provider: None,
            module: None,
            variant_id: None,
            extra: Map::new(),
        });
        def.prompty = Some(Arc::new(prompty));
        def
    }

    fn configuration(&mut self, c: &Yaml) -> Option<ModelConfiguration> {
        let YamlKind::Map(entries) = &c.kind else {
            self.problem(
                format!(
                    "`model.configuration` must be a mapping, found {}",
                    c.type_name()
                ),
                c.span,
            );
            return None;
        };
        let mut conf = ModelConfiguration {
            kind: None,
            connection: None,
            connection_span: None,
            fields: IndexMap::new(),
            span: c.span,
        };
        for (k, v) in entries {
            let key = k.key_string();
            if v.is_null() {
                continue;
            }
            let text = match &v.kind {
                YamlKind::Str(s) => s.clone(),
                YamlKind::Int(_) | YamlKind::Float(_) | YamlKind::Bool(_) => v.key_string(),
                _ => {
                    self.problem(
                        format!(
                            "`model.configuration.{key}` must be text, found {}",
                            v.type_name()
                        ),
                        v.span,
                    );
                    continue;
                }
            };
            let text = match self.file_reference(&text, v.span) {
                Some(Value::String(s)) => s,
                Some(other) => other.py_str(),
                None => continue,
            };
            match key.as_str() {
                "type" => {
                    let t = text.to_ascii_lowercase().replace(['-', ' '], "_");
                    let t = match t.as_str() {
                        "azure_open_ai" => "azure_openai".to_owned(),
                        "open_ai" => "openai".to_owned(),
                        _ => t,
                    };
                    if !["azure_openai", "openai", "local"].contains(&t.as_str()) {
                        self.problem(
                            format!("`model.configuration.type` is `{text}`; it must be `azure_openai` or `openai`"),
                            v.span,
                        )
                        .help = Some("leave out `configuration` to use the local model".into());
                    }
                    conf.kind = Some(t);
                }
                "connection" => {
                    conf.connection = Some(text);
                    conf.connection_span = Some(v.span);
                }
                _ => {
                    conf.fields.insert(key, text);
                }
            }
        }
        if let Some(span) = conf.connection_span {
            let explicit: Vec<&str> = conf
                .fields
                .keys()
                .map(String::as_str)
                .filter(|k| !["azure_deployment", "model"].contains(k))
                .collect();
            if !explicit.is_empty() {
                self.problem(
                    format!(
                        "`model.configuration` gives both `connection` and {}",
                        explicit
                            .iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    span,
                )
                .help = Some(
                    "use the connection's settings, or remove `connection` and give them here"
                        .into(),
                );
            }
        }
        Some(conf)
    }

    /// `value` with every `${file:path}` text inside it read (see [`Self::file_reference`]).
    fn file_references(&mut self, value: Value, at: Span) -> Value {
        match value {
            Value::String(s) if s.starts_with("${file:") => {
                self.file_reference(&s, at).unwrap_or(Value::String(s))
            }
            Value::Map(m) => Value::Map(
                m.into_iter()
                    .map(|(k, v)| (k, self.file_references(v, at)))
                    .collect(),
            ),
            Value::List(items) => Value::List(
                items
                    .into_iter()
                    .map(|v| self.file_references(v, at))
                    .collect(),
            ),
            other => other,
        }
    }

    /// A `${file:path}` value read (JSON or YAML parsed, otherwise the text); other values as given.
    pub(crate) fn file_reference(&mut self, text: &str, at: Span) -> Option<Value> {
        let Some(rel) = text
            .strip_prefix("${file:")
            .and_then(|r| r.strip_suffix('}'))
        else {
            return Some(Value::String(text.to_owned()));
        };
        let path = self.dir.join(rel.trim());
        match std::fs::read_to_string(&path) {
            Ok(content) => {
                let ext = path
                    .extension()
                    .map(|e| e.to_string_lossy().to_ascii_lowercase());
                match ext.as_deref() {
                    Some("json") => match serde_json::from_str::<serde_json::Value>(&content) {
                        Ok(v) => Some(Value::from(v)),
                        Err(e) => {
                            self.problem(format!("`{rel}` is not valid JSON: {e}"), at);
                            None
                        }
                    },
                    Some("yaml" | "yml") => match Yaml::parse(&content) {
                        Ok(y) => Some(y.to_value()),
                        Err(e) => {
                            self.problem(format!("`{rel}` is not valid YAML: {e}"), at);
                            None
                        }
                    },
                    _ => Some(Value::String(content)),
                }
            }
            Err(e) => {
                self.problem(format!("cannot read `{rel}`: {e}"), at).help = Some(format!(
                    "paths in `${{file:...}}` are relative to {}",
                    self.dir.display()
                ));
                None
            }
        }
    }

    pub(crate) fn sample(&mut self, s: &Yaml) -> Option<Map> {
        let value = match &s.kind {
            // promptflow also reads a bare `sample: sample.json` as a file.
            YamlKind::Str(text)
                if !text.starts_with("${")
                    && [".json", ".yaml", ".yml"]
                        .iter()
                        .any(|e| text.to_ascii_lowercase().ends_with(e)) =>
            {
                self.file_reference(&format!("${{file:{text}}}"), s.span)?
            }
            YamlKind::Str(text) => self.file_reference(text, s.span)?,
            _ => s.to_value(),
        };
        match value {
            Value::Map(m) => Some(m),
            other => {
                self.problem(
                    format!(
                        "`sample` must be a mapping of input values (or `${{file:sample.json}}`), found {}",
                        other.type_name()
                    ),
                    s.span,
                );
                None
            }
        }
    }

    /// Reads an `inputs:` mapping into the flow's inputs.
    pub(crate) fn inputs(&mut self, inputs: &Yaml, def: &mut FlowDef) {
        match &inputs.kind {
            YamlKind::Map(entries) => {
                for (k, v) in entries {
                    if let Some(input) = self.input(k, v) {
                        def.inputs.insert(input.name.clone(), input);
                    }
                }
            }
            _ => {
                self.problem(
                    format!("`inputs` must be a mapping, found {}", inputs.type_name()),
                    inputs.span,
                );
            }
        }
    }

    pub(crate) fn input(&mut self, key: &Yaml, value: &Yaml) -> Option<InputDef> {
        let name = key.key_string();
        let (ty, default, description) = match &value.kind {
            YamlKind::Map(_) => {
                let ty = match value.get("type").filter(|t| !t.is_null()) {
                    None => ValueType::String,
                    Some(t) => match t.as_str().and_then(prompty_type) {
                        Some(ty) => ty,
                        None => {
                            self.problem(
                                format!(
                                    "input `{name}` has unknown type {}",
                                    t.to_value().py_repr()
                                ),
                                t.span,
                            )
                            .help =
                                Some("use one of: string, int, double, bool, list, object".into());
                            return None;
                        }
                    },
                };
                (
                    ty,
                    value
                        .get("default")
                        .map(Yaml::to_value)
                        .filter(|v| !v.is_null()),
                    value
                        .get("description")
                        .and_then(Yaml::as_str)
                        .map(str::to_owned),
                )
            }
            YamlKind::Null => (ValueType::String, None, None),
            _ => {
                self.problem(
                    format!(
                        "input `{name}` must be a mapping (`{{type: string, default: ...}}`), found {}",
                        value.type_name()
                    ),
                    value.span,
                );
                return None;
            }
        };
        Some(InputDef {
            name,
            ty,
            default,
            description,
            is_chat_input: false,
            is_chat_history: None,
            span: key.span,
        })
    }
}

/// A prompty input type: promptflow's names and the JSON-schema ones prompty files also use.
fn prompty_type(name: &str) -> Option<ValueType> {
    match name.to_ascii_lowercase().as_str() {
        "number" | "float" => Some(ValueType::Double),
        "integer" => Some(ValueType::Int),
        "boolean" => Some(ValueType::Bool),
        "array" => Some(ValueType::List),
        "dict" => Some(ValueType::Object),
        other => ValueType::from_name(other),
    }
}

/// The input type a sample value implies.
pub(crate) fn type_of(v: &Value) -> ValueType {
    match v {
        Value::Bool(_) => ValueType::Bool,
        Value::Int(_) => ValueType::Int,
        Value::Float(_) => ValueType::Double,
        Value::List(_) => ValueType::List,
        Value::Map(_) => ValueType::Object,
        _ => ValueType::String,
    }
}

/// The node's name: the file's stem, as an identifier.
fn node_name(stem: &str) -> String {
    let name: String = stem
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { '_' })
        .collect();
    if name.is_empty() {
        "prompty".into()
    } else {
        name
    }
}

fn output(name: &str, node: &str, path: Vec<PathStep>, span: Span) -> OutputDef {
    OutputDef {
        name: name.to_owned(),
        ty: ValueType::String,
        reference: InputValue::NodeOutput {
            node: node.to_owned(),
            path,
        },
        is_chat_output: false,
        evaluation_only: false,
        span,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_matter_lines_keep_their_numbers() {
        let (yaml, body, line) = split("\n---\nname: x\n---\nsystem:\nhi\n").unwrap();
        assert_eq!(yaml, "\n\nname: x\n");
        assert_eq!(body, "system:\nhi\n");
        assert_eq!(line, 5);
    }

    #[test]
    fn a_body_rule_does_not_end_the_front_matter_twice() {
        let (_, body, _) = split("---\na: 1\n---\nuser:\nx\n---\ny\n").unwrap();
        assert_eq!(body, "user:\nx\n---\ny\n");
    }

    #[test]
    fn text_before_the_front_matter_is_refused() {
        assert!(split("hello\n---\na: 1\n---\n").is_none());
        assert!(split("---\na: 1\n").is_none());
    }
}
