//! `sluice._native`: the engine and the `sluice` CLI compiled into a Python extension module.
//!
//! The Python package (`python/sluice/`) wraps these few entry points in its typed API
//! (`sluice.load_flow`, `sluice.run`, the promptflow client); nothing here is meant to be called
//! directly. Run records cross the boundary as JSON text (NaN and infinities included), errors as the
//! exceptions below with their details as JSON (a line's inputs and outputs as Python objects, converted as
//! a tool's are), and every call into the engine releases the GIL,
//! so other Python threads run meanwhile and the flow's own Python tools run in this interpreter.
//!
//! ```python
//! from sluice import _native
//! flow = _native.Flow("flows/hello", None, [])
//! ok, outputs = flow.call({"name": "Ada"})
//! ```
#![cfg(feature = "extension")]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use serde_json::json;
use sluice_engine::{
    BatchRun, Flow, FlowError, LineOptions, LoadOptions, Map, RunOptions, RunSpec, Status, Value,
    VariantSelection,
};
use sluice_nodes::python::{value_from_py, value_to_py};

create_exception!(
    _native,
    LoadError,
    PyException,
    "A flow that cannot load; args: (message, problems as JSON)."
);
create_exception!(
    _native,
    RunError,
    PyException,
    "A batch run that could not start or be recorded; args: (message, is_user_error)."
);

/// The async runtime every call shares; it lives as long as the process.
fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sluice")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| PyRuntimeError::new_err(format!("cannot start the async runtime: {e}")))
}

/// Tools open files relative to their flow folder, as in promptflow: while any call runs, the
/// process works in the flow's folder, and the caller's folder comes back when the last one ends.
#[derive(Debug)]
struct InFlowDir;

static CWD: Mutex<(usize, Option<PathBuf>)> = Mutex::new((0, None));

impl InFlowDir {
    fn enter(dir: &Path) -> InFlowDir {
        let mut cwd = CWD.lock().unwrap_or_else(|e| e.into_inner());
        if cwd.0 == 0 {
            cwd.1 = std::env::current_dir().ok();
        }
        cwd.0 += 1;
        let _ = std::env::set_current_dir(dir);
        InFlowDir
    }
}

impl Drop for InFlowDir {
    fn drop(&mut self) {
        let mut cwd = CWD.lock().unwrap_or_else(|e| e.into_inner());
        cwd.0 -= 1;
        if cwd.0 == 0
            && let Some(back) = cwd.1.take()
        {
            let _ = std::env::set_current_dir(back);
        }
    }
}

/// The problems of a flow that does not load, as `LoadError(message, problems_json)`.
fn load_error(e: &FlowError) -> PyErr {
    let problems: Vec<serde_json::Value> = if e.problems().is_empty() {
        let (file, line, col) = match e {
            FlowError::Yaml { file, span, .. } => (Some(file.clone()), span.line, span.col),
            FlowError::Io { path, .. } | FlowError::NotFound { path } => (Some(path.clone()), 0, 0),
            FlowError::Ambiguous { dir, .. } => (Some(dir.clone()), 0, 0),
            FlowError::Invalid { file, .. } => (Some(file.clone()), 0, 0),
        };
        vec![json!({
            "code": "FlowLoadError",
            "message": e.to_string(),
            "node": null,
            "file": file.map(|f| f.display().to_string()),
            "line": (line > 0).then_some(line),
            "column": (col > 0).then_some(col),
            "help": null,
        })]
    } else {
        let flow_file = match e {
            FlowError::Invalid { file, .. } => Some(file.display().to_string()),
            _ => None,
        };
        e.problems()
            .iter()
            .map(|p| {
                json!({
                    "code": p.code,
                    "message": p.message,
                    "node": p.node,
                    "file": p.file.as_ref().map(|f| f.display().to_string()).or(flow_file.clone()),
                    "line": p.span.map(|s| s.line),
                    "column": p.span.map(|s| s.col),
                    "help": p.help,
                })
            })
            .collect()
    };
    let message = sluice_engine::redact::redact(&e.render()).into_owned();
    LoadError::new_err((message, serde_json::Value::Array(problems).to_string()))
}

