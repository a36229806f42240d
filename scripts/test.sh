#!/usr/bin/env bash
# Sets up what the tests need and runs them all: formatting, lints, unit, integration and CLI tests.
# Release mode only (a debug build would compile everything twice). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
sluice_build_and_pull
# Gemma 3 270M too: the tests of its chat template and the throughput bench use it.
"$SLUICE_BIN" model pull gemma3-270m >/dev/null
sluice_start_chroma
sluice_start_phoenix
sluice_start_mlflow
sluice_openai_client
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets --locked -- -D warnings
# The CLI and the node kinds build without CPython and without llama.cpp.
cargo check --release --locked --workspace --no-default-features
cargo test --release --locked --workspace --no-fail-fast
# The Python package, from its wheel, in a new venv.
sluice_python_package
"$SLUICE_PKG_PYTHON" -m pytest -q -p no:cacheprovider python/tests
# The same wheel in the oldest and the newest CPython it supports.
sluice_python_versions
