//! The `sluice` command line.

mod cli;
mod commands;
mod logging;

use std::io::Write;

use clap::Parser;
use sluice_engine::redact;

/// Exit statuses scripts can rely on.
pub mod exit {
    /// Everything succeeded.
    pub const OK: u8 = 0;
    /// The flow ran but a line or a check failed.
    pub const FAILED: u8 = 1;
    /// Bad usage or an invalid flow: nothing ran.
    pub const INVALID: u8 = 2;
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
            eprintln!("error: {}", redact::redact(&format!("{e:#}")));
            exit::INVALID
        }
    };
    // Exit as soon as the results are out: a thread that outlived its work (a Python tool still
    // running after its line timed out) must not keep the process alive. The embedded interpreter is
    // never finalized, which would wait for such threads.
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(i32::from(code));
}
