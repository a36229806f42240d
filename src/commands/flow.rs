//! `sluice flow test | validate | plan | init`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;
use sluice_engine::redact::{self, redact};
use sluice_engine::{
    Flow, FlowError, LineOptions, LoadOptions, Map, Status, Value, VariantSelection,
};

use crate::ExitStatus;
use crate::cli::{FlowArgs, InitArgs, InitType, PlanArgs, TestArgs};

/// Loads a flow, printing its problems and returning `Err(exit status)` when it is invalid.
pub(crate) fn load(
    flow: &Path,
    variant: Option<&str>,
    init: Option<&Map>,
) -> Result<Flow, ExitStatus> {
    load_with(flow, variant, init, &[])
}

/// [`load`], with nodes' connections, deployments or models set by `connections` (each
/// `NODE.KEY=VALUE`, as promptflow's `--connections` takes them) before the flow is checked.
pub(crate) fn load_with(
    flow: &Path,
    variant: Option<&str>,
    init: Option<&Map>,
    connections: &[String],
) -> Result<Flow, ExitStatus> {
    let variant = match variant.map(|v| VariantSelection::parse(v).ok_or(v)) {
        Some(Err(v)) => {
            eprintln!(
                "{} --variant must look like '${{node.variant_id}}', got {v:?}",
                crate::style::error_label()
            );
            return Err(ExitStatus::Invalid);
        }
        Some(Ok(v)) => Some(v),
        None => None,
    };
    let report = |e: FlowError| {
        eprint!(
            "{}",
            crate::style::diagnostics(crate::style::stderr(), &redact(&e.render()))
        );
        ExitStatus::Invalid
    };
    let registry = sluice_nodes::builtin_registry();
    if connections.is_empty() {
        let options = LoadOptions {
            variant,
            init: init.cloned(),
        };
        return Flow::load(flow, &registry, &options).map_err(report);
    }
    let mut def =
        sluice_engine::load::load_flow_def_with(flow, variant.as_ref(), init).map_err(report)?;
    if let Err(e) = set_connections(&mut def, connections) {
        eprintln!("{} {e}", crate::style::error_label());
        return Err(ExitStatus::Invalid);
    }
    Flow::from_def(def, &registry).map_err(report)
}

/// Why a `--connections` setting cannot be applied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectionsError {
    #[error("--connections takes NODE.KEY=VALUE (e.g. `chat.connection=my_openai`), not `{0}`")]
    Shape(String),
    #[error("--connections names the node `{0}`, which the flow does not have")]
    NoNode(String),
    #[error(
        "--connections: the llm node `{node}` takes `connection`, `deployment_name` and `model`, not `{key}`"
    )]
    NotForLlm { node: String, key: String },
    #[error("--connections: the node `{node}` has no input `{key}`")]
    NoInput { node: String, key: String },
}

/// Sets each `NODE.KEY=VALUE` of `settings` on the flow: an `llm` node's `connection`, or its
/// `deployment_name` or `model` input; another node's input (a connection-typed input of a Python
/// tool, its `deployment_name` or `model`).
pub(crate) fn set_connections(
    def: &mut sluice_engine::FlowDef,
    settings: &[String],
) -> Result<(), ConnectionsError> {
    for setting in settings {
        let shape = || ConnectionsError::Shape(setting.clone());
        let (path, value) = setting.split_once('=').ok_or_else(shape)?;
        let (node, key) = path.trim().split_once('.').ok_or_else(shape)?;
        if node.is_empty() || key.is_empty() {
            return Err(shape());
        }
        let def_node = def
            .nodes
            .iter_mut()
            .find(|n| n.name == node)
            .ok_or_else(|| ConnectionsError::NoNode(node.to_owned()))?;
        let value = value.trim().to_owned();
        let is_llm = def_node.kind == "llm";
        match key {
            "connection" if is_llm => def_node.connection = Some(value),
            "deployment_name" | "model" => set_input(def_node, key, value),
            _ if is_llm => {
                return Err(ConnectionsError::NotForLlm {
                    node: node.to_owned(),
                    key: key.to_owned(),
                });
            }
            _ if def_node.inputs.contains_key(key) => set_input(def_node, key, value),
            _ => {
                return Err(ConnectionsError::NoInput {
                    node: node.to_owned(),
                    key: key.to_owned(),
                });
            }
        }
    }
    Ok(())
}

