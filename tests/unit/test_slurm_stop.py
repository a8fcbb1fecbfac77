"""After a clean stop, a Slurm job requeues itself only where the stop was not the user's end of it
(the policy of cluster/slurm_stop.py, from what `scontrol show job` says in each case, as measured
on the local Slurm: scancel -> COMPLETING / Reason=None; time limit -> COMPLETING / TimeLimit;
scontrol requeue -> COMPLETING with Restarts already one up)."""

from __future__ import annotations

import signal

import pytest

from cluster.slurm_stop import after_stop

RUNNING = {"JobState": "RUNNING", "Reason": "None", "Restarts": "0"}
TERM, USR1 = [int(signal.SIGTERM)], [int(signal.SIGUSR1)]


@pytest.mark.parametrize(
    "signals,asked,job,requeue,said",
    [
        (USR1, True, RUNNING, True, "requeueing"),  # the time-limit warning
        (TERM, True, RUNNING, True, "requeueing"),  # preemption's SIGTERM while still running
        ([], False, RUNNING, True, "requeueing"),  # scancel --signal=TERM: the steps only
        (TERM, True, {**RUNNING, "JobState": "COMPLETING", "Reason": "TimeLimit"}, True, "requeueing"),
        (TERM, True, {**RUNNING, "JobState": "COMPLETING"}, False, "cancelled (scancel): not requeued"),
        (TERM, True, {**RUNNING, "JobState": "CANCELLED"}, False, "cancelled (scancel)"),
        (TERM, True, {**RUNNING, "JobState": "COMPLETING", "Restarts": "1"}, False, "Slurm requeues this job itself"),
        ([], True, RUNNING, False, "stopped as asked (the same `ftl train` command resumes it)"),
        (USR1, True, RUNNING, None, "(SIGUSR1); cluster.slurm.requeue is false"),
    ],
)
def test_requeue_only_where_the_stop_was_not_the_users_end_of_the_job(signals, asked, job, requeue, said) -> None:  # type: ignore[no-untyped-def]
    decision = after_stop(7, signals, asked, requeue is not None, job, restarts_at_start=0)
    assert decision.requeue is bool(requeue) and said in decision.message, decision
    assert decision.message.startswith("checkpoint at step 7")


def test_a_job_slurm_no_longer_answers_for_is_requeued_as_before() -> None:
    assert after_stop(3, USR1, True, True, {}, restarts_at_start=2).requeue


@pytest.mark.parametrize("step_at_start,step", [(38, 38), (None, None), (None, 0), (10, 10)])
def test_a_start_that_trained_no_step_is_not_requeued_so_it_cannot_loop(step_at_start, step) -> None:  # type: ignore[no-untyped-def]
    decision = after_stop(step, USR1, True, True, RUNNING, restarts_at_start=1, step_at_start=step_at_start)
    assert not decision.requeue and not decision.comes_back
    assert "stopped before training a step in this start of the job" in decision.message
    kept = f"the checkpoint at step {step_at_start} is the latest" if step_at_start else "no checkpoint yet"
    assert kept in decision.message and "checkpoint at step 0" not in decision.message  # trial 45b
    assert "cluster.slurm.time" in decision.message and "signal_before_s" in decision.message
    # Without a time limit the signal was no time-limit warning (trial 45b): no time advice.
    unlimited = after_stop(
        step, USR1, True, True, {**RUNNING, "TimeLimit": "UNLIMITED"}, restarts_at_start=1, step_at_start=step_at_start
    )
    assert "no time limit, so the signal was a preemption or a scancel" in unlimited.message
    assert "cluster.slurm.time" not in unlimited.message


def test_a_start_that_trained_is_requeued_and_keeps_the_run_directory() -> None:
    decision = after_stop(39, USR1, True, True, RUNNING, restarts_at_start=1, step_at_start=38)
    assert decision.requeue and decision.comes_back
    first_start = after_stop(5, USR1, True, True, RUNNING, restarts_at_start=0, step_at_start=None)
    assert first_start.requeue


def test_a_job_slurm_requeues_itself_keeps_the_run_directory() -> None:
    decision = after_stop(7, TERM, True, True, {**RUNNING, "JobState": "COMPLETING", "Restarts": "1"}, 0)
    assert not decision.requeue and decision.comes_back


def test_consecutive_jobs_never_share_a_port() -> None:
    """A ray-mode job's dashboard sits at its port + 1: that was the next job's rendezvous port,
    whose torchrun agent then met an HTTP server ("Ping failed", a CI run on the one-host Slurm)."""
    from cluster.slurm_job import job_port

    taken = {job: {job_port(str(job)), job_port(str(job)) + 1} for job in range(1, 20000)}
    for job in range(1, 19999):
        assert not taken[job] & taken[job + 1], job
    assert all(20000 <= min(ports) and max(ports) < 32768 for ports in taken.values())
