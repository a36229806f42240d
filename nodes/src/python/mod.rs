//! `python` nodes: a tool function in the flow folder, or in an installed package (`source.type:
//! package`, and `custom_llm` nodes' `package_with_prompt`), called in an embedded CPython.
//!
//! The interpreter starts once per process. Each tool file is imported once when the flow is loaded
//! (so an import error or a file without exactly one `@tool` is a load error); calls run on the
//! blocking pool and hold the GIL only while Python runs, so a tool that sleeps or waits on I/O lets
//! others run. `async def` tools run on one shared asyncio loop, so independent async nodes overlap.

mod call;
mod flex;
pub mod isolation;
mod llm_call;
mod prompty;
mod thread_state;

use std::any::Any;
use std::collections::HashMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use flex::FlexKind;
pub use isolation::{Isolation, serve as serve_worker, set_isolation, set_worker_command};

use async_trait::async_trait;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use sluice_engine::image::Image;
use sluice_engine::spawn::run_blocking;
use sluice_engine::{
    BuildContext, BuildError, Built, InputValue, Map, Node, NodeContext, NodeDef, NodeError,
    NodeInputs, NodeKind, Opaque, Param, PathStep, Signature, ToolErrorDetails, Value, ValueType,
};

const HOST_SOURCE: &str = include_str!("host.py");
const SLUICE_SOURCE: &str = include_str!("../../../python/sluice/__init__.py");
const PROMPTFLOW_SOURCE: &str = include_str!("../../../python/sluice/_promptflow.py");

/// The embedded interpreter and Sluice's host module in it.
struct Runtime {
    host: Py<PyModule>,
}

impl Runtime {
    /// Calls a tool through the host's `invoke`: whether it returned, and what it returned or
    /// raised. Metrics it logs land in `sink`.
    fn invoke<'py>(
        &self,
        func: &Py<PyAny>,
        kwargs: Bound<'py, PyDict>,
        sink: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<(bool, Bound<'py, PyAny>)> {
        let py = kwargs.py();
        self.host
            .bind(py)
            .getattr("invoke")?
            .call1((func.bind(py), kwargs, sink))?
            .extract()
    }
}

/// Why the embedded Python cannot be used. The Python exception is kept as its text: the runtime's
/// failure is remembered for the life of the process, outside any interpreter lock.
#[derive(Clone, Debug, thiserror::Error)]
pub enum PythonError {
    /// The interpreter, or Sluice's host module in it, did not start.
    #[error("{exception}")]
    Start { exception: String },
    /// Asking the running interpreter about itself raised.
    #[error("{exception}")]
    Query { exception: String },
}

static RUNTIME: OnceLock<Result<Runtime, PythonError>> = OnceLock::new();

/// Set when Sluice runs inside a Python program (the `sluice` Python package) rather than embedding
/// its own interpreter.
static HOSTED: AtomicBool = AtomicBool::new(false);

/// Says that the interpreter is the program's own (Sluice was imported as a Python extension): tools
/// then use the installed `sluice` package and the program's `promptflow` (or Sluice's stand-in when
/// it has none), and `sys.stdout` stays where it is. Call it before any flow loads.
pub fn set_hosted() {
    HOSTED.store(true, Ordering::Relaxed);
}

fn runtime() -> Result<&'static Runtime, PythonError> {
    RUNTIME
        .get_or_init(|| {
            Python::initialize();
            Python::attach(|py| {
                let code = CString::new(HOST_SOURCE).expect("host source has no NUL");
                let host = PyModule::from_code(py, &code, c"sluice/host.py", c"_sluice_host")?;
                let venv = std::env::var("VIRTUAL_ENV").ok().filter(|v| !v.is_empty());
                let hosted = HOSTED.load(Ordering::Relaxed);
                host.getattr("install")?
                    .call1((SLUICE_SOURCE, PROMPTFLOW_SOURCE, venv, hosted))?;
                prompty::install(py)?;
                llm_call::install(py)?;
                Ok::<_, PyErr>(Runtime {
                    host: host.unbind(),
                })
            })
            .map_err(|e| PythonError::Start {
                exception: e.to_string(),
            })
        })
        .as_ref()
        .map_err(Clone::clone)
        .inspect(|_| thread_state::keep())
}

/// The Python version Sluice runs tools with, e.g. `3.11.7 (/usr/lib/python3.11)`.
pub fn python_info() -> Result<String, PythonError> {
    runtime()?;
    Python::attach(|py| {
        let sys = py.import("sys")?;
        let version: String = sys.getattr("version")?.extract()?;
        let prefix: String = sys.getattr("prefix")?.extract()?;
        Ok::<_, PyErr>(format!(
            "{} (prefix {prefix})",
            version.split_whitespace().next().unwrap_or("?")
        ))
    })
    .map_err(|e| PythonError::Query {
        exception: e.to_string(),
    })
}

/// The `python` node kind.
#[derive(Debug, Default)]
pub struct PythonKind;

impl NodeKind for PythonKind {
    fn type_name(&self) -> &'static str {
        "python"
    }

    fn build(&self, node: &NodeDef, cx: &BuildContext) -> Result<Built, BuildError> {
        build_tool(node, cx)
    }
}

