#!/usr/bin/env bash
# Load on `sluice flow serve`, next to `pf flow serve` (promptflow 1.18.5) on the same flow: wrk POSTs
# one line at a time to /score at 1, 16, 64 and 256 connections, a few seconds each, on loopback, and
# prints requests/s, p50/p99 latency and the answers that were not 200 (429s under overload) per level.
#
#   benches/serve_load.sh [SECONDS] [--no-pf] [--no-llm] [--only-llm] [--llm-seconds N]
#                                   (default 5 s per level, 30 s per level of the llm flow)
#   benches/serve_load.sh --overhead [ROUNDS] [--seconds N] [--connections N] [--side-rounds N]
#                                   [--side-seconds N] [--unlogged-first] [--log-only]
#                                   (default 60 rounds of 1 s at 16 connections, then 6 side-by-side
#                                   rounds of 10 s; ROUNDS 0: side by side only)
#
# --overhead measures the cost of the traffic log and the metrics: the 3-node flow served as deployed
# (log and metrics on, the defaults) and plain (`--log-sample 0 --no-metrics`; with `--log-only`, or a
# binary older than `--no-metrics`, the plain server keeps its metrics and only the log's cost is
# measured). "logged" and "unlogged" below name these two servers. Both are pinned to CPU 0 with
# taskset and wrk (one thread) pinned to CPU 1, so that the load generator does not take the servers'
# CPU. Each round runs both servers, in turns that alternate which goes first; the script prints each
# round, then the median of the rounds' req/s ratios (logged / unlogged) with a 95% bootstrap interval,
# the ratio of the totals, and each server's own CPU time (utime + stime) per request. On a shared
# machine single rounds spread widely (a neighbour's load comes and goes), so many short rounds measure
# better than a few long ones; the interval says how far the median can be trusted. Then both
# servers take load at the same time, side by side on CPU 0, and the script prints each one's
# requests per second of its own CPU time: as both meet the same moment of the machine, this ratio
# varies far less from round to round (about ±1% where taking turns varies ±10%). The logged server
# is started first (`--unlogged-first`: the other); which one is can move the ratio by a point or two
# from one pair of processes to the next, which `serve_overhead_starts.sh --side` averages out. Needs
# 2 CPUs or more.
#
# 1. The pure 3-node flow (benches/flows/three_node: prompt -> python -> python) on Sluice with the
#    traffic log and metrics on and with `--log-sample 0` (the log's overhead, taking turns), then on
#    `pf flow serve` (installed once into ~/.cache/sluice/pf-venv, or $SLUICE_PF_VENV).
# 2. The llm flow (benches/flows/qa_chat) on the local model, the questions of benches/data/qa.jsonl
#    in turn: requests/s, latency, and completion tokens/s from /metrics; then a batch run of the same
#    20 lines, whose tokens/s the 16-client level is set against.
#
# Needs `wrk` (apt-get install -y wrk) and target/release/sluice (or $SLUICE; `cargo build --release`).
set -euo pipefail
source "$(dirname "$0")/common.sh"
secs=5 llm_secs=30 pure=1 pf=1 llm=1 overhead=0 rounds=60 conns=16 oh_secs=1
side_rounds=6 side_secs=10 unlogged_first=0 log_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --overhead)
      overhead=1
      if [ $# -gt 1 ] && [[ "$2" =~ ^[0-9]+$ ]]; then rounds="$2"; shift; fi ;;
    --seconds) oh_secs="$2"; shift ;;
    --connections) conns="$2"; shift ;;
    --side-rounds) side_rounds="$2"; shift ;;
    --side-seconds) side_secs="$2"; shift ;;
    --unlogged-first) unlogged_first=1 ;;
    --log-only) log_only=1 ;;
    --no-pf) pf=0 ;;
    --no-llm) llm=0 ;;
    --only-llm) pure=0 pf=0 ;;
    --llm-seconds) llm_secs="$2"; shift ;;
    *) secs="$1" ;;
  esac
  shift
done
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install -y wrk)" >&2; exit 2; }
levels="1 16 64 256"
# The servers get homes of their own; the models stay where they are.
export SLUICE_MODELS_DIR="${SLUICE_MODELS_DIR:-${SLUICE_HOME:-$HOME/.sluice}/models}"

