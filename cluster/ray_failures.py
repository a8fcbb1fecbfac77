"""What ftl makes of a Ray Train run that failed: which failures Ray may restart (an input error
or a full disk would only fail again), the one line per rank that says why, and the error the
driver ends with (the input error itself, a stop asked for while no worker group ran, or Ray's
failure with the advice that fits it).

Kept apart from the driver (cluster/ray_driver.py) that starts the run: this is the policy and
its words, unit-tested with Ray's own failure types.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cluster.errors import repeating_error_advice, repeats, resume_hint
from cluster.ray_stop_waiting import say_placement_wait, stop_was_requested, stopped_without_workers
from cluster.results import recorded_input_error
from trainer.errors import FtlError, RunWriteError, TrainerInputError
from trainer.run_layout import RunLayout


class RayRunFailed(FtlError):
    """The worker group failed (after any restarts Ray was allowed)."""


class RayStorageWriteFailed(FtlError):
    """Ray Train's controller failed to write its own state (disk full): no restart can help."""

    def report(self) -> str | None:
        return f"ftl: error: {self}"


def failure_summary(error: Exception) -> str:
    """One line per failed rank (Ray's report repeats each worker's metadata and traceback)."""
    failures = getattr(error, "worker_failures", None)
    if not failures:
        return str(error).strip().splitlines()[0][:500] if str(error).strip() else type(error).__name__
    lines = []
    for rank, failure in sorted(failures.items()):
        failure = getattr(failure, "_base_exc", failure)
        text = [line.strip() for line in str(failure).splitlines() if line.strip()]
        # A dead worker process: Ray's "Worker exit type: ... Worker exit detail: ..." says why; an
        # exception's message its first line (trial 57b: DDP's unused-parameter error was said as its
        # last line, "In addition, you can set the environment variable ..."), or after a traceback
        # the exception line that ends it.
        raised = [line for line in text if re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit)\b", line)]
        traceback = any(line.startswith("Traceback (most recent call last)") for line in text)
        first = (raised[-1] if traceback and raised else text[0]) if text else ""
        reason = next((line for line in text if "exit detail" in line), first)
        if type(failure).__name__ == "WorkerHealthCheckFailedError" and not any("exit detail" in t for t in text):
            # Trial 59b: a node that died was said as "A worker health check failed." alone.
            reason += " (the worker stopped answering: its process or its node is gone)"
        memory = _out_of_memory(str(failure))
        if memory is not None:  # trial 56a: Ray's advice about max_task_retries, cut mid-word
            reason = f"killed by Ray's memory monitor: the machine ran out of memory{memory}"
        lines.append(f"rank {rank}: {type(failure).__name__}: {_clipped(reason, 300)}")
    return "\n  " + "\n  ".join(lines)


def _out_of_memory(text: str) -> str | None:
    """' (31.2GB of 32.0GB in use)' (or '') when Ray's memory monitor killed the worker, else None."""
    if "running low on memory" not in text and "out of memory issue" not in text:
        return None
    used = re.search(r"was ([\d.]+)\s*GB / ([\d.]+)\s*GB", text)
    return f" ({used[1]}GB of {used[2]}GB in use)" if used else ""


def _clipped(text: str, most: int) -> str:
    """At most `most` characters, cut at a word's end (trial 56a: `max_task_`)."""
    if len(text) <= most:
        return text
    return text[:most].rsplit(" ", 1)[0] + " ..."


def what_next(run_dir: Path, max_failures: int, failures: Sequence[BaseException] | None = None) -> str:
    """How to go on after a failure that Ray did not (or no longer) restart. `failures`: the failed
    ranks' exceptions; when every one is an error that repeats, the same command is not the advice."""
    resume = resume_hint(run_dir)
    if failures and any(_out_of_memory(str(failure)) is not None for failure in failures):
        # The same command runs out of memory again, and a Ray restart would too (trial 56a).
        return (
            "the workers need more memory than this machine had free: lower training.micro_batch_size (raise "
            f"training.gradient_accumulation_steps to keep the global batch), or see `ftl plan CONFIG`; {resume}"
        )
    if failures and all(repeats(failure) for failure in failures):
        return repeating_error_advice(run_dir, [type(failure).__name__ for failure in failures], "a Ray restart")
    if max_failures == 0:
        resume += "; set cluster.ray.max_failures (e.g. 3) to have Ray restart the worker group from it by itself"
    return resume


