"""The local Ray's daemons live in a process group of their own, led by a keeper (real processes):
a signal to the launcher's group does not reach them, and they die with the launcher however it
dies, their own children and SIGTERM-ignoring ones included."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the daemons' own group is Linux-only")

# A stand-in for ftl: it starts the keeper, then three "daemons" through the same after-fork step
# Ray's daemons get (join_in_child), prints who is where, and waits. It survives a SIGTERM (as ftl
# does: a stop request) and says so on stdout.
LAUNCHER = textwrap.dedent(
    """
    import json, os, signal, subprocess, sys, time
    from cluster.ray_daemon_group import start_daemon_group

    group = start_daemon_group()
    signal.signal(signal.SIGTERM, lambda *_: print("TERM", flush=True))
    daemons = [
        subprocess.Popen(["sleep", "600"], preexec_fn=group.join_in_child),
        subprocess.Popen(["bash", "-c", "trap '' TERM; exec sleep 601"], preexec_fn=group.join_in_child),
        # a daemon's own child (as the raylet's agents are): it inherits the group
        subprocess.Popen(["bash", "-c", "sleep 602 & wait"], preexec_fn=group.join_in_child),
    ]
    time.sleep(0.5)
    print(json.dumps({"keeper": group.process.pid, "daemons": [p.pid for p in daemons]}), flush=True)
    if sys.argv[1] == "release":
        group.release()
        print(json.dumps({"keeper_exit": group.process.returncode}), flush=True)
    else:
        time.sleep(600)
    """
)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _group_members(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _alive(int(entry.name)):
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    found.append(int(entry.name))
            except ProcessLookupError:
                pass
    return found


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while [p for p in pids if _alive(p)] and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def _start(mode: str) -> tuple[subprocess.Popen, dict]:
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, mode],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group, as a terminal or systemd gives ftl
    )
    assert launcher.stdout is not None
    return launcher, json.loads(launcher.stdout.readline())


def test_a_signal_to_the_launchers_group_misses_the_daemons_and_a_kill_9_ends_them_all() -> None:
    launcher, seen = _start("wait")
    keeper, daemons = seen["keeper"], seen["daemons"]
    try:
        assert os.getpgid(keeper) == keeper != os.getpgid(launcher.pid)
        members = _group_members(keeper)
        assert set(daemons) <= set(members) and len(members) >= len(daemons) + 2  # + keeper + grandchild
        os.killpg(launcher.pid, signal.SIGTERM)  # systemd / tmux kill-session
        assert launcher.stdout.readline().strip() == "TERM"
        time.sleep(0.5)
        assert all(_alive(p) for p in members), "a daemon died of the SIGTERM to the launcher's group"
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()
        # keeper: SIGTERM to its group, 1 s grace, SIGKILL for the daemon that ignores SIGTERM
        assert _wait_gone(members, 15) == [], "processes of the daemons' group outlived the launcher"
    finally:
        for pid in _group_members(keeper):
            os.kill(pid, signal.SIGKILL)
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)


def test_release_ends_what_is_left_of_the_group_and_the_keeper() -> None:
    launcher, seen = _start("release")
    members = _group_members(seen["keeper"])
    try:
        assert json.loads(launcher.stdout.readline()) == {"keeper_exit": -signal.SIGKILL}  # ended with its group
        assert _wait_gone(members, 15) == []
        assert launcher.wait(timeout=30) == 0
    finally:
        for pid in _group_members(seen["keeper"]):
            os.kill(pid, signal.SIGKILL)
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
