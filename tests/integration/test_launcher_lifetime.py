"""What a run that ftl starts on this machine leaves open and leaves behind: every process it
starts listens on loopback only, and none outlives the `ftl` process when only that process is
SIGKILLed (no new checkpoint appears afterwards). Real runs with two workers on each backend
that starts its own processes."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import FTL, write_config
from trainer.run_layout import RunLayout

pytestmark = pytest.mark.integration

LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")
# Ray's node agents notice their raylet's death at once but exit only after their GCS client gives
# up (about 60 s); they train nothing and write nothing. Every other process must go promptly.
SLOW_TO_EXIT = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")
EXIT_WITHIN_S = 60


@pytest.mark.parametrize("backend", ["local", "torchrun", "ray"])
def test_a_run_listens_on_loopback_only_and_its_workers_die_with_the_launcher(
    backend: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    run_dir, go_on = tmp_path / "run", tmp_path / "go-on"
    config = write_config(
        tmp_path / "c.yaml",
        tiny_model_dir,
        run_dir,
        training={"max_steps": 6},
        checkpoint={"every_steps": 1},
        parallel={"strategy": "ddp"},
        cluster={"backend": backend, "workers": 2},
    )
    # Rank 0 holds right before it would commit step 2 (the rename) until the test says go on:
    # the kill lands at a known point, the one where a surviving worker would do the most harm.
    env = {**os.environ, "FTL_FAULT_WAIT_AT": f"before_rename@2={go_on}"}
    # A secret in the environment reaches Ray's workers without being written to Ray's session logs
    # (the runtime env, logged verbatim by its runtime_env_agent, carried HF_TOKEN; trial 30b).
    token = f"hf_{secrets.token_hex(16)}"
    env["HF_TOKEN"] = token
    env["WANDB_API_KEY"] = token  # a tracker's key travels the same way (trial 50a: it stayed behind)
    started_at = time.time()
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as err:
        launcher = subprocess.Popen(
            [*FTL, "train", str(config)], stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True
        )
    started: list[psutil.Process] = []
    try:
        _wait_for(lambda: (run_dir / "checkpoints" / "step-1").is_dir() or launcher.poll() is not None, timeout=400)
        assert launcher.poll() is None, stderr.read_text()[-3000:]
        started = psutil.Process(launcher.pid).children(recursive=True)
        exposed = [
            (p.name(), c.laddr)
            for p in [psutil.Process(launcher.pid), *started]
            for c in _listening(p)
            if c.laddr.ip not in LOOPBACK
        ]
        assert not exposed, f"listening beyond loopback: {exposed}"
        if backend == "ray":
            records = [json.loads(p.read_text()) for p in RunLayout(run_dir).ray_worker_records()]
            # By name only; the machine's own secrets (AWS_*) come along.
            assert len(records) == 2, records
            assert all({"HF_TOKEN", "WANDB_API_KEY"} <= set(r["secret_env"]) for r in records), records
            logged = [
                str(path)
                for path in Path(tempfile.gettempdir(), "ray").glob("session_*/logs/*")
                if path.is_file() and path.stat().st_mtime >= started_at and token.encode() in path.read_bytes()
            ]
            assert not logged, f"the secret is in Ray's logs: {logged}"

        os.kill(launcher.pid, signal.SIGKILL)  # the ftl process only, not its group
        launcher.wait()
        go_on.touch()  # a surviving rank 0 would now commit step 2
        prompt = [p for p in started if _name(p) not in SLOW_TO_EXIT]
        _wait_for(lambda: not _alive(prompt), timeout=EXIT_WITHIN_S, what=lambda: f"still running: {_alive(prompt)}")
        assert sorted(p.name for p in (run_dir / "checkpoints").glob("step-*")) == ["step-1"]
    finally:
        go_on.touch()
        for process in _alive(started):
            process.kill()  # only what this test's ftl started


def _listening(process: psutil.Process) -> list:  # type: ignore[type-arg]
    try:
        return [c for c in process.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    except psutil.NoSuchProcess:
        return []


def _name(process: psutil.Process) -> str:
    try:
        return process.name()
    except psutil.NoSuchProcess:
        return ""


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def _wait_for(condition, timeout: float, what=lambda: "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"condition not met within {timeout} s {what()}")
