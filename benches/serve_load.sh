#!/usr/bin/env bash
# Load on `sluice flow serve`: wrk POSTs one line at a time to /score of the 3-node prompt+python flow
# (benches/flows/three_node) at 1, 16 and 64 connections, a few seconds each, on loopback; prints
# requests/s and latency percentiles per level.
#
#   benches/serve_load.sh [SECONDS]       (default 5 s per level; needs `wrk`: apt-get install -y wrk)
#
# Uses target/release/sluice (or $SLUICE); build it first with `cargo build --release`. The traffic
# log goes to a temporary SLUICE_HOME, removed at the end.
set -euo pipefail
source "$(dirname "$0")/common.sh"
secs="${1:-5}"
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install -y wrk)" >&2; exit 2; }

home="$(mktemp -d)"
out="$home/stdout"
SLUICE_HOME="$home" "$sluice" flow serve --flow "$here/flows/three_node" --port 0 \
  --max-inflight 64 --max-queue 256 >"$out" 2>"$home/stderr" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$home"' EXIT
for _ in $(seq 100); do
  grep -q '^listening on ' "$out" 2>/dev/null && break
  sleep 0.1
done
addr="$(sed -n 's/^listening on //p' "$out")"
[ -n "$addr" ] || { echo "the server did not start:" >&2; cat "$home/stderr" >&2; exit 1; }

script="$home/post.lua"
cat >"$script" <<'LUA'
wrk.method = "POST"
wrk.body = '{"question": "How fast is a served flow?"}'
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  io.write(string.format("RESULT %.0f req/s  p50 %.2f ms  p99 %.2f ms  errors %d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000,
    latency:percentile(99) / 1000,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA
curl -sf -XPOST "$addr/score" -H 'Content-Type: application/json' -d '{"question": "warm up"}' >/dev/null

echo "flow serve, benches/flows/three_node, ${secs}s per level ($(nproc) cores)"
for c in 1 16 64; do
  threads=$(( c < 2 ? 1 : 2 ))
  printf 'concurrency %-3s ' "$c"
  wrk -t"$threads" -c"$c" -d"${secs}s" -s "$script" "$addr/score" | sed -n 's/^RESULT //p'
done
curl -s "$addr/metrics" | grep -E '^sluice_serve_(traffic_log_dropped_total|rejections_total)' || true
# What the traffic log kept: lines written, and records dropped because its writer fell behind.
kill -TERM $pid; wait $pid 2>/dev/null || true
lines=$(cat "$home"/serve/*/runs/*/details.jsonl 2>/dev/null | wc -l)
echo "traffic log: $lines lines written"
