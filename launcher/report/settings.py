"""The settings that tell compared runs apart: the keys of their config.yaml snapshots whose values
differ (a sweep's learning rate, rank or method), for the report's table. Where a run writes is
not a setting (output.dir, the tracking section: trial 61a's sweep of learning rates listed three
tracking keys before the learning rate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from trainer.run_layout import RunLayout
from trainer.tracking.series import flat_params

# How progress is shown is not a setting of the training either (trial 61d: progress_every_s listed).
NOT_SETTINGS = ("output.dir", "output.local_dir", "training.progress_bar", "training.progress_every_s")
NOT_SETTING_SECTIONS = ("tracking.",)  # where the metrics are copied to: the same training either way
UNSET = "(unset)"


def differing_settings(runs: list[Path]) -> list[dict[str, str]]:
    """Per run, {key: value} of every setting whose value is not the same in all `runs`."""
    flats = [flat_config(run) for run in runs]
    keys = sorted(
        key
        for key in {key for flat in flats for key in flat} - set(NOT_SETTINGS)
        if not key.startswith(NOT_SETTING_SECTIONS)
    )
    differ = [key for key in keys if len({flat.get(key, UNSET) for flat in flats}) > 1]
    return [{key: flat.get(key, UNSET) for key in differ} for flat in flats]


NOT_USED = "(not used)"
# Sections a method does not read: a full fine-tune's method.lora.r is no difference of its own (trial 39b).
UNREAD_BY_METHOD = {
    "full": ("method.lora.", "method.quantization."),
    "lora": ("method.quantization.",),
    "dora": ("method.quantization.",),
}


def flat_config(run: Path) -> dict[str, str]:
    try:
        values: Any = yaml.safe_load(RunLayout(run).config.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    if not isinstance(values, dict):
        return {}
    flat = flat_params(values)
    unread = UNREAD_BY_METHOD.get(str(flat.get("method.type", "")), ())
    return {key: NOT_USED if key.startswith(unread) else value for key, value in flat.items()}
