"""Graceful stop: SIGINT/SIGTERM/SIGUSR1 ask the loop to checkpoint at the next step boundary and exit.

A launcher that cannot signal the workers directly (Ray actors, torchrun or srun children on other
nodes) writes the stop-request file into the run directory instead; its content is the signal
number that caused it. The loop checks it at every step boundary.

A second signal while the checkpoint is being written is recorded but does not interrupt the
write: the commit protocol would survive it, but finishing the save loses less work.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType

from trainer.errors import EXIT_STOPPED, FtlError
from trainer.run_layout import STOP_REQUEST_FILE, RunLayout

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
# How the user resumes a stopped run, in the messages that say so. A run submitted as a Ray Job
# (`ftl submit`) is resumed by submitting it again, not by the `ftl train` its job runs: the job's
# entry (launcher/job_entry.py) sets this for its own process.
RESUME_COMMAND_ENV = "FTL_RESUME_COMMAND"


def resume_command() -> str:
    """'run the same command again', or what the process's launcher set in RESUME_COMMAND_ENV."""
    return os.environ.get(RESUME_COMMAND_ENV) or "run the same command again"


def request_stop(run_dir: Path, signum: int | None) -> None:
    """Ask the workers of the run in `run_dir` to checkpoint and stop (atomic write)."""
    request = RunLayout(run_dir).stop_request
    tmp = request.with_name(STOP_REQUEST_FILE + ".tmp")
    tmp.write_text(str(signum or ""))
    os.replace(tmp, request)


def clear_stop_request(run_dir: Path) -> None:
    RunLayout(run_dir).stop_request.unlink(missing_ok=True)


_noted_before_install: list[int] = []  # stop signals seen by note_stop_signals' handler


def note_stop_signals() -> None:
    """In a worker process, first thing: a stop signal that arrives before the run installs its
    StopFlag (while the process group forms, the model loads) is noted, and the StopFlag starts
    out requested; without this it was a KeyboardInterrupt traceback and a failed worker."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda signum, frame: _noted_before_install.append(signum))


class StopRequested(FtlError):
    """The run stopped at a step boundary after saving a checkpoint; resume continues it.
    Exit code 128 + the signal that asked for the stop, else EXIT_STOPPED."""

    def __init__(self, step: int, checkpoint: str, signum: int | None):
        self.step = step
        self.checkpoint = checkpoint  # "" when stopped before the first step of a new run: none exists
        self.signum = signum
        self.exit_code = 128 + signum if signum else EXIT_STOPPED
        if checkpoint:
            said = f"stopped at step {step}; checkpoint {checkpoint}; {resume_command()} to resume"
        else:
            said = f"stopped before the first step: nothing trained, nothing to save; {resume_command()} to start"
        super().__init__(said)


class StopFlag:
    def __init__(self, request_file: Path | None = None) -> None:
        self.request_file = request_file
        self.signum: int | None = None
        self.requested = False
        self._previous: dict[int, object] = {}
        # Fault injection for tests: behave as if a stop signal arrived after this many steps.
        stop_at = os.environ.get("FTL_FAULT_STOP_AT_STEP")
        self.stop_at_step = int(stop_at) if stop_at else None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread (e.g. not inside Ray actors' threads)
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        if _noted_before_install and not self.requested:
            self._handle(_noted_before_install[0], None)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def check_step(self, step: int) -> bool:
        if self.stop_at_step is not None and step >= self.stop_at_step:
            self.requested = True
        return self.check()

    def check(self) -> bool:
        """A signal seen, or the launcher's request file there (read once)."""
        if not self.requested and self.request_file is not None and self.request_file.exists():
            content = self.request_file.read_text().strip()
            self.signum = int(content) if content.isdigit() else None
            self.requested = True
            # INFO, for the rank's log: the launcher has already told the console it asked for the
            # stop, and a warning from every rank (on Ray, stderr reaches the console apart from
            # rank 0's stdout) could print after "stopped at step N".
            log.info("stop requested by the launcher (%s)", self.request_file)
        return self.requested

    def agreed(self, device: str, step: int | None = None) -> bool:
        """Whether any rank was asked to stop (a signal, the request file, or the fault point at
        `step`), the same answer on every rank: a rank alone stopping would hang the next
        collective. A rank stopping for a peer notes the request too, so its exit code and
        messages are a stopped run's."""
        from trainer.distributed import any_rank  # torch: not for the launcher, which imports this module

        asked = self.check_step(step) if step is not None else self.check()
        if any_rank(asked, device):
            self.requested = True
            return True
        return False

    def signal_number(self) -> int | None:
        """The signal the stop was asked with: this rank's own, else the launcher's request file's. A
        rank that stops because a peer saw the request first had not read the file (trial 63e: rank 0
        recorded no signal, and a Ctrl-C exited 3, not 130)."""
        if self.signum is None and self.request_file is not None:
            try:
                content = self.request_file.read_text().strip()
            except OSError:
                return None
            self.signum = int(content) if content.isdigit() else None
        return self.signum

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            log.warning("signal %d again: already stopping, finishing the checkpoint first", signum)
            return
        # Not a promise of a checkpoint: a peer that died took the step's collectives with it (trial 54a).
        log.warning(
            "signal %d: stopping after the current step, with a checkpoint if the other workers are there", signum
        )
        self.signum = signum
        self.requested = True
