//! The `sluice` command line, as a library: [`run_cli`] parses arguments and runs one command.
//!
//! The `sluice` binary (`src/main.rs`) calls it, and so does the Python package's `sluice` command
//! (`python/`), which runs the same CLI inside the Python interpreter that installed it.
//!
//! ```no_run
//! let code = sluice::run_cli(["sluice", "flow", "validate", "--flow", "flows/hello"]);
//! std::process::exit(code);
//! ```

mod cli;
mod commands;
mod logging;
mod otel;
mod style;

use std::ffi::OsString;

use clap::Parser;
use sluice_engine::redact;

/// Exit statuses scripts can rely on. Every command returns one; [`run_cli`] turns it into the
/// process's exit code, in this one place. Ordered by severity, so the worst of several runs wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExitStatus {
    /// Everything succeeded (0).
    Ok,
    /// The flow ran but a line or a check failed (1).
    Failed,
    /// Bad usage or an invalid flow: nothing ran (2).
    Invalid,
    /// Stopped with Ctrl-C (130, as shells report SIGINT).
    Canceled,
}

impl ExitStatus {
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Ok => 0,
            ExitStatus::Failed => 1,
            ExitStatus::Invalid => 2,
            ExitStatus::Canceled => 130,
        }
    }
}

/// Runs one `sluice` command line (`args` starts with the program name) and returns its exit code.
/// Usage errors are printed and return 2, `--help` and `--version` print and return 0; the process
/// is never exited here, so a caller that embeds the CLI decides that.
pub fn run_cli<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match cli::Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    // Keys the environment holds (OPENAI_API_KEY, ...) are masked in everything the process writes.
    redact::register_env_secrets();
    logging::init(cli.verbose, cli.quiet);
    let status = match commands::run(cli.command, cli.verbose) {
        Ok(code) => code,
        Err(e) => {
            eprintln!(
                "{} {}",
                style::error_label(),
                redact::redact(&format!("{e:#}"))
            );
            ExitStatus::Invalid
        }
    };
    status.code()
}

/// Sets `NODE.KEY=VALUE` settings (an `llm` node's `connection`, `deployment_name` or `model`, another
/// node's input) on a flow before it is checked, as `--connections` does; the error says which one
/// cannot apply.
pub fn set_connections(
    def: &mut sluice_engine::FlowDef,
    settings: &[String],
) -> Result<(), String> {
    commands::flow::set_connections(def, settings).map_err(|e| e.to_string())
}
