"""What a Slurm job does once its workers stopped at a checkpoint: requeue itself, or end.

Slurm signals a job for different reasons that ask for different ends:
- the time-limit warning (`--signal=B:USR1@T`) or a preemption: requeue, the run resumes;
- `scancel JOBID` (the job is COMPLETING at once, with no TimeLimit reason): the user ends it:
  never requeued (it would come back to life whenever the checkpoint beat Slurm's KillWait);
- `scontrol requeue` or a preemption with PreemptMode=REQUEUE: Slurm requeues it itself (its
  Restarts count already went up), nothing to add;
- a stop asked by `ftl train`'s Ctrl-C through the run directory (no signal reached the job):
  the user stops it: not requeued, the same `ftl train` resumes it;
- a signal to the job's steps only (`scancel --signal=TERM JOBID`): as preemption;
- any of the requeue cases above when this start trained no step (the warning came before the
  first step: a time limit barely longer than signal_before_s, or a slow start): not requeued,
  or every start would stop again at once and the job would loop in the queue forever.
A pure function of what the job saw, so the policy is tested without a cluster.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass


@dataclass(frozen=True)
class AfterStop:
    requeue: bool  # this job runs `scontrol requeue`
    message: str
    requeued_by_slurm: bool = False  # Slurm requeued it already

    @property
    def comes_back(self) -> bool:
        """The job will start again: the run directory stays reserved for it."""
        return self.requeue or self.requeued_by_slurm


def after_stop(
    step: int | None,
    batch_signals: list[int],
    asked_through_run_dir: bool,
    requeue_allowed: bool,
    job: dict[str, str],
    restarts_at_start: int,
    step_at_start: int | None = None,
) -> AfterStop:
    """`job`: `scontrol show job` of this job now ({} when Slurm did not answer);
    `step_at_start`: the latest checkpoint's step when this start of the job began (None: none)."""
    at = f"checkpoint at step {step}" if step is not None else "stopped with a checkpoint"
    if asked_through_run_dir and not batch_signals:
        return AfterStop(False, f"{at}; stopped as asked (the same `ftl train` command resumes it)")
    if int(job.get("Restarts", restarts_at_start)) > restarts_at_start:
        return AfterStop(
            False, f"{at}; Slurm requeues this job itself (scontrol requeue or preemption)", requeued_by_slurm=True
        )
    state, reason = job.get("JobState", ""), job.get("Reason", "None")
    if state in ("COMPLETING", "CANCELLED") and reason != "TimeLimit" and "Preempt" not in reason:
        return AfterStop(
            False, f"{at}; cancelled (scancel): not requeued; submit the same config again to resume from it"
        )
    if not requeue_allowed:
        names = ", ".join(signal.Signals(s).name for s in batch_signals) or "a signal to the job's steps"
        return AfterStop(
            False, f"{at} ({names}); cluster.slurm.requeue is false: submit the same config again to resume"
        )
    if (step or 0) <= (step_at_start or 0):
        # Trial 45b: "checkpoint at step 0" after "nothing to save", and time-limit advice for a job without one.
        kept = f"the checkpoint at step {step_at_start} is the latest" if step_at_start else "no checkpoint yet"
        limit = job.get("TimeLimit", "")
        timed = limit != "UNLIMITED"  # unknown (Slurm did not answer): as if timed
        advice = (
            "Give the job more time (cluster.slurm.time) or a shorter cluster.slurm.signal_before_s, then submit "
            "the same config again"
            if timed
            else "The job has no time limit, so the signal was a preemption or a scancel: submit the same config again"
        )
        return AfterStop(
            False,
            f"stopped before training a step in this start of the job ({kept}; the stop signal came before "
            f"training got going): not requeued, or it would stop the same way on every start. {advice}",
        )
    return AfterStop(True, f"{at}; requeueing")
