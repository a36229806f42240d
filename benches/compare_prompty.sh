#!/usr/bin/env bash
# A prompty batch run side by side: `sluice run create --flow ask.prompty` and (when $PF or `pf` is
# available, or --install-pf is given) `pf run create` over the same N-line dataset. Both send their
# requests to one `sluice model serve` on loopback (the local default model, greedy, 16 tokens), so
# the model costs the same and the difference is the runner. Prints wall time, lines/s and peak RSS.
#
#   benches/compare_prompty.sh [LINES] [--install-pf]      (default 50 lines)
#
# --install-pf creates a virtualenv in the work folder and pip-installs promptflow into it.
# Uses target/release/sluice (or $SLUICE); build it first with `cargo build --release`.
set -euo pipefail
source "$(dirname "$0")/common.sh"
bench_args 50 "$@"
lines="$count"
bench_workdir

# The server prints its address once listening.
"$sluice" model serve --port 0 --quiet > "$work/serve.out" 2>"$work/serve.err" &
server_pid=$!
for _ in $(seq 1 600); do
  grep -qo 'http://[0-9.:]*' "$work/serve.out" 2>/dev/null && break
  sleep 0.1
done
base="$(grep -o 'http://[0-9.:]*' "$work/serve.out" | head -1)/v1"
[ "$base" != "/v1" ] || { echo "model serve did not start:" >&2; cat "$work/serve.err" >&2; exit 2; }

mkdir -p "$work/flow"
cat > "$work/flow/ask.prompty" <<EOF
---
name: Ask
model:
  api: chat
  configuration:
    type: openai
    model: default
    base_url: $base
    api_key: not-needed
  parameters:
    max_tokens: 16
    temperature: 0
inputs:
  question:
    type: string
---
system:
Answer in one short sentence.

user:
{{question}}
EOF
python3 - "$lines" "$work/data.jsonl" <<'PY'
import json, sys
n, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as f:
    for i in range(n):
        f.write(json.dumps({"question": f"What is {i} plus {i}?"}) + "\n")
PY

measure() { # label, command...
  local label="$1"; shift
  local t0 t1 rss secs
  t0=$(date +%s%N)
  rss=$({ /usr/bin/time -f '%M' "$@" 2>&1 >/dev/null || true; } | tail -1)
  t1=$(date +%s%N)
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", (b-a)/1e9}')
  printf '| %s | %s | %s | %.1f | %.0f MB |\n' "$label" "$lines" "$secs" \
    "$(awk -v n="$lines" -v s="$secs" 'BEGIN {print n/s}')" "$(awk -v k="$rss" 'BEGIN {print k/1024}')"
  echo "$secs" > "$work/$label.secs"
}

echo "| runner | lines | seconds | lines/s | peak RSS |"
echo "|---|---:|---:|---:|---:|"
export SLUICE_HOME="$work/sluice-home"
measure sluice "$sluice" run create --flow "$work/flow/ask.prompty" --data "$work/data.jsonl" --name bench
bench_find_pf
if [ -n "$pf_bin" ]; then
  export HOME="$work/pf-home"; mkdir -p "$HOME"
  "$pf_bin" config set telemetry.enabled=false >/dev/null 2>&1 || true
  measure pf "$pf_bin" run create --flow "$work/flow/ask.prompty" --data "$work/data.jsonl" --name bench
  awk -v p="$(cat "$work/pf.secs")" -v s="$(cat "$work/sluice.secs")" \
    'BEGIN {printf "\nsluice takes %.2fx the time of pf\n", s/p}'
else
  echo "pf not available (set PF=/path/to/pf, or pass --install-pf): only Sluice was timed"
fi
