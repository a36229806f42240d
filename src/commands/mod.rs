//! One module per command; each returns the process exit status.

mod connection;
mod flow;
mod index;
mod info;
mod model;
mod run;
mod serve;

use crate::cli::{Command, ConnectionCommand, FlowCommand, IndexCommand, ModelCommand, RunCommand};

pub fn run(command: Command, verbose: u8) -> anyhow::Result<u8> {
    match command {
        Command::Flow(FlowCommand::Test(mut args)) => {
            args.verbose = verbose;
            flow::test(args)
        }
        Command::Flow(FlowCommand::Validate(args)) => flow::validate(args),
        Command::Flow(FlowCommand::Plan(args)) => flow::plan(args),
        Command::Flow(FlowCommand::Init(args)) => flow::init(args),
        Command::Run(run) => run_command(*run),
        Command::Model(ModelCommand::List) => model::list(),
        Command::Model(ModelCommand::Pull(args)) => model::pull(args),
        Command::Model(ModelCommand::Add(args)) => model::add(args),
        Command::Model(ModelCommand::Rm(args)) => model::rm(args),
        Command::Model(ModelCommand::Import(args)) => model::import(args),
        Command::Model(ModelCommand::Embed(args)) => model::embed(args),
        Command::Model(ModelCommand::Info(args)) => model::info(args),
        Command::Model(ModelCommand::Serve(args)) => serve::serve(args),
        Command::Connection(ConnectionCommand::Create(args)) => connection::create(args),
        Command::Connection(ConnectionCommand::List) => connection::list(),
        Command::Connection(ConnectionCommand::Show(args)) => connection::show(args),
        Command::Connection(ConnectionCommand::Delete(args)) => connection::delete(args),
        Command::Index(IndexCommand::Build(args)) => index::build(args),
        Command::Index(IndexCommand::Query(args)) => index::query(args),
        Command::Index(IndexCommand::List) => index::list(),
        Command::Index(IndexCommand::Info(args)) => index::info(args),
        Command::Index(IndexCommand::Rm(args)) => index::rm(args),
        Command::Info => info::run(),
    }
}

fn run_command(command: RunCommand) -> anyhow::Result<u8> {
    match command {
        RunCommand::Create(args) => run::create(*args),
        RunCommand::List(args) => run::list(args),
        RunCommand::Show(args) => run::show(args),
        RunCommand::ShowDetails(args) => run::show_details(args),
        RunCommand::ShowMetrics(args) => run::show_metrics(args),
        RunCommand::Compare(args) => run::compare(args),
        RunCommand::Visualize(args) => run::visualize(args),
        RunCommand::Archive(args) => run::archive(args),
        RunCommand::Restore(args) => run::restore(args),
        RunCommand::Delete(args) => run::delete(args),
    }
}

/// Redraws the terminal's progress line: a 30-wide bar for `done` of `total`, then `text`.
fn draw_bar(done: usize, total: usize, text: &str) {
    let width = 30;
    let filled = (done * width)
        .checked_div(total)
        .unwrap_or(width)
        .min(width);
    eprint!(
        "\r\x1b[2K[{}{}] {text}",
        "#".repeat(filled),
        "-".repeat(width - filled)
    );
}
