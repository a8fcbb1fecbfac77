"""A worker dies with the `ftl` process that started it even with a process in between (a
forkserver, torchrun's agent), and knows at once when a process it is tied to has exited. Real
processes throughout."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from cluster.parent_death import LAUNCHER_VARIABLE, Ties

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the process ties are Linux's")
REPO = Path(__file__).resolve().parents[2]


def test_a_watched_process_counts_as_gone_as_soon_as_it_exits_not_when_reaped() -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    ties = Ties()
    ties.tie_to(sleeper.pid)
    try:
        assert not ties.orphaned()
        sleeper.kill()
        deadline = time.time() + 10
        while not ties.orphaned() and time.time() < deadline:
            time.sleep(0.01)
        assert ties.orphaned()
        assert psutil.Process(sleeper.pid).status() == psutil.STATUS_ZOMBIE  # not reaped yet
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_tie_to_the_parent_is_orphaned_once_the_parent_exits(tmp_path: Path) -> None:
    verdict = tmp_path / "verdict"
    child = f"""
        import os, time
        from cluster.parent_death import Ties
        ties = Ties(); ties.tie_to_parent()
        before = ties.orphaned()
        os.write(1, b"ready\\n")
        while os.getppid() == ties.parent:
            time.sleep(0.01)
        # Written whole, then renamed: the test waits for the name and read an empty file before.
        open({str(verdict)!r} + ".tmp", "w").write(f"{{before}} {{ties.orphaned()}}")
        os.replace({str(verdict)!r} + ".tmp", {str(verdict)!r})
    """
    parent = subprocess.Popen(
        [sys.executable, "-c", _spawn_and_wait_for(child)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None and parent.stdout.readline().strip() == "ready"
    parent.kill()
    parent.wait()
    _wait_until(verdict.exists)
    assert verdict.read_text() == "False True"


def test_a_worker_dies_with_its_launcher_even_while_the_process_between_them_lives(tmp_path: Path) -> None:
    # launcher -> middle (ties nothing, like a forkserver still unmapping its memory) -> worker
    worker = """
        import os, time
        from cluster.parent_death import die_with_launcher
        die_with_launcher()
        os.write(1, f"{os.getpid()}\\n".encode())
        time.sleep(120)
    """
    middle = f"""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", {textwrap.dedent(worker)!r}])
        time.sleep(120)
    """
    launcher = f"""
        import os, subprocess, sys, time
        os.environ[{LAUNCHER_VARIABLE!r}] = str(os.getpid())
        subprocess.Popen([sys.executable, "-c", {textwrap.dedent(middle)!r}])
        time.sleep(120)
    """
    started = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(launcher)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert started.stdout is not None
    worker_pid = int(started.stdout.readline())
    middle_process = psutil.Process(worker_pid).parent()
    assert middle_process is not None and middle_process.ppid() == started.pid
    try:
        started.kill()
        started.wait()
        _wait_until(lambda: not _running(worker_pid))
        assert middle_process.is_running()  # the worker did not wait for the process between
    finally:
        middle_process.kill()


def test_a_stale_launcher_pid_that_is_no_ancestor_ties_nothing(tmp_path: Path) -> None:
    stranger = subprocess.Popen(["sleep", "60"])
    worker = f"""
        import os, signal, time
        from cluster.parent_death import _ties, die_with_launcher
        die_with_launcher()
        os.kill({stranger.pid}, signal.SIGKILL)
        time.sleep(1)
        print("alive", _ties.orphaned())
    """
    try:
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(worker)],
            cwd=REPO,
            env={**os.environ, LAUNCHER_VARIABLE: str(stranger.pid)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.stdout.strip() == "alive False", done.stderr
    finally:
        stranger.kill()
        stranger.wait()


def _spawn_and_wait_for(child: str) -> str:
    """A parent that starts CHILD (inheriting stdout) and sleeps until it is killed."""
    return (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {textwrap.dedent(child)!r}])\n"
        "time.sleep(120)\n"
    )


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_until(condition, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "condition not met in time"
        time.sleep(0.05)
