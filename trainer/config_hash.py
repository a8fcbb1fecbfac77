"""The config hash recorded in every checkpoint manifest: it names what the training result
depends on, so a resume under a config that would train differently is flagged.

Settings that only say where files go, how often to save or log, or how progress is shown do not
change the result, and are left out: a copied or moved run directory (another output.dir), a
changed save frequency or a resume option give the same hash.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from trainer.config import TrainerConfig

# Whole sections, then single fields, that do not change the trained weights or their metrics
# (beyond rounding: the chunked loss equals the full-logits loss within 1e-7 relative; compiled,
# offloaded or Liger-fused layers compute the same model).
NEUTRAL_SECTIONS = ("output", "checkpoint", "cluster", "tracking")
NEUTRAL_FIELDS = {
    "training": ("progress_bar", "progress_every_s", "log_every_steps", "watchdog_timeout_s", "loss"),
    "data": ("cache_dir",),
    "model": ("compile", "activation_offloading", "liger_kernels"),
}


def config_hash(cfg: TrainerConfig) -> str:
    values: dict[str, Any] = cfg.model_dump(mode="json")
    for section in NEUTRAL_SECTIONS:
        values.pop(section, None)
    for section, names in NEUTRAL_FIELDS.items():
        for name in names:
            values.get(section, {}).pop(name, None)
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]
