#!/usr/bin/env bash
# Runs every test: installs missing packages, then configures, builds and runs the
# release tests (with the consumer projects) and the same tests under ASan and UBSan.
# Usage: tests/run_all.sh            (from anywhere; about 20-30 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."

bash cmake/install-deps.sh

start=$(date +%s)
for preset in release sanitize; do
  echo "== bitdistill: $preset build =="
  cmake --preset "$preset" >/dev/null
  cmake --build --preset "$preset"
  ctest --preset "$preset"
done
echo "== bitdistill: all tests passed in $(( $(date +%s) - start )) s =="
