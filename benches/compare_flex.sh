#!/usr/bin/env bash
# A cold `flow test` of a flex flow, Sluice vs promptflow: a new process per run, the median of RUNS
# runs each. The flow, benches/flows/flex_chat, is shaped like promptflow's
# examples/flex-flows/chat-basic: a class entry whose __init__ takes an AzureOpenAIModelConfiguration
# (given with --init) and whose __call__ runs a prompty through Prompty.load. Both call one fake
# OpenAI server on loopback (a fixed reply), so the difference is start-up, loading and the runner.
#
#   benches/compare_flex.sh [RUNS] [--install-pf]      (default 5 runs)
#
# pf is $PF, or `pf` on the PATH; --install-pf creates a virtualenv in the work folder and
# pip-installs promptflow into it. Uses target/release/sluice (or $SLUICE); build it first with
# `cargo build --release`.
set -euo pipefail
source "$(dirname "$0")/common.sh"
bench_args 5 "$@"
runs="$count"
bench_workdir

# The fake server prints its port once listening.
python3 - > "$work/port" <<'PY' &
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REPLY = json.dumps({
    "id": "bench", "object": "chat.completion", "created": 0, "model": "gpt-4o",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "Azure Machine Learning is a cloud service."}}],
    "usage": {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28},
}).encode()

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(REPLY)))
        self.end_headers()
        self.wfile.write(REPLY)
    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
PY
server_pid=$!
for _ in $(seq 1 100); do [ -s "$work/port" ] && break; sleep 0.1; done
base="http://127.0.0.1:$(cat "$work/port")"

cp -r "$here/flows/flex_chat" "$work/flow"
cat > "$work/init.json" <<EOF
{"model_config": {"azure_deployment": "gpt-4o", "azure_endpoint": "$base", "api_key": "not-needed", "api_version": "2024-06-01"}}
EOF

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
measure() { # label, command...
  local label="$1"; shift
  local out="$work/$label.times"
  : > "$out"
  for _ in $(seq 1 "$runs"); do
    local t0 t1
    t0=$(date +%s%N)
    if ! "$@" > "$work/$label.stdout" 2> "$work/$label.stderr"; then
      echo "$label failed:" >&2; cat "$work/$label.stderr" >&2; exit 1
    fi
    t1=$(date +%s%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f\n", (b-a)/1e9}' >> "$out"
  done
  median < "$out" > "$work/$label.secs"
  printf '| %s | %s | %.3f | %s |\n' "$label" "$runs" "$(cat "$work/$label.secs")" "$(head -c 60 "$work/$label.stdout" | tr -d '\n')"
}

echo "| runner | runs | median seconds | output |"
echo "|---|---:|---:|---|"
export SLUICE_HOME="$work/sluice-home"
measure sluice "$sluice" flow test --flow "$work/flow" --init "$work/init.json"
bench_find_pf
if [ -n "$pf_bin" ]; then
  export HOME="$work/pf-home"; mkdir -p "$HOME"
  "$pf_bin" config set telemetry.enabled=false >/dev/null 2>&1 || true
  # pf starts its trace service on the first run; that run is not counted.
  "$pf_bin" flow test --flow "$work/flow" --init "$work/init.json" >/dev/null 2>&1 || true
  measure pf "$pf_bin" flow test --flow "$work/flow" --init "$work/init.json"
  # pf leaves its trace service running for this home; stop it.
  "$pf_bin" service stop >/dev/null 2>&1 || true
  awk -v p="$(cat "$work/pf.secs")" -v s="$(cat "$work/sluice.secs")" \
    'BEGIN {printf "\nsluice flow test is %.1fx faster than pf flow test (median of cold runs)\n", p/s}'
else
  echo "pf not available (set PF=/path/to/pf, or pass --install-pf): only Sluice was timed"
fi
