"""Ray Jobs: submit a run to a Ray cluster's job server and follow it (`ftl submit/status/logs/stop`).

The job's entrypoint is `python -m launcher.job_entry`; the runtime env carries the resolved
config (env var FTL_JOB_CONFIG, paths already absolute, so the data/model paths and output.dir
must be visible on the cluster, e.g. on a shared filesystem) and, when ftl runs from a source
checkout, the project itself as the working_dir. On the cluster the job then drives the run with
Ray Train (cluster.backend=ray, joining the cluster the job runs on).
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.errors import EXIT_FAILED, EXIT_INPUT_ERROR, EXIT_STOPPED, InputError

REPO = Path(__file__).resolve().parent.parent
# Never uploaded: environments, caches, outputs and VCS data (Ray caps working_dir size anyway).
UPLOAD_EXCLUDES = [".venv", ".git", "runs", ".cache", "**/__pycache__", "*.egg-info", ".pytest_cache"]
# RAY_TRAIN_: the user's Ray Train settings go with the job (e.g. RAY_TRAIN_ENABLE_PREEMPTION_WATCHER).
# MLFLOW_/WANDB_: the trackers' settings (MLFLOW_TRACKING_URI, WANDB_PROJECT...) go with the job
# (trial 50a); their secrets do not, since Ray logs a job's runtime env verbatim: the cluster's own
# environment holds those (WANDB_API_KEY, MLFLOW_TRACKING_TOKEN, HF_TOKEN).
FORWARDED_ENV_PREFIXES = ("FTL_", "HF_HUB_OFFLINE", "TORCH_EXTENSIONS_DIR", "RAY_TRAIN_", "MLFLOW_", "WANDB_")
# Ray's default grace between SIGTERM and SIGKILL when a job is stopped is 3 s; a run needs
# long enough to finish its step and write a checkpoint.
STOP_GRACE_S = "120"
CONFIG_ENV = "FTL_JOB_CONFIG"
JOB_ID_ENV = "FTL_RAY_JOB_ID"  # the job's own id, for its run lock (a second start names the job to stop)
AGENT_WAIT_S = 120
FINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class JobError(InputError):
    """The Ray job server cannot be reached or refused the request; the message says what to do."""


def resolve_address(address: str | None) -> str:
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise JobError("no Ray job server given: pass --address http://HEAD:8265 (or set RAY_API_SERVER_ADDRESS)")
    return address if "://" in address else f"http://{address}"


def client(address: str | None) -> Any:
    from ray.job_submission import JobSubmissionClient

    resolved = resolve_address(address)
    try:
        return JobSubmissionClient(resolved)
    except Exception as exc:  # connection refused, wrong port, not a Ray dashboard
        raise JobError(f"cannot reach the Ray job server at {resolved}: {exc}") from None


def runtime_env(config_yaml: str, job_id: str = "") -> dict[str, Any]:
    from trainer.secret_values import is_secret_name

    env_vars = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES) and not is_secret_name(k)}
    env_vars.update(
        {CONFIG_ENV: config_yaml, "RAY_JOB_STOP_WAIT_TIME_S": STOP_GRACE_S, "TOKENIZERS_PARALLELISM": "false"}
    )
    if job_id:
        env_vars[JOB_ID_ENV] = job_id
    env: dict[str, Any] = {"env_vars": env_vars}
    if (REPO / "pyproject.toml").is_file() and (REPO / "launcher").is_dir():
        env["working_dir"] = str(REPO)
        env["excludes"] = UPLOAD_EXCLUDES
    return env


def submit(
    config_yaml: str,
    run_name: str,
    address: str | None,
    python: str = "python",
    say: Callable[[str], None] | None = None,
) -> str:
    """`say`: called once with a line when the head has no job agent yet (a wait of up to
    AGENT_WAIT_S that would otherwise look hung)."""
    # Unique even for two submits of one run within a second (Ray refuses a reused id).
    job_id = f"ftl-{run_name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    jobs = client(address)
    deadline = time.time() + AGENT_WAIT_S
    while True:
        try:
            return jobs.submit_job(
                entrypoint=f"{python} -m launcher.job_entry",
                runtime_env=runtime_env(config_yaml, job_id),
                submission_id=job_id,
            )
        except RuntimeError as exc:
            # A head that just started answers before its job agent is up; that passes.
            if "No available agent" not in str(exc):
                raise JobError(f"the Ray job server at {resolve_address(address)} refused the job: {exc}") from None
            if say is not None:
                say(
                    f"waiting up to {AGENT_WAIT_S} s for the job agent of the Ray head at {resolve_address(address)} "
                    "(a head that just started brings it up within seconds)"
                )
                say = None
            if time.time() > deadline:
                raise JobError(
                    f"the Ray job server at {resolve_address(address)} has no job agent after {AGENT_WAIT_S} s "
                    "(its dashboard agent did not start: see the head's dashboard_agent.log, e.g. a port another "
                    "Ray on that machine holds)"
                ) from None
            time.sleep(2)


def alive_node_resources(address: str | None, timeout_s: int = 10) -> list[dict[str, float]] | None:
    """Each alive node's total resources ({"CPU": 4.0, "GPU": 1.0, ...}) as the cluster behind the
    job server reports them (Ray's state API, served by the same dashboard); None when it does not
    say in time (an older head, a proxy that passes only the jobs API)."""
    from ray.util.state import list_nodes

    try:
        nodes = list_nodes(
            address=resolve_address(address),
            filters=[("state", "=", "ALIVE")],
            detail=True,
            timeout=timeout_s,
            raise_on_missing_output=False,
        )
    except Exception:  # noqa: BLE001 - the check is advisory: the job itself says the same once it runs
        return None
    return [{name: float(amount) for name, amount in (node.resources_total or {}).items()} for node in nodes]


def status(job_id: str, address: str | None) -> dict[str, Any]:
    info = client(address).get_job_info(job_id)
    return {
        "job": job_id,
        "status": str(info.status.value if hasattr(info.status, "value") else info.status),
        "message": info.message or "",
        "entrypoint": info.entrypoint,
    }


def logs(job_id: str, address: str | None) -> str:
    return client(address).get_job_logs(job_id)


def follow(job_id: str, address: str | None, write: Any) -> str:
    """Print the job's log as it grows until the job ends; returns the final status."""
    jobs = client(address)
    shown = 0
    while True:
        try:
            text = jobs.get_job_logs(job_id)
            if len(text) > shown:
                write(text[shown:])
                shown = len(text)
            state = str(jobs.get_job_status(job_id).value)
            if state in FINAL:
                text = jobs.get_job_logs(job_id)
                write(text[shown:])
                return state
        except OSError as exc:  # requests' ConnectionError: the head went away while followed
            raise JobError(
                f"lost the Ray job server at {resolve_address(address)} while following {job_id} "
                f"({type(exc).__name__}); the run's directory says where it got to (`ftl runs OUTPUT_DIR`), "
                "and submitting the same config again resumes it"
            ) from None
        time.sleep(2)


def exit_code(state: str, message: str) -> int:
    """What `ftl train` would have exited with: 0 finished, 3 stopped (with a checkpoint), 2 for
    an input error (the job's own exit code 2), else 1."""
    if state == "SUCCEEDED":
        return 0
    if state == "STOPPED":
        return EXIT_STOPPED
    return EXIT_INPUT_ERROR if "exit code 2" in message else EXIT_FAILED


def stop(job_id: str, address: str | None) -> bool:
    """Ask the job to stop: its driver gets SIGTERM, the workers checkpoint and exit."""
    return bool(client(address).stop_job(job_id))