/// The `custom_llm` node kind: a package tool with a prompt template (`source.type:
/// package_with_prompt`), run as a `python` node is.
#[derive(Debug, Default)]
pub struct CustomLlmKind;

impl NodeKind for CustomLlmKind {
    fn type_name(&self) -> &'static str {
        "custom_llm"
    }

    fn build(&self, node: &NodeDef, cx: &BuildContext) -> Result<Built, BuildError> {
        build_tool(node, cx)
    }
}

/// Where a node's tool comes from.
struct ToolSource {
    /// The tool file (`code`), or the template (`package_with_prompt`).
    path: PathBuf,
    /// The package tool id (`package`, `package_with_prompt`).
    package: Option<String>,
    /// The template's text, bound to the tool's `PromptTemplate` parameter.
    prompt: Option<String>,
    /// The template's variables.
    variables: Vec<String>,
}

/// Reads a node's `source`: a tool file, a package tool, or a package tool with a template.
fn tool_source(node: &NodeDef, cx: &BuildContext) -> Result<ToolSource, BuildError> {
    let ty = node.source.as_ref().map_or("code", |s| s.ty.as_str());
    let tool = node.source.as_ref().and_then(|s| s.tool.clone());
    match ty {
        "code" => Ok(ToolSource {
            path: cx.source_file(node)?,
            package: None,
            prompt: None,
            variables: vec![],
        }),
        "package" | "package_with_prompt" => {
            let Some(tool) = tool.filter(|t| !t.is_empty()) else {
                return Err(BuildError::new(format!(
                    "node `{}` has `source.type: {ty}` but no `source.tool`",
                    node.name
                ))
                .help("set `source.tool` to the tool's id, `module.function` or `module.Class.method`"));
            };
            if ty == "package" {
                return Ok(ToolSource {
                    path: cx.flow_dir().to_path_buf(),
                    package: Some(tool),
                    prompt: None,
                    variables: vec![],
                });
            }
            let path = cx.source_file(node)?;
            let variables = crate::template::Template::from_file(&path)?
                .variables()
                .to_vec();
            let prompt = std::fs::read_to_string(&path)
                .map_err(|e| BuildError::new(format!("cannot read {}: {e}", path.display())))?;
            Ok(ToolSource {
                path,
                package: Some(tool),
                prompt: Some(prompt),
                variables,
            })
        }
        other => Err(BuildError::new(format!(
            "source type `{other}` is not supported; use `code`, `package` or `package_with_prompt`"
        ))),
    }
}

/// Builds a node that calls a Python tool: a tool file or a package tool.
fn build_tool(node: &NodeDef, cx: &BuildContext) -> Result<Built, BuildError> {
    let ToolSource {
        path,
        package,
        prompt,
        variables,
    } = tool_source(node, cx)?;
    let rt = runtime().map_err(|e| BuildError::new(format!("cannot start Python: {e}")))?;
    let mut literals = Map::new();
    let mut references: Vec<String> = vec![];
    for (name, binding) in &node.inputs {
        match &binding.value {
            InputValue::Literal(v) => {
                literals.insert(name.clone(), v.clone());
            }
            _ => references.push(name.clone()),
        }
    }
    Python::attach(|py| {
        set_environment(py, rt, cx)?;
        let info = rt.host.bind(py).getattr("load_tool")?.call1((
            path.to_string_lossy().as_ref(),
            cx.flow_dir().to_string_lossy().as_ref(),
            to_py(py, &Value::Map(literals.clone()))?,
            references.clone(),
            stored_connections(py, &literals)?,
            package.as_deref(),
            prompt.as_deref(),
        ))?;
        let func: Py<PyAny> = info.get_item("func")?.unbind();
        let name: String = info.get_item("name")?.extract()?;
        let params: Vec<(String, String, bool)> = info.get_item("params")?.extract()?;
        let consumed: Vec<String> = info.get_item("consumed")?.extract()?;
        let connections = connection_params(&info, &literals)?;
        let clashes: Vec<&str> = variables
            .iter()
            .filter(|v| params.iter().any(|(p, _, _)| p == *v))
            .map(String::as_str)
            .collect();
        if !clashes.is_empty() {
            return Ok(Err(BuildError::new(format!(
                "the prompt template {} of node `{}` uses {}, which {} also takes as a parameter",
                path.display(),
                node.name,
                clashes
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                package.as_deref().unwrap_or("the tool")
            ))
            .help(
                "rename the template's variables so they differ from the tool's parameters",
            )));
        }
        let mut signature = Signature {
            accepts_kwargs: info.get_item("kwargs")?.extract()?,
            consumed,
            ..Default::default()
        };
        for (pname, ty, has_default) in params {
            let ty = match ty.as_str() {
                "connection" => None,
                other => ValueType::from_name(other),
            };
            signature.params.insert(
                pname,
                Param {
                    ty,
                    has_default,
                    required: !has_default,
                },
            );
        }
        let mut connection_args = HashMap::new();
        for DeclaredConnection {
            param,
            annotation,
            literal,
        } in connections
        {
            let resolved = match literal {
                Some(conn) => match connection_arg(py, rt, &param, annotation.bind(py), &conn) {
                    Ok(obj) => Some((conn, obj.unbind())),
                    Err(e) => {
                        return Ok(Err(connection_build_error(&node.name, &param, &e)));
                    }
                },
                None => None,
            };
            connection_args.insert(
                param,
                ConnectionParam {
                    annotation,
                    resolved,
                },
            );
        }
        Ok::<_, PyErr>(Ok(Built {
            node: Arc::new(PythonNode {
                func: Arc::new(func),
                connections: Arc::new(connection_args),
                name,
                node: node.name.clone(),
                tool: path.clone(),
                package: package.clone(),
                prompt: prompt.clone(),
                flow_dir: cx.flow_dir().to_path_buf(),
                literals: Value::Map(literals.clone()).to_json_lossy(),
                references: references.clone(),
                in_process: false,
            }),
            signature,
        }))
    })
    .map_err(|e| {
        let what = match &package {
            Some(tool) => format!("cannot load package tool `{tool}`"),
            None => format!("cannot load tool from {}", path.display()),
        };
        load_error(&what, &e)
    })?
}

