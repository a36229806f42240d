//! What the integration tests share: the `sluice` binary run against a home of the test's own, with
//! the models installed on this machine.

#![allow(dead_code)]

use std::path::Path;
use std::process::Output;

use assert_cmd::Command;
use serde_json::Value as Json;

/// `sluice` with `SLUICE_HOME=home`, the machine's models, in the repository root.
pub fn sluice(home: &Path) -> Command {
    let mut cmd = Command::cargo_bin("sluice").unwrap();
    cmd.env("SLUICE_HOME", home)
        .env("SLUICE_MODELS_DIR", sluice_nodes::llm::store::models_dir())
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

/// The JSON a successful command printed; a failure shows its status and stderr.
pub fn stdout_json(out: &Output) -> Json {
    assert!(
        out.status.success(),
        "sluice failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Runs `sluice ARGS` and returns its JSON output.
pub fn json(home: &Path, args: &[&str]) -> Json {
    let out = sluice(home).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout_json(&out)
}
