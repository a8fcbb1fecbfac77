"""The series a report plots, read from the run directory's metrics.jsonl (its current
trajectory: steps a resume replaced are left out). Written beside the plots as data.json, so
what each picture shows can be checked against the metrics."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from launcher.runs import speed_unit
from trainer.metrics import START, changed_config_starts, current_trajectory, parse_records
from trainer.run_layout import RunLayout

Series = list[tuple[int, float]]  # (step, value)

TRAIN_CHARTS = {
    "loss": "training loss",
    "grad_norm": "gradient norm",
    "tokens_per_s": "tokens/s",
    "images_per_s": "images/s",  # an image run's tokens_per_s: its batches count images
    # DPO/ORPO steps (a chart only where a run logged them): the curves a preference run is read by
    "reward_margin": "training reward margin (chosen - rejected)",
    "reward_accuracy": "training reward accuracy",
}
RETAIN_SPLIT = "retain"  # eval.retain's set (trainer/data/prepare.py): the forgetting check


def run_series(run_dir: Path) -> dict[str, Any]:
    """{"charts": {chart: {line: [[step, value], ...]}}, "resumes": [step, ...], "title": {...}}."""
    records = parse_records(RunLayout(run_dir).metrics)
    trajectory = current_trajectory(records)
    charts: dict[str, dict[str, Series]] = {}
    images = speed_unit(run_dir) == "img/s"

    def add(chart: str, line: str, step: int, value: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            charts.setdefault(chart, {}).setdefault(line, []).append((step, float(value)))

    # An evaluation of another step's weights (early stopping's final one, of the best step) is that
    # step's point, already plotted for a set periodic evaluations score; the test set is scored at the
    # end only, so its final score is plotted at the best step (trial 64b: it was left out).
    scored_at = {
        (r.get("split"), r.get("step", 0)) for r in trajectory if r.get("kind") == "eval" and "weights_step" not in r
    }
    for record in trajectory:
        step = record.get("step", 0)
        if record.get("kind") == "train":
            for key in TRAIN_CHARTS:
                chart = "images_per_s" if images and key == "tokens_per_s" else key
                add(chart, chart, step, record.get(key))
            groups = record.get("lr_groups") or {}
            if groups:
                for name, value in groups.items():
                    add("lr", name, step, value)
            else:
                add("lr", "lr", step, record.get("lr"))
        elif record.get("kind") == "eval":
            split = record.get("split", "?")
            if "weights_step" in record:
                step = record["weights_step"]
                if (split, step) in scored_at:
                    continue
            for key, value in record.items():
                if key in ("step", "time", "split", "label", "kind", "samples", "weights_step"):
                    continue
                if split == RETAIN_SPLIT:  # its loss and the change since the base model, together
                    add("retain", key, step, value)
                else:
                    add(f"eval_{key}", split, step, value)
    for lines in charts.values():  # a best step's point comes after later steps' in the file
        for line in lines.values():
            line.sort(key=lambda point: point[0])
    # Each start after the first that continued from a checkpoint: a resume (or a restart's resume).
    resumes = [r.get("step", 0) for r in records if r.get("kind") == START and r.get("step", 0) > 0]
    changed = {c["step"] for c in changed_config_starts(records)}  # resumed under another config
    return {
        "run": str(run_dir),
        "charts": charts,
        "resumes": sorted(set(resumes)),
        "config_changed_at": sorted(changed),
    }


def chart_title(chart: str) -> str:
    if chart in TRAIN_CHARTS:
        return TRAIN_CHARTS[chart]
    if chart == "lr":
        return "learning rate (per parameter group)"
    if chart == "retain":
        return "retain set (forgetting check)"
    return chart.removeprefix("eval_").replace("_", " ") + " (evaluation, per split)"
