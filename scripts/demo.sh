#!/usr/bin/env bash
# The main job: installs what it needs (apt-get, pip into .venv), then runs `ntm demo` (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/ntm demo "$@"