/// Applies the flow's `environment_variables` to the interpreter's `os.environ`, as promptflow does
/// before it loads tools.
fn set_environment(py: Python<'_>, rt: &Runtime, cx: &BuildContext) -> PyResult<()> {
    if cx.flow.environment_variables.is_empty() {
        return Ok(());
    }
    let env = PyDict::new(py);
    for (k, v) in &cx.flow.environment_variables {
        env.set_item(k, v)?;
    }
    rt.host.bind(py).getattr("set_environment")?.call1((env,))?;
    Ok(())
}

/// A failed import of a tool or entry as a build error: `LoadError`s say what to do themselves;
/// other exceptions carry their traceback and point at the Python line that raised.
fn load_error(what: &str, e: &PyErr) -> BuildError {
    let d = Python::attach(|py| describe(py, e));
    let mut err = BuildError::new(format!("{what}: ({}) {}", d.exc_type, d.message));
    if d.exc_type != "LoadError" {
        err = err.help(format!("the import failed:\n{}", d.traceback.trim_end()));
    }
    if let (Some(file), Some(line)) = (&d.filename, d.lineno)
        && Path::new(file).is_file()
    {
        err = err.at(
            file,
            Some(sluice_engine::yaml::Span {
                line: line as usize,
                col: 1,
            }),
        );
    }
    err
}

/// A tool parameter annotated with a connection class.
#[derive(Debug)]
struct ConnectionParam {
    /// The annotation (a connection class, or a `Union` of them).
    annotation: Py<PyAny>,
    /// The object for the connection the node names as a literal, made when the flow loads.
    resolved: Option<(String, Py<PyAny>)>,
}

/// A connection parameter as `host.load_tool` describes it.
struct DeclaredConnection {
    param: String,
    annotation: Py<PyAny>,
    /// The connection the node names as a literal, if it does.
    literal: Option<String>,
}

/// The tool's connection parameters from `host.load_tool`'s answer.
fn connection_params(info: &Bound<'_, PyAny>, literals: &Map) -> PyResult<Vec<DeclaredConnection>> {
    let mut out = Vec::new();
    for (param, annotation) in info.get_item("connections")?.cast::<PyDict>()?.iter() {
        let param: String = param.extract()?;
        let literal = match literals.get(&param) {
            Some(Value::String(name)) if !name.is_empty() => Some(name.clone()),
            _ => None,
        };
        out.push(DeclaredConnection {
            param,
            annotation: annotation.unbind(),
            literal,
        });
    }
    Ok(out)
}

/// The stored connections that string literals among `literals` name, as `(type, configs, secrets)`
/// by name, for tools whose `__init__` takes a connection. A connection that cannot be read is left
/// out (the tool then says it does not exist, if it wants it).
fn stored_connections<'py>(py: Python<'py>, literals: &Map) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    for value in literals.values() {
        let Value::String(name) = value else { continue };
        let Ok(Some(conn)) = crate::llm::connections::load(name) else {
            continue;
        };
        let (configs, secrets) = (PyDict::new(py), PyDict::new(py));
        let mut readable = true;
        for (keys, dict) in [(&conn.configs, &configs), (&conn.secrets, &secrets)] {
            for key in keys.keys() {
                match conn.get(key) {
                    Ok(v) => dict.set_item(key, v)?,
                    Err(_) => readable = false,
                }
            }
        }
        if readable {
            out.set_item(name, (conn.kind.as_str(), configs, secrets))?;
        }
    }
    Ok(out)
}

/// A node's literals as they cross to a worker (a JSON object) as a map.
fn literal_map(literals: &serde_json::Value) -> Map {
    match Value::from(literals.clone()) {
        Value::Map(m) => m,
        _ => Map::new(),
    }
}

/// Why a tool's connection argument could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionArgError {
    #[error("connection `{name}` does not exist")]
    Missing { name: String },
    #[error("connection `{name}` cannot be read")]
    Store {
        name: String,
        #[source]
        source: crate::llm::connections::ConnectionError,
    },
    /// The tool's parameter does not take this type of connection, or its class refused the values.
    #[error("{message}")]
    Python { exc_type: String, message: String },
}

