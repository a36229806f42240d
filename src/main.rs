//! The `sluice` command line.

mod cli;
mod commands;
mod logging;
mod otel;
mod style;

use std::io::Write;

use clap::Parser;
use sluice_engine::redact;

/// Exit statuses scripts can rely on. Every command returns one; `main` turns it into the process's
/// exit code, in this one place. Ordered by severity, so the worst of several runs wins.
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

fn main() {
    // Like other command-line tools, stop quietly when the reader of stdout goes away (`| head`).
    #[cfg(unix)]
    // SAFETY: restoring the default action of a signal before any other thread starts.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = cli::Cli::parse();
    // Keys the environment holds (OPENAI_API_KEY, ...) are masked in everything the process writes.
    redact::register_env_secrets();
    logging::init(cli.verbose, cli.quiet);
    let code = match commands::run(cli.command, cli.verbose) {
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
    // Exit as soon as the results are out: a thread that outlived its work (a Python tool still
    // running after its line timed out) must not keep the process alive. The embedded interpreter is
    // never finalized, which would wait for such threads.
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(code.code());
}
