#!/usr/bin/env bash
# Checks and prepares the machine for building Sluice; sourced by the other scripts.
#
# Sluice embeds the CPython found as `python3` (or $PYO3_PYTHON) at build time; it must be built with a
# shared libpython (pyenv and Debian's python3 both are).
set -euo pipefail
command -v cargo >/dev/null || { echo "setup: cargo not found: install Rust (https://rustup.rs)" >&2; exit 2; }
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
