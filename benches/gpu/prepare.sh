#!/usr/bin/env bash
# Runs HERE (dev machine, no CUDA): builds the binaries with llama.cpp linked dynamically and packs what
# the GPU machine needs into gpu-carry/ (see README.md for the calls that carry it).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.sh
export CARGO_TARGET_DIR="$PWD/target-gpu"
# Without the CPU variants: the CUDA build of llama.cpp swapped in on the device registers its CPU
# backend itself, as this build's libraries do.
features=(--no-default-features --features python,gpu-dl)
cargo build --release --locked "${features[@]}" --bin sluice
cargo bench --locked "${features[@]}" --bench llm_throughput --no-run
carry=gpu-carry
rm -rf "$carry" && mkdir -p "$carry/bin"
cp target-gpu/release/sluice "$carry/bin/"
cp "$(ls -t target-gpu/release/deps/llm_throughput-* | grep -v '\.d$' | head -1)" "$carry/bin/llm_throughput"
find target-gpu/release -name 'lib*.so*' -exec cp {} "$carry/bin/" \;
strip "$carry"/bin/* 2>/dev/null || true
src="$(ls -d "$HOME"/.cargo/registry/src/*/llama-cpp-sys-2-"$(grep -A1 'name = "llama-cpp-sys-2"' Cargo.lock | sed -n 's/version = "\(.*\)"/\1/p')"/llama.cpp)"
tar -cJf "$carry/llama.cpp.tar.xz" -C "$(dirname "$src")" llama.cpp
model="$(target/release/sluice model list 2>/dev/null | sed -n 's/.*"path": "\(.*\.gguf\)".*/\1/p' | head -1)"
split -n 4 -d -a 1 "$model" "$carry/model.part"
(cd "$(dirname "$model")" && sha256sum "$(basename "$model")") | sed 's/ .*gguf/  model.gguf/' > "$carry/model.sha256"
du -sh "$carry"/*
