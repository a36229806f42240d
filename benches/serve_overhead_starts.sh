#!/usr/bin/env bash
# The cost of the traffic log and metrics (with `--log-only`, of the log alone; see
# `serve_load.sh --overhead`) over many fresh starts of the servers: a single `serve_load.sh --overhead`
# run measures one pair of server processes, and on a shared machine one pair's ratio moves by several
# points from start to start (which threads exist, where the heap lies), more than the interval of
# its rounds says. This runs `serve_load.sh --overhead ROUNDS --side-rounds 0` STARTS times, each with
# new servers, and prints each start's ratio of totals (logged / unlogged requests) and their mean.
# With `--against BINARY` each start also measures that build right after, and the script prints
# both builds' ratios side by side: an A/B of two builds of the log that the machine's drift weighs
# on alike.
#
# With `--side` each start instead runs both servers side by side (`serve_load.sh --overhead 0
# --side-rounds N --side-seconds 5`) and takes the median of its rounds' ratios of requests per CPU
# second; the unlogged server is started first in every other start. On a host whose speed moves
# from second to second this is the measure to trust: within a start both servers meet the same
# moments, and the starts average out what differs from one pair of processes to the next.
#
#   benches/serve_overhead_starts.sh [STARTS] [--rounds N] [--side] [--against BINARY] [--log-only]
#                                   (default 8 starts of 10 rounds of 1 s; with --side, of 3
#                                   side-by-side rounds of 5 s)
#
# Needs what `serve_load.sh --overhead` needs (wrk, taskset, 2 CPUs) and target/release/sluice (or
# $SLUICE).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
starts=8 rounds="" against="" side=0 only=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift ;;
    --side) side=1 ;;
    --against) against="$2"; shift ;;
    --log-only) only=(--log-only) ;;
    *) starts="$1" ;;
  esac
  shift
done
[ -n "$rounds" ] || rounds=$([ "$side" = 1 ] && echo 3 || echo 10)
# The ratio of one `serve_load.sh --overhead` run of the binary $1 (empty: the default), start $2:
# its ratio of totals, or with --side its median ratio of requests per CPU second.
ratio() {
  if [ "$side" = 1 ]; then
    local first=()
    [ $(($2 % 2)) = 1 ] || first=(--unlogged-first)
    SLUICE="${1:-${SLUICE:-}}" "$here/serve_load.sh" --overhead 0 --side-rounds "$rounds" --side-seconds 5 \
      "${first[@]}" "${only[@]}" --no-pf --no-llm | sed -n 's/.*requests per CPU second: median \([0-9.]*\) .*/\1/p'
  else
    SLUICE="${1:-${SLUICE:-}}" "$here/serve_load.sh" --overhead "$rounds" --side-rounds 0 "${only[@]}" --no-pf --no-llm \
      | sed -n 's/.*totals \([0-9.]*\) .*/\1/p'
  fi
}
if [ "$side" = 1 ]; then
  echo "== ${only:+traffic log only: }cost over $starts fresh starts of $rounds side-by-side rounds of 5 s" \
    "(logged / unlogged requests per CPU second, median of the rounds)"
else
  echo "== ${only:+traffic log only: }cost over $starts fresh starts of $rounds rounds of 1 s" \
    "(logged / unlogged requests, ratio of totals)"
fi
: >"${TMPDIR:-/tmp}/sluice-starts.$$"
for s in $(seq "$starts"); do
  a=$(ratio "" "$s")
  b=""
  [ -z "$against" ] || b=$(ratio "$against" "$s")
  echo "start $s: $a${b:+  against: $b}" | tee -a "${TMPDIR:-/tmp}/sluice-starts.$$"
done
python3 - "${TMPDIR:-/tmp}/sluice-starts.$$" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
this = [float(r[2]) for r in rows]
print(f"this build: mean {statistics.mean(this):.3f} (log cost {100 * (1 - statistics.mean(this)):+.1f}%),"
      f" median {statistics.median(this):.3f}, range {min(this):.3f}-{max(this):.3f}")
if len(rows[0]) > 3:
    other = [float(r[4]) for r in rows]
    better = sum(a > b for a, b in zip(this, other))
    print(f"against:    mean {statistics.mean(other):.3f} (log cost {100 * (1 - statistics.mean(other)):+.1f}%),"
          f" median {statistics.median(other):.3f}, range {min(other):.3f}-{max(other):.3f}")
    print(f"this build's ratio higher in {better} of {len(rows)} starts")
PY
rm -f "${TMPDIR:-/tmp}/sluice-starts.$$"
