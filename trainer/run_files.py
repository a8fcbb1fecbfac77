"""Names in the run directory that the trainer writes and the launcher reads, and what they mean.

A run is finished when `summary.json` exists: the trainer writes it (atomically) as the last thing
of a run that trained to its end, after `final/`. `final/` existing means nothing on its own (a
crash between the export and the summary leaves it; older ftl versions wrote it on `ftl export`
of a stopped run), so a directory without the summary is still resumable.
"""

from __future__ import annotations

from pathlib import Path

SUMMARY_FILE = "summary.json"
FINAL_DIR = "final"
EXPORTS_DIR = "exports"  # `ftl export` of a checkpoint: exports/step-N/, never final/
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / SUMMARY_FILE).is_file()
