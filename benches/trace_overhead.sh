#!/usr/bin/env bash
# Batch throughput with OpenTelemetry export on vs off: `sluice run create` over LINES lines of the
# 3-node prompt+python flow (benches/flows/three_node) and of a one-`llm`-node chat flow calling a fake
# OpenAI server on loopback (a fixed reply with token counts), each run RUNS times with tracing off and
# on, alternately; the median of each, of the whole command and of the run itself. With tracing on, spans go to the Phoenix at $SLUICE_PHOENIX_URL
# when set (scripts/setup.sh's `sluice_start_phoenix`), else to a minimal OTLP/HTTP sink on loopback
# that answers every export with 200. The target is a throughput ratio (on / off) of at least 0.95.
#
#   benches/trace_overhead.sh [LINES] [RUNS]      (default 2000 lines, 3 runs)
#
# Uses target/release/sluice (or $SLUICE); build it first with `cargo build --release`.
set -euo pipefail
source "$(dirname "$0")/common.sh"
lines="${1:-2000}"
runs="${2:-3}"
bench_workdir

# One process, two servers: the fake OpenAI server and the OTLP sink. It prints both ports.
python3 - > "$work/ports" <<'PY' &
import json, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REPLY = json.dumps({
    "id": "bench", "object": "chat.completion", "created": 0, "model": "gpt-bench",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "Sluice runs flows."}}],
    "usage": {"prompt_tokens": 20, "completion_tokens": 4, "total_tokens": 24},
}).encode()

def handler(body, content_type):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(200)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    return Handler

servers = [ThreadingHTTPServer(("127.0.0.1", 0), handler(REPLY, "application/json")),
           ThreadingHTTPServer(("127.0.0.1", 0), handler(b"", "application/x-protobuf"))]
print(*(s.server_address[1] for s in servers), flush=True)
for s in servers:
    threading.Thread(target=s.serve_forever, daemon=True).start()
threading.Event().wait()
PY
server_pid=$!
for _ in $(seq 1 100); do [ -s "$work/ports" ] && break; sleep 0.1; done
read -r openai_port sink_port < "$work/ports"
if [ -n "${SLUICE_PHOENIX_URL:-}" ]; then
  collector="$SLUICE_PHOENIX_URL"; collector_name="Phoenix ($collector)"
else
  collector="http://127.0.0.1:$sink_port"; collector_name="a minimal OTLP/HTTP sink"
fi

export SLUICE_HOME="$work/sluice-home"
mkdir -p "$SLUICE_HOME"
unset OTEL_EXPORTER_OTLP_ENDPOINT OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
cat > "$work/bench_conn.yaml" <<EOF
name: bench
type: open_ai
api_key: not-needed
api_base: http://127.0.0.1:$openai_port/v1
EOF
"$sluice" connection create -f "$work/bench_conn.yaml" >/dev/null 2>&1
mkdir -p "$work/llm_flow"
printf '# user:\n{{question}}\n' > "$work/llm_flow/ask.jinja2"
cat > "$work/llm_flow/flow.dag.yaml" <<'EOF'
inputs:
  question: {type: string}
outputs:
  answer: {type: string, reference: '${ask.output}'}
nodes:
- name: ask
  type: llm
  api: chat
  connection: bench
  source: {type: code, path: ask.jinja2}
  inputs: {model: gpt-bench, max_tokens: 16, temperature: 0, question: '${inputs.question}'}
EOF
python3 - "$lines" "$work/data.jsonl" <<'PY'
import json, sys
n, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as f:
    for i in range(n):
        f.write(json.dumps({"question": f"What is question number {i} about?"}) + "\n")
PY

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
one_run() { # label, flow, trace (on/off): appends the seconds to $work/label.times
  local label="$1" flow="$2" trace="$3" t0 t1
  local args=(run create --flow "$flow" --data "$work/data.jsonl" --name "${label}_$RANDOM$RANDOM")
  [ "$trace" = on ] && args+=(--trace "$collector")
  t0=$(date +%s%N)
  if ! "$sluice" "${args[@]}" > /dev/null 2> "$work/$label.stderr"; then
    echo "$label failed:" >&2; cat "$work/$label.stderr" >&2; exit 1
  fi
  t1=$(date +%s%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f\n", (b-a)/1e9}' >> "$work/$label.times"
  # The run's own time (its record's duration: the lines and their records, not the flush at exit).
  grep -o 'not run, [0-9.]*s' "$work/$label.stderr" | tail -1 | grep -o '[0-9.]*' >> "$work/$label.run"
  if [ "$trace" = on ]; then grep 'traces:' "$work/$label.stderr" | tail -1 > "$work/$label.summary"; fi
}

echo "Spans go to $collector_name; $lines lines, median of $runs runs each."
echo
echo "Wall: the whole command, with the flush of the spans at exit; run: the run's own time (run.json)."
echo
echo "| flow | tracing off: wall s (run s) | tracing on: wall s (run s) | throughput on / off, wall (run) | spans (last run) |"
echo "|---|---:|---:|---:|---|"
for flow in three_node llm; do
  dir="$here/flows/three_node"; [ "$flow" = llm ] && dir="$work/llm_flow"
  for f in "$flow-off" "$flow-on"; do : > "$work/$f.times"; : > "$work/$f.run"; done
  for _ in $(seq 1 "$runs"); do
    one_run "$flow-off" "$dir" off
    one_run "$flow-on" "$dir" on
  done
  off=$(median < "$work/$flow-off.times"); on=$(median < "$work/$flow-on.times")
  off_run=$(median < "$work/$flow-off.run"); on_run=$(median < "$work/$flow-on.run")
  printf '| %s | %.2f (%.2f) | %.2f (%.2f) | **%.2f** (%.2f) | %s |\n' "$flow" "$off" "$off_run" \
    "$on" "$on_run" "$(awk -v a="$off" -v b="$on" 'BEGIN {print a/b}')" \
    "$(awk -v a="$off_run" -v b="$on_run" 'BEGIN {print a/b}')" \
    "$(sed -e 's/^.*traces: //' -e 's/ to http[^,]*,/,/' "$work/$flow-on.summary")"
done
