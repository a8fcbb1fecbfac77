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


def test_a_slurm_job_id_given_to_the_ray_jobs_verbs_says_where_slurms_commands_are() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    out = subprocess.run([*FTL, "status", "172"], cwd=REPO, capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2 and "172 looks like a Slurm job id" in out.stderr and "scancel 172" in out.stderr
    named = subprocess.run([*FTL, "status", "ftl-run-1"], cwd=REPO, capture_output=True, text=True, env=env)
    assert named.returncode == 2 and "Slurm" not in named.stderr

    run_dir = subprocess.run([*FTL, "logs", str(REPO / "assets")], cwd=REPO, capture_output=True, text=True, env=env)
    assert run_dir.returncode == 2 and "is a directory, not a Ray Job id" in run_dir.stderr, run_dir.stderr
    assert "ftl runs " in run_dir.stderr
