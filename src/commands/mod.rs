//! One module per command; each returns the process exit status.

mod connection;
mod flow;
mod info;
mod model;
mod run;
mod serve;

use crate::cli::{Command, ConnectionCommand, FlowCommand, ModelCommand, RunCommand};

pub fn run(command: Command, verbose: u8) -> anyhow::Result<u8> {
    match command {
        Command::Flow(FlowCommand::Test(mut args)) => {
            args.verbose = verbose;
            flow::test(args)
        }
        Command::Flow(FlowCommand::Validate(args)) => flow::validate(args),
        Command::Flow(FlowCommand::Plan(args)) => flow::plan(args),
        Command::Flow(FlowCommand::Init(args)) => flow::init(args),
        Command::Run(RunCommand::Create(args)) => run::create(args),
        Command::Run(RunCommand::Show(args)) => run::show(args),
        Command::Run(RunCommand::ShowMetrics(args)) => run::show_metrics(args),
        Command::Model(ModelCommand::List) => model::list(),
        Command::Model(ModelCommand::Pull(args)) => model::pull(args),
        Command::Model(ModelCommand::Add(args)) => model::add(args),
        Command::Model(ModelCommand::Rm(args)) => model::rm(args),
        Command::Model(ModelCommand::Info(args)) => model::info(args),
        Command::Model(ModelCommand::Serve(args)) => serve::serve(args),
        Command::Connection(ConnectionCommand::Create(args)) => connection::create(args),
        Command::Connection(ConnectionCommand::List) => connection::list(),
        Command::Connection(ConnectionCommand::Show(args)) => connection::show(args),
        Command::Connection(ConnectionCommand::Delete(args)) => connection::delete(args),
        Command::Info => info::run(),
    }
}