work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Starts `sluice flow serve ARGS` with a home of its own, pinned to the CPUs in $pin if set (taskset
# execs it: the pid is the server's own); sets $addr.
start_sluice() {
  local name="$1"; shift
  mkdir -p "$work/$name"
  local runner=()
  [ -z "${pin:-}" ] || runner=(taskset -c "$pin")
  SLUICE_HOME="$work/$name" "${runner[@]}" "$sluice" flow serve --port 0 "$@" \
    >"$work/$name.out" 2>"$work/$name.err" &
  pids+=($!)
  for _ in $(seq 300); do
    grep -q '^listening on ' "$work/$name.out" 2>/dev/null && break
    sleep 0.1
  done
  addr="$(sed -n 's/^listening on //p' "$work/$name.out")"
  [ -n "$addr" ] || { echo "$name did not start:" >&2; cat "$work/$name.err" >&2; exit 1; }
}

# A wrk script that posts the JSON bodies of file $1 (one a line) in turn.
wrk_script() {
  local bodies="$1" lua="$2"
  {
    echo 'local bodies = {'
    while IFS= read -r line; do
      printf '  [==[%s]==],\n' "$line"
    done <"$bodies"
    cat <<'LUA'
}
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %8.1f req/s  p50 %8.2f ms  p99 %8.2f ms  not-200 %d  errors %d  requests %d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.requests))
end
LUA
  } >"$lua"
}

# wrk at each level against $1 with script $2; a line per level, prefixed with $3.
levels_run() {
  local url="$1" lua="$2" label="$3" c threads
  for c in $levels; do
    threads=$(( c < 2 ? 1 : 2 ))
    printf '%-28s c=%-3s ' "$label" "$c"
    wrk -t"$threads" -c"$c" -d"${secs}s" --timeout 30s -s "$lua" "$url" | sed -n 's/^RESULT //p'
  done
}

if [ "$overhead" = 1 ]; then
  command -v taskset >/dev/null || { echo "--overhead needs taskset (util-linux)" >&2; exit 2; }
  [ "$(nproc)" -ge 2 ] || { echo "--overhead needs 2 CPUs" >&2; exit 2; }
  echo '{"question": "How fast is a served flow?"}' >"$work/pure.jsonl"
  wrk_script "$work/pure.jsonl" "$work/pure.lua"
  server_cpu=0 wrk_cpu=1
  plain=(--log-sample 0)
  measured="traffic log"
  if [ "$log_only" = 0 ] && "$sluice" flow serve --help | grep -q -- '--no-metrics'; then
    plain+=(--no-metrics)
    measured="traffic log and metrics"
  fi
  echo "== $measured overhead: benches/flows/three_node, $rounds rounds of ${oh_secs}s at $conns connections;"
  echo "   servers on CPU $server_cpu, wrk on CPU $wrk_cpu ($(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg))"
  pin=$server_cpu
  start_logged() {
    start_sluice logged --flow "$here/flows/three_node" --max-inflight 64 --max-queue 256
    on_addr="$addr" on_pid="${pids[-1]}"
  }
  start_unlogged() {
    start_sluice unlogged --flow "$here/flows/three_node" --max-inflight 64 --max-queue 256 "${plain[@]}"
    off_addr="$addr" off_pid="${pids[-1]}"
  }
  if [ "$unlogged_first" = 1 ]; then start_unlogged; start_logged; else start_logged; start_unlogged; fi
  ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
  # One turn: "<rps> <requests> <cpu ticks>" of the server at $1 (pid $2) under wrk for $oh_secs;
  # answers that were not 200 are counted in $work/bad.
  oh_turn() {
    local url="$1" pid="$2" before out
    before=$(ticks "$pid")
    out=$(taskset -c "$wrk_cpu" wrk -t1 -c"$conns" -d"${oh_secs}s" --timeout 30s -s "$work/pure.lua" "$url/score" \
      | sed -n 's/^RESULT //p')
    sleep 0.2 # the log's writer takes the last lines at most 50 ms later
    set -- $out
    echo $(( ${10} + ${12} )) >>"$work/bad"
    echo "$1 ${14} $(( $(ticks "$pid") - before ))"
  }
  # Warm-up: one second each, not counted.
  for a in "$on_addr" "$off_addr"; do
    taskset -c "$wrk_cpu" wrk -t1 -c"$conns" -d1s -s "$work/pure.lua" "$a/score" >/dev/null
  done
  : >"$work/rounds"
  for r in $(seq "$rounds"); do
    if [ $((r % 2)) = 1 ]; then
      on=$(oh_turn "$on_addr" "$on_pid"); off=$(oh_turn "$off_addr" "$off_pid")
    else
      off=$(oh_turn "$off_addr" "$off_pid"); on=$(oh_turn "$on_addr" "$on_pid")
    fi
    echo "$on $off" >>"$work/rounds"
  done
  # Side by side: both servers under load at once, sharing CPU 0, each with its own wrk on CPU 1.
  # Both meet the same moment of the machine, so what a neighbour's load does to the CPU weighs on
  # both alike; a CPU-bound server's requests/s is its requests per CPU second, and the ratio of
  # those is the log's cost in throughput.
  : >"$work/side"
  for r in $(seq "$side_rounds"); do
    on_t=$(ticks "$on_pid") off_t=$(ticks "$off_pid")
    taskset -c "$wrk_cpu" wrk -t1 -c"$conns" -d"${side_secs}s" --timeout 30s -s "$work/pure.lua" \
      "$on_addr/score" | sed -n 's/^RESULT //p' >"$work/side_on" &
    on_wrk=$!
    taskset -c "$wrk_cpu" wrk -t1 -c"$conns" -d"${side_secs}s" --timeout 30s -s "$work/pure.lua" \
      "$off_addr/score" | sed -n 's/^RESULT //p' >"$work/side_off" &
    off_wrk=$!
    wait "$on_wrk" "$off_wrk"
    sleep 0.2
    set -- $(cat "$work/side_on"); on_n=${14}; echo $(( ${10} + ${12} )) >>"$work/bad"
    set -- $(cat "$work/side_off"); off_n=${14}; echo $(( ${10} + ${12} )) >>"$work/bad"
    echo "$on_n $(( $(ticks "$on_pid") - on_t )) $off_n $(( $(ticks "$off_pid") - off_t ))" >>"$work/side"
  done
  logged_lines=$(cat "$work"/logged/serve/*/runs/*/details.jsonl 2>/dev/null | wc -l || true)
  dropped=$(curl -s "$on_addr/metrics" | sed -n 's/^sluice_serve_traffic_log_dropped_total //p')
  python3 - "$work/rounds" "$(getconf CLK_TCK)" "$work/side" <<'PY'
