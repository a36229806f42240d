#!/usr/bin/env bash
# Builds Sluice, fetches the default local models, and runs the main job a new user would, locally on
# the CPU with no keys: single flow tests, then a batch classification run for each of two prompt
# variants, an evaluation run over each, a comparison, and an HTML report; then retrieval over Sluice's
# own docs: an index, a question answered with sources, and a RAG batch scored for hit rate and MRR.
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
"$sluice" index build --source flows/rag/corpus --out sluice-docs >/dev/null
"$sluice" index query sluice-docs "how do I resume a killed run?" -k 2 --filter tags=runs
"$sluice" flow test --flow flows/rag --inputs question="How do I resume a batch run that was killed?"
"$sluice" run create --flow flows/rag --data flows/rag/data.jsonl --name "demo_${stamp}_rag" >/dev/null
"$sluice" run create --flow flows/eval_rag --run "demo_${stamp}_rag" --name "demo_${stamp}_rag_eval" \
  --column-mapping question='${data.question}' expected_source='${data.source}' \
  sources='${run.outputs.sources}' answer='${run.outputs.answer}' context='${run.outputs.context}' \
  | grep -A6 '"metrics"'
