//! `flex` nodes: the entry of a flex flow (`flow.flex.yaml`), a Python function or an instance of
//! a class made once with the flow's `init` arguments, called with each line's inputs in the
//! embedded interpreter. A class with `__aggregate__` also gets the flow's aggregation node, which
//! calls it with the lines' outputs and logs each key of the dict it returns as a metric.
//!
//! Entries always run in this process: the class instance (and whatever it set up in `__init__`)
//! is shared by every line, as in a promptflow worker.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use sluice_engine::error::SCRIPT_ERROR;
use sluice_engine::flex::{AGGREGATE_KEY, NODE_KIND};
use sluice_engine::{
    BuildContext, BuildError, Built, Node, NodeContext, NodeDef, NodeError, NodeInputs, NodeKind,
    Param, Signature, Value,
};

use super::{PythonNode, from_py, load_error, runtime, set_environment, stored_connections, to_py};

/// A flex flow's entry (or its `__aggregate__`), failing as promptflow's entries fail.
#[derive(Debug)]
struct FlexNode {
    call: PythonNode,
    /// `function` or `Class.__call__`, as error messages name it.
    entry: String,
}

#[async_trait]
impl Node for FlexNode {
    async fn run(&self, inputs: NodeInputs, cx: &NodeContext) -> Result<Value, NodeError> {
        self.call.run(inputs, cx).await.map_err(|mut e| {
            if let Some(tool) = &mut e.tool {
                tool.name = Some(self.entry.clone());
                e.error_type = SCRIPT_ERROR.into();
            }
            e
        })
    }
}

/// The `flex` node kind.
#[derive(Debug, Default)]
pub struct FlexKind;

impl NodeKind for FlexKind {
    fn type_name(&self) -> &'static str {
        NODE_KIND
    }

    fn build(&self, node: &NodeDef, cx: &BuildContext) -> Result<Built, BuildError> {
        let flex = cx.flow.flex.as_ref().ok_or_else(|| {
            BuildError::new(
                "a `flex` node runs the entry of a flow.flex.yaml; this flow is not one",
            )
        })?;
        let rt = runtime().map_err(|e| BuildError::new(format!("cannot start Python: {e}")))?;
        let aggregate = node.extra.contains_key(AGGREGATE_KEY);
        let entry = format!("{}:{}", flex.module, flex.attr);
        Python::attach(|py| {
            set_environment(py, rt, cx)?;
            let info = rt.host.bind(py).getattr("load_flex")?.call1((
                &flex.module,
                &flex.attr,
                cx.flow_dir().to_string_lossy().as_ref(),
                to_py(py, &Value::Map(flex.init.clone()))?,
                &flex.init_from,
                stored_connections(py, &flex.init)?,
            ))?;
            let name: String = info.get_item("name")?.extract()?;
            let mut signature = Signature::default();
            let func = if aggregate {
                signature = Signature::fixed([("line_results", None, true)]);
                info.get_item("aggregate")?
            } else {
                signature.accepts_kwargs = info.get_item("kwargs")?.extract()?;
                signature.aggregates = !info.get_item("aggregate")?.is_none();
                let params: Vec<(String, String, bool)> = info.get_item("params")?.extract()?;
                for (pname, ty, has_default) in params {
                    signature.params.insert(
                        pname,
                        Param {
                            ty: sluice_engine::ValueType::from_name(&ty),
                            has_default,
                            required: !has_default,
                        },
                    );
                }
                for (k, v) in info.get_item("defaults")?.cast::<PyDict>()?.iter() {
                    signature.defaults.insert(k.extract()?, from_py(rt, &v)?);
                }
                info.get_item("func")?
            };
            let call = PythonNode {
                func: Arc::new(func.unbind()),
                connections: Arc::new(HashMap::new()),
                name: name.clone(),
                node: node.name.clone(),
                tool: cx.flow.file.clone(),
                package: None,
                prompt: None,
                flow_dir: cx.flow_dir().to_path_buf(),
                literals: serde_json::json!({}),
                references: vec![],
                in_process: true,
            };
            Ok::<_, PyErr>(Built {
                node: Arc::new(FlexNode { call, entry: name }),
                signature,
            })
        })
        .map_err(|e| load_error(&format!("cannot load entry `{entry}`"), &e))
    }
}
