//! One module per command; each returns the process exit status.

mod flow;
mod info;
mod run;

use crate::cli::{Command, FlowCommand, RunCommand};

pub fn run(command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Flow(FlowCommand::Test(args)) => flow::test(args),
        Command::Flow(FlowCommand::Validate(args)) => flow::validate(args),
        Command::Flow(FlowCommand::Plan(args)) => flow::plan(args),
        Command::Flow(FlowCommand::Init(args)) => flow::init(args),
        Command::Run(RunCommand::Create(args)) => run::create(args),
        Command::Run(RunCommand::Show(args)) => run::show(args),
        Command::Run(RunCommand::ShowMetrics(args)) => run::show_metrics(args),
        Command::Info => info::run(),
    }
}
