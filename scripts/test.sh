#!/usr/bin/env bash
# Install ftl with its test tools into .venv, lint (ruff) and run the whole test suite (unit + integration).
# As root it first starts a real local Slurm (two nodes on this machine) for the Slurm tests;
# without root those tests are skipped with the command to start one.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh dev
# Lint and format check first (seconds): the suite never runs on code that fails them.
.venv/bin/ruff check .
.venv/bin/ruff format --check .
if [ "$(id -u)" = 0 ]; then
    bash scripts/slurm/start_local_slurm.sh >/dev/null
fi
export HF_HUB_OFFLINE=1
# Two test processes (pytest-xdist): the suite is bound by its training processes' CPU, and one
# test at a time left ~28% of two cores idle (waits on Ray, Slurm, timers). tests/conftest.py
# keeps the cluster tests in one process and each module's tests together. FTL_TEST_PROCESSES=0
# runs everything in this process.
exec .venv/bin/python -m pytest -q -n "${FTL_TEST_PROCESSES:-2}" --dist loadgroup "$@"
