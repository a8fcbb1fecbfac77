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
from trainer.outcome import OutcomeKind


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    code = slurm_job.main(args)
    if code != 0 or len(args) != 1 or os.environ.get(FOLLOWED_ENV):
        return code
    run_dir = Path(args[0]).resolve()
    outcome = read_result(run_dir)
    if outcome.kind is not OutcomeKind.FINISHED or outcome.summary is None:
        return code  # stopped (requeued or cancelled): the run's end comes later
    from launcher.commands import format_summary, write_report_after_run
    from launcher.run_dir import load_snapshot

    cfg = load_snapshot(run_dir)
    if cfg.output.report:
        write_report_after_run(run_dir, cfg.tracking)
    print(format_summary(outcome.summary), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
