"""One error hierarchy (trainer/errors.py): every error ftl reports maps to its documented exit
code and stderr line, and `ftl` (launcher.cli.main) returns exactly that."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import cluster.errors
import cluster.ray_driver
import cluster.ray_failures
import cluster.ray_jobs
import cluster.run_lock
import cluster.run_storage
import cluster.slurm
import cluster.torchrun
import launcher.cli
import launcher.errors
import trainer.checkpointing.manager
import trainer.errors
import trainer.metrics
import trainer.outcome
import trainer.stopping
from tests.conftest import REPO
from trainer.errors import FtlError

STOPPED_HINT = "ftl: workers stopped at a step boundary with a checkpoint; run the same command again to resume"

Case = tuple[type[FtlError], Callable[[], FtlError], int, str | None]


def _with_message(cls: type[FtlError], code: int, prefix: str | None) -> Case:
    return cls, lambda: cls("the message"), code, None if prefix is None else prefix + "the message"


# (class, how to make one, exit code, what the CLI prints on stderr; None: nothing, the message is already there)
CASES: list[Case] = [
    *(
        _with_message(cls, 2, "error: ")
        for cls in (
            trainer.errors.InputError,
            trainer.errors.TrainerInputError,
            trainer.errors.DataError,
            trainer.errors.TrainingDivergedError,
            launcher.errors.UserError,
            launcher.errors.StartRefused,
            cluster.run_storage.StorageError,
            cluster.run_lock.RunDirLocked,
            cluster.ray_driver.RayResourcesError,
            cluster.ray_jobs.JobError,
            cluster.torchrun.TorchrunPrepareFailed,
            cluster.slurm.SlurmSettingRejected,
        )
    ),
    *(
        _with_message(cls, 1, "ftl: ")
        for cls in (FtlError, cluster.ray_failures.RayRunFailed, cluster.slurm.SlurmError, trainer.outcome.NoResult)
    ),
    _with_message(cluster.ray_failures.RayStorageWriteFailed, 1, "ftl: error: "),
    (
        cluster.slurm.CancelledBeforeStart,
        lambda: cluster.slurm.CancelledBeforeStart("the message", signal.SIGTERM),
        143,
        "ftl: the message",
    ),
    # Disk full or an I/O error: the message, with what to do, is already on stderr.
    *(
        _with_message(cls, 1, None)
        for cls in (
            trainer.errors.RunWriteError,
            trainer.metrics.MetricsWriteError,
            trainer.checkpointing.manager.CheckpointWriteError,
        )
    ),
    (
        launcher.errors.ConfigError,
        lambda: launcher.errors.ConfigError("cfg.yaml", ["training.lr: unknown key"]),
        2,
        "error: invalid config cfg.yaml: 1 problem(s)\n  - training.lr: unknown key",
    ),
    (
        trainer.stopping.StopRequested,
        lambda: trainer.stopping.StopRequested(5, "runs/x/checkpoints/step-5", None),
        3,
        "ftl: stopped at step 5; checkpoint runs/x/checkpoints/step-5; run the same command again to resume",
    ),
    (
        trainer.stopping.StopRequested,
        lambda: trainer.stopping.StopRequested(5, "ck", signal.SIGTERM),
        143,
        "ftl: stopped at step 5; checkpoint ck; run the same command again to resume",
    ),
    (
        trainer.stopping.StopRequested,
        lambda: trainer.stopping.StopRequested(5, "ck", signal.SIGUSR1),
        138,
        "ftl: stopped at step 5; checkpoint ck; run the same command again to resume",
    ),
    (
        cluster.errors.WorkerFailed,
        lambda: cluster.errors.WorkerFailed(1, 7, Path("logs/worker-1.out")),
        7,
        "ftl: worker 1 exited with code 7; see logs/worker-1.out",
    ),
    (
        cluster.errors.WorkerFailed,
        lambda: cluster.errors.WorkerFailed(0, -9, None),
        137,
        "ftl: worker 0 was killed by SIGKILL (exit code -9)",
    ),
    (
        cluster.errors.WorkerFailed,
        lambda: cluster.errors.WorkerFailed(None, 2, Path("logs"), who="torchrun"),
        2,
        "ftl: a worker rejected its input (message above)",
    ),
    (cluster.errors.WorkerFailed, lambda: cluster.errors.WorkerFailed(None, 3, None), 3, STOPPED_HINT),
    (cluster.errors.WorkerFailed, lambda: cluster.errors.WorkerFailed(1, 130, None), 130, STOPPED_HINT),
    (cluster.errors.WorkerFailed, lambda: cluster.errors.WorkerFailed(1, 143, None), 143, STOPPED_HINT),
]


def _all_subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _all_subclasses(sub)
    return found


def test_every_error_class_has_its_documented_exit_code() -> None:
    # A new error class must be added here with its exit code (and to trainer/errors.py's table).
    assert {case[0] for case in CASES} == {FtlError} | _all_subclasses(FtlError)
    for cls, make, code, _ in CASES:
        error = make()
        assert type(error) is cls and error.exit_code == code, (cls, code)


def test_exit_codes_are_the_shell_conventions() -> None:
    assert (trainer.errors.EXIT_FAILED, trainer.errors.EXIT_INPUT_ERROR, trainer.errors.EXIT_STOPPED) == (1, 2, 3)
    assert trainer.errors.EXIT_INTERRUPTED == 130 and trainer.errors.STOP_SIGNAL_CODES == (130, 138, 143)


@pytest.mark.parametrize(("cls", "make", "code", "printed"), CASES, ids=[f"{c[0].__name__}-{c[2]}" for c in CASES])
def test_cli_main_prints_the_error_and_returns_its_exit_code(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    cls: type[FtlError],
    make: Callable[[], FtlError],
    code: int,
    printed: str | None,
) -> None:
    def dispatch(args: object) -> int:
        raise make()

    monkeypatch.setattr(launcher.cli, "_dispatch", dispatch)
    assert launcher.cli.main(["validate", "cfg.yaml"]) == code
    captured = capsys.readouterr()
    assert captured.err == ("" if printed is None else printed + "\n") and captured.out == ""


def test_ctrl_c_before_the_run_is_exit_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def dispatch(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(launcher.cli, "_dispatch", dispatch)
    assert launcher.cli.main(["validate", "cfg.yaml"]) == 130
    assert capsys.readouterr().err == "ftl: interrupted\n"


def test_other_exceptions_are_bugs_and_keep_their_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def dispatch(args: object) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(launcher.cli, "_dispatch", dispatch)
    with pytest.raises(RuntimeError, match="a bug"):
        launcher.cli.main(["validate", "cfg.yaml"])


def test_a_reader_that_closes_the_pipe_early_gets_no_traceback() -> None:
    """`ftl validate --data | head -1`, `ftl runs | head`: the reader is gone before ftl has
    printed everything. A real pipe, closed at once: exit 141 as for SIGPIPE, nothing on stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "launcher.cli", "validate", "configs/examples/lora.yaml", "--data", "--examples", "400"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 128 + signal.SIGPIPE, err[-2000:]
    assert "Traceback" not in err and "BrokenPipeError" not in err, err[-2000:]