/// Loads and checks a flow (a flex flow's class entry given `init`), applying `NODE.KEY=VALUE`
/// connection settings first.
fn load(
    path: &Path,
    variant: Option<&str>,
    init: Option<&Map>,
    connections: &[String],
) -> PyResult<Flow> {
    let variant = match variant {
        None => None,
        Some(v) => Some(VariantSelection::parse(v).ok_or_else(|| {
            LoadError::new_err((
                format!("variant must look like '${{node.variant_id}}', got {v:?}"),
                "[]".to_owned(),
            ))
        })?),
    };
    let registry = sluice_nodes::builtin_registry();
    if connections.is_empty() {
        let options = LoadOptions {
            variant,
            init: init.cloned(),
        };
        return Flow::load(path, &registry, &options).map_err(|e| load_error(&e));
    }
    let mut def = sluice_engine::load::load_flow_def_with(path, variant.as_ref(), init)
        .map_err(|e| load_error(&e))?;
    sluice::set_connections(&mut def, connections)
        .map_err(|e| LoadError::new_err((e, "[]".to_owned())))?;
    Flow::from_def(def, &registry).map_err(|e| load_error(&e))
}

fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> PyResult<String> {
    sluice_engine::json::to_string(value).map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

/// A loaded, checked flow.
#[pyclass(module = "sluice._native", frozen)]
#[derive(Debug)]
struct NativeFlow {
    flow: Flow,
}

#[pymethods]
impl NativeFlow {
    #[new]
    #[pyo3(signature = (path, variant, connections))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        variant: Option<String>,
        connections: Vec<String>,
    ) -> PyResult<NativeFlow> {
        // Loading imports the flow's tools, which needs the GIL on another thread: let go of it.
        let flow = py.detach(|| load(&path, variant.as_deref(), None, &connections))?;
        Ok(NativeFlow { flow })
    }

    /// The flow's name, folder, inputs (name -> {type, default}) and output names, as JSON.
    fn describe(&self) -> PyResult<String> {
        let def = &self.flow.def;
        let inputs: serde_json::Map<String, serde_json::Value> = def
            .inputs
            .iter()
            .map(|(name, input)| {
                (
                    name.clone(),
                    json!({
                        "type": input.ty.name(),
                        "default": input.default.as_ref().map(Value::to_json_lossy),
                    }),
                )
            })
            .collect();
        let sample = match (&def.prompty, &def.flex) {
            (Some(p), _) => p.sample.as_ref(),
            (None, Some(f)) => f.sample.as_ref(),
            (None, None) => None,
        };
        to_json(&json!({
            "name": def.name,
            "dir": def.dir.display().to_string(),
            "inputs": inputs,
            "outputs": def.outputs.keys().collect::<Vec<_>>(),
            "environment_variables": def.environment_variables,
            "sample": sample.map(|s| sluice_engine::json::to_string(s).unwrap_or_default()),
            "has_aggregation": self.flow.has_aggregation(),
        }))
    }

    /// Runs one line on the flow inputs `inputs` (a dict): `(True, outputs)` with the outputs as a
    /// dict, or `(False, error_json)` with the failing node and the tool's traceback. With `stream`,
    /// streamed outputs (an `llm` node's answer, a generator tool's) are [`OutputStream`]s.
    #[pyo3(signature = (inputs, timeout = None, stream = false))]
    fn call<'py>(
        &self,
        inputs: &Bound<'py, PyDict>,
        timeout: Option<f64>,
        stream: bool,
    ) -> PyResult<(bool, Bound<'py, PyAny>)> {
        let py = inputs.py();
        let mut map = Map::with_capacity(inputs.len());
        for (k, v) in inputs.iter() {
            map.insert(k.extract::<String>()?, value_from_py(&v)?);
        }
        let inputs = map;
        let rt = runtime()?;
        let opts = LineOptions {
            node_concurrency: 2,
            timeout: timeout.filter(|t| *t > 0.0).map(Duration::from_secs_f64),
            stream,
            ..LineOptions::default()
        };
        let line = py.detach(|| {
            let _dir = InFlowDir::enter(&self.flow.def.dir);
            let run = || rt.block_on(self.flow.run_line(&inputs, &opts));
            // This thread waits for the line anyway: without a timeout to enforce, Python tools and
            // renders run on it, sparing a hand-off to the blocking pool and back per node.
            if opts.timeout.is_none() {
                sluice_engine::spawn::inline_blocking(run)
            } else {
                run()
            }
        });
        if line.status == Status::Completed && line.error.is_none() {
            let outputs = PyDict::new(py);
            for (k, v) in &line.output {
                match v {
                    Value::Opaque(o) if stream && o.is_stream() => {
                        outputs.set_item(k, OutputStream::start(k, o.clone())?)?
                    }
                    _ => outputs.set_item(k, value_to_py(py, v)?)?,
                }
            }
            return Ok((true, outputs.into_any()));
        }
        let node = line
            .node_runs
            .iter()
            .find(|r| r.status == Status::Failed)
            .map(|r| r.node.clone());
        let error = line
            .error
            .as_ref()
            .map(|e| serde_json::to_value(e).unwrap_or_default())
            .unwrap_or_else(|| json!({"message": format!("the line ended {:?}", line.status)}));
        let error = to_json(&json!({"node": node, "error": error}))?;
        Ok((false, PyString::new(py, &error).into_any()))
    }
}

