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