impl ConnectionArgError {
    fn error_type(&self) -> &'static str {
        match self {
            ConnectionArgError::Missing { .. } | ConnectionArgError::Store { .. } => {
                "GetConnectionError"
            }
            ConnectionArgError::Python { .. } => "ConnectionTypeError",
        }
    }
}

fn connection_build_error(node: &str, param: &str, e: &ConnectionArgError) -> BuildError {
    let err = BuildError::new(format!(
        "node `{node}`, input `{param}`: {}",
        crate::error_chain(e)
    ));
    match e {
        ConnectionArgError::Missing { .. } => err.help(format!(
            "create it with `sluice connection create -f <file.yaml>` (stored in {})",
            crate::llm::connections::connections_dir().display()
        )),
        _ => err,
    }
}

/// The object a tool's connection parameter receives for the stored connection `name`: an instance
/// of the annotated class (promptflow's `CustomConnection`, `AzureOpenAIConnection`, ...) holding
/// the connection's configs and secrets, `${env:...}` resolved.
fn connection_arg<'py>(
    py: Python<'py>,
    rt: &Runtime,
    param: &str,
    annotation: &Bound<'py, PyAny>,
    name: &str,
) -> Result<Bound<'py, PyAny>, ConnectionArgError> {
    use crate::llm::connections;
    let store = |source| ConnectionArgError::Store {
        name: name.to_owned(),
        source,
    };
    let conn =
        connections::load(name)
            .map_err(store)?
            .ok_or_else(|| ConnectionArgError::Missing {
                name: name.to_owned(),
            })?;
    let python = |e: PyErr| {
        let d = describe(py, &e);
        ConnectionArgError::Python {
            exc_type: d.exc_type,
            message: d.message,
        }
    };
    let configs = PyDict::new(py);
    let secrets = PyDict::new(py);
    for (keys, dict) in [(&conn.configs, &configs), (&conn.secrets, &secrets)] {
        for key in keys.keys() {
            let value = conn.get(key).map_err(store)?;
            dict.set_item(key, value).map_err(python)?;
        }
    }
    rt.host
        .bind(py)
        .getattr("make_connection")
        .and_then(|f| {
            f.call1((
                param,
                annotation,
                name,
                conn.kind.as_str(),
                configs,
                secrets,
            ))
        })
        .map_err(python)
}

/// Replaces connection names among a tool's arguments by connection objects.
fn with_connections(
    py: Python<'_>,
    rt: &Runtime,
    params: &HashMap<String, ConnectionParam>,
    kwargs: &Bound<'_, PyDict>,
) -> Result<(), ConnectionArgError> {
    for (param, p) in params {
        let Ok(Some(value)) = kwargs.get_item(param) else {
            continue;
        };
        let Ok(name) = value.extract::<String>() else {
            continue;
        };
        let obj = match &p.resolved {
            Some((literal, obj)) if *literal == name => obj.bind(py).clone(),
            _ => connection_arg(py, rt, param, p.annotation.bind(py), &name)?,
        };
        kwargs
            .set_item(param, obj)
            .map_err(|e| ConnectionArgError::Python {
                exc_type: "TypeError".into(),
                message: describe(py, &e).message,
            })?;
    }
    Ok(())
}

#[derive(Debug)]
struct PythonNode {
    func: Arc<Py<PyAny>>,
    /// Parameters that take connections, by name.
    connections: Arc<HashMap<String, ConnectionParam>>,
    name: String,
    /// What a worker process needs to load the same tool.
    node: String,
    tool: PathBuf,
    /// The package tool id, for a package tool (`tool` is then the flow folder or the template).
    package: Option<String>,
    /// The prompt template's text bound to a `package_with_prompt` tool.
    prompt: Option<String>,
    flow_dir: PathBuf,
    literals: serde_json::Value,
    references: Vec<String>,
    /// Whether calls stay in this process whatever the isolation (a flex flow's entry).
    in_process: bool,
}

impl PythonNode {
    /// Runs the call in a worker process.
    async fn run_isolated(&self, inputs: &Map, cx: &NodeContext) -> Result<Value, NodeError> {
        let request = isolation::Request {
            tool: self.tool.clone(),
            package: self.package.clone(),
            prompt: self.prompt.clone(),
            flow_dir: self.flow_dir.clone(),
            literals: self.literals.clone(),
            references: self.references.clone(),
            kwargs: isolation::inputs_json(inputs)?,
            node: self.node.clone(),
        };
        let response = isolation::pool().call(&request).await?;
        if let Some(metrics) = &cx.metrics {
            let mut m = metrics.lock().unwrap_or_else(|e| e.into_inner());
            for (k, v) in response.metrics {
                m.insert(k, Value::from(v));
            }
        }
        if let Some(mut details) = response.error {
            details.name.get_or_insert_with(|| self.name.clone());
            return Err(NodeError::tool(details));
        }
        if let Some(message) = response.system {
            return Err(NodeError::system("WorkerError", message));
        }
        Ok(response
            .output
            .map(isolation::from_wire)
            .unwrap_or(Value::Null))
    }
}