import random, statistics, sys
hz = float(sys.argv[2])
rows = [[float(x) for x in l.split()] for l in open(sys.argv[1])]
if rows:
    print(f"{'round':>5} {'logged req/s':>13} {'unlogged req/s':>15} {'ratio':>6} {'logged us/req':>14} {'unlogged us/req':>16}")
    ratios = []
    for i, (on_rps, on_n, on_t, off_rps, off_n, off_t) in enumerate(rows, 1):
        ratios.append(on_rps / off_rps)
        print(f"{i:>5} {on_rps:>13.1f} {off_rps:>15.1f} {on_rps / off_rps:>6.3f} {on_t / hz * 1e6 / on_n:>14.1f} {off_t / hz * 1e6 / off_n:>16.1f}")
    on_n, off_n = sum(r[1] for r in rows), sum(r[4] for r in rows)
    on_rps, off_rps = statistics.median(r[0] for r in rows), statistics.median(r[3] for r in rows)
    on_cpu, off_cpu = sum(r[2] for r in rows) / hz * 1e6 / on_n, sum(r[5] for r in rows) / hz * 1e6 / off_n
    total = on_n / off_n
    print(f"median req/s: logged {on_rps:.1f}, unlogged {off_rps:.1f}")
    # A 95% interval for the median ratio: the median of 2,000 resamples of the rounds, with replacement.
    rng = random.Random(1)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
    low, high = medians[50], medians[1949]
    print(f"logged / unlogged req/s: median of rounds {statistics.median(ratios):.3f}"
          f" (95% interval {low:.3f}-{high:.3f}), totals {total:.3f}"
          f" (log cost {100 * (1 - statistics.median(ratios)):+.1f}% / {100 * (1 - total):+.1f}%)")
    print(f"server CPU per request: logged {on_cpu:.1f} us, unlogged {off_cpu:.1f} us ({100 * (on_cpu / off_cpu - 1):+.1f}%)")
