//! Scheduler overhead: lines through wide fan-outs and deep chains of trivial nodes.
//!
//! `cargo bench --bench scheduler`; divide a line's time by its node count for the per-node overhead.

use std::sync::Arc;

use async_trait::async_trait;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sluice_engine::*;

/// Returns its `x` input: the cheapest possible node.
#[derive(Debug)]
struct Echo;

#[async_trait]
impl Node for Echo {
    async fn run(&self, inputs: NodeInputs, _cx: &NodeContext) -> Result<Value, NodeError> {
        Ok(inputs.get("x").cloned().unwrap_or(Value::Int(1)))
    }
}

struct EchoKind;

impl NodeKind for EchoKind {
    fn type_name(&self) -> &'static str {
        "echo"
    }
    fn build(&self, _node: &NodeDef, _cx: &BuildContext) -> Result<Built, BuildError> {
        Ok(Built {
            node: Arc::new(Echo),
            signature: Signature {
                accepts_kwargs: true,
                ..Default::default()
            },
        })
    }
}

fn load(yaml: String) -> Flow {
    let dir = std::env::temp_dir().join(format!(
        "sluice-bench-{}-{}",
        std::process::id(),
        yaml.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("flow.dag.yaml"), yaml).unwrap();
    let mut registry = NodeRegistry::new();
    registry.register(EchoKind);
    Flow::load(&dir, &registry, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{}", e.render()))
}

/// `n` independent nodes joined by one.
fn fan_out(n: usize) -> Flow {
    let mut y = String::from(
        "inputs: {x: {type: int, default: 1}}\noutputs: {o: {reference: '${join.output}'}}\nnodes:\n",
    );
    let mut join = String::new();
    for i in 0..n {
        y.push_str(&format!(
            "- {{name: n{i}, type: echo, inputs: {{x: '${{inputs.x}}'}}}}\n"
        ));
        join.push_str(&format!("a{i}: '${{n{i}.output}}', "));
    }
    y.push_str(&format!(
        "- {{name: join, type: echo, inputs: {{{join}}}}}\n"
    ));
    load(y)
}

/// `n` nodes, each depending on the one before.
fn chain(n: usize) -> Flow {
    let mut y = format!(
        "inputs: {{x: {{type: int, default: 1}}}}\noutputs: {{o: {{reference: '${{n{}.output}}'}}}}\nnodes:\n",
        n - 1
    );
    y.push_str("- {name: n0, type: echo, inputs: {x: '${inputs.x}'}}\n");
    for i in 1..n {
        y.push_str(&format!(
            "- {{name: n{i}, type: echo, inputs: {{x: '${{n{}.output}}'}}}}\n",
            i - 1
        ));
    }
    load(y)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let inputs = Map::new();
    let mut group = c.benchmark_group("line");
    for n in [10usize, 100] {
        for (shape, flow) in [("fan_out", fan_out(n)), ("chain", chain(n))] {
            group.throughput(Throughput::Elements(flow.nodes.len() as u64));
            group.bench_with_input(BenchmarkId::new(shape, n), &flow, |b, flow| {
                b.to_async(&rt).iter(|| async {
                    let line = flow.run_line(&inputs, &LineOptions::default()).await;
                    assert_eq!(line.status, Status::Completed);
                    line
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
