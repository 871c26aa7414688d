#!/usr/bin/env bash
# The test command: installs what it needs, then lint (ruff), types (mypy) and the test suite (pytest).
# Root-only tests (network namespaces, TUN, nftables) run when this runs as root, as CI does.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== ruff"; .venv/bin/ruff check src tests
echo "== mypy"; .venv/bin/mypy
echo "== pytest"
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
