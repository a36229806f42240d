//! `sluice run ...`: the command-line face of the engine's batch runs and run store
//! (`sluice_engine::runner`, `sluice_engine::store`): flags become a [`RunSpec`], progress and streamed
//! lines are drawn from the runner's observer, and runs are listed, shown and compared from the store.

mod export;
pub(crate) mod report;
mod view;

use std::cell::Cell;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;

use sluice_engine::store::RunRecord;
use sluice_engine::{
    BatchObserver, BatchRun, LineResult, RunError, RunOptions, RunSpec, RunStore, Status, Value,
};

use super::flow::{enter_flow, line_timeout, load, runtime};
use crate::ExitStatus;
use crate::cli::{CreateArgs, MergeArgs};
use crate::style::{self, Paint};

pub use export::export;
pub use view::{
    archive, compare, delete, list, restore, show, show_details, show_metrics, visualize,
};
pub(crate) use view::{cell, load_run, table};

/// `$SLUICE_HOME`, default `~/.sluice`.
pub(crate) fn sluice_home() -> PathBuf {
    sluice_nodes::llm::store::sluice_home()
}

/// The run store under `$SLUICE_HOME`.
pub(crate) fn store() -> RunStore {
    RunStore::new(sluice_home())
}

fn split_kv(item: &str, flag: &str) -> anyhow::Result<(String, String)> {
    match item.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => bail!("{flag} takes KEY=VALUE pairs; got {item:?}"),
    }
}

fn spec_from_args(args: &CreateArgs) -> anyhow::Result<RunSpec> {
    let mut spec = match &args.file {
        Some(f) => RunSpec::from_yaml(f)?,
        None => RunSpec::default(),
    };
    if let Some(f) = &args.flow {
        spec.flow = Some(f.clone());
    }
    if let Some(d) = &args.data {
        spec.data = Some(d.clone());
    }
    if args.run.is_some() {
        spec.run = args.run.clone();
    }
    if !args.variant.is_empty() {
        spec.variants = args
            .variant
            .iter()
            .flat_map(|v| v.split(',').map(|s| s.trim().to_owned()))
            .filter(|s| !s.is_empty())
            .collect();
    }
    if let Some(init) = super::flow::parse_init(&args.init)? {
        spec.init = Some(init);
    }
    for item in &args.column_mapping {
        let (k, v) = split_kv(item, "--column-mapping")?;
        spec.column_mapping.insert(k, Value::from(v.as_str()));
    }
    for (field, value) in [
        (&mut spec.name, &args.name),
        (&mut spec.display_name, &args.display_name),
        (&mut spec.description, &args.description),
        (&mut spec.resume_from, &args.resume_from),
    ] {
        if value.is_some() {
            *field = value.clone();
        }
    }
    if let Some(shard) = &args.shard {
        spec.shard = Some(sluice_engine::Shard::parse(shard)?);
    }
    for item in &args.tags {
        let (k, v) = split_kv(item, "--tags")?;
        spec.tags.insert(k, v);
    }
    for item in &args.environment_variables {
        let (k, v) = split_kv(item, "--environment-variables")?;
        spec.environment_variables.insert(k, v);
    }
    for item in &args.set {
        let (k, v) = split_kv(item, "--set")?;
        spec.set(&k, &v)?;
    }
    Ok(spec)
}

/// Prints an error on stderr, then each of its causes that its message does not already say
/// (secrets masked).
pub(crate) fn print_error(e: &dyn std::error::Error) {
    let text = e.to_string();
    eprint!(
        "{}",
        style::diagnostics(
            style::stderr(),
            &sluice_engine::redact::redact(&format!("error: {text}\n"))
        )
    );
    let mut source = e.source();
    while let Some(s) = source {
        let cause = s.to_string();
        if !text.contains(&cause) {
            eprintln!("  caused by: {}", sluice_engine::redact::redact(&cause));
        }
        source = s.source();
    }
}

/// Prints a run error and returns its exit status: 2 when nothing ran through the user's mistake.
fn report_error(e: &RunError) -> ExitStatus {
    print_error(e);
    if e.is_user_error() {
        ExitStatus::Invalid
    } else {
        ExitStatus::Failed
    }
}

pub fn create(args: CreateArgs) -> anyhow::Result<ExitStatus> {
    let store = store();
    super::set_isolation(&args.isolation, args.max_concurrency.max(1));
    let mut spec = spec_from_args(&args)?;
    if let Err(e) = spec.resume(&store).and_then(|()| spec.check()) {
        return Ok(report_error(&e));
    }
    let opts = RunOptions {
        max_concurrency: args.max_concurrency.max(1),
        node_concurrency: 2,
        line_timeout: line_timeout(args.line_timeout)?.or(Some(Duration::from_secs(600))),
        batch_timeout: match args.batch_timeout {
            Some(s) if !(s > 0.0 && s < 1e9) => {
                bail!("--batch-timeout must be a positive number of seconds")
            }
            Some(s) => Some(Duration::from_secs_f64(s)),
            None => None,
        },
    };
    execute(&store, spec, opts, args.stream, &args.trace)
}

