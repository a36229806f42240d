#!/usr/bin/env bash
# Scale-out on Ray: one flow whose single step is an HTTP call that takes 200 ms (a Python tool using
# urllib against a small threaded server on loopback that answers every request after 200 ms), LINES
# lines, each at CONCURRENCY lines at once per process: a local `sluice.run`, then `sluice.ray.run` with
# 1 worker and with 2 workers (one shard each). Prints seconds and lines/s of each and the ratios
# (targets: 2 workers >= 1.8x one worker; 1 worker >= 0.8x the local run). The Ray times are what a
# caller waits for once Ray is up: the shards' start, the shards and the merge. A first 2-worker call,
# timed and shown apart, starts Ray's worker processes (and imports sluice in them), which Ray then
# keeps for the later calls.
#
#   benches/ray_scaling.sh [LINES] [CONCURRENCY]          (default 1000 lines, 16 at once)
#
# $SLUICE_PYTHON: a Python with the sluice-flow wheel and Ray installed (default: the test venv
# ~/.cache/sluice/pkg-test-venv, which scripts/test.sh makes and which sees Ray from the tools venv).
set -euo pipefail
lines="${1:-1000}"
concurrency="${2:-16}"
py="${SLUICE_PYTHON:-$HOME/.cache/sluice/pkg-test-venv/bin/python}"
"$py" -c 'import sluice._native, ray' 2>/dev/null || {
  echo "no sluice-flow or no Ray in $py: run scripts/test.sh (or pip install ./python ray), or set SLUICE_PYTHON" >&2
  exit 2
}
work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# The slow service: every GET is answered after 200 ms, each connection on a thread of its own.
cat > "$work/server.py" <<'PY'
import http.server, socketserver, sys, time

class Slow(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(0.2)
        body = b'{"answer": "ok"}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

server = Server(("127.0.0.1", 0), Slow)
with open(sys.argv[1], "w") as f:
    f.write(str(server.server_address[1]))
server.serve_forever()
PY
python3 "$work/server.py" "$work/port" &
server_pid=$!
for _ in $(seq 1 50); do [ -s "$work/port" ] && break; sleep 0.1; done
[ -s "$work/port" ] || { echo "the slow server did not start" >&2; exit 2; }
port="$(cat "$work/port")"

mkdir "$work/flow"
cat > "$work/flow/flow.dag.yaml" <<'YAML'
inputs:
  url:
    type: string
outputs:
  answer:
    type: string
    reference: ${call.output}
nodes:
- name: call
  type: python
  source:
    type: code
    path: call.py
  inputs:
    url: ${inputs.url}
YAML
cat > "$work/flow/call.py" <<'PY'
import json
import urllib.request

from sluice import tool


@tool
def call(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.load(r)["answer"]
PY
"$py" - "$lines" "$port" > "$work/data.jsonl" <<'PY'
import json, sys
lines, port = int(sys.argv[1]), sys.argv[2]
for i in range(lines):
    print(json.dumps({"url": "http://127.0.0.1:%s/line/%d" % (port, i)}))
PY

SLUICE_HOME="$work/home" "$py" - "$work/flow" "$work/data.jsonl" "$lines" "$concurrency" <<'PY'
import sys, time
import ray
import sluice, sluice.ray

flow, data, lines, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ray.init(include_dashboard=False, log_to_driver=False)

def timed(label, call):
    t0 = time.perf_counter()
    run = call()
    seconds = time.perf_counter() - t0
    done = run.record["properties"]["system_metrics"]["completed_lines"]
    assert run.status == "Completed" and done == lines, (label, run.status, done)
    print("%-24s %7.2f s %8.1f lines/s" % (label, seconds, lines / seconds), flush=True)
    return lines / seconds

print("%d lines, each one 200 ms HTTP call; %d lines at once per process; ideal %.0f lines/s per process"
      % (lines, concurrency, concurrency / 0.2))
timed("first call, 2 workers", lambda: sluice.ray.run(
    flow, data, num_workers=2, max_concurrency=concurrency, name="cold"))
local = timed("local sluice.run", lambda: sluice.run(flow, data, max_concurrency=concurrency, name="local"))
one = timed("sluice.ray.run, 1 worker", lambda: sluice.ray.run(
    flow, data, num_workers=1, max_concurrency=concurrency, name="ray1"))
two = timed("sluice.ray.run, 2 workers", lambda: sluice.ray.run(
    flow, data, num_workers=2, max_concurrency=concurrency, name="ray2"))
print("2 workers / 1 worker: %.2fx (target >= 1.8x)" % (two / one))
print("1 worker / local:   %.2f (target >= 0.8)" % (one / local))
ray.shutdown()
PY
