#!/usr/bin/env bash
# The user-space instructions a served request of the 3-node flow costs, with the traffic log and
# metrics (the defaults) and without them (`--log-sample 0 --no-metrics`), counted by valgrind's
# callgrind: a count does not move with the machine's load as times do, so it shows a change of a
# few hundred instructions that no timed run could. Each server is run twice, over SHORT and over
# LONG sequential requests on one keep-alive connection, and the difference of the two totals over
# LONG - SHORT is a request's cost without the start-up's. The kernel's work (writes, syncs) is not
# counted: `serve_overhead_starts.sh` measures the whole cost.
#
#   benches/serve_instructions.sh [SHORT] [LONG]        (default 300 and 3300)
#
# Prints instructions a request for each server and their difference; the callgrind files are left
# in $OUT (default a temporary folder) for `callgrind_annotate --inclusive=yes`. Needs valgrind and
# target/release/sluice (or $SLUICE).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
short="${1:-300}" long="${2:-3300}"
sluice="${SLUICE:-$here/../target/release/sluice}"
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 2; }
out="${OUT:-$(mktemp -d)}"
mkdir -p "$out"

# Runs the server under callgrind over $2 requests, with the flags after; writes $out/$1.out.
count() {
  local name="$1" n="$2"
  shift 2
  local home port
  home="$(mktemp -d)"
  port=$((20000 + RANDOM % 10000))
  SLUICE_HOME="$home" valgrind --tool=callgrind --callgrind-out-file="$out/$name.out" \
    "$sluice" flow serve --port "$port" --flow "$here/flows/three_node" "$@" >"$home/out" 2>"$home/err" &
  local pid=$!
  for _ in $(seq 600); do grep -q '^listening on ' "$home/out" 2>/dev/null && break; sleep 0.2; done
  grep -q '^listening on ' "$home/out" || { cat "$home/err" >&2; exit 1; }
  python3 - "$port" "$n" <<'PY'
import http.client, json, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
body = json.dumps({"question": "How fast is a served flow?"})
for _ in range(n):
    c.request("POST", "/score", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    r.read()
    assert r.status == 200, r.status
PY
  sleep 1.5 # the log's writer takes what is queued
  kill -TERM "$pid"
  wait "$pid" || true
  rm -rf "$home"
}

total() { callgrind_annotate "$out/$1.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'; }

per_request() {
  local name="$1"
  shift
  count "$name-short" "$short" "$@"
  count "$name-long" "$long" "$@"
  echo $((($(total "$name-long") - $(total "$name-short")) / (long - short)))
}

plain=$(per_request plain --log-sample 0 --no-metrics)
logged=$(per_request logged)
echo "instructions a request: plain $plain, log and metrics $logged," \
  "difference $((logged - plain)) ($(python3 -c "print(f'{100 * ($logged - $plain) / $plain:+.1f}%')"))"
echo "callgrind files: $out"
