#!/usr/bin/env bash
# Runs ON THE GPU MACHINE (see README.md): builds llama.cpp's CUDA libraries and llama-batched-bench from
# the carried source (cached between calls), joins the model, and measures Sluice's batched decoding
# against llama.cpp's own batched loop on the same GPU. Writes $OUT/gpu-results.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
carry=gpu-carry
build=gpu-build
out="${OUT:-/tmp}"
log="$out/gpu-results.md"
jobs="$(nproc)"

{
  echo "# GPU run $(date -u +%Y-%m-%dT%H:%MZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  nvcc --version | tail -1
} | tee "$log"

# 1. llama.cpp with CUDA, same version as the binaries (sm_90: H100/H200).
if [ ! -f "$build/bin/libggml-cuda.so" ]; then
  mkdir -p "$build/src"
  tar -xJf "$carry/llama.cpp.tar.xz" -C "$build/src"
  cmake -S "$build/src/llama.cpp" -B "$build" -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DBUILD_SHARED_LIBS=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$build" -j "$jobs" --target llama llama-batched-bench
fi

# 2. The model, joined from the carried pieces and checked.
model="$carry/model.gguf"
if [ ! -f "$model" ]; then
  cat "$carry"/model.part* > "$model"
fi
(cd "$carry" && sha256sum -c model.sha256)

export LD_LIBRARY_PATH="$PWD/$build/bin:${LD_LIBRARY_PATH:-}"
export SLUICE_HOME="$PWD/$build/home" SLUICE_MODELS_DIR="$PWD/$build/home/models"
"$carry/bin/sluice" model add "$model" --name gemma3-270m >/dev/null
"$carry/bin/sluice" model info default | tee -a "$log"

# 3. Sluice: batched throughput at 1, 8, 64 and 256 sequences.
for n in 1 8 64 256; do
  echo "## sluice, $n sequences x 64 tokens" | tee -a "$log"
  "$carry/bin/llm_throughput" "$n" 64 2>&1 | tee -a "$log"
done

# 4. llama.cpp's own batched loop on the same GPU and model.
echo "## llama-batched-bench" | tee -a "$log"
"$build/bin/llama-batched-bench" -m "$model" -ngl 99 -c 32768 -npp 32 -ntg 64 -npl 1,8,64,256 2>&1 | tee -a "$log"
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv | tee -a "$log"