/// The error details `host.invoke` returns for an exception a tool raised.
fn tool_error(result: &Bound<'_, PyAny>) -> PyResult<ToolErrorDetails> {
    Ok(ToolErrorDetails {
        exc_type: result.get_item("type")?.extract()?,
        message: result.get_item("message")?.extract()?,
        traceback: result.get_item("traceback")?.extract()?,
        filename: result.get_item("filename")?.extract()?,
        lineno: result.get_item("lineno")?.extract()?,
        name: result.get_item("name")?.extract()?,
    })
}

/// A tool loaded in a worker process, and its connection parameters.
type WorkerTool = (Py<PyAny>, Arc<HashMap<String, ConnectionParam>>);

/// Tools loaded in a worker process, by file and init literals.
static WORKER_TOOLS: OnceLock<Mutex<HashMap<String, WorkerTool>>> = OnceLock::new();

/// A worker process's side of one call: load the tool (once), call it, return JSON.
pub(crate) fn call_in_worker(request: &isolation::Request) -> isolation::Response {
    let fail = |message: String| isolation::Response {
        output: None,
        error: None,
        system: Some(message),
        metrics: Default::default(),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start Python: {e}")),
    };
    let result = Python::attach(|py| -> PyResult<isolation::Response> {
        let key = format!(
            "{}\u{0}{}\u{0}{:?}\u{0}{:?}",
            request.tool.display(),
            request.literals,
            request.package,
            request.prompt
        );
        let tools = WORKER_TOOLS.get_or_init(Default::default);
        let cached = tools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .map(|(f, c)| (f.clone_ref(py), c.clone()));
        let (func, connections) = match cached {
            Some(f) => f,
            None => {
                let info = rt.host.bind(py).getattr("load_tool")?.call1((
                    request.tool.to_string_lossy().as_ref(),
                    request.flow_dir.to_string_lossy().as_ref(),
                    to_py(py, &Value::from(request.literals.clone()))?,
                    request.references.clone(),
                    stored_connections(py, &literal_map(&request.literals))?,
                    request.package.as_deref(),
                    request.prompt.as_deref(),
                ))?;
                let f: Py<PyAny> = info.get_item("func")?.unbind();
                // Names arrive per call here; each is looked up then.
                let connections: HashMap<String, ConnectionParam> =
                    connection_params(&info, &Map::new())?
                        .into_iter()
                        .map(|d| {
                            let p = ConnectionParam {
                                annotation: d.annotation,
                                resolved: None,
                            };
                            (d.param, p)
                        })
                        .collect();
                let connections = Arc::new(connections);
                tools
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, (f.clone_ref(py), connections.clone()));
                (f, connections)
            }
        };
        let kwargs = PyDict::new(py);
        for (k, v) in &request.kwargs {
            kwargs.set_item(k, to_py(py, &isolation::from_wire(v.clone()))?)?;
        }
        if let Err(e) = with_connections(py, rt, &connections, &kwargs) {
            return Ok(fail(format!(
                "node `{}`: {}",
                request.node,
                crate::error_chain(&e)
            )));
        }
        let sink = PyDict::new(py);
        let (ok, result) = rt.invoke(&func, kwargs, Some(&sink))?;
        let mut metrics = serde_json::Map::new();
        for (k, v) in sink.iter() {
            metrics.insert(k.str()?.to_string(), from_py(rt, &v)?.to_json_lossy());
        }
        if !ok {
            return Ok(isolation::Response {
                output: None,
                error: Some(tool_error(&result)?),
                system: None,
                metrics,
            });
        }
        let value = from_py(rt, &result)?;
        Ok(match isolation::output_json(&value) {
            Ok(output) => isolation::Response {
                output: Some(output),
                error: None,
                system: None,
                metrics,
            },
            Err(e) => isolation::Response {
                output: None,
                error: None,
                system: Some(format!(
                    "the output of node `{}` cannot leave its worker process: {e}",
                    request.node
                )),
                metrics,
            },
        })
    });
    result.unwrap_or_else(|e| {
        let d = Python::attach(|py| describe(py, &e));
        fail(format!("({}) {}", d.exc_type, d.message))
    })
}

