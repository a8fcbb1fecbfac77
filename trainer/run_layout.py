"""The run directory's contract: every name in it that ftl writes or reads, in one place.

The trainer writes checkpoints, metrics, `final/` and the summary; the cluster backends write
logs, the worker outcome and stop requests; the launcher writes the config snapshot, the marker
and the lock, and reads all of it back (`ftl resume`, `ftl export`, `ftl runs`). All of them go
through `RunLayout`, so a name is spelled once.

A run is finished when `summary.json` exists: the trainer writes it (atomically) as the last thing
of a run that trained to its end, after `final/`. `final/` existing means nothing on its own (a
crash between the export and the summary leaves it; older ftl versions wrote it on `ftl export`
of a stopped run), so a directory without the summary is still resumable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG_FILE = "config.yaml"  # the validated config snapshot every worker reads; marks a run directory
ENVIRONMENT_FILE = "environment.json"  # versions, git hash, host, argv
RUN_MARKER = ".ftl-run"  # written first: "ftl made this directory"
LOCK_FILE = ".ftl-lock"  # one run at a time (cluster/run_lock.py)
WRITE_PROBE = ".write-test"  # the launcher's is-it-writable probe (per process: .write-test-PID)
DOCTOR_PROBE = ".ftl-doctor"  # `ftl doctor`'s scratch probes
LOGS_DIR = "logs"
CHECKPOINTS_DIR = "checkpoints"
STEP_PREFIX = "step-"  # checkpoints/step-N, exports/step-N
FINAL_DIR = "final"
EXPORTS_DIR = "exports"  # `ftl export` of a checkpoint: exports/step-N/, never final/
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
FAILURE_FILE = "failure.json"  # the launcher's record of why the last start failed (launcher/failure_record.py)
REPORT_DIR = "report"  # `ftl report`'s plots and page (launcher/report/)
TRACKERS_FILE = "trackers.json"  # the MLflow / W&B run ids a resumed run continues (trainer/tracking/)
WORKER_RESULT_FILE = ".worker-result.json"  # the worker group's Outcome (trainer/outcome.py)
STOP_REQUEST_FILE = ".stop-requested"  # content: the signal number that asked (trainer/stopping.py)
REFERENCE_LOGPS_FILE = "reference_logps.safetensors"  # DPO reference=precomputed (trainer/preference_precompute.py)
UNIVERSAL_DIR = ".universal"  # DeepSpeed universal copies of ZeRO checkpoints (trainer/checkpointing/universal.py)
SLURM_SCRIPT = "slurm-job.sbatch"
SLURM_JOB_ID_FILE = "slurm-job-id"


def step_name(step: int) -> str:
    return f"{STEP_PREFIX}{step}"


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory. Building one touches nothing on disk."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def environment(self) -> Path:
        return self.root / ENVIRONMENT_FILE

    @property
    def marker(self) -> Path:
        return self.root / RUN_MARKER

    @property
    def lock(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def logs(self) -> Path:
        return self.root / LOGS_DIR

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS_DIR

    @property
    def final(self) -> Path:
        return self.root / FINAL_DIR

    @property
    def exports(self) -> Path:
        return self.root / EXPORTS_DIR

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD_DIR

    @property
    def failure(self) -> Path:
        return self.root / FAILURE_FILE

    @property
    def report(self) -> Path:
        return self.root / REPORT_DIR

    @property
    def trackers(self) -> Path:
        return self.root / TRACKERS_FILE

    @property
    def worker_result(self) -> Path:
        return self.root / WORKER_RESULT_FILE

    @property
    def stop_request(self) -> Path:
        return self.root / STOP_REQUEST_FILE

    @property
    def reference_logps(self) -> Path:
        return self.root / REFERENCE_LOGPS_FILE

    @property
    def universal(self) -> Path:
        return self.root / UNIVERSAL_DIR

    @property
    def slurm_script(self) -> Path:
        return self.root / SLURM_SCRIPT

    @property
    def slurm_job_id(self) -> Path:
        return self.root / SLURM_JOB_ID_FILE

    def checkpoint(self, step: int) -> Path:
        """Where the committed checkpoint of `step` lives (whether or not it exists)."""
        return self.checkpoints / step_name(step)

    def export(self, step: int) -> Path:
        return self.exports / step_name(step)

    def universal_copy(self, step: int) -> Path:
        return self.universal / step_name(step)

    def rank_log(self, rank: int) -> Path:
        return self.logs / f"rank-{rank}.log"

    def hang_report(self, rank: int) -> Path:
        return self.logs / f"hang-rank{rank}.txt"

    def ray_worker_record(self, rank: int) -> Path:
        return self.logs / f"ray-worker-{rank}.json"

    def ray_worker_records(self) -> list[Path]:
        return sorted(self.logs.glob("ray-worker-*.json"))

    def slurm_log(self, job_id: str) -> Path:
        return self.logs / f"slurm-{job_id}.out"

    def is_run_dir(self) -> bool:
        return self.config.is_file()

    def is_finished(self) -> bool:
        return self.summary.is_file()
