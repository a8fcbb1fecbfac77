"""A launcher that does not own its workers' processes directly (Ray, torchrun agents, srun)
turns stop signals into a stop request in the run directory; every worker sees it at its next
step boundary, checkpoints and exits cleanly, wherever it runs.

Ctrl-C behaves as on the local backend: the first asks for the checkpoint; a second while it is
being written is logged and ignored (finishing the save loses less work than abandoning it); a
third force-quits, after saying so, for a user who would rather lose the step than wait.
"""

from __future__ import annotations

import _thread
import contextlib
import select
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cluster.stderr_gone import say_to_stderr
from trainer.stopping import STOP_SIGNALS, request_stop

FORCE_QUIT_AFTER = 3  # Ctrl-C presses


@contextlib.contextmanager
def signals_request_stop(
    run_dir: Path,
    force_quit: Callable[[], None] | None = None,
    on_request: Callable[[], None] | None = None,
    first_notice: Callable[[int], str | None] | None = None,
    while_none_run: str = "",
) -> Iterator[None]:
    """Ctrl-C / SIGTERM / SIGUSR1 ask the workers to checkpoint and stop (and call `on_request`).
    Further signals are logged and ignored, except a third Ctrl-C: it calls `force_quit` (or
    raises KeyboardInterrupt), abandoning the checkpoint in progress. `first_notice(signum)` may
    replace the first signal's notice (None keeps it): a Slurm job still waiting in the queue has
    no workers to checkpoint. `while_none_run`: said after the notice, what happens when no worker
    runs yet (Ray still placing them)."""
    interrupts = 0
    requested = False
    quitting = False

    def handle(signum: int) -> None:
        nonlocal interrupts, requested, quitting
        if quitting:
            return
        if signum == signal.SIGINT:
            interrupts += 1
        if not requested:
            requested = True
            notice = first_notice(signum) if first_notice is not None else None
            request_stop(run_dir, signum)  # first: the notice below may fail to print
            _say(
                notice
                # Before the first step (model loading, the base evaluation, DPO's reference scoring) there
                # is nothing to save (trial 63e: the notice promised a checkpoint there).
                or f"{signal_name(signum)}: workers will checkpoint and stop after the current step"
                " (before the first step: stop, nothing to save)"
                + (" (a third Ctrl-C force-quits without that checkpoint)" if signum == signal.SIGINT else "")
                + (f"; {while_none_run}" if while_none_run else "")
            )
            if on_request is not None:
                on_request()
            return
        if interrupts >= FORCE_QUIT_AFTER:
            quitting = True
            _say(f"third Ctrl-C: force-quitting; {_where_it_resumes(run_dir)}")
            if force_quit is None:
                raise KeyboardInterrupt
            force_quit()
            return
        _say(
            f"{signal_name(signum)} again: already stopping, finishing the checkpoint first (then MLflow/W&B's last "
            "records, at most 15 s)"
            + (
                " (a third Ctrl-C force-quits, keeping the checkpoints already committed)"
                if signum == signal.SIGINT
                else ""
            )
        )

    with _each_signal_promptly(handle):
        yield


@contextlib.contextmanager
def _each_signal_promptly(handle: Callable[[int], None]) -> Iterator[None]:
    """Call `handle(signum)` for every stop signal, at once. Python runs its signal handlers in the
    main thread between bytecodes, and one handler run stands for all the signals of a kind that
    came meanwhile: with the main thread blocked in C++ (Ray Train's fit() waits in Ray's core
    worker, which looks for signals about once a second), a stop reached the workers 1-2 s late
    and three quick Ctrl-Cs counted as one or two. So the C-level handler's wakeup fd (one byte per
    signal, written by whichever thread the kernel picked) is read by a thread of ours that runs
    `handle`. A KeyboardInterrupt it raises is passed to the main thread. Where the wakeup fd is
    taken (an asyncio loop in this thread), the handlers run in the main thread as before."""
    previous: dict[int, Any] = {}
    interrupt_main = threading.Event()

    def in_main_thread(signum: int, frame: object) -> None:
        if interrupt_main.is_set():
            interrupt_main.clear()
            raise KeyboardInterrupt

    for signum in STOP_SIGNALS:
        previous[signum] = signal.signal(signum, in_main_thread)
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    old_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    if old_fd != -1:  # somebody else's: leave it, and handle in the main thread
        signal.set_wakeup_fd(old_fd)
        reader.close()
        writer.close()

        def handled_in_main_thread(signum: int, frame: object) -> None:
            handle(signum)

        for signum in STOP_SIGNALS:
            signal.signal(signum, handled_in_main_thread)
        try:
            yield
        finally:
            _restore(previous)
        return

    done = threading.Event()

    def read_signals() -> None:
        while not done.is_set():
            ready, _, _ = select.select([reader], [], [], 0.2)
            if not ready:
                continue
            for signum in reader.recv(64):
                if signum not in STOP_SIGNALS:
                    continue
                try:
                    handle(signum)
                except KeyboardInterrupt:
                    interrupt_main.set()
                    _thread.interrupt_main()

    thread = threading.Thread(target=read_signals, name="ftl-stop-signals", daemon=True)
    thread.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(-1)
        done.set()
        thread.join()
        reader.close()
        writer.close()
        _restore(previous)


def _restore(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _where_it_resumes(run_dir: Path) -> str:
    """Said at a force-quit: the stop's checkpoint may be committed already, or still in progress."""
    from trainer.checkpointing.protocol import committed_checkpoints

    found = committed_checkpoints(run_dir)
    if not found:
        return "no checkpoint is committed yet (one in progress is abandoned): the rerun starts over"
    newest = found[-1]
    return (
        f"the rerun resumes from {newest.parent.name}/{newest.name}, the newest committed checkpoint "
        "(one still being written is abandoned)"
    )


def _say(message: str) -> None:
    # A reader of ftl's output that has gone (`ftl train ... | head`) must not cost the stop: the
    # notice raised BrokenPipeError in the handler, before the request was written, and every later
    # Ctrl-C or SIGTERM was lost with it (trial 64a).
    say_to_stderr(f"ftl: {message}\n")


def signal_name(signum: int) -> str:
    """'Ctrl-C (SIGINT)', 'SIGTERM': said as people know them (trial 51a: "signal 2")."""
    try:
        name = signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
    return "Ctrl-C (SIGINT)" if signum == signal.SIGINT else name
