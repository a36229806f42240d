# Sourced by the bench scripts: sets `here` (this folder), `root` (the repository) and `sluice` (the
# binary to time: $SLUICE, else the release build), and stops when that binary is missing.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
sluice="${SLUICE:-${CARGO_TARGET_DIR:-$root/target}/release/sluice}"
[ -x "$sluice" ] || { echo "no sluice binary at $sluice: run cargo build --release" >&2; exit 2; }

# bench_args DEFAULT "$@": sets $count (the number argument, else DEFAULT) and $install_pf (1 with
# --install-pf).
bench_args() {
  count="$1"; shift
  install_pf=0
  for arg in "$@"; do
    case "$arg" in
      --install-pf) install_pf=1 ;;
      *) count="$arg" ;;
    esac
  done
}

# bench_threads_args DEFAULT "$@": sets $count (the number argument, else DEFAULT) and $threads
# (--threads N, else the machine's cores).
bench_threads_args() {
  count="$1"; shift
  threads="$(nproc)"
  while [ $# -gt 0 ]; do
    case "$1" in
      --threads) threads="$2"; shift 2 ;;
      *) count="$1"; shift ;;
    esac
  done
}

# bench_workdir: sets $work, a temporary folder removed at exit, when the server whose pid the
# script puts in $server_pid is stopped too.
bench_workdir() {
  work="$(mktemp -d)"
  server_pid=""
  trap bench_cleanup EXIT
}

bench_cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}

# bench_find_pf: sets $pf_bin to $PF, `pf` on the PATH, or with --install-pf a promptflow installed
# in a virtualenv in the work folder; empty when none.
bench_find_pf() {
  pf_bin="${PF:-$(command -v pf || true)}"
  if [ -z "$pf_bin" ] && [ "$install_pf" = 1 ]; then
    python3 -m venv "$work/pf-venv"
    "$work/pf-venv/bin/pip" install --quiet promptflow >&2
    pf_bin="$work/pf-venv/bin/pf"
  fi
}
