"""Start local workers from one process that has already imported torch, transformers & co.

Each `python -m cluster.worker` pays the same 5-9 s of CPU importing torch, transformers, peft and
deepspeed before it does any work; on a laptop or a CI runner with few cores, N workers pay it N
times over, all at once. Here a single multiprocessing *forkserver* imports those modules once and
forks every worker from that state: the workers start in well under a second, with exactly the
same code and environment contract as a fresh `python -m MODULE ARGS` (RANK, WORLD_SIZE, ... in
`os.environ`, stdout/stderr to the same log file, `__main__` semantics, exit code).

Used on CPU-only Linux machines only: a forked process must not inherit an initialised CUDA
context, and importing bitsandbytes or DeepSpeed on a GPU machine may create one. On GPU machines
each worker's import is negligible next to the run, and workers start as fresh processes.

Dying with the launcher: the forkserver gets SIGKILL when the launcher exits, however it exits
(cluster/forkserver_tie.py, its first preloaded module), and each worker, whose parent is the
forkserver, gets SIGKILL when the forkserver goes (cluster/worker.py calls die_with_parent).
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import socket
import subprocess
import sys
from collections.abc import Sequence
from multiprocessing.context import BaseContext
from pathlib import Path

from cluster.loopback import LISTENER_FD_VARIABLE

_context: BaseContext | None = None


def preloading_available() -> bool:
    return sys.platform.startswith("linux") and "forkserver" in multiprocessing.get_all_start_methods()


def _forkserver(preload: Sequence[str]) -> BaseContext:
    """The forkserver context; the preload list counts only before its first start (one per process)."""
    global _context
    if _context is None:
        from cluster.forkserver_tie import PARENT_VARIABLE

        # The forkserver starts with this environment: its first import ties it to this process.
        os.environ[PARENT_VARIABLE] = str(os.getpid())
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(["cluster.forkserver_tie", *preload])
    return _context


class PreloadedWorker:
    """A forked `python -m MODULE ARGS` with the part of subprocess.Popen's interface the local
    backend uses (poll, wait, send_signal, terminate, kill, pid, returncode)."""

    def __init__(
        self,
        module: str,
        args: list[str],
        env: dict[str, str],
        log: Path | None,
        preload: Sequence[str],
        listener: socket.socket | None = None,
    ) -> None:
        # multiprocessing hands a socket argument's descriptor to the forked process (SCM_RIGHTS).
        self._process = _forkserver(preload).Process(  # type: ignore[attr-defined]
            target=run_module_as_main,
            args=(module, list(args), dict(env), None if log is None else str(log), listener),
            name=f"{module}-rank{env.get('RANK', '?')}",
            daemon=False,
        )
        self._process.start()
        self.pid: int = self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(f"worker pid {self.pid}", timeout or 0)
        return int(self._process.exitcode)

    def send_signal(self, signum: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self._process.terminate()

    def kill(self) -> None:
        self._process.kill()


def run_module_as_main(
    module: str, args: list[str], env: dict[str, str], log: str | None, listener: socket.socket | None = None
) -> None:
    """In the forked worker: become `python -m MODULE ARGS` with ENV, output to LOG (or the
    launcher's terminal, which the forkserver inherited), with the rendezvous `listener` the
    launcher bound, if any, named in LISTENER_FD_VARIABLE as a subprocess's would be."""
    os.environ.clear()
    os.environ.update(env)
    if listener is not None:
        os.environ[LISTENER_FD_VARIABLE] = str(listener.detach())
    if log is not None:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    if env.get("PYTHONUNBUFFERED"):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    _apply_thread_count(env)
    sys.argv = [module, *args]
    sys.modules.pop(module, None)  # `-m` runs the module's code afresh as __main__
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        # multiprocessing ends its children with os._exit: run what `python -m` would run at exit
        # (logging's flush and close, trackers' finish) ourselves.
        atexit._run_exitfuncs()


def _apply_thread_count(env: dict[str, str]) -> None:
    """torch read OMP_NUM_THREADS when the forkserver imported it, before this worker's share of
    the cores was known: set it now, as a fresh process would have."""
    threads = env.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0 and "torch" in sys.modules:
        import torch

        torch.set_num_threads(int(threads))
