#!/usr/bin/env bash
# llama.cpp's CPU variants side by side, in one run of one build: the same binary is pointed
# (SLUICE_GGML_BACKENDS_DIR) at a folder holding one variant at a time:
#   - x64:      any x86-64 CPU (SSE2), what a portable build without variants would have to ship;
#   - haswell:  AVX2/FMA/F16C, the instruction sets a build of llama.cpp as one library used before;
#   - best:     all variants, ggml choosing the best for this CPU (what Sluice does by default).
# For each: prompt processing and generation tokens/s of the default chat model (and of Gemma 3 270M
# when it is installed), by llama.cpp directly (benches/llama_speed.rs), and embeddings through
# llama.cpp's BERT path (SLUICE_EMBED_ENCODER=llama.cpp) and through Sluice's own encoder (which does
# not run on llama.cpp's CPU code: the control).
#
#   benches/cpu_variants.sh [SENTENCES] [--threads N]     (defaults: 1000, the machine's cores)
set -euo pipefail
source "$(dirname "$0")/common.sh"
bench_threads_args 1000 "$@"
bench_workdir
export SLUICE_MODELS_DIR="${SLUICE_MODELS_DIR:-${SLUICE_HOME:-$HOME/.sluice}/models}"
export SLUICE_HOME="$work/home" SLUICE_EMBED_THREADS="$threads" SLUICE_LLM_THREADS="$threads"
"$sluice" model pull >/dev/null
bindir="$(dirname "$(readlink -f "$sluice")")"
ls "$bindir"/libggml-cpu-*.so >/dev/null 2>&1 \
  || { echo "no llama.cpp CPU variants beside $sluice: build with the cpu-variants feature (the default)" >&2; exit 2; }

# The llama_speed bench, built by cargo (it prints where the executable is).
speed="$(cd "$root" && cargo bench --locked --bench llama_speed --no-run 2>&1 \
  | sed -n 's/.*Executable .*(\(.*llama_speed-[0-9a-f]*\)).*/\1/p' | tail -1)"
[ -x "$speed" ] || { echo "could not build benches/llama_speed.rs" >&2; exit 2; }

models=(default)
"$sluice" model list --format json 2>/dev/null | grep -q '"gemma3-270m"' && models+=(gemma3-270m)

python3 - "$work" "$count" "$root/flows/rag/corpus" <<'PY'
import json, pathlib, random, re, sys
work, count, corpus = sys.argv[1], int(sys.argv[2]), pathlib.Path(sys.argv[3])
text = " ".join(p.read_text(errors="ignore") for p in sorted(corpus.rglob("*")) if p.is_file() and p.suffix in (".md", ".txt"))
words = re.findall(r"[A-Za-z][A-Za-z'-]+", text)
rng = random.Random(7)
with open(f"{work}/sentences.jsonl", "w") as f:
    for _ in range(count):
        s = " ".join(rng.choice(words) for _ in range(rng.randint(10, 20)))
        f.write(json.dumps(s[0].upper() + s[1:] + ".") + "\n")
PY

variants=(x64 haswell best)
for v in "${variants[@]}"; do
  mkdir -p "$work/variants/$v"
  if [ "$v" = best ]; then
    ln -s "$bindir"/libggml-cpu-*.so "$work/variants/$v/"
  else
    ln -s "$bindir/libggml-cpu-$v.so" "$work/variants/$v/"
  fi
  for m in "${models[@]}"; do
    SLUICE_GGML_BACKENDS_DIR="$work/variants/$v" "$speed" "$m" 256 64 3 >"$work/llm-$v-$m.json"
  done
  for enc in llama.cpp sluice-bert; do
    SLUICE_GGML_BACKENDS_DIR="$work/variants/$v" SLUICE_EMBED_ENCODER="$enc" \
      "$sluice" model embed minilm --stats --file "$work/sentences.jsonl" \
      >/dev/null 2>"$work/embed-$v-$enc.stats"
  done
  SLUICE_GGML_BACKENDS_DIR="$work/variants/$v" "$sluice" model info default \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["details"]["cpu_backend"]["variant"])' \
    >"$work/chosen-$v"
done

python3 - "$work" "$threads" "${models[*]}" <<'PY'
import json, sys
work, threads, models = sys.argv[1], sys.argv[2], sys.argv[3].split()
variants = ["x64", "haswell", "best"]
chosen = {v: open(f"{work}/chosen-{v}").read().strip() for v in variants}
def last_json(path):
    lines = [l for l in open(path) if l.strip().startswith("{")]
    return json.loads(lines[-1])
llm = {(v, m): json.load(open(f"{work}/llm-{v}-{m}.json")) for v in variants for m in models}
emb = {(v, e): last_json(f"{work}/embed-{v}-{e}.stats") for v in variants for e in ("llama.cpp", "sluice-bert")}
print(f"llama.cpp CPU variants, {threads} threads; best for this CPU: {chosen['best']}\n")
print("| variant | " + " | ".join(f"{m} prompt tok/s | {m} generation tok/s" for m in models)
      + " | embeddings on llama.cpp (texts/s) | embeddings on Sluice's encoder (texts/s) |")
print("|---|" + "---:|---:|" * len(models) + "---:|---:|")
for v in variants:
    cells = []
    for m in models:
        r = llm[(v, m)]
        assert r["cpu_variant"] == chosen[v], (v, r)
        cells += [f"{r['prompt_tokens_per_second']:.1f}", f"{r['generation_tokens_per_second']:.1f}"]
    cells += [f"{emb[(v, 'llama.cpp')]['texts_per_second']:.1f}", f"{emb[(v, 'sluice-bert')]['texts_per_second']:.1f}"]
    print(f"| {chosen[v]}{' (best)' if v == 'best' else ''} | " + " | ".join(cells) + " |")
print()
for base in ("haswell", "x64"):
    parts = []
    for m in models:
        a, b = llm[("best", m)], llm[(base, m)]
        parts.append(f"{m}: prompt {a['prompt_tokens_per_second'] / b['prompt_tokens_per_second']:.2f}x, "
                     f"generation {a['generation_tokens_per_second'] / b['generation_tokens_per_second']:.2f}x")
    e = emb[("best", "llama.cpp")]["texts_per_second"] / emb[(base, "llama.cpp")]["texts_per_second"]
    parts.append(f"embeddings on llama.cpp {e:.2f}x")
    print(f"best ({chosen['best']}) / {base}: " + "; ".join(parts))
PY
