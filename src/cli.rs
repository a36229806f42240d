//! The command line, as clap derive types. Each command turns these into an engine config.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Sluice runs promptflow flows (flow.dag.yaml + Jinja templates + Python tools) unchanged, fast.
///
/// Python tools run in an embedded CPython: the one Sluice was built against (see `sluice info`).
/// With a virtualenv active (VIRTUAL_ENV), its site-packages are added, so tools import what you installed
/// there. To build against another Python, set PYO3_PYTHON=/path/to/python3 when building Sluice.
#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// More log output on stderr (-v: info, -vv: debug, -vvv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Test, check and explain a flow (like `pf flow`).
    #[command(subcommand)]
    Flow(FlowCommand),
    /// Batch runs: push a dataset through a flow and keep the results (like `pf run`).
    #[command(subcommand)]
    Run(RunCommand),
    /// Show the versions Sluice runs with (Python, node kinds).
    Info,
}

#[derive(Debug, Subcommand)]
pub enum FlowCommand {
    /// Run one line of a flow and print its outputs as JSON on stdout.
    ///
    /// Exit status: 0 when the line succeeds, 1 when it fails (the error, with the failing node and its
    /// Python traceback, goes to stderr), 2 when the flow itself is invalid. Also writes
    /// `.promptflow/flow.output.json` and `flow.detail.json` in the flow folder, as `pf flow test` does.
    #[command(
        after_help = "Examples:\n  sluice flow test --flow ./my-flow --inputs question='What is Sluice?'\n  sluice flow test --flow ./my-flow --inputs data.jsonl\n  sluice flow test --flow ./my-flow --variant '${summarize.variant_1}'\n  sluice flow test --flow ./my-flow --node summarize --inputs text=hello"
    )]
    Test(TestArgs),
    /// Check a flow without running it: YAML, references, cycles, templates, tool imports.
    ///
    /// Prints every problem with its file, line and column; exit status 2 if there is any.
    Validate(FlowArgs),
    /// Print the execution plan: nodes by level, their kinds and dependencies, what runs concurrently.
    Plan(PlanArgs),
    /// Create a new flow folder that runs as-is.
    Init(InitArgs),
}

#[derive(Debug, Args)]
pub struct FlowArgs {
    /// The flow folder (holding flow.dag.yaml) or the flow file.
    #[arg(long, short = 'f', default_value = ".")]
    pub flow: PathBuf,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub flow: FlowArgs,
    /// Plan with this variant of a node: '${node.variant_id}'.
    #[arg(long)]
    pub variant: Option<String>,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    #[command(flatten)]
    pub flow: FlowArgs,
    /// Flow inputs: name=value pairs (values are converted by the inputs' declared types), or one
    /// .json file (an object) or .jsonl file (its first line). Inputs left out take their defaults.
    #[arg(long, num_args = 1.., value_name = "NAME=VALUE|FILE")]
    pub inputs: Vec<String>,
    /// Run only this node; give its inputs (flow inputs by name, upstream outputs by node name) with --inputs.
    #[arg(long)]
    pub node: Option<String>,
    /// Use this variant of a node: '${node.variant_id}'.
    #[arg(long)]
    pub variant: Option<String>,
    /// How many nodes of the line may run at once (1 runs them one by one, in order).
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub concurrency: usize,
    /// Fail the line, cancelling its running nodes, after this many seconds
    /// (default: PF_LINE_TIMEOUT_SEC if set, else no limit).
    #[arg(long, value_name = "SECONDS")]
    pub line_timeout: Option<f64>,
    /// Print node run details (status, duration, output) on stderr after the outputs.
    #[arg(long)]
    pub detail: bool,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The folder to create.
    pub name: PathBuf,
    /// What kind of starter flow to write.
    #[arg(long = "type", value_enum, default_value_t = InitType::Standard)]
    pub kind: InitType,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum InitType {
    /// A prompt node feeding a Python node.
    Standard,
    /// A per-line scoring node and an aggregation node that logs metrics.
    Evaluation,
}

#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// Run a flow over every line of a dataset; lines run concurrently and are recorded as they finish.
    ///
    /// The run is stored in $SLUICE_HOME/runs/<name>/ (default ~/.sluice): flow_outputs/output.jsonl,
    /// outputs.jsonl, inputs.jsonl, metrics.json, error.json (when lines failed), meta.json and one
    /// details.jsonl with every line's node runs. Prints the run record as JSON on stdout.
    /// Exit status: 0 when the run completed (even if some lines failed, as in promptflow; see
    /// failed_lines), 2 when the flow, data or mapping is invalid and nothing ran.
    #[command(
        after_help = "Examples:\n  sluice run create --flow flows/eval_accuracy --data flows/eval_accuracy/data.jsonl\n  sluice run create --flow my-flow --data data.csv --column-mapping question='${data.q}' --max-concurrency 32"
    )]
    Create(CreateArgs),
    /// Print a run's record as JSON.
    Show(NameArg),
    /// Print a run's metrics (metrics.json) as JSON.
    ShowMetrics(NameArg),
}

#[derive(Debug, Args)]
pub struct NameArg {
    /// The run's name.
    #[arg(long, short = 'n')]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub flow: FlowArgs,
    /// The data: a .jsonl, .json, .csv or .tsv file, or a folder of them.
    #[arg(long)]
    pub data: PathBuf,
    /// Map flow inputs to data columns: NAME='${data.column}' (or a literal value). Inputs without a
    /// default map to the same-named column unless mapped here.
    #[arg(long, num_args = 1.., value_name = "NAME=VALUE")]
    pub column_mapping: Vec<String>,
    /// The run's name (default: <flow folder>_<variant>_<timestamp>).
    #[arg(long)]
    pub name: Option<String>,
    /// Use this variant of a node: '${node.variant_id}'.
    #[arg(long)]
    pub variant: Option<String>,
    /// Lines running at once.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub max_concurrency: usize,
    /// Fail a line, cancelling its running nodes, after this many seconds (default 600, as promptflow;
    /// PF_LINE_TIMEOUT_SEC also sets it).
    #[arg(long, value_name = "SECONDS")]
    pub line_timeout: Option<f64>,
    /// Print each line's result as one JSON line on stdout as soon as it finishes.
    #[arg(long)]
    pub stream: bool,
}
