"""Errors of the cluster backends that are not a backend's own (those live with it: RayRunFailed,
SlurmError, StorageError, RunDirLocked...). All derive from trainer/errors.py's FtlError."""

from __future__ import annotations

import signal
from pathlib import Path

from trainer.errors import EXIT_INPUT_ERROR, EXIT_STOPPED, STOP_SIGNAL_CODES, FtlError
from trainer.stopping import resume_command


def _how_it_ended(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name} (exit code {code})"
        except ValueError:
            pass
    return f"exited with code {code}"


def resume_hint(run_dir: Path) -> str:
    """Where the same command goes on from."""
    from trainer.checkpointing.protocol import committed_checkpoints

    committed = committed_checkpoints(run_dir)
    if committed:
        return f"the checkpoints up to {committed[-1].name} are kept: {resume_command()} to resume from it"
    return f"no checkpoint was committed yet: {resume_command()} to start the run anew"


# Errors of the code or of an input the checks missed, not of a machine: a rerun or a restart of the
# worker group meets them again. (RuntimeError and OSError are not here: a collective's timeout, a
# lost peer or a full disk raise those, and may pass.)
REPEATING_ERRORS = (
    TypeError,
    AttributeError,
    KeyError,
    IndexError,
    ValueError,
    NameError,
    NotImplementedError,
    AssertionError,
    ImportError,
    ZeroDivisionError,
)


# RuntimeErrors that are a model's or config's, not a machine's: the same start raises them again.
REPEATING_RUNTIME_ERRORS = (
    # DDP: a trainable parameter the forward did not use (a model part the data never runs).
    "Expected to have finished reduction in the prior iteration",
    # transformers: weights of other shapes than the model its config describes.
    "ignore_mismatched_sizes",
    # torch's load_state_dict: the same, from a state dict.
    "size mismatch for",
)


def repeats(exc: BaseException) -> bool:
    """Whether a rerun or a restart of the worker group would meet this error again."""
    if isinstance(exc, REPEATING_ERRORS):
        return True
    return isinstance(exc, RuntimeError) and any(text in str(exc) for text in REPEATING_RUNTIME_ERRORS)


def repeating_error_advice(run_dir: Path, kinds: list[str], restart: str = "") -> str:
    """After errors that repeat (`kinds`: their class names), every backend: fix the cause, then
    the same command resumes; neither a rerun as is nor a `restart` by the backend would pass them."""
    also = f" (or {restart})" if restart else ""
    return (
        f"{resume_hint(run_dir)} once its cause is fixed: {', '.join(sorted(set(kinds)))} is an error of the code or "
        f"of its input, not of a machine, so the same command{also} meets it again; the rank's log has the traceback"
    )


class WorkerFailed(FtlError):
    """A worker process (or torchrun's agent, or a Slurm job) exited non-zero. ftl exits with its
    code; a worker killed by signal N (a negative code) becomes 128 + N, as a shell reports it."""

    def __init__(
        self,
        rank: int | None,
        code: int,
        log: Path | None,
        who: str = "",
        input_error: str | None = None,
        next_step: str = "",
    ):
        self.rank, self.code, self.log = rank, code, log
        self.next_step = next_step  # how to go on (the checkpoint to resume from), for a crash
        self.input_error = input_error  # the message of the worker that rejected its input (exit 2), if recorded
        self.exit_code = code if code > 0 else 128 - code
        where = f"; see {log}" if log else ""
        who = who or (f"worker {rank}" if rank is not None else "the workers")
        super().__init__(f"{who} {_how_it_ended(code)}{where}")

    def report(self) -> str | None:
        if self.code == EXIT_STOPPED or self.code in STOP_SIGNAL_CODES:
            return f"ftl: workers stopped at a step boundary with a checkpoint; {resume_command()} to resume"
        if self.code == EXIT_INPUT_ERROR:
            return "ftl: a worker rejected its input (message above)"
        return f"ftl: {self}" + (f"\nftl: {self.next_step}" if self.next_step else "")

    def cause(self) -> str:
        return self.input_error or str(self)
