#!/usr/bin/env bash
# Install ftl with its test tools into .venv and run the whole test suite (unit + integration).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh dev
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -q "$@"