fn set_input(node: &mut sluice_engine::NodeDef, key: &str, value: String) {
    let span = node.inputs.get(key).map(|b| b.span).unwrap_or(node.span);
    node.inputs.insert(
        key.to_owned(),
        sluice_engine::model::InputBinding {
            value: sluice_engine::InputValue::Literal(Value::String(value)),
            span,
        },
    );
}

pub fn validate(args: FlowArgs) -> anyhow::Result<ExitStatus> {
    match load(&args.flow, None, None) {
        Ok(flow) => {
            eprintln!(
                "flow `{}` is {}: {} nodes ({} aggregation), {} inputs, {} outputs",
                flow.def.name,
                crate::style::paint(crate::style::stderr(), crate::style::Paint::Ok, "valid"),
                flow.nodes.len(),
                flow.aggregation_nodes.len(),
                flow.def.inputs.len(),
                flow.outputs.len()
            );
            Ok(ExitStatus::Ok)
        }
        Err(code) => Ok(code),
    }
}

pub fn plan(args: PlanArgs) -> anyhow::Result<ExitStatus> {
    match load(&args.flow.flow, args.variant.as_deref(), None) {
        Ok(flow) => {
            print!("{}", flow.explain());
            Ok(ExitStatus::Ok)
        }
        Err(code) => Ok(code),
    }
}

/// Reads `--inputs`: `k=v` pairs (strings), or a single .json / .jsonl file.
fn parse_inputs(items: &[String]) -> anyhow::Result<Map> {
    let mut map = Map::new();
    for item in items {
        let as_file = Path::new(item);
        let is_data_file = !item.contains('=')
            && as_file
                .extension()
                .is_some_and(|e| e == "json" || e == "jsonl")
            && as_file.is_file();
        if is_data_file {
            let text =
                std::fs::read_to_string(as_file).with_context(|| format!("cannot read {item}"))?;
            let first = if item.ends_with(".jsonl") {
                text.lines()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("{}")
                    .to_owned()
            } else {
                text
            };
            let value: Value = sluice_engine::json::from_str(&first)
                .with_context(|| format!("{item} is not valid JSON"))?;
            let Value::Map(obj) = value else {
                bail!("{item} must hold a JSON object")
            };
            map.extend(obj);
            continue;
        }
        let Some((k, v)) = item.split_once('=') else {
            bail!("--inputs takes NAME=VALUE pairs or a .json/.jsonl file; got {item:?}");
        };
        map.insert(k.trim().to_owned(), Value::from(v));
    }
    Ok(map)
}

/// Reads `--init`: a JSON object, a .json file holding one, or `NAME=VALUE` pairs (text values, as
/// promptflow reads them). `None` when not given.
pub(crate) fn parse_init(items: &[String]) -> anyhow::Result<Option<Map>> {
    let mut map = Map::new();
    for item in items {
        let trimmed = item.trim_start();
        let text = if trimmed.starts_with('{') {
            item.clone()
        } else if !item.contains('=') || Path::new(item).is_file() {
            std::fs::read_to_string(item).with_context(|| format!("--init: cannot read {item}"))?
        } else {
            let (k, v) = item.split_once('=').expect("checked");
            map.insert(k.trim().to_owned(), Value::from(v));
            continue;
        };
        let value: Value = sluice_engine::json::from_str(&text)
            .with_context(|| format!("--init: {item} is not valid JSON"))?;
        let Value::Map(obj) = value else {
            bail!("--init: {item} must hold a JSON object of __init__ arguments")
        };
        map.extend(obj);
    }
    Ok((!items.is_empty()).then_some(map))
}

