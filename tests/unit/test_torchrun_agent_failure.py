"""Which failed worker the torchrun agent names: the one killed by a signal, not the rank that
exited 1 because its peer was gone. torch's "first failure" is the earliest timestamp, and the
surviving rank's error file was stamped before the agent noticed the killed one (a CI run said
"worker rank 0 failed with exit code 1" and exited 1 for a kill -9 of rank 1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from cluster.torchrun_agent import _root_failure
from tests.conftest import REPO


def _failure(rank: int, exitcode: int, timestamp: int) -> ProcessFailure:
    failure = ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=exitcode, error_file="")
    failure.timestamp = timestamp
    return failure


def test_a_killed_worker_is_named_before_the_rank_that_failed_because_of_it() -> None:
    failures = {0: _failure(0, 1, timestamp=100), 1: _failure(1, -9, timestamp=101)}
    error = ChildFailedError("worker", failures)
    assert error.get_first_failure()[0] == 0  # torch's choice: the earliest stamp
    rank, failure = _root_failure(error.failures)
    assert (rank, failure.exitcode) == (1, -9)


def test_without_a_killed_worker_the_first_failure_is_named() -> None:
    failures = {0: _failure(0, 2, timestamp=105), 1: _failure(1, 1, timestamp=101)}
    assert _root_failure(ChildFailedError("worker", failures).failures)[0] == 1


def test_the_agents_store_shutdown_after_a_run_prints_no_cpp_stack(tmp_path: Path) -> None:
    """Trial 51b: at the end of a good two-node run, the agent whose rendezvous shutdown found the
    store's host gone printed torch's C++ warning with a 30-frame stack. The agent loads torch with
    its C++ warnings off; the environment its workers get is left as it was."""
    script = tmp_path / "store.py"
    script.write_text(
        "import datetime, gc, os, sys\n"
        "if sys.argv[1] == 'agent':\n"
        "    from cluster.torchrun_agent import _quiet_store_shutdown\n"
        "    _quiet_store_shutdown()\n"
        "    assert 'TORCH_CPP_LOG_LEVEL' not in os.environ\n"
        "import torch.distributed as dist\n"
        "server = dist.TCPStore('127.0.0.1', 0, 2, True, wait_for_workers=False)\n"
        "client = dist.TCPStore('127.0.0.1', server.port, 2, False, timeout=datetime.timedelta(seconds=5))\n"
        "client.set('a', '1')\n"
        "del server\n"
        "gc.collect()\n"
        "try:\n"
        "    client.compare_set('a', '1', '2')\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TORCH_CPP_LOG_LEVEL"}
    plain = subprocess.run([sys.executable, str(script), "plain"], capture_output=True, text=True, cwd=REPO, env=env)
    assert "frame #" in plain.stderr, plain.stderr[-2000:]  # torch's own behaviour, which the agent hides
    agent = subprocess.run([sys.executable, str(script), "agent"], capture_output=True, text=True, cwd=REPO, env=env)
    assert agent.returncode == 0 and "DistNetworkError" in agent.stdout, agent.stderr[-2000:]
    assert "frame #" not in agent.stderr, agent.stderr[-2000:]


def test_torchs_lines_around_a_worker_failure_that_ftl_says_itself_are_dropped() -> None:
    """Trial 54a: a kill -9 of a worker printed torch's `W... Sending process N closing signal
    SIGTERM` and `E... failed (exitcode: -9) local_rank: 1 ...` beside ftl's own line naming the
    worker, its signal and the restart. Other lines of that logger stay."""
    import logging

    from cluster.torchrun_agent import _quiet_what_ftl_says

    logger = logging.getLogger("torch.distributed.elastic.multiprocessing.api")
    _quiet_what_ftl_says()
    kept: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            kept.append(record.getMessage())

    handler = Keep()
    logger.addHandler(handler)
    try:
        logger.warning("Sending process %s closing signal %s", 15974, "SIGTERM")
        logger.error("failed (exitcode: %s) local_rank: %s (pid: %s) of binary: %s", -9, 1, 15975, "python")
        logger.warning("Unable to shutdown process %s via %s, forcefully exiting via %s", 1, "SIGTERM", "SIGKILL")
    finally:
        logger.removeHandler(handler)
        logger.filters.clear()
    assert kept == ["Unable to shutdown process 1 via SIGTERM, forcefully exiting via SIGKILL"]
