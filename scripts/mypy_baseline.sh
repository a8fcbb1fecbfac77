#!/usr/bin/env bash
# Rewrite tests/mypy_baseline.txt from mypy's output (after fixing type errors, or after a merge).
# Review the diff: lines should only disappear; a new line is a new type error to fix instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
exec "$PYTHON" -m tests.mypy_check --write