/// Sets the flow's `environment_variables` and moves into the flow folder, as promptflow does.
pub(crate) fn enter_flow(flow: &Flow) -> anyhow::Result<()> {
    for (k, v) in &flow.def.environment_variables {
        if redact::is_secret_key(k) {
            redact::register_secret(v);
        }
        // SAFETY: called before the async runtime or any other thread of ours starts; the embedded
        // Python interpreter, if started, runs no threads of its own at this point.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var(k, v)
        };
    }
    std::env::set_current_dir(&flow.def.dir)
        .with_context(|| format!("cannot enter {}", flow.def.dir.display()))
}

pub(crate) fn line_timeout(arg: Option<f64>) -> anyhow::Result<Option<Duration>> {
    let secs = match arg {
        Some(s) => Some(s),
        None => match std::env::var("PF_LINE_TIMEOUT_SEC") {
            Ok(v) if !v.trim().is_empty() => Some(
                v.trim()
                    .parse::<f64>()
                    .context("PF_LINE_TIMEOUT_SEC must be a number")?,
            ),
            _ => None,
        },
    };
    match secs {
        Some(s) if !(s > 0.0 && s <= crate::cli::MAX_SECONDS) => {
            bail!(
                "the line timeout must be more than 0 and at most {:e} seconds; got {s}",
                crate::cli::MAX_SECONDS
            )
        }
        Some(s) => Ok(Some(Duration::from_secs_f64(s))),
        None => Ok(None),
    }
}

/// How long a command's end waits for blocking work it no longer awaits (a Python tool still running
/// after its line timed out) before leaving it behind.
const BLOCKING_GRACE: Duration = Duration::from_millis(500);

/// The async runtime of a command. Dropping it does not wait for blocking work nobody awaits any more
/// (a tool stuck after a line timeout) beyond [`BLOCKING_GRACE`]: a plain tokio runtime would wait
/// for it forever, and the process would never exit.
#[derive(Debug)]
pub(crate) struct Runtime(Option<tokio::runtime::Runtime>);

impl std::ops::Deref for Runtime {
    type Target = tokio::runtime::Runtime;

    fn deref(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("the runtime lives until dropped")
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_timeout(BLOCKING_GRACE);
        }
    }
}

pub(crate) fn runtime() -> anyhow::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map(|rt| Runtime(Some(rt)))
        .context("cannot start the async runtime")
}

