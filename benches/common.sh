# Sourced by the bench scripts: sets `here` (this folder), `root` (the repository) and `sluice` (the
# binary to time: $SLUICE, else the release build), and stops when that binary is missing.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
sluice="${SLUICE:-${CARGO_TARGET_DIR:-$root/target}/release/sluice}"
[ -x "$sluice" ] || { echo "no sluice binary at $sluice: run cargo build --release" >&2; exit 2; }
