"""`ftl submit/status/logs/stop` end in one `error:` line: a job server whose job agent never
comes up (was RuntimeError's traceback after two minutes of retries), and a Slurm job id given
to the Ray Jobs verbs (says where Slurm's own commands are)."""

from __future__ import annotations

import os
import subprocess

import pytest

from cluster import ray_jobs
from tests.conftest import FTL, REPO


class _AgentlessServer:
    def __init__(self, answer: str):
        self.answer, self.tries = answer, 0

    def submit_job(self, **kwargs: object) -> str:
        self.tries += 1
        raise RuntimeError(self.answer)


@pytest.mark.parametrize(
    "answer,said",
    [
        ("Request failed with status code 500: No available agent to submit job", "has no job agent after 0 s"),
        ("Request failed with status code 400: bad runtime_env", "refused the job: Request failed"),
    ],
)
def test_a_job_server_that_cannot_take_the_job_is_one_error(
    monkeypatch: pytest.MonkeyPatch, answer: str, said: str
) -> None:
    server = _AgentlessServer(answer)
    monkeypatch.setattr(ray_jobs, "client", lambda address: server)
    monkeypatch.setattr(ray_jobs, "AGENT_WAIT_S", 0)
    with pytest.raises(ray_jobs.JobError, match=said):
        ray_jobs.submit("model: {}", "run", "http://127.0.0.1:8265")
    assert server.tries >= 1


def test_a_head_whose_job_agent_is_late_is_waited_for_aloud_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wait for a just-started head's job agent (up to AGENT_WAIT_S) was silent: it looked hung."""

    class _LateAgent(_AgentlessServer):
        def submit_job(self, **kwargs: object) -> str:
            if self.tries < 3:
                super().submit_job(**kwargs)
            return "job-1"

    server, said = _LateAgent("Request failed with status code 500: No available agent to submit job"), []
    monkeypatch.setattr(ray_jobs, "client", lambda address: server)
    monkeypatch.setattr(ray_jobs.time, "sleep", lambda s: None)
    assert ray_jobs.submit("model: {}", "run", "http://127.0.0.1:8265", say=said.append) == "job-1"
    assert said == [
        f"waiting up to {ray_jobs.AGENT_WAIT_S} s for the job agent of the Ray head at http://127.0.0.1:8265 "
        "(a head that just started brings it up within seconds)"
    ]


def test_a_slurm_job_id_given_to_the_ray_jobs_verbs_says_where_slurms_commands_are() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    out = subprocess.run([*FTL, "status", "172"], cwd=REPO, capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2 and "172 looks like a Slurm job id" in out.stderr and "scancel 172" in out.stderr
    assert out.stderr.startswith("error: 172 looks like a Slurm job id"), out.stderr  # first (trial 64a)
    named = subprocess.run([*FTL, "status", "ftl-run-1"], cwd=REPO, capture_output=True, text=True, env=env)
    assert named.returncode == 2 and "Slurm" not in named.stderr

    run_dir = subprocess.run([*FTL, "logs", str(REPO / "assets")], cwd=REPO, capture_output=True, text=True, env=env)
    assert run_dir.returncode == 2 and "is a directory, not a Ray Job id" in run_dir.stderr, run_dir.stderr
    assert "ftl runs " in run_dir.stderr


class _VanishingServer:
    """A job server that answers twice, then is gone (its head killed while a job is followed)."""

    def __init__(self) -> None:
        self.calls = 0

    def get_job_logs(self, job_id: str) -> str:
        import requests

        self.calls += 1
        if self.calls > 2:
            raise requests.exceptions.ConnectionError("Connection refused")
        return "step 1\n"

    def get_job_status(self, job_id: str) -> object:
        return type("Status", (), {"value": "RUNNING"})()


def test_losing_the_head_while_following_is_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray_jobs, "client", lambda address: _VanishingServer())
    monkeypatch.setattr(ray_jobs.time, "sleep", lambda seconds: None)
    written: list[str] = []
    with pytest.raises(ray_jobs.JobError, match="lost the Ray job server at http://127.0.0.1:8265 while following j"):
        ray_jobs.follow("j", "127.0.0.1:8265", written.append)
    assert written == ["step 1\n"]


def test_a_followed_job_ends_with_the_exit_code_ftl_train_would_have() -> None:
    assert ray_jobs.exit_code("SUCCEEDED", "") == 0
    assert ray_jobs.exit_code("STOPPED", "Job was intentionally stopped.") == 3
    assert ray_jobs.exit_code("FAILED", "Job entrypoint command failed with exit code 2, last available logs") == 2
    assert ray_jobs.exit_code("FAILED", "Job entrypoint command failed with exit code 1") == 1


def test_job_ids_of_one_run_submitted_within_a_second_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    submitted: list[str] = []

    class Server:
        def submit_job(self, **kwargs: object) -> str:
            submitted.append(str(kwargs["submission_id"]))
            env = kwargs["runtime_env"]["env_vars"]  # type: ignore[index]
            assert env[ray_jobs.JOB_ID_ENV] == kwargs["submission_id"]  # the job's lock names the job
            return submitted[-1]

    monkeypatch.setattr(ray_jobs, "client", lambda address: Server())
    monkeypatch.setattr(ray_jobs.time, "strftime", lambda fmt: "20261204-120000")
    ray_jobs.submit("model: {}", "run", "http://127.0.0.1:8265")
    ray_jobs.submit("model: {}", "run", "http://127.0.0.1:8265")
    assert len(set(submitted)) == 2 and all(job.startswith("ftl-run-20261204-120000-") for job in submitted)


def test_a_head_on_this_machine_runs_this_python() -> None:
    import sys

    from launcher.ray_jobs_commands import _default_python

    assert _default_python("http://127.0.0.1:8265") == sys.executable
    assert _default_python("localhost:8265") == sys.executable
    assert _default_python("http://head.cluster:8265") == "python"


def test_a_submitted_job_gets_the_users_ray_train_settings_and_no_other_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")  # e.g. to go without the watcher
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-the-job")
    env = ray_jobs.runtime_env("model: {}\n", job_id="ftl-1")["env_vars"]
    assert env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
    assert "AWS_SECRET_ACCESS_KEY" not in env and env[ray_jobs.JOB_ID_ENV] == "ftl-1"
    # The trackers' settings go with the job, their secrets do not (Ray logs the runtime env; trial 50a).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    monkeypatch.setenv("WANDB_PROJECT", "qa")
    monkeypatch.setenv("WANDB_API_KEY", "not-for-the-log")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "not-for-the-log")
    env = ray_jobs.runtime_env("model: {}\n")["env_vars"]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.internal:5000" and env["WANDB_PROJECT"] == "qa"
    assert "WANDB_API_KEY" not in env and "MLFLOW_TRACKING_TOKEN" not in env
