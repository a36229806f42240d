#!/usr/bin/env bash
# Which local model should serve `model: default`? Runs 20 one-word questions (benches/data/qa.jsonl)
# through an `api: chat` flow and an `api: completion` few-shot flow on each local model, and scores
# the answers: `exact` when the answer, trimmed of spaces and a final period, is the expected word;
# `first sentence` when the expected word appears in the answer's first sentence.
#
#   benches/default_models.sh [MODEL ...]      (default: gemma3-270m smollm2)
set -euo pipefail
source "$(dirname "$0")/common.sh"
models=("$@"); [ ${#models[@]} -gt 0 ] || models=(gemma3-270m smollm2)
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
# Runs go to a scratch home; models stay where they are.
export SLUICE_MODELS_DIR="${SLUICE_MODELS_DIR:-${SLUICE_HOME:-$HOME/.sluice}/models}"
export SLUICE_HOME="$work/home"
echo "| model | api | exact | first sentence | seconds |"
echo "|---|---|---:|---:|---:|"
for model in "${models[@]}"; do
  for api in chat completion; do
    name="${model//[^a-zA-Z0-9]/_}_$api"
    t0=$(date +%s%N)
    "$sluice" run create --flow "$here/flows/qa_$api" --data "$here/data/qa.jsonl" --name "$name" \
      --column-mapping question='${data.question}' model="$model" >/dev/null 2>"$work/$name.log" \
      || { echo "run $name failed:" >&2; tail -5 "$work/$name.log" >&2; exit 1; }
    t1=$(date +%s%N)
    python3 - "$SLUICE_HOME/runs/$name/outputs.jsonl" "$here/data/qa.jsonl" "$model" "$api" "$t0" "$t1" <<'PY'
import json, re, sys
outputs, data, model, api, t0, t1 = sys.argv[1:]
expected = [json.loads(l)["answer"] for l in open(data)]
answers = {json.loads(l)["line_number"]: json.loads(l)["answer"] for l in open(outputs)}
exact = first = 0
for i, want in enumerate(expected):
    got = answers.get(i, "")
    if got.strip().rstrip(".").strip().lower() == want.lower():
        exact += 1
    sentence = re.split(r"(?<=[.!?])\s|\n", got.strip(), maxsplit=1)[0]
    if re.search(r"\b%s\b" % re.escape(want), sentence, re.I):
        first += 1
n = len(expected)
print(f"| {model} | {api} | {exact}/{n} | {first}/{n} | {(int(t1) - int(t0)) / 1e9:.1f} |")
PY
  done
done