#[async_trait]
impl Node for PythonNode {
    async fn run(&self, inputs: NodeInputs, cx: &NodeContext) -> Result<Value, NodeError> {
        let inputs = with_fetched_images(inputs).await?;
        if !self.in_process && isolation::isolation() != Isolation::InProcess {
            return self.run_isolated(&inputs, cx).await;
        }
        let func = self.func.clone();
        let connections = self.connections.clone();
        let metrics = cx.metrics.clone();
        let node_name = cx.node.clone();
        let line = cx.line;
        let entered = Arc::new(AtomicBool::new(false));
        let entered_in_call = entered.clone();
        let call = run_blocking(move || {
            let rt =
                runtime().map_err(|e| NodeError::system("PythonNotAvailable", e.to_string()))?;
            Python::attach(|py| {
                entered_in_call.store(true, Ordering::Relaxed);
                let _holder = Holder::enter(&node_name, line);
                let kwargs = PyDict::new(py);
                for (k, v) in &inputs {
                    kwargs.set_item(k, to_py(py, v)?)?;
                }
                if let Err(e) = with_connections(py, rt, &connections, &kwargs) {
                    return Ok(Err(NodeError::user(e.error_type(), crate::error_chain(&e))));
                }
                let sink = metrics.as_ref().map(|_| PyDict::new(py));
                let (ok, result) = rt.invoke(&func, kwargs, sink.as_ref())?;
                if let (Some(sink), Some(metrics)) = (sink, metrics) {
                    let mut m = metrics.lock().unwrap_or_else(|e| e.into_inner());
                    for (k, v) in sink.iter() {
                        let v = match from_py(rt, &v) {
                            Ok(v) => v,
                            Err(e) => return Ok(Err(unreadable(py, &node_name, "a metric", &e))),
                        };
                        m.insert(k.str()?.to_string(), v);
                    }
                }
                if ok {
                    Ok(from_py(rt, &result).map_err(|e| unreadable(py, &node_name, "a value", &e)))
                } else {
                    Ok(Err(NodeError::tool(tool_error(&result)?)))
                }
            })
            .unwrap_or_else(|e: PyErr| {
                Err(Python::attach(|py| {
                    NodeError::system("PythonHostError", describe(py, &e).message)
                }))
            })
        });
        tokio::pin!(call);
        let result = tokio::select! {
            r = &mut call => r,
            () = tokio::time::sleep(HOLDER_WARN_AFTER) => {
                if !entered.load(Ordering::Relaxed) {
                    Holder::warn_if_stuck(&self.name);
                }
                call.await
            }
        };
        result.map_err(|mut e| {
            if let Some(t) = &mut e.tool
                && t.name.is_none()
            {
                t.name = Some(self.name.clone());
            }
            e
        })
    }
}

/// The inputs with the bytes of their URL images fetched, as promptflow hands a tool an `Image`
/// with the bytes of its URL.
async fn with_fetched_images(mut inputs: NodeInputs) -> Result<NodeInputs, NodeError> {
    for (name, value) in inputs.iter_mut() {
        if sluice_engine::image::has_remote(value) {
            *value = sluice_engine::image::fetch_all(value).await.map_err(|e| {
                NodeError::user(
                    "InvalidImageInput",
                    format!("input `{name}`: {}", crate::error_chain(&e)),
                )
            })?;
        }
    }
    Ok(inputs)
}

/// How long a Python node waits for the interpreter before it checks whether a tool holds it.
const HOLDER_WARN_AFTER: Duration = Duration::from_secs(2);

/// The in-process tool call that holds the interpreter now: its node, line and start.
static HOLDER: Mutex<Option<(String, Option<usize>, Instant)>> = Mutex::new(None);
/// Whether the run was already told that a tool holds the interpreter (it is said once).
static HOLDER_WARNED: AtomicBool = AtomicBool::new(false);

/// Marks the interpreter held by a tool call for as long as it lives.
struct Holder;

impl Holder {
    fn enter(node: &str, line: Option<usize>) -> Holder {
        *HOLDER.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((node.to_owned(), line, Instant::now()));
        Holder
    }

    /// Says (once) which tool keeps other Python nodes waiting, when one has held the interpreter
    /// past [`HOLDER_WARN_AFTER`]: a tool computing without releasing it cannot be stopped in
    /// process, so every other Python node waits, and its lines time out.
    fn warn_if_stuck(waiting: &str) {
        let holder = HOLDER.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some((node, line, since)) = holder else {
            return;
        };
        if since.elapsed() < HOLDER_WARN_AFTER || HOLDER_WARNED.swap(true, Ordering::Relaxed) {
            return;
        }
        let line = line.map(|l| format!(" (line {l})")).unwrap_or_default();
        tracing::warn!(
            "node `{waiting}` waits for Python: node `{node}`{line} has held the interpreter for {:.0} s \
             and cannot be stopped in process; Python nodes of other lines wait (and may time out) until \
             it returns. Run with --isolation process to run tools in worker processes that are stopped at \
             the line timeout.",
            since.elapsed().as_secs_f64()
        );
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        *HOLDER.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// A tool's result (or metric) that cannot become a [`Value`], as an error naming the node.
fn unreadable(py: Python<'_>, node: &str, what: &str, err: &PyErr) -> NodeError {
    let d = describe(py, err);
    NodeError::user(
        "ToolOutputError",
        format!(
            "node `{node}` returned {what} Sluice cannot read: ({}) {}",
            d.exc_type, d.message
        ),
    )
}

/// Converts an engine value into a Python object.
fn to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Int(i) => i.into_pyobject(py)?.into_any(),
        Value::Float(f) => PyFloat::new(py, *f).into_any(),
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::List(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Map(map) => {
            let dict = PyDict::new(py);
            for (k, item) in map {
                dict.set_item(k, to_py(py, item)?)?;
            }
            dict.into_any()
        }
        Value::Opaque(o) => match o.as_any().downcast_ref::<PyObj>() {
            Some(obj) => obj.obj.bind(py).clone(),
            None => match o.as_any().downcast_ref::<Image>() {
                Some(image) => image_to_py(py, image)?,
                None => PyString::new(py, &o.to_str()).into_any(),
            },
        },
    })
}

