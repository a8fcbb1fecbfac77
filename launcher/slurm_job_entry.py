"""What the sbatch script runs: the Slurm job (cluster/slurm_job.py), then, for a run submitted
with `ftl slurm` (nobody waits for it), what `ftl train` shows at the end of a run: the summary
table in the job's log and the run's report in RUN_DIR/report/. `ftl train` with
cluster.backend=slurm follows the job and does both itself (cluster/slurm.py's FOLLOWED_ENV).

    python -m launcher.slurm_job_entry RUN_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cluster import slurm_job
from cluster.results import read_result
from cluster.slurm import FOLLOWED_ENV
from trainer.errors import EXIT_INPUT_ERROR
from trainer.outcome import Outcome, OutcomeKind


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    code = slurm_job.main(args)
    if len(args) != 1 or os.environ.get(FOLLOWED_ENV):
        return code
    run_dir = Path(args[0]).resolve()
    outcome = read_result(run_dir)
    if code != 0:
        _record_failed_job(run_dir, code, outcome)
        return code
    if outcome.kind is not OutcomeKind.FINISHED or outcome.summary is None:
        return code  # stopped (requeued or cancelled): the run's end comes later
    from launcher.commands import format_summary, write_report_after_run
    from launcher.run_dir import load_snapshot

    cfg = load_snapshot(run_dir)
    if cfg.output.report:
        write_report_after_run(run_dir, cfg.tracking)
    print(format_summary(outcome.summary), flush=True)
    return code


def _record_failed_job(run_dir: Path, code: int, outcome: Outcome) -> None:
    """A failed job nobody follows: `ftl runs` lists the run as failed with the reason, as it does
    after `ftl train` (trial 45b: "not started" for a bad data row, "resumable" for a killed worker)."""
    from launcher.failure_record import record_failure
    from trainer.run_layout import RunLayout

    job = os.environ.get("SLURM_JOB_ID", "?")
    if outcome.kind is OutcomeKind.INPUT_ERROR and outcome.message:
        print(
            f"ftl slurm job {job}: a worker rejected its input (the error above); fix it and submit the same config "
            "again",
            flush=True,
        )
        record_failure(run_dir, outcome.message, "TrainerInputError", EXIT_INPUT_ERROR)
        return
    log = RunLayout(run_dir).slurm_log(job)
    record_failure(run_dir, f"Slurm job {job} failed (exit code {code}); its log: {log}", "SlurmJobFailed", code)


if __name__ == "__main__":
    sys.exit(main())
