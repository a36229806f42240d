#!/usr/bin/env bash
# The traffic log's cost over many fresh starts of the servers: a single `serve_load.sh --overhead`
# run measures one pair of server processes, and on a shared machine one pair's ratio moves by several
# points from start to start (which threads exist, where the heap lies), more than the interval of
# its rounds says. This runs `serve_load.sh --overhead ROUNDS --side-rounds 0` STARTS times, each with
# new servers, and prints each start's ratio of totals (logged / unlogged requests) and their mean.
# With `--against BINARY` each start also measures that build right after, and the script prints
# both builds' ratios side by side: an A/B of two builds of the log that the machine's drift weighs
# on alike.
#
#   benches/serve_overhead_starts.sh [STARTS] [--rounds N] [--against BINARY]
#                                   (default 8 starts of 10 rounds of 1 s)
#
# Needs what `serve_load.sh --overhead` needs (wrk, taskset, 2 CPUs) and target/release/sluice (or
# $SLUICE).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
starts=8 rounds=10 against=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift ;;
    --against) against="$2"; shift ;;
    *) starts="$1" ;;
  esac
  shift
done
# The ratio of totals of one `serve_load.sh --overhead` run of the binary $1 (empty: the default).
ratio() {
  SLUICE="${1:-${SLUICE:-}}" "$here/serve_load.sh" --overhead "$rounds" --side-rounds 0 --no-pf --no-llm \
    | sed -n 's/.*totals \([0-9.]*\) .*/\1/p'
}
echo "== traffic log cost over $starts fresh starts of $rounds rounds of 1 s" \
  "(logged / unlogged requests, ratio of totals)"
: >"${TMPDIR:-/tmp}/sluice-starts.$$"
for s in $(seq "$starts"); do
  a=$(ratio "")
  b=""
  [ -z "$against" ] || b=$(ratio "$against")
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