pub fn test(args: TestArgs) -> anyhow::Result<ExitStatus> {
    let inputs = parse_inputs(&args.inputs)?;
    let timeout = line_timeout(args.line_timeout)?;
    super::set_isolation(&args.isolation, args.concurrency.max(1));
    let init = parse_init(&args.init)?;
    let flow = match load(&args.flow.flow, args.variant.as_deref(), init.as_ref()) {
        Ok(f) => f,
        Err(code) => return Ok(code),
    };
    // A prompty's or flex flow's `sample` stands in for inputs not given.
    let sample = match (&flow.def.prompty, &flow.def.flex) {
        (Some(p), _) => p.sample.as_ref(),
        (None, Some(f)) => f.sample.as_ref(),
        (None, None) => None,
    };
    let inputs = match sample {
        Some(sample) if inputs.is_empty() && args.node.is_none() => sample.clone(),
        _ => inputs,
    };
    if args.node.is_none() {
        let unknown: Vec<&String> = inputs
            .keys()
            .filter(|k| !flow.def.inputs.contains_key(*k))
            .collect();
        if !unknown.is_empty() {
            eprintln!(
                "{} the flow has no input{} {} (its inputs: {}); ignored",
                crate::style::warning_label(),
                if unknown.len() == 1 { "" } else { "s" },
                unknown
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                flow.def
                    .inputs
                    .keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    enter_flow(&flow)?;
    let opts = LineOptions {
        node_concurrency: args.concurrency.max(1),
        timeout,
        stream: args.stream,
        ..LineOptions::default()
    };
    let rt = runtime()?;
    let out_dir = flow.def.dir.join(".promptflow");

    if let Some(node) = &args.node {
        return match rt.block_on(flow.run_node(node, &inputs, &opts)) {
            Ok(output) => {
                println!("{}", pretty(&output));
                write_json(
                    &out_dir.join(format!("flow-{node}.node.output.json")),
                    &output,
                );
                Ok(ExitStatus::Ok)
            }
            Err(e) => {
                print_error(&e);
                Ok(ExitStatus::Failed)
            }
        };
    }

    let tracing = match super::Tracing::start(&args.trace, &flow) {
        Ok(t) => t,
        Err(code) => return Ok(code),
    };
    let mut line = rt.block_on(flow.run_line(&inputs, &opts));
    // Images in the outputs are files in .promptflow/output/, referred to by their absolute
    // paths, as promptflow's flow test does.
    let images =
        std::path::absolute(out_dir.join("output")).unwrap_or_else(|_| out_dir.join("output"));
    let prefix = format!("{}/", images.to_string_lossy().replace('\\', "/"));
    for v in line.output.values_mut() {
        match sluice_engine::image::persist(v, &images, &prefix, flow.def.message_format) {
            Ok(p) => *v = p,
            Err(e) => eprintln!(
                "{} cannot write an output image to {}: {e}",
                crate::style::warning_label(),
                images.display()
            ),
        }
    }
    let streamed = if args.stream && line.error.is_none() {
        print_streams(&mut line.output)?
    } else {
        false
    };
    if let Some(t) = &tracing {
        t.line(&line, &crate::otel::LineScope::default());
        t.finish();
    }
    let mut metrics = Map::new();
    let mut node_runs = line.node_runs.clone();
    let mut failed = line.status != Status::Completed;
    // As promptflow, testing a flex flow runs its line only, not `__aggregate__`.
    if !failed && flow.has_aggregation() && flow.def.flex.is_none() {
        let agg = rt.block_on(flow.run_aggregation(&[&line.aggregation_inputs], &opts));
        metrics = agg.metrics;
        node_runs.extend(agg.node_runs);
        if let Some((node, e)) = &agg.error {
            eprintln!(
                "{} aggregation node `{}` failed",
                crate::style::error_label(),
                redact(node)
            );
            print_error(e);
            failed = true;
        }
    }
    let prefix = match flow.def.selected_variants.iter().find(|(n, _)| {
        args.variant
            .as_deref()
            .is_some_and(|v| v.contains(n.as_str()))
    }) {
        Some((node, variant)) => format!("flow-{node}-{variant}"),
        None => "flow".into(),
    };
    write_json(
        &out_dir.join(format!("{prefix}.detail.json")),
        &json!({"flow_runs": [&line], "node_runs": node_runs}),
    );
    if let Some(e) = &line.error {
        print_error(e);
        return Ok(ExitStatus::Failed);
    }
    write_json(&out_dir.join(format!("{prefix}.output.json")), &line.output);
    if !metrics.is_empty() {
        write_json(&out_dir.join(format!("{prefix}.metrics.json")), &metrics);
        eprintln!(
            "metrics: {}",
            redact(&sluice_engine::json::to_string(&metrics)?)
        );
    }
    if !streamed {
        // A flex entry that returned something other than a dict: its value, as promptflow prints
        // it (text as it is).
        let entry_value = line
            .node_runs
            .first()
            .filter(|_| flow.def.flex.is_some())
            .filter(|run| !matches!(run.output, Value::Map(_)))
            .and_then(|_| line.output.get("output"));
        match entry_value {
            Some(Value::String(text)) if line.output.len() == 1 => println!("{}", redact(text)),
            Some(value) if line.output.len() == 1 => println!("{}", pretty(value)),
            _ => println!("{}", pretty(&line.output)),
        }
    }
    if args.detail || args.verbose > 0 {
        print_usage(&node_runs);
    }
    if args.detail {
        for run in &node_runs {
            eprintln!(
                "{:<10} {:<24} {:>9.1} ms  {}",
                run.status.as_str(),
                run.node,
                (run.end_time - run.start_time)
                    .num_microseconds()
                    .unwrap_or(0) as f64
                    / 1000.0,
                truncate(
                    &redact(&sluice_engine::json::to_string(&run.output).unwrap_or_default()),
                    80
                )
            );
        }
    }
    Ok(if failed {
        ExitStatus::Failed
    } else {
        ExitStatus::Ok
    })
}

/// Prints streamed outputs as their text arrives, replacing each by its whole text; other outputs are
/// printed as JSON after them. Returns whether anything streamed.
fn print_streams(output: &mut Map) -> anyhow::Result<bool> {
    use std::io::Write;
    let mut any = false;
    let mut rest = Map::new();
    for (name, value) in output.iter_mut() {
        let Value::Opaque(o) = value else {
            rest.insert(name.clone(), value.clone());
            continue;
        };
        if !o.is_stream() {
            rest.insert(name.clone(), value.clone());
            continue;
        }
        any = true;
        let mut text = String::new();
        let mut stdout = std::io::stdout().lock();
        let result = o.for_each_chunk(&mut |chunk| {
            let _ = stdout.write_all(chunk.as_bytes());
            let _ = stdout.flush();
            text.push_str(chunk);
        });
        let _ = writeln!(stdout);
        drop(stdout);
        if let Err(e) = result {
            anyhow::bail!("the output `{name}` stopped streaming: {e}");
        }
        *value = Value::String(text);
    }
    if any && !rest.is_empty() {
        println!("{}", pretty(&rest));
    }
    Ok(any)
}

/// One line on stderr with the tokens and speed the LLM nodes reported.
fn print_usage(runs: &[sluice_engine::NodeRunInfo]) {
    for run in runs {
        let m = &run.system_metrics;
        if m.tokens.total_tokens.is_none() {
            continue;
        }
        eprintln!(
            "llm {:<20} {} prompt ({} cached) + {} completion tokens, first token {} ms, {} tok/s",
            run.node,
            m.tokens.prompt_tokens.unwrap_or(0),
            m.tokens.cached_tokens.unwrap_or(0),
            m.tokens.completion_tokens.unwrap_or(0),
            m.time_to_first_token_ms.unwrap_or(0),
            m.completion_tokens_per_s.unwrap_or(0.0),
        );
    }
}

/// Pretty JSON for stdout (`NaN` and `Infinity` as promptflow prints them), secrets masked.
fn pretty(value: &impl serde::Serialize) -> String {
    redact(&sluice_engine::json::to_string_pretty(value).unwrap_or_default()).into_owned()
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

fn print_error(e: &sluice_engine::ErrorInfo) {
    eprintln!(
        "{} {}",
        crate::style::paint(
            crate::style::stderr(),
            crate::style::Paint::Error,
            &format!("error[{}]:", e.error_type)
        ),
        redact(&e.message)
    );
    if let Some(tool) = &e.tool {
        eprint!("{}", redact(&tool.traceback));
        if !tool.traceback.is_empty() && !tool.traceback.ends_with('\n') {
            eprintln!();
        }
    }
}

/// Writes a file in `.promptflow/`, secrets masked; failing to do so is not a reason to fail the run.
fn write_json(path: &Path, value: &impl serde::Serialize) {
    let text = pretty(value);
    let result = std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))
        .and_then(|_| std::fs::write(path, text));
    if let Err(e) = result {
        tracing::warn!("cannot write {}: {e}", path.display());
    }
}

pub fn init(args: InitArgs) -> anyhow::Result<ExitStatus> {
    let dir: PathBuf = args.name.or(args.flow).expect("clap requires one");
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        eprintln!(
            "{} {} already exists and is not empty",
            crate::style::error_label(),
            dir.display()
        );
        return Ok(ExitStatus::Invalid);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let files: &[(&str, &str)] = match args.kind {
        InitType::Standard => &STANDARD,
        InitType::Evaluation => &EVALUATION,
    };
    for (name, text) in files {
        std::fs::write(dir.join(name), text).with_context(|| format!("cannot write {name}"))?;
    }
    eprintln!(
        "created {} — try:\n  sluice flow test --flow {}",
        dir.display(),
        dir.display()
    );
    Ok(ExitStatus::Ok)
}

const STANDARD: [(&str, &str); 4] = [
    (
        "flow.dag.yaml",
        "$schema: https://azuremlschemas.azureedge.net/promptflow/latest/Flow.schema.json\n\
inputs:\n  text:\n    type: string\n    default: Hello World!\n\
outputs:\n  output:\n    type: string\n    reference: ${hello_python.output}\n\
nodes:\n\
- name: hello_prompt\n  type: prompt\n  source:\n    type: code\n    path: hello.jinja2\n  inputs:\n    text: ${inputs.text}\n\
- name: hello_python\n  type: python\n  source:\n    type: code\n    path: hello.py\n  inputs:\n    input1: ${hello_prompt.output}\n",
    ),
    (
        "hello.jinja2",
        "{# A prompt template: flow inputs and node outputs fill its variables. #}\nWrite a haiku about: {{text}}\n",
    ),
    (
        "hello.py",
        "from promptflow.core import tool\n\n\n@tool\ndef my_python_tool(input1: str) -> str:\n    return \"Prompt: \" + input1\n",
    ),
    (
        "data.jsonl",
        "{\"text\": \"Hello World!\"}\n{\"text\": \"Good morning\"}\n",
    ),
];

const EVALUATION: [(&str, &str); 4] = [
    (
        "flow.dag.yaml",
        "inputs:\n  groundtruth:\n    type: string\n    default: APP\n  prediction:\n    type: string\n    default: APP\n\
outputs:\n  results:\n    type: string\n    reference: ${line_process.output}\n\
nodes:\n\
- name: line_process\n  type: python\n  source:\n    type: code\n    path: line_process.py\n  inputs:\n    groundtruth: ${inputs.groundtruth}\n    prediction: ${inputs.prediction}\n\
- name: aggregate\n  type: python\n  source:\n    type: code\n    path: aggregate.py\n  inputs:\n    processed_results: ${line_process.output}\n  aggregation: true\n",
    ),
    (
        "line_process.py",
        "from promptflow.core import tool\n\n\n@tool\ndef line_process(groundtruth: str, prediction: str) -> str:\n    \"\"\"Scores one line: Correct or Incorrect.\"\"\"\n    return \"Correct\" if groundtruth.lower() == prediction.lower() else \"Incorrect\"\n",
    ),
    (
        "aggregate.py",
        "from typing import List\n\nfrom promptflow.core import log_metric, tool\n\n\n@tool\ndef aggregate(processed_results: List[str]):\n    \"\"\"Runs once over all lines; logs the accuracy.\"\"\"\n    correct = sum(1 for r in processed_results if r == \"Correct\")\n    accuracy = round(correct / len(processed_results), 2) if processed_results else 0.0\n    log_metric(key=\"accuracy\", value=accuracy)\n    return {\"accuracy\": accuracy}\n",
    ),
    (
        "data.jsonl",
        "{\"groundtruth\": \"APP\", \"prediction\": \"APP\"}\n{\"groundtruth\": \"Channel\", \"prediction\": \"Alert\"}\n",
    ),
];