def final_worker_errors(error: Any, kind: type[Exception] | tuple[type[Exception], ...]) -> list[Exception]:
    """The workers' exceptions of that kind in Ray Train's report of a failed worker group (Ray wraps
    each with its traceback: UserExceptionWithTraceback._base_exc)."""
    failures = getattr(error, "worker_failures", None) or {}
    found = [getattr(failure, "_base_exc", failure) for failure in failures.values()]
    return [failure for failure in found if isinstance(failure, kind)]


def input_errors_not_retried(policy: Any, run_dir: Path) -> Any:
    """Ray Train's failure policy, except that a worker group that failed on an input error (a bad
    data row, a bad checkpoint: recorded in the run directory by the rank that found it) or on a
    write into the run directory (disk full) is not restarted: a restart would only meet the same
    error, cluster.ray.max_failures times over."""
    from ray.train.v2._internal.execution.failure_handling import FailureDecision, FailurePolicy

    class InputErrorsAreFinal(FailurePolicy):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(policy.failure_config)
            self.inner = policy
            self.restarts = 0

        def make_decision(self, training_failed_error: Any) -> Any:
            if (
                recorded_input_error(run_dir) is not None
                or final_worker_errors(training_failed_error, (TrainerInputError, RunWriteError))
                or isinstance(getattr(training_failed_error, "controller_failure", None), OSError)
            ):
                return FailureDecision.RAISE
            if stop_was_requested(run_dir):  # no new worker group only to stop it (trial 59b)
                return FailureDecision.RAISE
            say_placement_wait(training_failed_error)
            decision = self.inner.make_decision(training_failed_error)
            if decision == FailureDecision.RETRY and getattr(training_failed_error, "worker_failures", None):
                # Trial 59c: ~150 lines of Ray's tracebacks after a node died, and no line of ftl's.
                self.restarts += 1
                print(
                    f"ftl: the worker group failed:{failure_summary(training_failed_error)}\n"
                    f"ftl: Ray Train starts it again from the newest committed checkpoint (restart {self.restarts} "
                    f"of cluster.ray.max_failures={policy.failure_config.max_failures})",
                    file=sys.stderr,
                    flush=True,
                )
            return decision

    return InputErrorsAreFinal()


def failed_run_error(error: Exception, run_dir: Path, storage_path: str, max_failures: int) -> BaseException:
    """The error a run ends with after Ray Train's fit() raised `error` (ray.train.TrainingFailedError
    or a controller error), with its cause set as the driver should raise it."""
    # A worker that rejected its input left the reason in the result: that one message (exit 2),
    # not Ray's report of the failed worker group. Only rank 0 records one; another rank may find
    # it first and fail the group before rank 0 gets there (a model check after loading): its
    # exception says the same.
    rejected = final_worker_errors(error, TrainerInputError)
    recorded = recorded_input_error(run_dir) or (str(rejected[0]) if rejected else None)
    if recorded is not None:
        return _alone(TrainerInputError(recorded))
    write_failure = next(iter(final_worker_errors(error, RunWriteError)), None)
    if write_failure is not None:  # disk full: the worker's clear message is above
        return _alone(RunWriteError(str(write_failure)))
    stopped = stopped_without_workers(run_dir, error)
    if stopped is not None:  # asked while Ray had no worker group to stop
        return _alone(stopped)
    controller_write = getattr(error, "controller_failure", None)
    if isinstance(controller_write, OSError):  # Ray's own state, beside the run (disk full)
        return _alone(
            RayStorageWriteFailed(
                f"Ray Train could not write its state into {storage_path}: "
                f"{str(controller_write).splitlines()[0]}; {resume_hint(run_dir)} once there is room"
            )
        )
    failed = RayRunFailed(
        f"Ray Train run failed: {failure_summary(error)}\nper-rank logs: {RunLayout(run_dir).logs}\n"
        f"{what_next(run_dir, max_failures, final_worker_errors(error, Exception))}"
    )
    failed.__cause__ = error  # Ray's own report stays in the debug log's traceback
    return failed


def _alone(error: BaseException) -> BaseException:
    """Raised without Ray's report chained to it: the message is the whole story."""
    error.__suppress_context__ = True
    return error