/// An image as promptflow's `promptflow.contracts.multimedia.Image` (Sluice's stand-in, or an
/// installed promptflow's).
fn image_to_py<'py>(py: Python<'py>, image: &Image) -> PyResult<Bound<'py, PyAny>> {
    let bytes = PyBytes::new(py, image.bytes());
    py.import("promptflow.contracts.multimedia")?
        .getattr("Image")?
        .call1((bytes, image.mime_type(), image.source_url()))
}

/// A promptflow `Image` (or other `PFBytes`) back as an image.
fn image_from_py(obj: &Bound<'_, PyAny>) -> PyResult<Option<Value>> {
    let Ok(bytes) = obj.cast::<PyBytes>() else {
        return Ok(None);
    };
    if !obj.hasattr("_mime_type")? {
        return Ok(None);
    }
    let mime: String = obj.getattr("_mime_type")?.extract()?;
    let url: Option<String> = obj
        .getattr("source_url")
        .ok()
        .and_then(|u| u.extract().ok());
    Ok(Some(
        Image::new(bytes.as_bytes().to_vec(), Some(&mime), url).into_value(),
    ))
}

/// Converts a Python object into an engine value; what is not JSON-shaped stays a Python object.
///
/// Lists and dicts may nest [`sluice_engine::value::MAX_DEPTH`] deep; one that contains itself is an
/// error, not an endless recursion that overflows the thread's stack.
fn from_py(rt: &'static Runtime, obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    from_py_in(rt, obj, &mut Vec::new())
}

/// A value as the Python object a tool would be given (the Python package's flow inputs and outputs).
pub fn value_to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    to_py(py, v)
}

/// A Python object as a value, as a tool's result is read (objects without a JSON form are kept as
/// they are, for a Python node to take).
pub fn value_from_py(obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    let rt = runtime().map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
    from_py(rt, obj)
}

/// [`from_py`] inside the containers on `path` (outermost first).
fn from_py_in(
    rt: &'static Runtime,
    obj: &Bound<'_, PyAny>,
    path: &mut Vec<*mut pyo3::ffi::PyObject>,
) -> PyResult<Value> {
    let enter = |path: &mut Vec<*mut pyo3::ffi::PyObject>| -> PyResult<()> {
        use sluice_engine::value::MAX_DEPTH;
        if path.contains(&obj.as_ptr()) {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "the value contains itself (a list or dict that holds itself has no JSON form)",
            ));
        }
        if path.len() >= MAX_DEPTH {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "lists and dicts nest more than {MAX_DEPTH} deep"
            )));
        }
        path.push(obj.as_ptr());
        Ok(())
    };
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if obj.is_instance_of::<PyBool>() {
        return Ok(Value::Bool(obj.extract()?));
    }
    if obj.is_instance_of::<PyInt>() {
        return Ok(match obj.extract::<i64>() {
            Ok(i) => Value::Int(i),
            Err(_) => Value::Float(obj.extract::<f64>()?),
        });
    }
    if obj.is_instance_of::<PyFloat>() {
        return Ok(Value::Float(obj.extract()?));
    }
    if obj.is_instance_of::<PyString>() {
        return Ok(Value::String(obj.extract()?));
    }
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        enter(path)?;
        let mut items = vec![];
        for item in obj.try_iter()? {
            items.push(from_py_in(rt, &item?, path)?);
        }
        path.pop();
        return Ok(Value::List(items));
    }
    if let Ok(dict) = obj.cast::<PyDict>() {
        enter(path)?;
        let mut map = Map::new();
        for (k, v) in dict.iter() {
            // Keys as json.dumps writes them: True -> "true", None -> "null", 1.5 -> "1.5".
            let key = if let Ok(s) = k.cast::<PyString>() {
                s.to_string()
            } else if k.is_instance_of::<PyBool>() {
                if k.extract::<bool>()? {
                    "true".into()
                } else {
                    "false".into()
                }
            } else if k.is_none() {
                "null".into()
            } else if k.is_instance_of::<PyFloat>() {
                k.repr()?.to_string()
            } else {
                k.str()?.to_string()
            };
            map.insert(key, from_py_in(rt, &v, path)?);
        }
        path.pop();
        return Ok(Value::Map(map));
    }
    if let Some(image) = image_from_py(obj)? {
        return Ok(image);
    }
    let host = rt.host.bind(obj.py());
    let stream: bool = host.getattr("is_stream")?.call1((obj,))?.extract()?;
    let type_name = obj.get_type().name()?.to_string();
    Ok(Value::Opaque(Arc::new(PyObj {
        obj: obj.clone().unbind(),
        type_name,
        stream,
        cancelled: std::sync::atomic::AtomicBool::new(false),
    })))
}

/// A Python object that is not JSON-shaped (a generator, a class instance).
#[derive(Debug)]
struct PyObj {
    obj: Py<PyAny>,
    type_name: String,
    stream: bool,
    /// Set by [`Opaque::cancel`]: a stream being read stops before its next item.
    cancelled: std::sync::atomic::AtomicBool,
}

