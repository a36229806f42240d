//! Errors by phase: loading a flow ([`FlowError`]), running a node ([`NodeError`]), and the
//! promptflow-shaped error record of a failed line or node ([`ErrorInfo`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde_json::json;

use crate::yaml::{Span, YamlError};

/// A flow that cannot be loaded. Nothing has run.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error(
        "no flow found at {path}: expected a folder with flow.dag.yaml or flow.flex.yaml (or one .prompty file), or the file itself"
    )]
    NotFound { path: PathBuf },
    #[error("{dir} holds several flow files ({}); pass the one to use", files.join(", "))]
    Ambiguous { dir: PathBuf, files: Vec<String> },
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{span}: invalid YAML")]
    Yaml {
        file: PathBuf,
        span: Span,
        text: Arc<str>,
        #[source]
        source: YamlError,
    },
    #[error("{file}: {} problem{} found when loading the flow", problems.len(), if problems.len() == 1 { "" } else { "s" })]
    Invalid {
        file: PathBuf,
        text: Arc<str>,
        problems: Vec<Problem>,
    },
}

impl FlowError {
    /// Every problem in the flow (a single one for I/O and syntax errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            FlowError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }

    /// Renders the error with the offending source lines, as the CLI prints it.
    pub fn render(&self) -> String {
        match self {
            FlowError::Yaml {
                file,
                span,
                text,
                source,
            } => {
                let mut out = format!("error: invalid YAML: {source}\n");
                push_snippet(&mut out, file, text, *span);
                out
            }
            FlowError::Invalid {
                file,
                text,
                problems,
            } => {
                let mut out = String::new();
                for p in problems.iter().take(MAX_SHOWN_PROBLEMS) {
                    out.push_str(&format!("error[{}]: {}\n", p.code, p.message));
                    match (&p.file, p.span) {
                        (Some(other), Some(span)) => push_snippet_from_disk(&mut out, other, span),
                        (None, Some(span)) => push_snippet(&mut out, file, text, span),
                        (Some(other), None) => {
                            out.push_str(&format!("  --> {}\n", other.display()))
                        }
                        (None, None) => out.push_str(&format!("  --> {}\n", file.display())),
                    }
                    if let Some(help) = &p.help {
                        out.push_str(&format!("  = help: {help}\n"));
                    }
                    out.push('\n');
                }
                if problems.len() > MAX_SHOWN_PROBLEMS {
                    out.push_str(&format!(
                        "... and {} more problems\n\n",
                        problems.len() - MAX_SHOWN_PROBLEMS
                    ));
                }
                out.push_str(&format!("{self}\n"));
                out
            }
            other => {
                let mut out = format!("error: {other}");
                let mut source = std::error::Error::source(other);
                while let Some(s) = source {
                    out.push_str(&format!(": {s}"));
                    source = s.source();
                }
                out.push('\n');
                out
            }
        }
    }
}

/// How many problems [`FlowError::render`] shows; the rest are counted (a flow with thousands of
/// broken nodes prints a screenful, not megabytes).
pub const MAX_SHOWN_PROBLEMS: usize = 50;

fn push_snippet_from_disk(out: &mut String, file: &Path, span: Span) {
    match std::fs::read_to_string(file) {
        Ok(text) => push_snippet(out, file, &text, span),
        Err(_) => out.push_str(&format!("  --> {}:{span}\n", file.display())),
    }
}

fn push_snippet(out: &mut String, file: &Path, text: &str, span: Span) {
    out.push_str(&format!("  --> {}:{span}\n", file.display()));
    if let Some(lines) = crate::yaml::snippet_lines(text, span) {
        out.push_str(&lines);
    }
}

/// One thing wrong with a flow, found when it is loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// promptflow's error code where one exists (`NodeReferenceNotFound`, ...), else Sluice's own.
    pub code: &'static str,
    pub message: String,
    /// The node the problem is in, if any.
    pub node: Option<String>,
    /// Where, in the flow file unless [`Problem::file`] names another file (a template, a tool).
    pub span: Option<Span>,
    pub file: Option<PathBuf>,
    /// What to do about it.
    pub help: Option<String>,
}

impl Problem {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Problem {
            code,
            message: message.into(),
            node: None,
            span: None,
            file: None,
            help: None,
        }
    }
    pub fn node(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }
    pub fn at(mut self, span: Span) -> Self {
        self.span = Some(span);
        self
    }
    pub fn in_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.file = Some(file.into());
        self
    }
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.code, self.message)?;
        if let Some(span) = self.span {
            write!(f, " (at {span})")?;
        }
        Ok(())
    }
}

/// A node kind could not build a node from its definition.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct BuildError {
    pub message: String,
    /// A location in another file (a template, a tool), if the error is there.
    pub file: Option<PathBuf>,
    pub span: Option<Span>,
    pub help: Option<String>,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl BuildError {
    pub fn new(message: impl Into<String>) -> Self {
        BuildError {
            message: message.into(),
            file: None,
            span: None,
            help: None,
            source: None,
        }
    }
    pub fn at(mut self, file: impl Into<PathBuf>, span: Option<Span>) -> Self {
        self.file = Some(file.into());
        self.span = span;
        self
    }
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// Details of an exception raised by user code (a Python tool).
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct ToolErrorDetails {
    /// The exception's class name, e.g. `ValueError`.
    #[serde(rename = "type")]
    pub exc_type: String,
    pub message: String,
    pub traceback: String,
    pub filename: Option<String>,
    pub lineno: Option<i64>,
    pub name: Option<String>,
}

/// Whose fault an error is, as promptflow classifies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ErrorCode {
    UserError,
    SystemError,
}

