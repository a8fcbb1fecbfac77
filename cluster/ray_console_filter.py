"""Ray Train's harmless "Failed to send resource request" warning, off the console (and its
placement timeouts' tracebacks, which ftl says in a line of its own).

Ray Train's controller registers the run with Ray's autoscaling coordinator, an actor it creates on
first use, and gives the call 5 s. On a loaded machine starting that actor takes longer: the
controller logs a warning that says "it's safe to ignore this error" followed by a 20-line
GetTimeoutError traceback, and the run goes on unharmed (trial 33a: a new user read it as the run
failing). The warning arrives through Ray's worker-log forwarding (log_to_driver), which has no
filter of its own, so the handler that prints forwarded lines is wrapped: the warning and its
traceback become one line, said once per launch. Everything else is printed as Ray prints it.

The same wrapper turns the dump of a Ray process that aborted on abseil's "Mutex corrupt" check
(Ray's own C++ code, seen under load on a 2-core machine: trial 36a, the run went on unharmed) into
one line: ~15 lines of "*** SIGABRT received", "Fatal Python error: Aborted" and "Extension
modules" read as the run crashing. A worker that dies of it fails the run, which says so itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

PRINT_HANDLER = "ray_print_logs"  # the name ray._private.worker registers its printer under
TRANSIENT_WARNINGS = ("Failed to send resource request for train-", "Failed to cancel resource request for train-")
TRACEBACK_LIMIT = 80  # lines skipped at most after the warning, should its traceback never end
SAID = (
    "ftl: Ray's autoscaling coordinator answered slowly (a busy machine); Ray says this is harmless, "
    "and the run goes on"
)


# Ray Train's controller logs each worker group it could not place in time with a 30-line
# traceback (trial 59b: one every 60 s, for ever); cluster/ray_stop_waiting.py says it in one line.
PLACEMENT_TIMEOUT = "Error in control loop iteration: The worker group startup timed out"

MUTEX_ABORT = "Mutex corrupt"  # abseil's check in Ray's C++ core (the dump's first line)
# The lines of a fatal-signal dump (abseil's, then Python's faulthandler) after its first line.
_DUMP_STARTS: tuple[str, ...] = ("*** SIG", "PC: @", "@ ", "Fatal Python error", "Thread 0x", "Current thread")
_DUMP_STARTS += ("Stack (most recent", "Extension modules", 'File "', "[mutex.cc", "[failure_signal_handler")
DUMP_LIMIT = 400


def mutex_abort_said(pid: Any) -> str:
    return (
        f"ftl: a Ray process (pid {pid}) aborted in Ray's own code ('Mutex corrupt', a Ray fault under load); "
        "its dump is in Ray's session logs. The run goes on; if a worker was lost, the error below says so"
    )


class TransientWarningFilter:
    """Drops the warning and the traceback that follows it, per worker process. The traceback
    must start on the next line ("Traceback ..."), or nothing more is dropped; it ends with its
    exception line, the first line that is not indented and not part of a chained traceback."""

    def __init__(self) -> None:
        self._skipping: dict[Any, int] = {}  # pid -> lines skipped so far since the warning
        self._dumping: dict[Any, int] = {}  # pid -> lines of an abort dump skipped so far
        self.said = False

    def lines(self, pid: Any, lines: list[str]) -> list[str]:
        kept = []
        for line in lines:
            if MUTEX_ABORT in line:
                if pid not in self._dumping:
                    kept.append(mutex_abort_said(pid))
                self._dumping[pid] = 0
                continue
            dumped = self._dumping.get(pid)
            if dumped is not None:
                if dumped < DUMP_LIMIT and (
                    not line.strip() or line.lstrip().startswith(_DUMP_STARTS) or "*** SIGABRT" in line
                ):
                    self._dumping[pid] = dumped + 1
                    continue
                del self._dumping[pid]  # the dump ended: the process's other lines are its own
            if any(warning in line for warning in TRANSIENT_WARNINGS):
                self._skipping[pid] = 0
                if not self.said:
                    self.said = True
                    kept.append(SAID)
                continue
            if line.startswith(PLACEMENT_TIMEOUT):  # ftl's failure policy says it in one line
                self._skipping[pid] = 0
                continue
            skipped = self._skipping.get(pid)
            if skipped is None:
                kept.append(line)
                continue
            if skipped == 0 and not line.startswith("Traceback"):  # a warning without its traceback
                del self._skipping[pid]
                kept.append(line)
                continue
            self._skipping[pid] = skipped + 1
            if not _in_traceback(line) or skipped + 1 >= TRACEBACK_LIMIT:
                del self._skipping[pid]  # its exception line (ray.exceptions.GetTimeoutError: ...)
        return kept


def _in_traceback(line: str) -> bool:
    return (
        not line.strip()
        or line[0].isspace()
        or line.startswith(("Traceback", "During handling", "The above exception"))
    )


def quiet_transient_ray_warnings() -> bool:
    """Wrap the printer of forwarded worker logs (after ray.init); False where this Ray has none
    by that name (log_to_driver off, or another Ray release): then nothing changes."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return False
    lock = getattr(dispatcher, "_lock", None)
    if lock is None or not isinstance(getattr(dispatcher, "handlers", None), list):
        return False
    with lock:
        handlers = dispatcher.handlers
        for index, (name, handler) in enumerate(handlers):
            if name == PRINT_HANDLER and not isinstance(handler, _Filtered):
                dispatcher.handlers = [*handlers[:index], (name, _Filtered(handler)), *handlers[index + 1 :]]
                return True
    return False


class _Filtered:
    def __init__(self, printer: Callable[[dict[str, Any]], None]) -> None:
        self.printer = printer
        self.filter = TransientWarningFilter()

    def __call__(self, data: dict[str, Any]) -> None:
        lines = data.get("lines")
        if isinstance(lines, list):
            kept = self.filter.lines(data.get("pid"), lines)
            if not kept:
                return
            data = {**data, "lines": kept}
        self.printer(data)
