#!/usr/bin/env bash
# GPU smoke check: run on a CUDA machine from the repository root, after scripts/setup_env.sh.
#   bash scripts/gpu_smoke.sh            (installs flash-attn if missing; FTL_SKIP_FLASH_INSTALL=1 to skip;
#                                          liger-kernel / cut-cross-entropy likewise, FTL_SKIP_KERNEL_INSTALL=1)
#   bash scripts/gpu_smoke.sh --backend local   (every training on the local backend: where Ray is not installed)
#   bash scripts/gpu_smoke.sh --only parity,offload   (only the checks whose name has one of the words)
# Prints PASS/FAIL/SKIP per item and exits non-zero if any item failed:
#   cuda, flash-attn (packed varlen rows = one-by-one), bf16 training, QLoRA 4-bit CUDA kernels,
#   the loss without full logits (chunked, and Liger / Cut Cross-Entropy when installed),
#   NCCL all-reduce, optimizers (fused AdamW, bitsandbytes 8-bit and paged 8-bit, step in backward),
#   strategy parity (none vs FSDP2 vs ZeRO-2 on the same batches, bf16 tolerance),
#   method.adapter_dtype=compute, activation offloading, torch.compile and Liger kernels.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -z "${FTL_SKIP_FLASH_INSTALL:-}" ] && ! "$PY" -c "import flash_attn" 2>/dev/null; then
    timeout 1200 "$PY" -m pip install --quiet flash-attn --no-build-isolation >/tmp/ftl-flash-install.log 2>&1 \
        || echo "note: flash-attn did not install (see /tmp/ftl-flash-install.log)"
fi
# The fused linear cross-entropy kernels of training.loss.kernel and model.liger_kernels (optional extras liger, cce).
if [ -z "${FTL_SKIP_KERNEL_INSTALL:-}" ]; then
    "$PY" -c "import liger_kernel" 2>/dev/null || timeout 600 "$PY" -m pip install --quiet 'liger-kernel>=0.5' >/tmp/ftl-liger-install.log 2>&1 \
        || echo "note: liger-kernel did not install (see /tmp/ftl-liger-install.log)"
    "$PY" -c "import cut_cross_entropy" 2>/dev/null || timeout 600 "$PY" -m pip install --quiet 'cut-cross-entropy>=25.1' >/tmp/ftl-cce-install.log 2>&1 \
        || echo "note: cut-cross-entropy did not install (see /tmp/ftl-cce-install.log)"
fi
exec "$PY" scripts/gpu_smoke.py "$@"
