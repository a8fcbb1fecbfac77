"""On Ray, a worker group that failed on an input error is not restarted, whatever
cluster.ray.max_failures says (a restart meets the same bad row again); other failures are."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("ray")

from ray import cloudpickle  # noqa: E402
from ray.train import FailureConfig  # noqa: E402
from ray.train.v2._internal.exceptions import UserExceptionWithTraceback  # noqa: E402
from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy, FailureDecision  # noqa: E402
from ray.train.v2.api.exceptions import WorkerGroupError  # noqa: E402

from cluster.ray_failures import input_errors_not_retried  # noqa: E402
from cluster.results import clear_result, write_result  # noqa: E402
from trainer.errors import TrainerInputError  # noqa: E402
from trainer.outcome import Outcome  # noqa: E402


def _policy(run_dir: Path):  # type: ignore[no-untyped-def]
    policy = input_errors_not_retried(DefaultFailurePolicy(FailureConfig(max_failures=2)), run_dir)
    return cloudpickle.loads(cloudpickle.dumps(policy))  # as the controller actor receives it


def test_other_failures_are_retried_up_to_max_failures(tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    crash = WorkerGroupError("rank 1 died", {1: RuntimeError("connection reset")})
    assert [policy.make_decision(crash) for _ in range(3)] == [
        FailureDecision.RETRY,
        FailureDecision.RETRY,
        FailureDecision.RAISE,
    ]


def test_an_input_error_is_never_retried(tmp_path: Path) -> None:
    bad_row = UserExceptionWithTraceback(TrainerInputError("train.jsonl line 3: invalid JSON"), "Traceback ...")
    assert _policy(tmp_path).make_decision(WorkerGroupError("bad data", {0: bad_row})) == FailureDecision.RAISE
    # Rank 1 saw only the broken collective; rank 0 recorded the input error in the run directory.
    write_result(tmp_path, Outcome.input_error("train.jsonl line 3: invalid JSON"))
    broken = WorkerGroupError("rank 1", {1: RuntimeError("gloo: connection closed by peer")})
    assert _policy(tmp_path).make_decision(broken) == FailureDecision.RAISE
    clear_result(tmp_path)
    assert _policy(tmp_path).make_decision(broken) == FailureDecision.RETRY


def test_a_full_disk_is_never_retried(tmp_path: Path) -> None:
    """A worker's failed checkpoint write, or Ray's controller failing to write its own state
    beside the run: a restart meets the same full disk."""
    from ray.train.v2.api.exceptions import ControllerError

    from trainer.checkpointing.manager import CheckpointWriteError

    full = UserExceptionWithTraceback(CheckpointWriteError("No space left on device"), "Traceback ...")
    assert _policy(tmp_path).make_decision(WorkerGroupError("disk", {0: full})) == FailureDecision.RAISE
    controller = ControllerError(OSError(28, "No space left on device"))
    assert _policy(tmp_path).make_decision(controller) == FailureDecision.RAISE


def test_the_advice_after_an_error_that_repeats_is_not_to_rerun_as_is(tmp_path: Path) -> None:
    """'run the same command again' (and raise max_failures) after a TypeError meets it again."""
    from cluster.ray_failures import what_next

    repeating = what_next(tmp_path, 0, [ValueError("bad"), TypeError("worse")])
    assert repeating.startswith("no checkpoint was committed yet: run the same command again to start the run anew")
    assert "once its cause is fixed: TypeError, ValueError is an error of the code or of its input" in repeating
    assert "max_failures" not in repeating
    # RuntimeErrors that are the model's (DDP's unused parameters, weights of other shapes) repeat too.
    unused = RuntimeError("Expected to have finished reduction in the prior iteration before starting a new one.")
    assert "once its cause is fixed: RuntimeError is an error of the code" in what_next(tmp_path, 0, [unused])
    # A lost process or a collective's error may not repeat: the usual advice, with restarts.
    for failures in ([RuntimeError("gloo connection reset")], [ValueError("x"), OSError("y")], None):
        said = what_next(tmp_path, 0, failures)
        assert "set cluster.ray.max_failures" in said and "cause is fixed" not in said


# Ray's memory monitor's words when it kills a worker (ray/_private/memory_monitor), as a worker's failure says them.
RAY_OOM = (
    "Task was killed due to the node running low on memory.\nMemory on the node (IP: 10.0.0.2, ID: abc) where the "
    "task (actor ID: 1, name=RayTrainWorker.__init__, pid=29422, memory used=9.84GB) was running was 21.05GB / "
    "22.17GB (0.949), which exceeds the memory usage threshold of 0.95. Ray killed this worker (ID: x) because it "
    "was the most recently scheduled task.\nRefer to the documentation on how to address the out of memory issue: "
    "https://docs.ray.io/en/latest/ray-core/scheduling/ray-oom-prevention.html. Consider provisioning more memory on "
    "this node or reducing task parallelism by requesting more CPUs per task. Set max_restarts and max_task_retries "
    "to enable retry when the task crashes due to OOM."
)


def test_a_worker_killed_for_memory_is_said_so_and_not_advised_to_rerun_as_is(tmp_path: Path) -> None:
    """Trial 56a: the reason was Ray's last line, cut at 300 characters mid-word (`max_task_`), and
    the advice was to run the same command again or raise max_failures: it runs out of memory again."""
    from ray.train import WorkerGroupError

    from cluster.ray_failures import failure_summary, what_next

    error = WorkerGroupError("workers failed", {1: RuntimeError(RAY_OOM)})
    assert failure_summary(error) == (
        "\n  rank 1: RuntimeError: killed by Ray's memory monitor: the machine ran out of memory "
        "(21.05GB of 22.17GB in use)"
    )
    advice = what_next(tmp_path, 0, [RuntimeError(RAY_OOM)])
    assert advice.startswith("the workers need more memory than this machine had free: lower training.micro_batch")
    assert "max_failures" not in advice
    long = WorkerGroupError("x", {0: RuntimeError("word " * 100)})
    assert failure_summary(long).endswith("word word ...")  # cut at a word's end
    # A message of several lines: its first (trial 57b: DDP's was said by its last, a debugging tip).
    ddp = RuntimeError(
        "Expected to have finished reduction in the prior iteration before starting a new one.\n"
        "This error indicates that your module has parameters that were not used in producing loss.\n"
        "In addition, you can set the environment variable TORCH_DISTRIBUTED_DEBUG to either INFO or DETAIL"
    )
    assert failure_summary(WorkerGroupError("x", {1: ddp})) == (
        "\n  rank 1: RuntimeError: Expected to have finished reduction in the prior iteration before starting a new one."
    )
    traced = RuntimeError('Traceback (most recent call last):\n  File "x.py", line 1, in f\nValueError: bad shape')
    assert failure_summary(WorkerGroupError("x", {0: traced})).endswith("rank 0: RuntimeError: ValueError: bad shape")


def test_a_worker_that_stopped_answering_is_said_to_be_gone() -> None:
    """Trial 59b: a node killed mid-run was said as "A worker health check failed." alone."""
    from ray.train import WorkerGroupError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    from cluster.ray_failures import failure_summary

    gone = WorkerHealthCheckFailedError("A worker health check failed.", TimeoutError("no answer"))
    assert failure_summary(WorkerGroupError("x", {1: gone})) == (
        "\n  rank 1: WorkerHealthCheckFailedError: A worker health check failed. (the worker stopped answering: "
        "its process or its node is gone)"
    )


def test_the_error_a_failed_run_ends_with(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The driver ends with the input error alone (exit 2, no Ray report chained), a stop asked
    while no worker group ran as that stop, and any other failure as RayRunFailed caused by Ray's."""
    from ray.train.v2.api.exceptions import ControllerError

    from cluster.ray_failures import RayRunFailed, RayStorageWriteFailed, failed_run_error
    from trainer.run_layout import RunLayout
    from trainer.stopping import StopRequested

    bad_row = UserExceptionWithTraceback(TrainerInputError("train.jsonl line 3: invalid JSON"), "Traceback ...")
    rejected = failed_run_error(WorkerGroupError("bad data", {0: bad_row}), tmp_path, str(tmp_path.parent), 2)
    assert isinstance(rejected, TrainerInputError) and str(rejected) == "train.jsonl line 3: invalid JSON"
    assert rejected.__suppress_context__ and rejected.__cause__ is None

    crash = WorkerGroupError("rank 1 died", {1: RuntimeError("connection reset")})
    failed = failed_run_error(crash, tmp_path, str(tmp_path.parent), 0)
    assert isinstance(failed, RayRunFailed) and failed.__cause__ is crash
    assert "rank 1: RuntimeError: connection reset" in str(failed)
    assert "set cluster.ray.max_failures" in str(failed)

    full = failed_run_error(ControllerError(OSError(28, "No space left on device")), tmp_path, "/runs", 2)
    assert isinstance(full, RayStorageWriteFailed) and "could not write its state into /runs" in str(full)

    layout = RunLayout(tmp_path)
    layout.stop_request.parent.mkdir(parents=True, exist_ok=True)
    layout.stop_request.write_text("2")
    stopped = failed_run_error(crash, tmp_path, str(tmp_path.parent), 2)
    assert isinstance(stopped, StopRequested) and stopped.signum == 2 and stopped.step == 0
    assert "nothing more to save" in capsys.readouterr().err
    # Stopped while Ray could not place the workers: a new start waits the same way (trial 59c).
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    failed_run_error(ControllerError(WorkerGroupStartupTimeoutError(2)), tmp_path, str(tmp_path.parent), 2)
    assert "a new start waits the same way until the cluster has room for them" in capsys.readouterr().err
