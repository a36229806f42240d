#!/usr/bin/env bash
# Builds Sluice, fetches the embedded default model, and runs the example flows as a new user would:
# single tests, a batch classification run with two prompt variants, and an LLM-judged evaluation run.
# Everything runs locally on the CPU; no keys, no network after setup.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
sluice_build_and_pull
sluice="$SLUICE_BIN"
export SLUICE_HOME="${SLUICE_HOME:-$HOME/.sluice}"
stamp="$(date +%Y%m%d_%H%M%S)"
set -x
"$sluice" flow test --flow flows/hello --inputs name=Ada topic=rivers
"$sluice" flow test --flow flows/capitals --inputs country=Spain -v
"$sluice" flow test --flow flows/chat --inputs question="What is the capital of Portugal?" --stream
"$sluice" run create --flow flows/classify --data flows/classify/data.jsonl --name "classify_v0_$stamp" --variant '${classify.variant_0}' >/dev/null
"$sluice" run create --flow flows/classify --data flows/classify/data.jsonl --name "classify_v1_$stamp" --variant '${classify.variant_1}' >/dev/null
"$sluice" run create --flow flows/judge --data flows/judge/data.jsonl --name "judge_$stamp"