/// A node failed while running one line.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct NodeError {
    pub code: ErrorCode,
    /// promptflow's inner error code, e.g. `ToolExecutionError`, `JinjaTemplateError`.
    pub error_type: String,
    pub message: String,
    pub tool: Option<ToolErrorDetails>,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl NodeError {
    /// A user error of the given promptflow code.
    pub fn user(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        NodeError {
            code: ErrorCode::UserError,
            error_type: error_type.into(),
            message: message.into(),
            tool: None,
            source: None,
        }
    }

    /// An exception raised by the user's tool code.
    pub fn tool(details: ToolErrorDetails) -> Self {
        NodeError {
            code: ErrorCode::UserError,
            error_type: "ToolExecutionError".into(),
            message: format!("({}) {}", details.exc_type, details.message),
            tool: Some(details),
            source: None,
        }
    }

    /// A failure of Sluice itself or of the environment.
    pub fn system(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        NodeError {
            code: ErrorCode::SystemError,
            error_type: error_type.into(),
            message: message.into(),
            tool: None,
            source: None,
        }
    }
}

/// The error type of an exception raised by a flex flow's entry.
pub const SCRIPT_ERROR: &str = "ScriptExecutionError";

/// The error record of a failed line or node, serialised in promptflow's shape (§4.7).
#[derive(Clone, Debug, PartialEq)]
pub struct ErrorInfo {
    pub code: ErrorCode,
    /// promptflow's inner code (`ToolExecutionError`, `InputNotFound`, ...).
    pub error_type: String,
    pub message: String,
    pub message_format: String,
    pub message_parameters: serde_json::Map<String, serde_json::Value>,
    pub reference_code: Option<String>,
    pub tool: Option<ToolErrorDetails>,
}

impl ErrorInfo {
    pub fn new(code: ErrorCode, error_type: impl Into<String>, message: impl Into<String>) -> Self {
        let message = message.into();
        ErrorInfo {
            code,
            error_type: error_type.into(),
            message_format: message.clone(),
            message,
            message_parameters: Default::default(),
            reference_code: None,
            tool: None,
        }
    }

    /// The record of `error` raised by `node`.
    pub fn from_node(node: &str, error: &NodeError) -> Self {
        if error.error_type == SCRIPT_ERROR
            && let Some(tool) = &error.tool
        {
            return ErrorInfo::script(error, tool);
        }
        let (message, message_format) = if error.tool.is_some() {
            (
                format!("Execution failure in '{node}': {}", error.message),
                "Execution failure in '{node_name}'.".to_owned(),
            )
        } else {
            (error.message.clone(), error.message.clone())
        };
        let mut params = serde_json::Map::new();
        params.insert("node_name".into(), json!(node));
        ErrorInfo {
            code: error.code,
            error_type: error.error_type.clone(),
            message,
            message_format,
            message_parameters: params,
            reference_code: error.tool.as_ref().map(|_| "Tool/__pf_main__".to_owned()),
            tool: error.tool.clone(),
        }
    }

    /// A flex flow entry's exception, in promptflow's shape for it: the entry's name (`func`,
    /// `Class.__call__`) is the tool details' `name`.
    fn script(error: &NodeError, tool: &ToolErrorDetails) -> Self {
        let func = tool.name.clone().unwrap_or_default();
        let mut params = serde_json::Map::new();
        params.insert("error_type_and_message".into(), json!(error.message));
        params.insert("func_name".into(), json!(func));
        ErrorInfo {
            code: error.code,
            error_type: SCRIPT_ERROR.into(),
            message: format!("Execution failure in '{func}': {}", error.message),
            message_format: "Execution failure in '{func_name}': {error_type_and_message}".into(),
            message_parameters: params,
            reference_code: Some("Unknown".into()),
            tool: Some(tool.clone()),
        }
    }

    /// The error as promptflow's JSON error dict.
    pub fn to_json(&self) -> serde_json::Value {
        let mut out = json!({
            "message": self.message,
            "messageFormat": self.message_format,
            "messageParameters": self.message_parameters,
            "referenceCode": self.reference_code,
            "code": self.code,
            "innerError": {"code": self.error_type, "innerError": null},
        });
        if let Some(tool) = &self.tool {
            let details = if self.error_type == SCRIPT_ERROR {
                "FlexFlowExecutionErrorDetails"
            } else {
                "ToolExecutionErrorDetails"
            };
            out["additionalInfo"] = json!([{"type": details, "info": tool}]);
            out["debugInfo"] = json!({
                "type": tool.exc_type,
                "message": tool.message,
                "stackTrace": tool.traceback,
                "innerException": null,
            });
        }
        out
    }
}

impl Serialize for ErrorInfo {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl fmt::Display for ErrorInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.error_type)
    }
}
