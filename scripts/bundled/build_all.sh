#!/usr/bin/env bash
# Rebuild the bundled fictional-world data, the ftl-tiny-llama base model and the ftl-tiny-bert
# encoder from scratch.
#
#   scripts/bundled/build_all.sh                # default seed, writes assets/ (about 12-14 min on 1 CPU core)
#   SEED=7 PYTHON=python3 scripts/bundled/build_all.sh
#
# Deterministic for a given SEED, thread count and library versions; rerunning overwrites the
# same files. The intermediate pretraining corpus goes to build/bundled/ (git-ignored); only
# assets/ is meant to be committed. No network access is needed or attempted.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

SEED="${SEED:-20250101}"   # the seed the committed assets were built with
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

"$PYTHON" scripts/bundled/make_corpus.py --seed "$SEED" --assets-dir assets --build-dir build/bundled
"$PYTHON" scripts/bundled/make_classification.py --seed "$SEED" --world assets/data/fictional-corpus/world.json \
  --out assets/data/fictional-kinds
"$PYTHON" scripts/bundled/make_ner.py --seed "$SEED" --world assets/data/fictional-corpus/world.json \
  --out assets/data/fictional-ner
"$PYTHON" scripts/bundled/make_preference.py --qa assets/data/fictional-qa \
  --world assets/data/fictional-corpus/world.json --out assets/data/fictional-pref

# Start from an empty model dir so files from an older layout cannot linger.
rm -rf assets/models/ftl-tiny-llama
"$PYTHON" scripts/bundled/build_model.py --seed "$SEED" \
  --corpus build/bundled/pretrain.jsonl \
  --heldout assets/data/fictional-corpus/heldout.jsonl \
  --world assets/data/fictional-corpus/world.json \
  --out assets/models/ftl-tiny-llama

rm -rf assets/models/ftl-tiny-bert
"$PYTHON" scripts/bundled/build_encoder.py --seed "$SEED" \
  --corpus build/bundled/pretrain.jsonl \
  --heldout assets/data/fictional-corpus/heldout.jsonl \
  --out assets/models/ftl-tiny-bert

# The vision pair: a generated source task to pretrain on (build/bundled/) and a target task with new classes
# (assets/), then the tiny ViT pretrained on the source (a few CPU minutes).
"$PYTHON" scripts/bundled/make_images.py --seed "$SEED" --target assets/data/fictional-shapes \
  --source build/bundled/source-shapes
rm -rf assets/models/ftl-tiny-vit
"$PYTHON" scripts/bundled/build_vision.py --seed "$SEED" --source build/bundled/source-shapes \
  --out assets/models/ftl-tiny-vit

echo "done: assets/models/ftl-tiny-llama, assets/models/ftl-tiny-bert, assets/models/ftl-tiny-vit, assets/data/fictional-shapes, assets/data/fictional-qa, assets/data/fictional-corpus, assets/data/fictional-kinds, assets/data/fictional-ner, assets/data/fictional-pref"
echo "check the fine-tuning gain with: $PYTHON scripts/bundled/check_finetune_gain.py"
