#!/usr/bin/env bash
# Sets up a fresh machine and runs every test: `scripts/test.sh` (as root: the tests mount loop XFS).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
swift build --build-tests
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
swift test --skip-build 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One plain closing line, whatever the runner printed: "tests: N passed, M failed".
total=$(grep -Eo 'Test run with [0-9]+ tests?' "$log" | tail -1 | grep -Eo '[0-9]+' || echo 0)
failed=$(grep -Ec '^✘ Test .* failed' "$log" || true)
echo "tests: $((total - failed)) passed, $failed failed"
[ "$total" -gt 0 ] || { echo "no tests ran" >&2; exit 1; }
exit "$status"
