#!/usr/bin/env bash
# Batch runs side by side: `sluice run create` and (when $PF or `pf` is available) `pf run create` over
# the same N-line dataset of the 3-node prompt+python flow, in one script run. Prints wall time,
# lines/s, peak RSS (largest single process) and the number of files in the run folder. Sluice runs twice:
# with Python tools in its own process (the default) and with `--isolation process` (worker processes).
#
#   PF=/path/to/venv/bin/pf benches/compare_batch.sh [LINES]      (default 1000)
set -euo pipefail
source "$(dirname "$0")/common.sh"
lines="${1:-1000}"
flow="$here/flows/three_node"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 - "$lines" "$work/data.jsonl" <<'PY'
import json, sys
n, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as f:
    for i in range(n):
        f.write(json.dumps({"question": f"What is question number {i} about?"}) + "\n")
PY

measure() { # label, run folder, command...
  local label="$1" dir="$2"; shift 2
  local t0 t1 rss
  t0=$(date +%s%N)
  rss=$({ /usr/bin/time -f '%M' "$@" 2>&1 >/dev/null || true; } | tail -1)
  t1=$(date +%s%N)
  local secs
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", (b-a)/1e9}')
  local files
  files=$(find "$dir" -type f 2>/dev/null | wc -l)
  printf '| %s | %s | %s | %.1f | %.0f MB | %s |\n' "$label" "$lines" "$secs" \
    "$(awk -v n="$lines" -v s="$secs" 'BEGIN {print n/s}')" "$(awk -v k="$rss" 'BEGIN {print k/1024}')" "$files"
  echo "$secs" > "$work/$label.secs"
}

echo "| runner | lines | seconds | lines/s | peak RSS | files in run folder |"
echo "|---|---:|---:|---:|---:|---:|"
export SLUICE_HOME="$work/sluice-home"
measure sluice "$SLUICE_HOME/runs/bench" "$sluice" run create --flow "$flow" --data "$work/data.jsonl" \
  --column-mapping question='${data.question}' --name bench
measure sluice-isolated "$SLUICE_HOME/runs/bench_isolated" "$sluice" run create --flow "$flow" \
  --data "$work/data.jsonl" --column-mapping question='${data.question}' --name bench_isolated \
  --isolation process
awk -v i="$(cat "$work/sluice-isolated.secs")" -v s="$(cat "$work/sluice.secs")" \
  'BEGIN {printf "\n--isolation process costs %.2fx the time of in-process tools\n\n", i/s}'
pf_bin="${PF:-$(command -v pf || true)}"
if [ -n "$pf_bin" ]; then
  # Peak RSS is what /usr/bin/time reports: the largest single process (pf's worker processes come on top).
  export HOME="$work/pf-home"; mkdir -p "$HOME"
  "$pf_bin" config set telemetry.enabled=false >/dev/null 2>&1 || true
  measure pf "$HOME/.promptflow/.runs/bench" "$pf_bin" run create --flow "$flow" --data "$work/data.jsonl" \
    --column-mapping question='${data.question}' --name bench --stream
  awk -v p="$(cat "$work/pf.secs")" -v s="$(cat "$work/sluice.secs")" 'BEGIN {printf "\nsluice is %.0fx faster\n", p/s}'
else
  echo "pf not available (set PF=/path/to/pf): only Sluice was timed"
fi
