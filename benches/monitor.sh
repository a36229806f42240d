#!/usr/bin/env bash
# `sluice monitor` at scale and its error rates, on the question answerer of the monitor's tests
# (tests/data/monitor/answerer: a text input, a category output and a number output):
#
#  1. time and peak RSS of a monitor over a run of LINES lines (default 100,000) against a 1,000-line
#     baseline run, with the text embedding test on a sample of 200 texts a side (the default), once
#     without windows and once in 4 windows of LINES/4 lines (the last of them with 30% of its questions
#     on another topic);
#  2. false alarms: DRAWS (default 20) unshifted samples of 300 questions against a 400-question
#     baseline, and how often each share of shifted questions (10%, 20%, 30%) is detected, embedding
#     100 texts a side.
#
#   benches/monitor.sh [LINES] [DRAWS]      (LINES 0 skips part 1)
#
# Uses target/release/sluice (or $SLUICE) and the installed minilm embedding model.
set -euo pipefail
source "$(dirname "$0")/common.sh"
lines="${1:-100000}"
draws="${2:-20}"
bench_workdir
# The models stay where they are installed.
export SLUICE_MODELS_DIR="${SLUICE_MODELS_DIR:-${SLUICE_HOME:-$HOME/.sluice}/models}"
export SLUICE_HOME="$work/home"
flow="$root/tests/data/monitor/answerer"

# gen N SHIFT SEED [SHIFTED_FROM]: N questions, each about astronomy instead of cooking with
# probability SHIFT from line SHIFTED_FROM on (default 0).
gen() {
  python3 - "$@" <<'PY'
import json, random, sys
n, shift, seed = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
start = int(sys.argv[4]) if len(sys.argv) > 4 else 0
r = random.Random(seed)
cook = ["How long should I {v} the {f} at {t} degrees?", "What spice goes well with {f} when I {v} it?",
        "Can I {v} frozen {f} without thawing it first?", "Which pan is best to {v} {f} for a family dinner?"]
astro = ["Why does {p} have {x} that we can see from {w}?",
         "How far is {p} from {w} at its closest approach, and how long would a probe take to get there?",
         "What causes the {x} of {p} to change over a year?"]
for i in range(n):
    if i >= start and r.random() < shift:
        q = r.choice(astro).format(p=r.choice(["Jupiter", "Mars", "Saturn", "the Moon", "Venus"]),
                                   x=r.choice(["rings", "moons", "storms", "phases"]),
                                   w=r.choice(["Earth", "orbit", "the Sun"]))
    else:
        q = r.choice(cook).format(v=r.choice(["bake", "boil", "roast", "fry", "grill"]),
                                  f=r.choice(["chicken", "potatoes", "bread", "salmon", "carrots", "tofu"]),
                                  t=r.choice([160, 180, 200, 220]))
    print(json.dumps({"question": q}))
PY
}

if [ "$lines" -gt 0 ]; then
echo "== monitor over $lines lines" >&2
gen 1000 0 1 > "$work/base.jsonl"
gen "$lines" 0.3 2 $((lines * 3 / 4)) > "$work/current.jsonl"
"$sluice" run create --flow "$flow" --data "$work/base.jsonl" --name base >/dev/null 2>&1
start=$(date +%s.%N)
"$sluice" run create --flow "$flow" --data "$work/current.jsonl" --name current --max-concurrency 16 >/dev/null 2>&1
echo "batch run of $lines lines: $(echo "$(date +%s.%N) - $start" | bc) s" >&2

timed() {
  /usr/bin/time -f "%e %M" -o "$work/time" "$sluice" monitor "$@" > "$work/out.json" 2> "$work/err.txt" || true
  read -r secs kb < "$work/time"
  python3 - "$work/out.json" "$secs" "$kb" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
w = r["windows"]
drifted = [x["label"] + ": " + ",".join(x["drifted"]) for x in w[1:] if x["drifted"]]
print(f"  {r['current']['lines']} lines, {len(w) - 1} windows: {float(sys.argv[2]):.1f} s, "
      f"peak RSS {int(sys.argv[3]) / 1024:.0f} MB; drift detected: {r['drift']['detected']}"
      + (f" ({'; '.join(drifted)})" if drifted else ""))
PY
}
timed --baseline base --current current
timed --baseline base --current current --window $((lines / 4))
fi

echo "== false alarms and detection ($draws draws each, 300 questions against 400)" >&2
gen 400 0 1 > "$work/b400.jsonl"
detect() {
  local shift="$1" hits=0
  for seed in $(seq 1 "$draws"); do
    gen 300 "$shift" $((1000 + seed)) > "$work/c.jsonl"
    if "$sluice" monitor --baseline "$work/b400.jsonl" --current "$work/c.jsonl" --embed-sample 100 \
        --seed "$seed" 2>/dev/null | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["drift"]["detected"] else 1)'; then
      hits=$((hits + 1))
    fi
  done
  echo "  shift $shift: drift called in $hits of $draws samples"
}
for shift in 0 0.1 0.2 0.3; do detect "$shift"; done