/// A streamed output: an iterator of its text chunks as they are produced (read on a thread of its
/// own, so waiting for the next chunk releases the GIL). Dropping it stops the stream.
#[pyclass(module = "sluice._native")]
#[derive(Debug)]
struct OutputStream {
    chunks: Mutex<std::sync::mpsc::Receiver<Result<String, String>>>,
    stream: Arc<dyn sluice_engine::Opaque>,
}

impl OutputStream {
    fn start(name: &str, stream: Arc<dyn sluice_engine::Opaque>) -> PyResult<OutputStream> {
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = stream.clone();
        sluice_engine::spawn::thread(format!("stream {name}"), move || {
            let result = reader.for_each_chunk(&mut |chunk| {
                let _ = tx.send(Ok(chunk.to_owned()));
            });
            if let Err(e) = result {
                let _ = tx.send(Err(e.to_string()));
            }
        })
        .map_err(|e| PyRuntimeError::new_err(format!("cannot read the stream: {e}")))?;
        Ok(OutputStream {
            chunks: Mutex::new(rx),
            stream,
        })
    }
}

#[pymethods]
impl OutputStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let next = py.detach(|| self.chunks.lock().unwrap_or_else(|e| e.into_inner()).recv());
        match next {
            Ok(Ok(chunk)) => Ok(Some(chunk)),
            Ok(Err(e)) => Err(PyRuntimeError::new_err(format!("the stream stopped: {e}"))),
            Err(_) => Ok(None),
        }
    }
}

impl Drop for OutputStream {
    fn drop(&mut self) {
        self.stream.cancel();
    }
}

/// Runs a batch (or evaluation) run into the run store and returns its record as JSON. `shard`
/// (`I/N`) runs one shard of the data's lines; `resume_from` continues an earlier run (its completed
/// lines carried over, the lines that were running when its process died run again), taking what is
/// not given here (flow, data, base run, mapping, variant, shard) from it.
#[pyfunction]
#[pyo3(signature = (flow, data, run, column_mapping, variant, name, display_name, tags, max_concurrency, line_timeout, shard = None, resume_from = None, init = None, connections = Vec::new()))]
#[allow(clippy::too_many_arguments)]
fn create_run(
    py: Python<'_>,
    flow: Option<PathBuf>,
    data: Option<PathBuf>,
    run: Option<String>,
    column_mapping: Vec<(String, String)>,
    variant: Option<String>,
    name: Option<String>,
    display_name: Option<String>,
    tags: Vec<(String, String)>,
    max_concurrency: usize,
    line_timeout: Option<f64>,
    shard: Option<String>,
    resume_from: Option<String>,
    init: Option<String>,
    connections: Vec<String>,
) -> PyResult<String> {
    let init = match init {
        None => None,
        Some(text) => match sluice_engine::json::from_str::<Value>(&text) {
            Ok(Value::Map(m)) => Some(m),
            _ => {
                return Err(RunError::new_err((
                    "init must be a JSON object of __init__ arguments".to_owned(),
                    true,
                )));
            }
        },
    };
    let mut spec = RunSpec {
        flow: flow.map(|f| std::path::absolute(&f).unwrap_or(f)),
        data: data.map(|d| std::path::absolute(&d).unwrap_or(d)),
        run,
        variants: variant.iter().cloned().collect(),
        column_mapping: column_mapping
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect(),
        name,
        display_name,
        tags: tags.into_iter().collect(),
        shard: shard
            .map(|s| sluice_engine::Shard::parse(&s))
            .transpose()
            .map_err(run_error)?,
        resume_from,
        init,
        ..RunSpec::default()
    };
    spec.resume(&store()).map_err(run_error)?;
    execute(py, spec, max_concurrency, line_timeout, &connections)
}