/// `sluice run merge`: one run of the shards of a run.
pub fn merge(args: MergeArgs) -> anyhow::Result<ExitStatus> {
    let store = store();
    super::set_isolation(&args.isolation, args.max_concurrency.max(1));
    let mut spec = RunSpec {
        name: Some(args.name.clone()),
        merge_from: args.from.clone(),
        ..RunSpec::default()
    };
    if let Err(e) = spec.merge(&store).and_then(|()| spec.check()) {
        return Ok(report_error(&e));
    }
    let opts = RunOptions {
        max_concurrency: args.max_concurrency.max(1),
        line_timeout: line_timeout(None)?.or(Some(Duration::from_secs(600))),
        ..RunOptions::default()
    };
    execute(&store, spec, opts, false, &args.trace)
}

/// Runs `spec` (once per variant it selects) and prints the records; the worst exit status.
fn execute(
    store: &RunStore,
    mut spec: RunSpec,
    opts: RunOptions,
    stream: bool,
    trace: &crate::cli::TraceArgs,
) -> anyhow::Result<ExitStatus> {
    let flow_path = spec.flow.clone().expect("checked");
    let flow_path = std::path::absolute(&flow_path).unwrap_or(flow_path);
    spec.flow = Some(flow_path.clone());
    spec.data = spec.data.map(|d| std::path::absolute(&d).unwrap_or(d));
    for (k, v) in &spec.environment_variables {
        // SAFETY: set before the async runtime or any other thread of ours starts.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var(k, v)
        };
    }
    // `--variant all` (or a list): one sibling run per variant, then a comparison.
    let variants = if spec.variants.is_empty() {
        vec![None]
    } else {
        let flow = match load(&flow_path, None, spec.init.as_ref()) {
            Ok(f) => f,
            Err(code) => return Ok(code),
        };
        match spec.variant_selections(&flow) {
            Ok(v) => v,
            Err(e) => return Ok(report_error(&e)),
        }
    };
    let fan_out = variants.len() > 1;
    if fan_out && (spec.resume_from.is_some() || !spec.merge_from.is_empty()) {
        eprintln!(
            "{} --resume-from continues one run; give one --variant",
            crate::style::error_label()
        );
        return Ok(ExitStatus::Invalid);
    }
    let rt = runtime()?;
    let mut names = Vec::new();
    let mut worst = ExitStatus::Ok;
    let mut tracing: Option<super::Tracing> = None;
    for variant in &variants {
        let one = spec.for_variant(variant.as_deref(), fan_out);
        let flow = match load(&flow_path, variant.as_deref(), spec.init.as_ref()) {
            Ok(f) => f,
            Err(code) => {
                worst = worst.max(code);
                break;
            }
        };
        if tracing.is_none() {
            tracing = match super::Tracing::start(trace, &flow) {
                Ok(t) => t,
                Err(code) => {
                    worst = worst.max(code);
                    break;
                }
            };
        }
        let flow_info = tracing.as_ref().map(|_| crate::otel::FlowInfo::of(&flow));
        let run = match BatchRun::prepare(store, flow, &one, opts.clone()) {
            Ok(r) => r,
            Err(e) => {
                worst = worst.max(report_error(&e));
                break;
            }
        };
        let flow_dir = run.flow().def.dir.clone();
        enter_flow(run.flow())?;
        let mut progress = Progress::new(stream);
        progress.trace = tracing.as_ref().zip(flow_info).map(|(t, flow)| LineTrace {
            tracer: &t.tracer,
            flow,
            scope: crate::otel::LineScope::default(),
        });
        let result = rt.block_on(run.execute(&mut progress, async {
            let _ = tokio::signal::ctrl_c().await;
        }));
        progress.finish();
        let _ = std::env::set_current_dir(&flow_dir);
        let record = match result {
            Ok(r) => r,
            Err(e) => {
                worst = worst.max(report_error(&e));
                break;
            }
        };
        if let Some(note) = &record.status_note {
            eprintln!("run {}: {note}", record.name);
        }
        summary_line(&record);
        if !stream {
            // One run: its record; several (variants): one record per line, so stdout stays JSON lines.
            if fan_out {
                println!("{}", serde_json::to_string(&record)?);
            } else {
                println!("{}", serde_json::to_string_pretty(&record)?);
            }
        }
        let code = match record.status {
            sluice_engine::store::RunStatus::Completed => ExitStatus::Ok,
            sluice_engine::store::RunStatus::Canceled => ExitStatus::Canceled,
            _ => ExitStatus::Failed,
        };
        worst = worst.max(code);
        names.push(record.name.clone());
        if code == ExitStatus::Canceled {
            break;
        }
    }
    if let Some(t) = &tracing {
        t.finish();
    }
    if fan_out && !names.is_empty() {
        eprintln!();
        view::print_comparison_to_stderr(&names)?;
    }
    Ok(worst)
}

