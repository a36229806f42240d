//! What the benches that run flows share; each includes it as `mod common`.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use sluice_engine::{
    BatchLine, BatchOptions, BatchSummary, Flow, LineResult, LoadOptions, Map, Value, run_batch,
};

/// The bench's command-line arguments that are whole numbers, in order.
pub fn number_args() -> Vec<usize> {
    std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// The flow in `dir`, with the built-in node kinds; a flow that does not load stops the bench.
pub fn load_flow(dir: &Path) -> Arc<Flow> {
    let flow = Flow::load(
        dir,
        &sluice_nodes::builtin_registry(),
        &LoadOptions::default(),
    );
    Arc::new(flow.unwrap_or_else(|e| panic!("{}", e.render())))
}

/// Runs lines `0..lines` through `flow`, at most `concurrency` at once, line `i` with the one input
/// `input` set to `value(i)`; `on_line` sees each finished line. Returns the batch's summary and
/// the seconds it took.
pub fn run_lines(
    rt: &tokio::runtime::Runtime,
    flow: Arc<Flow>,
    lines: usize,
    concurrency: usize,
    input: &str,
    value: impl Fn(usize) -> String,
    on_line: impl FnMut(&LineResult),
) -> (BatchSummary, f64) {
    let batch: Vec<BatchLine> = (0..lines)
        .map(|line_number| BatchLine {
            line_number,
            inputs: Map::from_iter([(input.to_owned(), Value::String(value(line_number)))]),
        })
        .collect();
    let opts = BatchOptions {
        max_concurrency: concurrency,
        ..BatchOptions::default()
    };
    let started = Instant::now();
    let summary = rt.block_on(run_batch(flow, batch, vec![], &opts, on_line));
    (summary, started.elapsed().as_secs_f64())
}