/// Makes one run `name` of the shard runs `from` (their completed lines, the lines none completed,
/// then the aggregation over all) and returns its record as JSON.
#[pyfunction]
#[pyo3(signature = (name, from, max_concurrency))]
fn merge_runs(
    py: Python<'_>,
    name: String,
    from: Vec<String>,
    max_concurrency: usize,
) -> PyResult<String> {
    let mut spec = RunSpec {
        name: Some(name),
        merge_from: from,
        ..RunSpec::default()
    };
    spec.merge(&store()).map_err(run_error)?;
    execute(py, spec, max_concurrency, None, &[])
}

fn store() -> sluice_engine::RunStore {
    sluice_engine::RunStore::new(sluice_nodes::llm::store::sluice_home())
}

fn run_error(e: sluice_engine::RunError) -> PyErr {
    let message = sluice_engine::redact::redact(&error_chain(&e)).into_owned();
    RunError::new_err((message, e.is_user_error()))
}

/// Runs `spec` (one variant at most) with the GIL released, its nodes' connections set by
/// `connections` (`NODE.KEY=VALUE`); its record as JSON.
///
/// A signal Python wants handled (Ctrl-C's `KeyboardInterrupt`) stops the run: it is recorded as
/// canceled (resumable with `resume_from`) and the exception is raised here. Signals are checked
/// every 50 ms, on the main thread only, as Python itself does.
fn execute(
    py: Python<'_>,
    spec: RunSpec,
    max_concurrency: usize,
    line_timeout: Option<f64>,
    connections: &[String],
) -> PyResult<String> {
    spec.check().map_err(run_error)?;
    let rt = runtime()?;
    let opts = RunOptions {
        max_concurrency: max_concurrency.max(1),
        node_concurrency: 2,
        line_timeout: Some(Duration::from_secs_f64(
            line_timeout.filter(|t| *t > 0.0).unwrap_or(600.0),
        )),
        batch_timeout: None,
    };
    let store = store();
    let flow = spec.flow.clone().expect("checked");
    let variant = spec.variants.first().cloned();
    let init = spec.init.clone();
    let interrupt: Mutex<Option<PyErr>> = Mutex::new(None);
    let record = py.detach(|| {
        let flow = load(&flow, variant.as_deref(), init.as_ref(), connections)?;
        let one = spec.for_variant(variant.as_deref(), false);
        let run = BatchRun::prepare(&store, flow, &one, opts).map_err(run_error)?;
        let _dir = InFlowDir::enter(&run.flow().def.dir.clone());
        let stop = async {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if let Err(e) = Python::attach(|py| py.check_signals()) {
                    *interrupt.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                    return;
                }
            }
        };
        rt.block_on(run.execute(&mut (), stop)).map_err(run_error)
    });
    if let Some(e) = interrupt.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    serde_json::to_string(&record?).map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// Keeps a connection given as an object (its spec as JSON, as `sluice connection create` reads it)
/// in this process only, under its name: flows loaded and runs made here find it before the store,
/// and its secrets are masked wherever the engine writes or logs.
#[pyfunction]
fn keep_connection(spec: &str) -> PyResult<()> {
    use sluice_nodes::llm::connections::{Connection, keep_in_memory};
    let conn = Connection::from_yaml(spec, Path::new("<connection object>")).map_err(|e| {
        PyValueError::new_err(sluice_engine::redact::redact(&e.to_string()).into_owned())
    })?;
    keep_in_memory(conn);
    Ok(())
}

/// `$SLUICE_HOME` (default `~/.sluice`): where runs, models and connections live.
#[pyfunction]
fn home() -> PathBuf {
    sluice_nodes::llm::store::sluice_home()
}

/// Runs one `sluice` command line in this process (`argv[0]` is the program name); its exit code.
#[pyfunction]
fn cli_main(py: Python<'_>, argv: Vec<String>) -> i32 {
    py.detach(|| sluice::run_cli(argv))
}

#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Tools run in this interpreter, next to the program's own modules.
    sluice_nodes::python::set_hosted();
    // Worker processes (`--isolation process`) are this interpreter running the package's CLI.
    let executable: PathBuf = m.py().import("sys")?.getattr("executable")?.extract()?;
    sluice_nodes::python::set_worker_command(executable, vec!["-m".into(), "sluice".into()]);
    m.add_class::<NativeFlow>()?;
    m.add_class::<OutputStream>()?;
    m.add_function(wrap_pyfunction!(create_run, m)?)?;
    m.add_function(wrap_pyfunction!(merge_runs, m)?)?;
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    m.add_function(wrap_pyfunction!(home, m)?)?;
    m.add_function(wrap_pyfunction!(keep_connection, m)?)?;
    m.add("LoadError", m.py().get_type::<LoadError>())?;
    m.add("RunError", m.py().get_type::<RunError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
