//! `Prompty.load(path, model=...)(**inputs)` for Python tools: a prompty file run by Sluice's own
//! loader and `llm` node, from the tool's thread, with the interpreter lock released while it runs.
//!
//! The class is added to the `sluice` module and, when promptflow is not installed, to the
//! `promptflow.core` stand-in; with promptflow installed, its own `Prompty` is left in place.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use sluice_engine::prompty::PromptyResponse;
use sluice_engine::{Flow, LineOptions, Map, Value};

use super::call::{CallError, map_of, on_own_thread};

const PROMPTY_SOURCE: &str = r#"
import inspect as _inspect
import os as _os
import sys as _sys
import types as _types


_CONFIG_TYPES = {"AzureOpenAIModelConfiguration": "azure_openai", "OpenAIModelConfiguration": "openai"}


def _model_overrides(model):
    """`model=` as plain dicts: a model configuration object (as flex flows pass their init's)
    becomes its fields, its class giving the `type`; unset fields are left out."""
    model = dict(model or {})
    conf = model.get("configuration")
    if conf is not None and not isinstance(conf, dict):
        fields = dict(vars(conf))
        kind = _CONFIG_TYPES.get(type(conf).__name__)
        if kind:
            fields.setdefault("type", kind)
        conf = fields
    if isinstance(conf, dict):
        model["configuration"] = {k: v for k, v in conf.items() if v is not None}
    return model


class Prompty:
    """A prompty file, run by Sluice: ``Prompty.load("chat.prompty")(question="...")``."""

    def __init__(self, path, model=None, **kwargs):
        self._path = path
        self._model = _model_overrides(model)

    @classmethod
    def load(cls, source, model=None, **kwargs):
        path = _os.fspath(source)
        if not _os.path.isabs(path) and not _os.path.exists(path):
            # Relative to the calling tool's file, where a flow keeps its prompty files.
            caller = _inspect.stack()[1].filename
            candidate = _os.path.join(_os.path.dirname(_os.path.abspath(caller)), path)
            if _os.path.exists(candidate):
                path = candidate
        return cls(_os.path.abspath(path), model=model)

    def __call__(self, *args, **kwargs):
        if args:
            raise TypeError("Prompty can only be called with keyword arguments")
        return _run_prompty(self._path, kwargs, self._model)

    def estimate_token_count(self, **kwargs):
        """A rough count of the tokens a call would use: the template and the inputs at about four
        characters a token, plus `max_tokens` when `model=` sets it. promptflow counts the
        rendered prompt with tiktoken; this errs the same way on long inputs."""
        with open(self._path, encoding="utf-8") as f:
            text = f.read()
        chars = len(text) + sum(len(str(v)) for v in kwargs.values())
        max_tokens = (self._model.get("parameters") or {}).get("max_tokens") or 0
        return chars // 4 + int(max_tokens)

    def __repr__(self):
        return "Prompty(%r)" % self._path


def _install(sluice):
    sluice.Prompty = Prompty
    core = _sys.modules.get("promptflow.core")
    if core is not None and getattr(core, "__file__", "") == "<sluice promptflow stand-in>":
        core.Prompty = Prompty
        flow = _types.ModuleType("promptflow.core._flow")
        flow.__file__ = core.__file__
        flow.Prompty = Prompty
        core._flow = flow
        _sys.modules["promptflow.core._flow"] = flow
"#;

/// Adds `Prompty` to the `sluice` module (and the `promptflow.core` stand-in).
pub(super) fn install(py: Python<'_>) -> PyResult<()> {
    let code = std::ffi::CString::new(PROMPTY_SOURCE).expect("no NUL in the source");
    let module = PyModule::from_code(py, &code, c"sluice/prompty.py", c"_sluice_prompty")?;
    module.add_function(wrap_pyfunction!(run_prompty, &module)?)?;
    module.setattr("_run_prompty", module.getattr("run_prompty")?)?;
    let sluice = py.import("sluice")?;
    module.getattr("_install")?.call1((sluice,))?;
    Ok(())
}

/// Runs the prompty at `path` with `inputs`; `model` overrides the front matter's `model`
/// (`parameters` and `configuration` merged key by key, `api` and `response` replaced).
#[pyfunction]
fn run_prompty(
    py: Python<'_>,
    path: PathBuf,
    inputs: &Bound<'_, PyDict>,
    model: &Bound<'_, PyDict>,
) -> PyResult<Py<PyAny>> {
    let (inputs, model) = (map_of(inputs)?, map_of(model)?);
    on_own_thread(py, "sluice-prompty", move |runtime| {
        run(runtime, path, inputs, model)
    })
}

fn run(
    runtime: &tokio::runtime::Runtime,
    path: PathBuf,
    inputs: Map,
    model: Map,
) -> Result<Value, CallError> {
    let mut def = sluice_engine::load_flow_def(&path, None)?;
    if let Some(p) = def.prompty.as_mut() {
        let p = std::sync::Arc::make_mut(p);
        if let Some(Value::Map(params)) = model.get("parameters") {
            for (k, v) in params {
                p.parameters.insert(k.clone(), v.clone());
            }
        }
        if let Some(Value::Map(conf)) = model.get("configuration") {
            let c = p.configuration.get_or_insert_with(Default::default);
            // A connection given here brings its own endpoint and key.
            if conf.contains_key("connection") {
                c.fields
                    .retain(|k, _| matches!(k.as_str(), "azure_deployment" | "model"));
            }
            for (k, v) in conf {
                let text = v.py_str();
                match k.as_str() {
                    "type" => c.kind = Some(text.to_ascii_lowercase()),
                    "connection" => c.connection = Some(text),
                    _ => {
                        c.fields.insert(k.clone(), text);
                    }
                }
            }
            if let Some(node) = def.nodes.first_mut() {
                node.connection = c.connection.clone();
            }
        }
        match model.get("response").and_then(Value::as_str) {
            Some("all") => p.response = PromptyResponse::All,
            Some("first") => p.response = PromptyResponse::First,
            _ => {}
        }
    }
    let flow = Flow::from_def(def, &crate::builtin_registry())?;
    let line = runtime.block_on(flow.run_line(&inputs, &LineOptions::default()));
    if let Some(e) = line.error {
        return Err(CallError::Line {
            error_type: e.error_type,
            message: e.message,
        });
    }
    let mut output = line.output;
    Ok(match (output.len(), output.shift_remove("output")) {
        (1, Some(v)) => v,
        (_, Some(v)) => {
            output.insert("output".into(), v);
            Value::Map(output)
        }
        (_, None) => Value::Map(output),
    })
}
