#!/usr/bin/env bash
# Per-call overhead of a loaded flow called from Python: Sluice's `sluice.load_flow(...)(**inputs)`
# against promptflow's `promptflow.client.load_flow(...)(**inputs)`, on the same 3-node
# prompt+python flow (benches/flows/three_node), in one script run. Each side loads the flow once,
# warms up, then times CALLS calls in one process; prints mean and median per call and the ratio.
#
#   benches/python_call_overhead.sh [CALLS]      (default 2000 for Sluice, CALLS/10 for promptflow)
#
# $SLUICE_PYTHON: a Python with the sluice-flow wheel installed (default: the test venv
# ~/.cache/sluice/pkg-test-venv, which scripts/test.sh makes). $PF_PYTHON: a Python with promptflow
# (default: ~/.cache/sluice/pf-venv, made here with promptflow 1.18.5 and promptflow-tools the
# first time).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
calls="${1:-2000}"
pf_calls=$(( calls / 10 > 20 ? calls / 10 : 20 ))
# A copy, since promptflow writes its `.promptflow` folder into the flow.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r "$here/flows/three_node" "$work/"
flow="$work/three_node"
sluice_py="${SLUICE_PYTHON:-$HOME/.cache/sluice/pkg-test-venv/bin/python}"
"$sluice_py" -c 'import sluice._native' 2>/dev/null || {
  echo "no sluice-flow in $sluice_py: pip install ./python (or run scripts/test.sh), or set SLUICE_PYTHON" >&2
  exit 2
}
pf_py="${PF_PYTHON:-}"
if [ -z "$pf_py" ]; then
  venv="${SLUICE_PF_VENV:-$HOME/.cache/sluice/pf-venv}"
  # promptflow-tools holds the `prompt` node's tool.
  if ! "$venv/bin/python" -c 'import promptflow.client, promptflow.tools' 2>/dev/null; then
    echo "installing promptflow 1.18.5 and promptflow-tools into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "promptflow==1.18.5" promptflow-tools >&2
  fi
  pf_py="$venv/bin/python"
fi

# time_calls PYTHON MODULE CALLS: "mean_us median_us" of calling the loaded flow.
time_calls() {
  "$1" - "$2" "$3" "$flow" <<'PY'
import importlib, statistics, sys, time
module, calls, flow_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
load_flow = importlib.import_module(module).load_flow
flow = load_flow(flow_dir)
inputs = {"question": "How fast is a call?"}
for _ in range(max(5, calls // 20)):
    out = flow(**inputs)
assert "answer" in out, out
times = []
for _ in range(calls):
    t0 = time.perf_counter()
    flow(**inputs)
    times.append(time.perf_counter() - t0)
print("%.1f %.1f" % (statistics.mean(times) * 1e6, statistics.median(times) * 1e6))
PY
}

read -r s_mean s_median < <(cd "$work" && time_calls "$sluice_py" sluice "$calls")
echo "sluice.load_flow(...)(**inputs): mean ${s_mean} us, median ${s_median} us per call over ${calls} calls"
# promptflow logs each call; keep its chatter out of the result.
read -r p_mean p_median < <(cd "$work" && PF_LOGGING_LEVEL=CRITICAL time_calls "$pf_py" promptflow.client "$pf_calls" 2>/dev/null)
echo "promptflow load_flow(...)(**inputs): mean ${p_mean} us, median ${p_median} us per call over ${pf_calls} calls"
awk -v s="$s_median" -v p="$p_median" -v sm="$s_mean" -v pm="$p_mean" \
  'BEGIN { printf "ratio (promptflow / sluice): %.1fx by median, %.1fx by mean (target >= 50x)\n", p / s, pm / sm }'