/// One line on stderr when a run ends: lines, failures, time, tokens and where the run is.
fn summary_line(record: &RunRecord) {
    let sm = &record.properties.system_metrics;
    let tokens = sm
        .tokens
        .total_tokens
        .map(|t| format!(", {t} tokens"))
        .unwrap_or_default();
    eprintln!(
        "run {}: {} — {} lines, {} failed, {} not run, {:.2}s{tokens}; stored in {}",
        style::paint(style::stderr(), Paint::Bold, &record.name),
        style::status(style::stderr(), record.status.as_str()),
        sm.total_lines,
        sm.failed_lines.unwrap_or(0),
        sm.not_run_lines.unwrap_or(0),
        sm.duration.unwrap_or(0.0),
        record.properties.output_path.display()
    );
}

/// Where a run's lines' spans go.
struct LineTrace<'a> {
    tracer: &'a crate::otel::Tracer,
    flow: crate::otel::FlowInfo,
    scope: crate::otel::LineScope,
}

/// Progress on stderr: a redrawn bar on a terminal, a plain line every few seconds otherwise; with
/// `--stream`, each finished line as one JSON line on stdout. With tracing on, each finished line's
/// spans go to the exporter.
struct Progress<'a> {
    trace: Option<LineTrace<'a>>,
    total: usize,
    start: Instant,
    done: Cell<usize>,
    failed: Cell<usize>,
    carried: usize,
    last: Cell<Instant>,
    terminal: bool,
    stream: bool,
    /// Lines per second, smoothed over recent lines (for the ETA).
    rate: Cell<Option<f64>>,
    last_tick: Cell<(Instant, usize)>,
}

impl BatchObserver for Progress<'_> {
    fn started(&mut self, record: &RunRecord, total: usize, carried: usize) {
        if let Some(t) = &mut self.trace {
            t.scope.batch_run_id = Some(record.name.clone());
            t.scope.referenced_batch_run_id = record.properties.run.clone();
        }
        self.total = total;
        self.carried = carried;
        self.done.set(carried);
        self.start = Instant::now();
        self.last_tick.set((self.start, carried));
    }

    fn aggregation_finished(
        &mut self,
        result: &sluice_engine::AggregationResult,
        start: chrono::DateTime<chrono::Utc>,
        end: chrono::DateTime<chrono::Utc>,
    ) {
        if let Some(t) = &self.trace {
            t.tracer
                .aggregation(result, (start, end), &t.flow, &t.scope);
        }
    }

    fn line_finished(&mut self, line: &LineResult) {
        if let Some(t) = &self.trace {
            t.tracer.line(line, &t.flow, &t.scope);
        }
        if self.stream {
            #[derive(serde::Serialize)]
            struct Streamed<'a> {
                line_number: Option<usize>,
                status: &'a str,
                output: &'a sluice_engine::Map,
                error: &'a Option<sluice_engine::ErrorInfo>,
            }
            let record = sluice_engine::json::to_string(&Streamed {
                line_number: line.line_number,
                status: line.status.as_str(),
                output: &line.output,
                error: &line.error,
            })
            .unwrap_or_default();
            let mut out = std::io::stdout().lock();
            // A closed reader (`| head`) ends the printing, not the run.
            if writeln!(out, "{record}")
                .and_then(|()| out.flush())
                .is_err()
            {
                self.stream = false;
            }
        }
        self.tick(line.status != Status::Completed);
    }
}

impl Progress<'_> {
    fn new(stream: bool) -> Self {
        let now = Instant::now();
        Progress {
            trace: None,
            total: 0,
            start: now,
            done: 0.into(),
            failed: 0.into(),
            carried: 0,
            last: now.into(),
            terminal: std::io::stderr().is_terminal(),
            stream,
            rate: None.into(),
            last_tick: (now, 0).into(),
        }
    }

    fn tick(&self, failed: bool) {
        self.done.set(self.done.get() + 1);
        if failed {
            self.failed.set(self.failed.get() + 1);
        }
        let every = if self.terminal {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(5)
        };
        if self.last.get().elapsed() >= every {
            self.last.set(Instant::now());
            self.print();
        }
    }

    fn print(&self) {
        let done = self.done.get();
        // An exponential moving average of the rate between draws, so the ETA follows the run's
        // current pace rather than its first lines.
        let (then, then_done) = self.last_tick.get();
        let dt = then.elapsed().as_secs_f64();
        if dt > 0.0 && done > then_done {
            let now_rate = (done - then_done) as f64 / dt;
            let smoothed = match self.rate.get() {
                Some(r) => 0.7 * r + 0.3 * now_rate,
                None => now_rate,
            };
            self.rate.set(Some(smoothed));
            self.last_tick.set((Instant::now(), done));
        }
        let rate = self.rate.get().unwrap_or(0.0);
        let eta = if rate > 0.0 {
            self.total.saturating_sub(done) as f64 / rate
        } else {
            0.0
        };
        let stats = format!(
            "{done}/{} lines ({} failed), {rate:.1} lines/s, ETA {eta:.0}s",
            self.total,
            self.failed.get()
        );
        if self.terminal {
            super::draw_bar(done, self.total, &stats)
        } else {
            eprintln!("{stats}")
        }
    }

    fn finish(&self) {
        self.print();
        if self.terminal {
            eprintln!();
        }
    }
}