impl PyObj {
    fn call_host<T>(
        &self,
        f: impl FnOnce(Python<'_>, &'static Runtime, &Bound<'_, PyAny>) -> PyResult<T>,
    ) -> Option<T> {
        let rt = runtime().ok()?;
        Python::attach(|py| f(py, rt, self.obj.bind(py)).ok())
    }
}

impl Opaque for PyObj {
    fn type_name(&self) -> String {
        self.type_name.clone()
    }

    fn to_str(&self) -> String {
        self.call_host(|_, _, o| Ok(o.str()?.to_string()))
            .unwrap_or_else(|| format!("<{}>", self.type_name))
    }

    fn repr(&self) -> String {
        self.call_host(|_, _, o| Ok(o.repr()?.to_string()))
            .unwrap_or_else(|| format!("<{}>", self.type_name))
    }

    fn to_plain(&self) -> Option<Value> {
        if self.stream {
            return None;
        }
        self.call_host(|_, rt, o| {
            let plain = rt.host.bind(o.py()).getattr("to_plain")?.call1((o,))?;
            if plain.is_none() {
                return Err(PyErr::new::<pyo3::exceptions::PyTypeError, _>("not plain"));
            }
            let v = from_py(rt, &plain)?;
            v.to_plain()
                .map_err(|e| PyErr::new::<pyo3::exceptions::PyTypeError, _>(e.to_string()))
        })
    }

    fn is_stream(&self) -> bool {
        self.stream
    }

    fn drain(&self) -> Result<Vec<String>, sluice_engine::StreamError> {
        let mut items = Vec::new();
        self.for_each_chunk(&mut |item| items.push(item.to_owned()))?;
        Ok(items)
    }

    /// Reads the iterator one item at a time, each as its `str()`. Once cancelled, it stops before
    /// the next item and closes a generator (its `finally` blocks run), so a stream whose line timed
    /// out or was dropped does not go on producing.
    fn for_each_chunk(&self, f: &mut dyn FnMut(&str)) -> Result<(), sluice_engine::StreamError> {
        use std::sync::atomic::Ordering;
        let failed = |py: Python<'_>, e: &PyErr| {
            let d = describe(py, e);
            sluice_engine::StreamError::new(format!("({}) {}", d.exc_type, d.message))
        };
        Python::attach(|py| {
            let obj = self.obj.bind(py);
            loop {
                if self.cancelled.load(Ordering::Acquire) {
                    if obj.hasattr("close").unwrap_or(false) {
                        let _ = obj.call_method0("close");
                    }
                    return Err(sluice_engine::StreamError::new(
                        "the stream was stopped before its end",
                    ));
                }
                let item = match obj.call_method0("__next__") {
                    Ok(item) => item,
                    Err(e) if e.is_instance_of::<pyo3::exceptions::PyStopIteration>(py) => {
                        return Ok(());
                    }
                    Err(e) => return Err(failed(py, &e)),
                };
                let text = item.str().map_err(|e| failed(py, &e))?.to_string();
                f(&text);
            }
        })
    }

    fn cancel(&self) {
        self.cancelled
            .store(true, std::sync::atomic::Ordering::Release);
    }

    fn lookup(&self, step: &PathStep) -> Option<Value> {
        self.call_host(|py, rt, o| {
            let host = rt.host.bind(py);
            let key = match step {
                PathStep::Key(k) => PyString::new(py, k).into_any(),
                PathStep::Index(i) => i.into_pyobject(py)?.into_any(),
            };
            let found = host.getattr("lookup")?.call1((o, key))?;
            if host
                .getattr("is_missing")?
                .call1((&found,))?
                .extract::<bool>()?
            {
                return Err(PyErr::new::<pyo3::exceptions::PyKeyError, _>("missing"));
            }
            from_py(rt, &found)
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A Python exception as type, message and traceback.
fn describe(py: Python<'_>, err: &PyErr) -> ToolErrorDetails {
    let exc_type = err
        .get_type(py)
        .name()
        .map(|s| s.to_string())
        .unwrap_or_else(|_| "Exception".into());
    let message = err
        .value(py)
        .str()
        .map(|s| s.to_string())
        .unwrap_or_default();
    let (traceback, filename, lineno) = match runtime().ok().and_then(|rt| {
        rt.host
            .bind(py)
            .getattr("error_details")
            .ok()?
            .call1((err.value(py),))
            .ok()
    }) {
        Some(d) => (
            d.get_item("traceback")
                .and_then(|t| t.extract())
                .unwrap_or_default(),
            d.get_item("filename")
                .and_then(|t| t.extract())
                .unwrap_or_default(),
            d.get_item("lineno")
                .and_then(|t| t.extract())
                .unwrap_or_default(),
        ),
        None => (
            err.traceback(py)
                .and_then(|t| t.format().ok())
                .unwrap_or_default(),
            None,
            None,
        ),
    };
    ToolErrorDetails {
        exc_type,
        message,
        traceback,
        filename,
        lineno,
        name: None,
    }
}
