#!/usr/bin/env bash
# Times `sluice flow test` (and `pf flow test`, when promptflow is installed) on the same 3-node
# python+prompt flow, a new process each run, in one script run; prints the ratio and peak RSS.
#
#   benches/compare_pf.sh [RUNS]        (default 10 runs each)
#
# Uses target/release/sluice (or $SLUICE); build it first with `cargo build --release`. $PF names the
# pf executable (e.g. one in a virtualenv) without putting that environment on PATH, where the embedded
# Python would pick it up.
set -euo pipefail
source "$(dirname "$0")/common.sh"
runs="${1:-10}"
flow="$here/flows/three_node"

# Median wall time in milliseconds of running "$@" $runs times.
median_ms() {
  local times=()
  for _ in $(seq "$runs"); do
    local t0 t1
    t0=$(date +%s%N)
    "$@" >/dev/null 2>&1
    t1=$(date +%s%N)
    times+=($(( (t1 - t0) / 1000 )))
  done
  printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.1f", m/1000}'
}

# Peak RSS in MB of one run of "$@".
peak_rss_mb() {
  { /usr/bin/time -f '%M' "$@" 2>&1 >/dev/null || true; } | tail -1 | awk '{printf "%.1f", $1/1024}'
}

"$sluice" flow test --flow "$flow" >/dev/null   # warm the page cache
s_ms=$(median_ms "$sluice" flow test --flow "$flow")
s_rss=$( [ -x /usr/bin/time ] && peak_rss_mb "$sluice" flow test --flow "$flow" || echo "n/a")
echo "sluice flow test: median ${s_ms} ms over ${runs} runs, peak RSS ${s_rss} MB"

pf_bin="${PF:-$(command -v pf || true)}"
if [ -n "$pf_bin" ]; then
  "$pf_bin" flow test --flow "$flow" >/dev/null 2>&1 || true
  p_ms=$(median_ms "$pf_bin" flow test --flow "$flow")
  p_rss=$( [ -x /usr/bin/time ] && peak_rss_mb "$pf_bin" flow test --flow "$flow" || echo "n/a")
  echo "pf flow test:     median ${p_ms} ms over ${runs} runs, peak RSS ${p_rss} MB"
  awk -v p="$p_ms" -v s="$s_ms" 'BEGIN {printf "sluice is %.1fx faster\n", p/s}'
else
  echo "pf not installed: only Sluice was timed (pip install promptflow to compare)"
fi
rm -rf "$flow/.promptflow"
