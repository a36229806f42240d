#!/usr/bin/env bash
# promptflow's own example flows, `pf flow test` vs `sluice flow test`, side by side. Extracts
# examples/ (flows/standard, flows/chat, flows/evaluation, flex-flows, prompty) from a promptflow
# checkout or bare mirror, starts one deterministic fake OpenAI server on loopback, creates the
# connections the examples name in both runners (pointing at that server), runs each example once in
# each runner with the same inputs, and compares outputs and the request bodies the server received.
# Prints one line per example (match, output differs, requests differ, sluice fails, pf fails
# (skipped)) with a short diff, and totals. A report: exits 0 unless the harness itself broke.
#
#   benches/compare_examples.sh [--only SUBSTR]... [--keep] [--defaults-as-inputs]
#
# --defaults-as-inputs gives a DAG flow without data its inputs' defaults, read by this script, as
# explicit inputs (by default each runner reads them from flow.dag.yaml itself).
# PROMPTFLOW_GIT: the promptflow git dir (default /work/.mirror/microsoft+promptflow/repo).
# PF: pf (default ~/.cache/sluice/pf-venv/bin/pf, promptflow 1.18.5 + promptflow-tools); Sluice's
# Python tools import from the same virtualenv. Uses target/release/sluice (or $SLUICE).
# RESULTS_JSON: also write the per-example results there as JSON.
# --keep leaves the work folder (logs/<example>/{pf,sluice}.{stdout,stderr,output.json,requests.json}).
set -euo pipefail
source "$(dirname "$0")/common.sh"
git_dir="${PROMPTFLOW_GIT:-/work/.mirror/microsoft+promptflow/repo}"
pf_bin="${PF:-$HOME/.cache/sluice/pf-venv/bin/pf}"
[ -x "$pf_bin" ] || { echo "no pf at $pf_bin (set PF)" >&2; exit 2; }
venv="$(dirname "$(dirname "$pf_bin")")"
keep=0; extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --keep) keep=1 ;;
    --only) extra+=(--only "$2"); shift ;;
    --defaults-as-inputs) extra+=(--defaults-as-inputs) ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
bench_workdir
if [ "$keep" = 1 ]; then trap 'echo "work folder kept: $work" >&2' EXIT; fi
python3 "$here/extract_examples.py" "$git_dir" "$work/src"
# Packages some examples import that promptflow-tools does not bring: beautifulsoup4 (web-classification
# and the flows built on it; its fetch of the page fails offline and the tool goes on without it),
# put on both runners' PYTHONPATH rather than into the shared virtualenv.
site=(); if "$venv/bin/python" -m pip install --quiet --no-deps --target "$work/site" beautifulsoup4 soupsieve >&2; then site=(--site "$work/site"); fi
python3 "$here/compare_examples.py" --examples "$work/src/examples" --work "$work" \
  --pf "$pf_bin" --sluice "$sluice" --venv "$venv" --json "$work/results.json" "${site[@]}" "${extra[@]}"
if [ -n "${RESULTS_JSON:-}" ]; then cp "$work/results.json" "$RESULTS_JSON"; fi
