#!/usr/bin/env bash
# Quickstart: install ftl into .venv, LoRA-fine-tune the bundled tiny Llama on CPU, and print
# the base and fine-tuned scores on the held-out set. A new run directory each time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/ftl train configs/examples/lora.yaml "output.dir=runs/quickstart-$(date +%Y%m%d-%H%M%S)" "$@"
