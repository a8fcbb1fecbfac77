"""The run directory lock's policy (cluster/run_lock.py): who holds it, when it is stale, who may
take it over. Holders on other hosts and Slurm states are fakes written into the lock file; local
holders are real processes. The runs that take it for real are in tests/integration/test_run_dir.py."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster import run_lock
from cluster.run_lock import LOCK_FILE, RunDirLocked, RunLock, hand_over_to_slurm_job, read_holder


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _fake_holder(run_dir: Path, **fields: object) -> None:
    now = time.time()
    holder = {
        "token": "fake",
        "purpose": "ftl train",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": now - 60,
        "heartbeat": now,
        **fields,
    }
    (run_dir / LOCK_FILE).write_text(json.dumps(holder))


def test_a_second_acquire_is_refused_naming_the_holder_and_release_frees_it(tmp_path: Path) -> None:
    with RunLock.acquire(tmp_path, "ftl train"):
        with pytest.raises(RunDirLocked) as refused:
            RunLock.acquire(tmp_path, "ftl train")
        message = str(refused.value)
        assert f"host {socket.gethostname()}, pid {os.getpid()}" in message and "since" in message
        assert "Ctrl-C" in message and "another output.dir" in message
        # An export waits for the run; another output.dir is no answer for it (trial 62b).
        with pytest.raises(RunDirLocked) as refused:
            RunLock.acquire(tmp_path, "ftl export")
        message = str(refused.value)
        assert message.startswith(f"{tmp_path} is in use by a run: ftl train") and "output.dir" not in message
        assert "Export once that run has ended, or stop it (Ctrl-C in its terminal" in message, message
    with RunLock.acquire(tmp_path, "ftl export"):
        with pytest.raises(RunDirLocked, match="is being exported by another ftl export: ftl export on host"):
            RunLock.acquire(tmp_path, "ftl export")
    assert not (tmp_path / LOCK_FILE).exists()
    RunLock.acquire(tmp_path, "ftl train").release()


def test_the_heartbeat_is_refreshed_while_held(tmp_path: Path) -> None:
    with RunLock.acquire(tmp_path, "ftl train", heartbeat_s=0.1):
        first = read_holder(tmp_path / LOCK_FILE).heartbeat
        deadline = time.time() + 60
        while read_holder(tmp_path / LOCK_FILE).heartbeat == first and time.time() < deadline:
            time.sleep(0.05)
        assert read_holder(tmp_path / LOCK_FILE).heartbeat > first


def test_a_dead_holder_on_this_host_is_taken_over_and_said_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pid = _dead_pid()
    _fake_holder(tmp_path, pid=pid)
    with RunLock.acquire(tmp_path, "ftl train") as lock:
        assert lock.owned and read_holder(tmp_path / LOCK_FILE).pid == os.getpid()
    err = capsys.readouterr().err
    assert (
        "taking over the lock" in err
        and f"pid {pid}" in err
        and f"process {pid} on {socket.gethostname()} is gone" in err
    )


def test_a_reused_pid_is_not_the_holder(tmp_path: Path) -> None:
    # This process's pid, but another start time: the holder was an earlier process with this pid.
    _fake_holder(tmp_path, pid=os.getpid(), pid_start="1")
    RunLock.acquire(tmp_path, "ftl train").release()


def test_another_host_holds_until_its_heartbeat_is_old(tmp_path: Path) -> None:
    _fake_holder(tmp_path, host="other-node", pid=1, heartbeat=time.time() - 30)
    with pytest.raises(RunDirLocked, match="other-node, pid 1"):
        RunLock.acquire(tmp_path, "ftl train", stale_after_s=120)
    _fake_holder(tmp_path, host="other-node", pid=1, heartbeat=time.time() - 300)
    RunLock.acquire(tmp_path, "ftl train", stale_after_s=120).release()


def test_only_its_own_lock_is_released(tmp_path: Path) -> None:
    lock = RunLock.acquire(tmp_path, "ftl train")
    _fake_holder(tmp_path, token="someone-else")  # taken over while this process stalled
    lock.release()
    assert read_holder(tmp_path / LOCK_FILE).token == "someone-else"


def _race(run_dir: str, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    try:
        lock = RunLock.acquire(Path(run_dir), "ftl train")
    except RunDirLocked:
        results.put("refused")
        return
    results.put("took")
    time.sleep(3)  # hold it while the others look
    lock.release()


def test_of_processes_racing_for_a_stale_lock_exactly_one_wins(tmp_path: Path) -> None:
    _fake_holder(tmp_path, pid=_dead_pid())
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    procs = [context.Process(target=_race, args=(str(tmp_path), results)) for _ in range(4)]
    for proc in procs:
        proc.start()
    outcomes = sorted(results.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
    assert outcomes == ["refused", "refused", "refused", "took"]
    assert not (tmp_path / LOCK_FILE).exists() and not list(tmp_path.iterdir())  # no stale copies left behind


def test_the_launchers_of_one_multi_node_launch_share_it(tmp_path: Path) -> None:
    with RunLock.acquire(tmp_path, "ftl train", group="torchrun h:29400 run") as holder:
        member = RunLock.acquire(tmp_path, "ftl train", group="torchrun h:29400 run")
        assert holder.owned and not member.owned
        member.release()
        assert (tmp_path / LOCK_FILE).exists()  # a member leaves the holder's lock alone
        with pytest.raises(RunDirLocked):
            RunLock.acquire(tmp_path, "ftl train", group="torchrun h:29400 another-run")


def test_slurm_handover_then_the_job_and_its_requeue_take_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    submitter = RunLock.acquire(tmp_path, "ftl slurm")
    hand_over_to_slurm_job(tmp_path, "4242")
    submitter.release()  # the submitter's exit leaves the job's reservation in place
    reserved = read_holder(tmp_path / LOCK_FILE)
    assert reserved.slurm_job == "4242" and reserved.pid is None
    # Anyone else: refused while Slurm still has the job, taken over once it ended.
    monkeypatch.setattr(run_lock, "_slurm_job_state", lambda job: "ACTIVE")
    with pytest.raises(RunDirLocked, match="Slurm job 4242"):
        RunLock.acquire(tmp_path, "ftl train")
    # The job itself takes it when it starts, on any node; a requeued start of the same job takes
    # it back from its predecessor (here: a start on another node whose heartbeat is fresh).
    job = RunLock.acquire(tmp_path, "Slurm job 4242", slurm_job="4242")
    assert job.owned and read_holder(tmp_path / LOCK_FILE).pid == os.getpid()
    with pytest.raises(RunDirLocked) as refused:  # while the job runs: named once, stopped as Slurm stops it
        RunLock.acquire(tmp_path, "ftl train")
    assert str(refused.value).count("4242") == 2 and "scancel 4242" in str(refused.value), str(refused.value)
    assert "Ctrl-C" not in str(refused.value)
    job.release()
    _fake_holder(tmp_path, host="n2", pid=77, slurm_job="4242")
    RunLock.acquire(tmp_path, "Slurm job 4242", slurm_job="4242").release()
    monkeypatch.setattr(run_lock, "_slurm_job_state", lambda job: "CANCELLED")
    _fake_holder(tmp_path, host="login", pid=None, slurm_job="4243")
    RunLock.acquire(tmp_path, "ftl train").release()


def test_an_unreadable_lock_file_is_judged_by_its_age(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_lock, "READ_RETRIES", 1)
    (tmp_path / LOCK_FILE).write_text("")  # its creator died between creating and writing it
    with pytest.raises(RunDirLocked, match="unreadable"):
        RunLock.acquire(tmp_path, "ftl train", stale_after_s=120)
    os.utime(tmp_path / LOCK_FILE, (time.time() - 600, time.time() - 600))
    RunLock.acquire(tmp_path, "ftl train", stale_after_s=120).release()
