//! One module per command; each returns the process exit status.

mod connection;
pub(crate) mod flow;
mod flow_serve;
mod index;
mod info;
mod model;
mod monitor;
mod run;
mod serve;
mod serving;
mod trace;

use crate::ExitStatus;
use crate::cli::{
    Command, ConnectionCommand, FlowCommand, IndexCommand, ModelCommand, RunCommand, TraceCommand,
};

pub fn run(command: Command, verbose: u8) -> anyhow::Result<ExitStatus> {
    match command {
        Command::Flow(FlowCommand::Test(mut args)) => {
            args.verbose = verbose;
            flow::test(args)
        }
        Command::Flow(FlowCommand::Validate(args)) => flow::validate(args),
        Command::Flow(FlowCommand::Plan(args)) => flow::plan(args),
        Command::Flow(FlowCommand::Init(args)) => flow::init(args),
        Command::Flow(FlowCommand::Serve(args)) => flow_serve::serve(*args),
        Command::Run(run) => run_command(*run),
        Command::Model(ModelCommand::List(args)) => model::list(args.format),
        Command::Model(ModelCommand::Pull(args)) => model::pull(args),
        Command::Model(ModelCommand::Add(args)) => model::add(args),
        Command::Model(ModelCommand::Rm(args)) => model::rm(args),
        Command::Model(ModelCommand::Import(args)) => model::import(args),
        Command::Model(ModelCommand::Embed(args)) => model::embed(args),
        Command::Model(ModelCommand::Info(args)) => model::info(args),
        Command::Model(ModelCommand::Serve(args)) => serve::serve(args),
        Command::Connection(ConnectionCommand::Create(args)) => connection::create(args),
        Command::Connection(ConnectionCommand::List(args)) => connection::list(args.format),
        Command::Connection(ConnectionCommand::Show(args)) => connection::show(args),
        Command::Connection(ConnectionCommand::Delete(args)) => connection::delete(args),
        Command::Index(IndexCommand::Build(args)) => index::build(args),
        Command::Index(IndexCommand::Query(args)) => index::query(args),
        Command::Index(IndexCommand::List(args)) => index::list(args.format),
        Command::Index(IndexCommand::Info(args)) => index::info(args),
        Command::Index(IndexCommand::Rm(args)) => index::rm(args),
        Command::Trace(TraceCommand::Show(args)) => trace::show(args),
        Command::Monitor(args) => monitor::run(*args),
        Command::Info => info::run(),
        Command::PythonWorker => python_worker(),
    }
}

/// Span export for a command's lines, when `--trace` or the OpenTelemetry environment asks for it.
#[derive(Debug)]
pub(crate) struct Tracing {
    pub tracer: crate::otel::Tracer,
    pub flow: crate::otel::FlowInfo,
}

impl Tracing {
    /// Starts the exporter for `flow`; `Ok(None)` when no endpoint is set. A setting that cannot
    /// work is printed and is a usage error.
    pub(crate) fn start(
        args: &crate::cli::TraceArgs,
        flow: &sluice_engine::Flow,
    ) -> Result<Option<Tracing>, ExitStatus> {
        use crate::otel::{FlowInfo, TraceConfig, Tracer};
        let started =
            TraceConfig::from_env(args.trace.as_deref(), args.trace_payloads, &flow.def.name)
                .and_then(|c| c.map(Tracer::start).transpose());
        match started {
            Ok(t) => Ok(t.map(|tracer| Tracing {
                tracer,
                flow: FlowInfo::of(flow),
            })),
            Err(e) => {
                let mut text = format!("{} {e}", crate::style::error_label());
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    text.push_str(&format!("\n  caused by: {s}"));
                    source = s.source();
                }
                eprintln!("{}", sluice_engine::redact::redact(&text));
                Err(ExitStatus::Invalid)
            }
        }
    }

    /// Hands a finished line's spans to the exporter (never waits).
    pub(crate) fn line(&self, line: &sluice_engine::LineResult, scope: &crate::otel::LineScope) {
        self.tracer.line(line, &self.flow, scope);
    }

    /// Flushes what is queued (within the deadline) and prints what was exported and dropped.
    pub(crate) fn finish(&self) {
        let summary = self.tracer.shutdown();
        if summary.dropped() > 0 {
            eprintln!("{} {summary}", crate::style::warning_label());
        } else {
            eprintln!("{summary}");
        }
    }
}

