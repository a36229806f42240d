//! Scheduler behaviour that fixtures cannot show: overlap of independent nodes, fail-fast, timeouts,
//! and the GIL released while a Python tool sleeps.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sluice_engine::*;

/// `sleep` nodes: wait `ms` milliseconds, then return `value` (or fail if `fail` is true).
#[derive(Debug)]
struct Sleep;

#[async_trait]
impl Node for Sleep {
    async fn run(&self, inputs: NodeInputs, _cx: &NodeContext) -> Result<Value, NodeError> {
        let ms = match inputs.get("ms") {
            Some(Value::Int(ms)) => *ms as u64,
            _ => 0,
        };
        tokio::time::sleep(Duration::from_millis(ms)).await;
        if matches!(inputs.get("fail"), Some(Value::Bool(true))) {
            return Err(NodeError::user("ToolExecutionError", "asked to fail"));
        }
        Ok(inputs.get("value").cloned().unwrap_or(Value::Null))
    }
}

struct SleepKind;

impl NodeKind for SleepKind {
    fn type_name(&self) -> &'static str {
        "sleep"
    }
    fn build(&self, _node: &NodeDef, _cx: &BuildContext) -> Result<Built, BuildError> {
        let mut signature = Signature {
            accepts_kwargs: true,
            ..Default::default()
        };
        signature.params.insert(
            "ms".into(),
            Param {
                ty: Some(ValueType::Int),
                has_default: true,
                required: false,
            },
        );
        Ok(Built {
            node: Arc::new(Sleep),
            signature,
        })
    }
}

fn flow(yaml: &str) -> Flow {
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::write(dir.join("flow.dag.yaml"), yaml).unwrap();
    let mut registry = sluice_nodes::builtin_registry();
    registry.register(SleepKind);
    Flow::load(&dir, &registry, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{}", e.render()))
}

use crate::common::runtime as rt;

const FAN_OUT: &str = "
outputs: {out: {reference: '${join.output}'}}
nodes:
- {name: a, type: sleep, inputs: {ms: 300, value: 1}}
- {name: b, type: sleep, inputs: {ms: 300, value: 2}}
- {name: c, type: sleep, inputs: {ms: 300, value: 3}}
- {name: d, type: sleep, inputs: {ms: 300, value: 4}}
- {name: join, type: sleep, inputs: {a: '${a.output}', b: '${b.output}', c: '${c.output}', d: '${d.output}', value: done}}
";

#[test]
fn independent_nodes_overlap_and_concurrency_one_runs_them_in_order() {
    let flow = flow(FAN_OUT);
    let rt = rt();
    let t = Instant::now();
    let line = rt.block_on(flow.run_line(&Map::new(), &LineOptions::default()));
    let concurrent = t.elapsed();
    assert_eq!(line.status, Status::Completed);
    assert!(
        concurrent < Duration::from_millis(900),
        "4 × 300 ms nodes took {concurrent:?} concurrently"
    );

    let t = Instant::now();
    let line = rt.block_on(flow.run_line(
        &Map::new(),
        &LineOptions {
            node_concurrency: 1,
            ..Default::default()
        },
    ));
    let serial = t.elapsed();
    assert!(
        serial >= Duration::from_millis(1200),
        "serial run took only {serial:?}"
    );
    let order: Vec<&str> = line.node_runs.iter().map(|r| r.node.as_str()).collect();
    assert_eq!(order, ["a", "b", "c", "d", "join"]);
}

#[test]
fn a_failing_node_fails_the_line_without_waiting_for_slow_siblings() {
    let flow = flow(
        "
nodes:
- {name: slow1, type: sleep, inputs: {ms: 2000}}
- {name: slow2, type: sleep, inputs: {ms: 2000}}
- {name: boom, type: sleep, inputs: {ms: 10, fail: true}}
- {name: after, type: sleep, inputs: {x: '${boom.output}'}}
",
    );
    let t = Instant::now();
    let line = rt().block_on(flow.run_line(&Map::new(), &LineOptions::default()));
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(line.status, Status::Failed);
    let err = line.error.unwrap();
    assert_eq!(err.error_type, "ToolExecutionError");
    assert_eq!(err.message_parameters["node_name"], "boom");
    assert!(
        line.node_runs.iter().all(|r| r.node != "after"),
        "downstream nodes never get a run record"
    );
    let canceled: Vec<&str> = line
        .node_runs
        .iter()
        .filter(|r| r.status == Status::Canceled)
        .map(|r| r.node.as_str())
        .collect();
    assert_eq!(canceled.len(), 2, "{canceled:?}");
}

#[test]
fn a_line_timeout_cancels_running_nodes() {
    let flow = flow("nodes:\n- {name: slow, type: sleep, inputs: {ms: 5000}}\n");
    let opts = LineOptions {
        timeout: Some(Duration::from_millis(100)),
        line_number: Some(7),
        ..Default::default()
    };
    let t = Instant::now();
    let line = rt().block_on(flow.run_line(&Map::new(), &opts));
    assert!(t.elapsed() < Duration::from_millis(1000));
    let err = line.error.unwrap();
    assert_eq!(err.error_type, "LineExecutionTimeoutError");
    assert!(err.message.contains("Line 7"), "{}", err.message);
    assert_eq!(line.node_runs[0].status, Status::Canceled);
}

#[test]
fn python_tools_release_the_gil_while_sleeping() {
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::write(
        dir.join("nap.py"),
        "import time\nfrom promptflow.core import tool\n\n@tool\ndef nap(n: int) -> int:\n    time.sleep(0.4)\n    return n\n",
    )
    .unwrap();
    let mut yaml = String::from("outputs: {total: {reference: '${b.output}'}}\nnodes:\n");
    for i in 0..4 {
        yaml.push_str(&format!("- {{name: n{i}, type: python, source: {{type: code, path: nap.py}}, inputs: {{n: {i}}}}}\n"));
    }
    yaml.push_str("- {name: b, type: sleep, inputs: {a: '${n0.output}', b: '${n1.output}', c: '${n2.output}', d: '${n3.output}', value: 6}}\n");
    std::fs::write(dir.join("flow.dag.yaml"), yaml).unwrap();
    let mut registry = sluice_nodes::builtin_registry();
    registry.register(SleepKind);
    let flow = Flow::load(&dir, &registry, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{}", e.render()));
    let rt = rt();
    let t = Instant::now();
    let line = rt.block_on(flow.run_line(&Map::new(), &LineOptions::default()));
    let took = t.elapsed();
    assert_eq!(line.status, Status::Completed, "{:?}", line.error);
    assert!(
        took < Duration::from_millis(1200),
        "4 × 0.4 s Python sleeps took {took:?}: the GIL was not released"
    );
}