side = [[float(x) for x in l.split()] for l in open(sys.argv[3])]
if side:
    print(f"side by side, both under load at once ({len(side)} rounds):")
    print(f"{'round':>5} {'logged req/cpu-s':>17} {'unlogged req/cpu-s':>19} {'ratio':>6} {'logged CPU share':>17}")
    per_cpu = []
    for i, (on_n, on_t, off_n, off_t) in enumerate(side, 1):
        on, off = on_n / (on_t / hz), off_n / (off_t / hz)
        per_cpu.append(on / off)
        print(f"{i:>5} {on:>17.1f} {off:>19.1f} {on / off:>6.3f} {on_t / (on_t + off_t):>17.3f}")
    print(f"logged / unlogged requests per CPU second: median {statistics.median(per_cpu):.3f}"
          f" (rounds {min(per_cpu):.3f}-{max(per_cpu):.3f}; log cost {100 * (1 - statistics.median(per_cpu)):+.1f}%)")
PY
  echo "traffic log: $logged_lines lines written, ${dropped:-0} dropped;" \
    "answers not 200 or failed: $(awk '{s += $1} END {print s}' "$work/bad")"
  exit 0
fi

if [ "$pure" = 1 ]; then
echo '{"question": "How fast is a served flow?"}' >"$work/pure.jsonl"
wrk_script "$work/pure.jsonl" "$work/pure.lua"
echo "== pure 3-node flow (benches/flows/three_node), ${secs}s per level, $(nproc) cores"
# Both servers run side by side, idle but for the one under load, and take turns at each level in
# the order logged, unlogged, unlogged, logged, so that a change in the machine's load during the run
# weighs on both alike. Besides requests/s, each turn reads the server's own CPU time (utime + stime of
# /proc/PID/stat) per request answered: the cost of the log and metrics in CPU, which other processes'
# load disturbs much less than throughput.
start_sluice logged --flow "$here/flows/three_node" --max-inflight 64 --max-queue 256
logged_addr="$addr" logged_pid="${pids[-1]}"
start_sluice unlogged --flow "$here/flows/three_node" --max-inflight 64 --max-queue 256 --log-sample 0
unlogged_addr="$addr" unlogged_pid="${pids[-1]}"
for a in "$logged_addr" "$unlogged_addr"; do
  curl -sf -XPOST "$a/score" -H 'Content-Type: application/json' -d '{"question": "warm up"}' >/dev/null
done
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# One turn at level $1 on server $2 (address $3); appends "rps p50 p99 not200 requests ticks" to $work/$2.$1.
turn() {
  local c="$1" name="$2" url="$3" pid="$4" threads before out
  threads=$(( c < 2 ? 1 : 2 ))
  before=$(cpu_ticks "$pid")
  out=$(wrk -t"$threads" -c"$c" -d"${secs}s" --timeout 30s -s "$work/pure.lua" "$url/score" | sed -n 's/^RESULT //p')
  sleep 0.2 # the log's writer takes the last lines at most 50 ms later
  echo "$out $(( $(cpu_ticks "$pid") - before ))" >>"$work/$name.$c"
}
for c in $levels; do
  turn "$c" logged "$logged_addr" "$logged_pid"
  turn "$c" unlogged "$unlogged_addr" "$unlogged_pid"
  turn "$c" unlogged "$unlogged_addr" "$unlogged_pid"
  turn "$c" logged "$logged_addr" "$logged_pid"
  python3 - "$c" "$work/logged.$c" "$work/unlogged.$c" "$(getconf CLK_TCK)" <<'PY'
import sys
c, hz = sys.argv[1], float(sys.argv[4])
def read(path):
    # "<rps> req/s  p50 <ms> ms  p99 <ms> ms  not-200 <n>  errors <n>  requests <n> <ticks>"
    rows = [l.split() for l in open(path)]
    rps = sum(float(r[0]) for r in rows) / len(rows)
    p50 = max(float(r[3]) for r in rows)
    p99 = max(float(r[6]) for r in rows)
    bad = sum(int(r[9]) + int(r[11]) for r in rows)
    reqs = sum(int(r[13]) for r in rows)
    cpu = sum(int(r[14]) for r in rows) / hz
    return rps, p50, p99, bad, cpu * 1e6 / max(reqs, 1)
on, off = read(sys.argv[2]), read(sys.argv[3])
for label, r in (("sluice (log + metrics)", on), ("sluice (--log-sample 0)", off)):
    print(f"{label:<28} c={c:<3} {r[0]:9.1f} req/s  p50 {r[1]:7.2f} ms  p99 {r[2]:7.2f} ms  not-200/errors {r[3]}  server CPU {r[4]:6.1f} us/req")
