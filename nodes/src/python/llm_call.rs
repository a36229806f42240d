//! promptflow-tools' `chat` and `completion` functions (`promptflow.tools.aoai`, `promptflow.tools.openai`)
//! for Python tools: the call becomes a one-node flow whose `llm` node has the prompt, the
//! connection and the parameters the tool was given, so the request is the one an `llm` node sends.
//! It runs on a thread of its own with the interpreter lock released.

use std::path::PathBuf;
use std::sync::Arc;

use indexmap::IndexMap;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use sluice_engine::model::InputBinding;
use sluice_engine::{
    Flow, FlowDef, InputValue, LineOptions, Map, NodeDef, OutputDef, Value, ValueType,
};

use super::call::{CallError, map_of, on_own_thread};
use crate::llm::connections::{Connection, keep_in_memory};

/// The name of the node a call becomes.
const NODE: &str = "llm";

/// Adds `_call_llm` to the `sluice` module, where the `promptflow.tools` stand-in finds it.
pub(super) fn install(py: Python<'_>) -> PyResult<()> {
    let sluice = py.import("sluice")?;
    sluice.setattr("_call_llm", wrap_pyfunction!(call_llm, &sluice)?)
}

/// Sends `prompt` (a Jinja chat or completion template) rendered with `inputs` through the
/// connection `connection` (a spec as `sluice connection create` reads it, kept in this process
/// only); `inputs` holds the template's variables and the request's parameters (`deployment_name`
/// or `model`, `temperature`, ...) as an `llm` node's inputs do.
#[pyfunction]
#[pyo3(signature = (connection, api, prompt, inputs, stream=false))]
fn call_llm(
    py: Python<'_>,
    connection: &str,
    api: &str,
    prompt: String,
    inputs: &Bound<'_, PyDict>,
    stream: bool,
) -> PyResult<Py<PyAny>> {
    let conn = Connection::from_yaml(connection, std::path::Path::new("<connection object>"))
        .map_err(|e| {
            PyValueError::new_err(sluice_engine::redact::redact(&e.to_string()).into_owned())
        })?;
    let name = conn.name.clone();
    keep_in_memory(conn);
    let inputs = map_of(inputs)?;
    let api = api.to_owned();
    let dir = std::env::current_dir().unwrap_or_default();
    on_own_thread(py, "sluice-llm-call", move |runtime| {
        run(runtime, dir, name, api, prompt, inputs, stream)
    })
}

fn run(
    runtime: &tokio::runtime::Runtime,
    dir: PathBuf,
    connection: String,
    api: String,
    prompt: String,
    inputs: Map,
    stream: bool,
) -> Result<Value, CallError> {
    let file = dir.join("<promptflow.tools call>");
    let mut def = FlowDef::empty(&file, dir, Arc::from(""), "llm_call".to_owned());
    let literal = |v: Value| InputBinding {
        value: InputValue::Literal(v),
        span: Default::default(),
    };
    let mut bindings: IndexMap<String, InputBinding> = IndexMap::new();
    bindings.insert("prompt".to_owned(), literal(Value::String(prompt)));
    for (k, v) in inputs {
        bindings.insert(k, literal(v));
    }
    def.nodes.push(NodeDef {
        name: NODE.to_owned(),
        span: Default::default(),
        kind: "llm".to_owned(),
        kind_span: Default::default(),
        source: None,
        inputs: bindings,
        activate: None,
        aggregation: false,
        use_variants: false,
        connection: Some(connection),
        connection_span: None,
        api: Some(api),
        provider: None,
        module: None,
        variant_id: None,
        extra: Map::new(),
    });
    def.outputs.insert(
        "output".to_owned(),
        OutputDef {
            name: "output".to_owned(),
            ty: ValueType::Other("object".to_owned()),
            reference: InputValue::NodeOutput {
                node: NODE.to_owned(),
                path: vec![],
            },
            is_chat_output: false,
            evaluation_only: false,
            span: Default::default(),
        },
    );
    let flow = Flow::from_def(def, &crate::builtin_registry())?;
    let options = LineOptions {
        stream,
        ..LineOptions::default()
    };
    runtime.block_on(async {
        let mut line = flow.run_line(&Map::new(), &options).await;
        if let Some(e) = line.error {
            return Err(CallError::Line {
                error_type: e.error_type,
                message: e.message,
            });
        }
        // A streamed answer is read to its end here, on the call's own runtime.
        let output = line.output.shift_remove("output").unwrap_or(Value::Null);
        output.into_plain().await.map_err(|e| CallError::Line {
            error_type: "StreamError".to_owned(),
            message: e.to_string(),
        })
    })
}
