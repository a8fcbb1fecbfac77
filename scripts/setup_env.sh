#!/usr/bin/env bash
# Create (or reuse) the project virtualenv at .venv and install ftl into it, editable.
# Usage: bash scripts/setup_env.sh [extra]   e.g. `dev` for the test tools.
# FTL_TORCH picks the torch build installed when the venv has none (default: torch==2.13.0;
# on a CUDA machine any CUDA build >= 2.6 of your choice works too).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/pip install --quiet "${FTL_TORCH:-torch==2.13.0}"
fi
EXTRA="${1:-}"
.venv/bin/pip install --quiet -e ".${EXTRA:+[$EXTRA]}"