/// Chooses where Python tools run (before any flow is loaded).
pub(crate) fn set_isolation(args: &crate::cli::IsolationArgs, concurrency: usize) {
    #[cfg(feature = "python")]
    {
        use sluice_nodes::python::{Isolation, set_isolation};
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        set_isolation(match args.isolation {
            crate::cli::IsolationArg::Thread => Isolation::InProcess,
            crate::cli::IsolationArg::Process => Isolation::Process {
                workers: args
                    .workers
                    .map_or_else(|| concurrency.clamp(1, 2 * cpus), usize::from),
            },
        });
    }
    #[cfg(not(feature = "python"))]
    let _ = (args, concurrency);
}

/// `sluice __python-worker`: answers tool calls on a private copy of stdout, with stdout itself moved
/// to stderr so nothing a tool prints can corrupt the answers.
fn python_worker() -> anyhow::Result<ExitStatus> {
    #[cfg(feature = "python")]
    {
        use std::os::fd::FromRawFd;
        // SAFETY: plain descriptor calls on this process's own stdout/stderr, before any other thread.
        #[allow(unsafe_code)]
        let answers = unsafe {
            let fd = libc::dup(1);
            anyhow::ensure!(fd >= 0, "cannot duplicate stdout");
            anyhow::ensure!(libc::dup2(2, 1) >= 0, "cannot move stdout to stderr");
            std::fs::File::from_raw_fd(fd)
        };
        sluice_nodes::python::serve_worker(
            std::io::stdin().lock(),
            std::io::BufWriter::new(answers),
        )?;
        Ok(ExitStatus::Ok)
    }
    #[cfg(not(feature = "python"))]
    anyhow::bail!("this build of Sluice has no Python")
}

fn run_command(command: RunCommand) -> anyhow::Result<ExitStatus> {
    match command {
        RunCommand::Create(args) => run::create(*args),
        RunCommand::Merge(args) => run::merge(args),
        RunCommand::List(args) => run::list(args),
        RunCommand::Show(args) => run::show(args),
        RunCommand::ShowDetails(args) => run::show_details(args),
        RunCommand::ShowMetrics(args) => run::show_metrics(args),
        RunCommand::Compare(args) => run::compare(args),
        RunCommand::Visualize(args) => run::visualize(args),
        RunCommand::Export(args) => run::export(args),
        RunCommand::Archive(args) => run::archive(args),
        RunCommand::Restore(args) => run::restore(args),
        RunCommand::Delete(args) => run::delete(args),
    }
}

/// Prints `rows` (JSON objects) as JSON, or as a table of the given columns.
fn print_listing(
    rows: &[serde_json::Value],
    columns: &[&str],
    format: crate::cli::OutputFormat,
) -> anyhow::Result<()> {
    match format {
        crate::cli::OutputFormat::Json => println!("{}", serde_json::to_string_pretty(rows)?),
        crate::cli::OutputFormat::Table => {
            let headers: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| columns.iter().map(|c| run::cell(&r[*c])).collect())
                .collect();
            print!(
                "{}",
                run::table(&headers, &cells, 60, crate::style::stdout())
            );
        }
    }
    Ok(())
}

/// Ends a command whose answer is one JSON value: prints it (written by `to_json`) and succeeds, or
/// prints the error and fails.
fn print_outcome<T, E: std::fmt::Display>(
    outcome: Result<T, E>,
    to_json: fn(&T) -> serde_json::Result<String>,
) -> anyhow::Result<ExitStatus> {
    match outcome {
        Ok(value) => {
            println!("{}", to_json(&value)?);
            Ok(ExitStatus::Ok)
        }
        Err(e) => {
            eprintln!("{} {e}", crate::style::error_label());
            Ok(ExitStatus::Failed)
        }
    }
}

/// Redraws the terminal's progress line: a 30-wide bar for `done` of `total`, then `text`.
fn draw_bar(done: usize, total: usize, text: &str) {
    let width = 30;
    let filled = (done * width)
        .checked_div(total)
        .unwrap_or(width)
        .min(width);
    let on = crate::style::stderr();
    eprint!(
        "\r\x1b[2K[{}{}] {text}",
        crate::style::paint(on, crate::style::Paint::Ok, &"#".repeat(filled)),
        crate::style::paint(on, crate::style::Paint::Dim, &"-".repeat(width - filled))
    );
}
