//! `sluice-engine`: Sluice's flow model, loader, planner and scheduler.
//!
//! A flow folder holds a promptflow `flow.dag.yaml`. [`Flow::load`] reads it ([`load`]), checks every rule
//! that can be checked before a line runs and builds each node through the [`NodeRegistry`] ([`plan`]);
//! [`Flow::run_line`] then runs lines and [`Flow::run_aggregation`] the aggregation nodes ([`exec`]).
//! The engine knows node kinds only through the [`NodeKind`] and [`Node`] traits.
//!
//! ```
//! use std::sync::Arc;
//! use async_trait::async_trait;
//! use sluice_engine::*;
//!
//! #[derive(Debug)]
//! struct Upper;
//! #[async_trait]
//! impl Node for Upper {
//!     async fn run(&self, inputs: NodeInputs, _cx: &NodeContext) -> Result<Value, NodeError> {
//!         Ok(Value::from(inputs["text"].py_str().to_uppercase()))
//!     }
//! }
//! struct UpperKind;
//! impl NodeKind for UpperKind {
//!     fn type_name(&self) -> &'static str { "upper" }
//!     fn build(&self, _node: &NodeDef, _cx: &BuildContext) -> Result<Built, BuildError> {
//!         let mut signature = Signature::default();
//!         signature.params.insert("text".into(), Param { ty: Some(ValueType::String), has_default: false, required: true });
//!         Ok(Built { node: Arc::new(Upper), signature })
//!     }
//! }
//!
//! let dir = std::env::temp_dir().join(format!("sluice-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! std::fs::write(dir.join("flow.dag.yaml"), "
//! inputs: {text: {type: string}}
//! outputs: {shout: {type: string, reference: '${up.output}'}}
//! nodes:
//! - {name: up, type: upper, inputs: {text: '${inputs.text}'}}
//! ").unwrap();
//! let mut registry = NodeRegistry::new();
//! registry.register(UpperKind);
//! let flow = Flow::load(&dir, &registry, &LoadOptions::default()).unwrap();
//! let inputs: Map = [("text".to_string(), Value::from("hi"))].into_iter().collect();
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! let line = rt.block_on(flow.run_line(&inputs, &LineOptions::default()));
//! assert_eq!(line.output["shout"], Value::from("HI"));
//! ```
#![deny(unsafe_code)]

pub mod batch;
pub mod error;
pub mod exec;
pub mod flex;
pub mod image;
pub mod json;
pub mod load;
pub mod mlflow;
pub mod model;
pub mod monitor;
pub mod node;
pub mod plan;
pub mod prompty;
pub mod redact;
pub mod runner;
pub mod spawn;
pub mod store;
pub mod value;
pub mod yaml;

pub use batch::{
    BatchError, BatchLine, BatchOptions, BatchSummary, DataScan, LineMapper, RowStream,
    by_line_number, line_number_of, load_data, map_inputs, run_batch, run_lines, scan_data,
    stream_data,
};
pub use error::{
    BuildError, ErrorCode, ErrorInfo, FlowError, NodeError, Problem, ToolErrorDetails,
};
pub use exec::{AggregationResult, LineOptions, LineResult, NodeRunInfo, RunObserver, Status};
pub use load::{VariantSelection, load_flow_def, locate_flow};
pub use model::{FlowDef, InputDef, InputValue, NodeDef, OutputDef, ValueType};
pub use node::{
    BuildContext, Built, Node, NodeContext, NodeInputs, NodeKind, NodeRegistry, PackageTool, Param,
    Signature,
};
pub use plan::{Flow, LoadOptions, PlannedNode};
pub use runner::{BatchObserver, BatchRun, RunError, RunOptions, RunSpec, Shard, Stop};
pub use store::{NodeMetrics, RunName, RunStore, StoreError, TokenCounts};
pub use value::{Map, Opaque, PathStep, PlainError, StreamError, Value};
