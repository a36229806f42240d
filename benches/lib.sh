# Sourced by the compare_*.sh scripts: reads their arguments, finds the sluice binary and makes a
# work folder.
#
#   bench_start DEFAULT "$@"
#
# sets $count (the number argument, else DEFAULT), $install_pf (1 with --install-pf), $sluice
# (target/release/sluice, or $SLUICE), and $work, a temporary folder removed at exit, when the
# server whose pid the script puts in $server_pid is stopped too.
bench_start() {
  count="$1"; shift
  install_pf=0
  for arg in "$@"; do
    case "$arg" in
      --install-pf) install_pf=1 ;;
      *) count="$arg" ;;
    esac
  done
  local root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  sluice="${SLUICE:-${CARGO_TARGET_DIR:-$root/target}/release/sluice}"
  [ -x "$sluice" ] || { echo "no sluice binary at $sluice: run cargo build --release" >&2; exit 2; }
  work="$(mktemp -d)"
  server_pid=""
  trap bench_cleanup EXIT
}

bench_cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}

# Sets $pf_bin: $PF, `pf` on the PATH, or with --install-pf a promptflow installed in a virtualenv
# in the work folder; empty when none.
bench_find_pf() {
  pf_bin="${PF:-$(command -v pf || true)}"
  if [ -z "$pf_bin" ] && [ "$install_pf" = 1 ]; then
    python3 -m venv "$work/pf-venv"
    "$work/pf-venv/bin/pip" install --quiet promptflow >&2
    pf_bin="$work/pf-venv/bin/pf"
  fi
}
