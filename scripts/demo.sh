#!/usr/bin/env bash
# Builds Sluice and runs the example flows, as a new user would.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --locked
sluice="${CARGO_TARGET_DIR:-target}/release/sluice"
set -x
"$sluice" flow plan --flow flows/conditional
"$sluice" flow test --flow flows/hello --inputs name=Ada topic=rivers
"$sluice" flow test --flow flows/conditional --inputs number=7
"$sluice" flow test --flow flows/eval_accuracy --inputs groundtruth=Paris prediction=paris
