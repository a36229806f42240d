#!/usr/bin/env bash
# Builds Sluice, fetches the embedded default model, and runs the main job a new user would, locally on
# the CPU with no keys: single flow tests, then a batch classification run for each of two prompt
# variants, an evaluation run over each, a comparison, and an HTML report.
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
"$sluice" run create --flow flows/classify --data flows/classify/data.jsonl --variant all \
  --name "demo_$stamp" >/dev/null
for v in variant_0 variant_1; do
  "$sluice" run create --flow flows/eval_classification --run "demo_${stamp}_classify_$v" \
    --column-mapping prediction='${run.outputs.label}' label='${data.label}' \
    --name "demo_${stamp}_eval_$v" >/dev/null
done
"$sluice" run compare "demo_${stamp}_eval_variant_0" "demo_${stamp}_eval_variant_1" --max-diffs 3
"$sluice" run list --format table --max-results 6
"$sluice" run visualize "demo_${stamp}_classify_variant_0" "demo_${stamp}_eval_variant_0" "demo_${stamp}_eval_variant_1"