print(f"{'  log cost':<28} c={c:<3} {100 * (1 - on[0] / off[0]):+.1f}% req/s, {100 * (on[4] / off[4] - 1):+.1f}% server CPU per request")
PY
done
logged_lines=$(cat "$work"/logged/serve/*/runs/*/details.jsonl 2>/dev/null | wc -l)
dropped=$(curl -s "$logged_addr/metrics" | sed -n 's/^sluice_serve_traffic_log_dropped_total //p')
echo "traffic log: $logged_lines lines written, ${dropped:-0} dropped"
kill -TERM "$logged_pid" "$unlogged_pid"; wait "$logged_pid" "$unlogged_pid" 2>/dev/null || true
fi

if [ "$pf" = 1 ]; then
  venv="${SLUICE_PF_VENV:-$HOME/.cache/sluice/pf-venv}"
  # promptflow-tools holds the `prompt` node's tool.
  if ! "$venv/bin/python" -c 'import promptflow.tools, promptflow, sys; sys.exit(promptflow.__version__ != "1.18.5")' 2>/dev/null; then
    echo "installing promptflow 1.18.5 and promptflow-tools into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "promptflow==1.18.5" promptflow-tools >&2
  fi
  flow_copy="$work/pf_three_node"
  cp -r "$here/flows/three_node" "$flow_copy"
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  PF_DISABLE_TRACING=true "$venv/bin/pf" flow serve --source "$flow_copy" --host 127.0.0.1 --port "$port" \
    --skip-open-browser >"$work/pf.out" 2>&1 &
  pids+=($!)
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -sf -XPOST "http://127.0.0.1:$port/score" -H 'Content-Type: application/json' \
    -d '{"question": "warm up"}' >/dev/null || { echo "pf flow serve did not answer:" >&2; tail -20 "$work/pf.out" >&2; exit 1; }
  levels_run "http://127.0.0.1:$port/score" "$work/pure.lua" "pf flow serve 1.18.5"
  kill -TERM "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
fi

if [ "$llm" = 1 ]; then
  echo "== llm flow (benches/flows/qa_chat) on the local model, ${llm_secs}s per level"
  wrk_script "$here/data/qa.jsonl" "$work/qa.lua"
  start_sluice llm --flow "$here/flows/qa_chat" --log-sample 0
  tokens() { curl -s "$addr/metrics" | sed -n 's/^sluice_serve_llm_tokens_total{direction="completion"} //p'; }
  curl -sf -XPOST "$addr/score" -H 'Content-Type: application/json' -d '{"question": "warm up"}' >/dev/null
  for c in $levels; do
    # Lines left running by the level before finish first.
    for _ in $(seq 600); do
      [ "$(curl -s "$addr/metrics" | sed -n 's/^sluice_serve_lines_in_flight //p')" = 0 ] && break
      sleep 0.1
    done
    before=$(tokens); before=${before:-0}
    start=$(date +%s.%N)
    levels=$c secs=$llm_secs levels_run "$addr/score" "$work/qa.lua" "sluice llm flow" | tr -d '\n'
    end=$(date +%s.%N)
    after=$(tokens)
    python3 -c "print('  %.1f completion tokens/s' % (($after - $before) / ($end - $start)))"
  done
  kill -TERM "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

  mkdir -p "$work/batch"
  SLUICE_HOME="$work/batch" "$sluice" run create --name qa --flow "$here/flows/qa_chat" \
    --data "$here/data/qa.jsonl" >/dev/null 2>"$work/batch.err" || { cat "$work/batch.err" >&2; exit 1; }
  python3 - "$work/batch/runs/qa/details.jsonl" <<'PY'
import json, sys
from datetime import datetime
tokens, starts, ends = 0, [], []
for line in open(sys.argv[1]):
    r = json.loads(line)
    starts.append(datetime.fromisoformat(r["start_time"]))
    ends.append(datetime.fromisoformat(r["end_time"]))
    for run in r.get("node_runs", []):
        tokens += (run.get("system_metrics") or {}).get("completion_tokens") or 0
secs = (max(ends) - min(starts)).total_seconds()
print(f"batch run of the same 20 lines: {tokens} completion tokens in {secs:.2f} s = {tokens / secs:.1f} tokens/s (first line start to last line end)")
PY
fi
