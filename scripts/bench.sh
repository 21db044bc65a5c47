#!/bin/sh
# Run the benchmarks (as root; the daemon runs as the test user) and write bench/RESULTS.md.
# Arguments go to bench/run_all.py (--skip NAME ..., --only NAME ..., --soak-runs 200 for the full
# stateful soak, --out PATH).
set -eu
HERE=$(cd "$(dirname "$0")/.." && pwd)
. "$HERE/scripts/lib.sh"
cd "$HERE"
exec "$VENV/bin/python" bench/run_all.py "$@"
