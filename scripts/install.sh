#!/usr/bin/env bash
# Builds Sluice and installs it under a prefix (default ~/.local): the binary and llama.cpp's shared
# libraries, with its CPU code once per x86-64 level (the best for the CPU is chosen when a model first
# loads), go together into PREFIX/lib/sluice, and PREFIX/bin/sluice links to the binary there. Moving
# that folder as a whole keeps it working; the binary finds the libraries beside itself.
#
#   scripts/install.sh [PREFIX]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
prefix="${1:-$HOME/.local}"
cargo build --release --locked
built="${CARGO_TARGET_DIR:-target}/release"
dest="$prefix/lib/sluice"
mkdir -p "$dest" "$prefix/bin"
# The libraries under the names the binary asks for, and every backend module ggml may load.
files=("$built"/sluice "$built"/libllama.so.[0-9]* "$built"/libggml.so.[0-9]* "$built"/libggml-base.so.[0-9]* \
  "$built"/libggml-cpu-*.so)
for file in "${files[@]}"; do
  # Replace, never overwrite in place: a running sluice keeps the files it has mapped.
  tmp="$dest/.$(basename "$file").new"
  cp "$file" "$tmp"
  [ "$(basename "$file")" = sluice ] || strip --strip-debug "$tmp" 2>/dev/null || true
  mv -f "$tmp" "$dest/$(basename "$file")"
done
ln -sfn "$dest/sluice" "$prefix/bin/sluice"
echo "installed $prefix/bin/sluice -> $dest/sluice ($(ls "$dest"/libggml-cpu-*.so | wc -l) CPU variants of llama.cpp)"
case ":$PATH:" in
  *":$prefix/bin:"*) ;;
  *) echo "add $prefix/bin to your PATH" ;;
esac
