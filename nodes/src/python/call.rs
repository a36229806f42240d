//! What the functions Python calls to run a one-line flow share (a prompty, promptflow-tools' `chat`
//! and `completion`): the line runs on a thread of its own, with the interpreter lock released and a
//! current-thread tokio runtime, and its value or error comes back to Python.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use sluice_engine::{FlowError, Map, Value};

/// Why a flow run for a Python caller gave no result.
#[derive(Debug, thiserror::Error)]
pub(super) enum CallError {
    #[error("{}", .0.render().trim_end())]
    Load(#[from] FlowError),
    #[error("{error_type}: {message}")]
    Line { error_type: String, message: String },
    #[error("could not start a thread for the call")]
    Thread(#[source] std::io::Error),
    #[error("the call's thread stopped unexpectedly")]
    Panicked,
}

/// Runs `work` on a new thread called `name`, with the interpreter lock released, giving it a
/// current-thread runtime; its value is converted for Python, its error raised as `RuntimeError`.
pub(super) fn on_own_thread<F>(py: Python<'_>, name: &'static str, work: F) -> PyResult<Py<PyAny>>
where
    F: FnOnce(&tokio::runtime::Runtime) -> Result<Value, CallError> + Send + 'static,
{
    let result = py.detach(move || {
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(CallError::Thread)?;
                work(&runtime)
            })
            .map_err(CallError::Thread)?
            .join()
            .map_err(|_| CallError::Panicked)?
    });
    match result {
        Ok(v) => Ok(super::to_py(py, &v)?.unbind()),
        Err(e) => Err(PyRuntimeError::new_err(e.to_string())),
    }
}

/// A Python dict as a map of values (anything else as an empty map).
pub(super) fn map_of(dict: &Bound<'_, PyDict>) -> PyResult<Map> {
    let rt = super::runtime().map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    Ok(match super::from_py(rt, dict.as_any())? {
        Value::Map(m) => m,
        _ => Map::new(),
    })
}
