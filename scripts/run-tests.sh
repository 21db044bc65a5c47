#!/bin/sh
# Run the suite with the project's venv (as root: tests start user managers and run beemeshd and
# podman as the test user). "No tests collected" is a failure, not a pass.
set -u
HERE=$(cd "$(dirname "$0")/.." && pwd)
. "$HERE/scripts/lib.sh"
cd "$HERE"
[ $# -gt 0 ] || set -- tests
"$VENV/bin/python" -m pytest -p no:cacheprovider -ra "$@"
rc=$?
[ $rc -eq 5 ] && echo "error: no tests were collected" >&2
exit $rc
