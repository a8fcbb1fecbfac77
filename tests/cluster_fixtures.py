"""Real clusters on this machine for the backend tests: a two-node Ray cluster
(ray.cluster_utils.Cluster, dashboard and job server on loopback) and the local Slurm that
scripts/slurm/start_local_slurm.sh starts (two slurmd nodes, n1 and n2)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
SLURM_DIR = Path(os.environ.get("FTL_SLURM_DIR", "/tmp/ftl-slurm"))


@dataclass
class RayTestCluster:
    address: str  # GCS address for cluster.ray.address
    dashboard: str  # job server, http://127.0.0.1:PORT


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayTestCluster]:
    from ray.cluster_utils import Cluster

    from cluster.local import free_port

    for attempt in range(3):
        port = free_port()
        before = {child.pid for child in psutil.Process().children(recursive=True)}
        try:
            cluster = Cluster(
                initialize_head=True,
                connect=False,
                head_node_args={
                    "num_cpus": 2,
                    "include_dashboard": True,
                    "dashboard_host": "127.0.0.1",
                    # Not Ray's fixed default (52365): a node agent of an earlier cluster that is
                    # still exiting (they linger ~60 s) would hold it, and this head's agent would
                    # serve no HTTP (no Ray Jobs).
                    "dashboard_agent_listen_port": free_port(),
                    "dashboard_port": port,
                },
            )
            break
        except Exception:
            # The chosen port was taken before the dashboard bound it (seen: by one of the ports
            # Ray picks for its own services meanwhile). End what this attempt started; new ports.
            if attempt == 2:
                raise
            started = [c for c in psutil.Process().children(recursive=True) if c.pid not in before]
            for child in started:
                child.kill()
            psutil.wait_procs(started, timeout=30)
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    try:
        yield RayTestCluster(address=cluster.address, dashboard=f"http://127.0.0.1:{port}")
    finally:
        cluster.shutdown()


@pytest.fixture(scope="session")
def slurm() -> str:
    """SLURM_CONF of a running local Slurm with nodes n1, n2 (started here when needed)."""
    conf = SLURM_DIR / "slurm.conf"
    if shutil.which("sbatch") is None or not _responds(conf):
        if os.geteuid() != 0:
            pytest.skip(
                "needs a Slurm: run `sudo bash scripts/slurm/start_local_slurm.sh` (starts one on this machine)"
            )
        out = subprocess.run(
            ["bash", str(REPO / "scripts" / "slurm" / "start_local_slurm.sh")], capture_output=True, text=True
        )
        assert out.returncode == 0, f"could not start the local Slurm:\n{out.stderr}"
    os.environ["SLURM_CONF"] = str(conf)
    return str(conf)


def _responds(conf: Path) -> bool:
    if not conf.exists():
        return False
    env = dict(os.environ, SLURM_CONF=str(conf))
    return subprocess.run(["scontrol", "ping"], capture_output=True, env=env).returncode == 0


def train_losses(run_dir: Path) -> dict[int, float]:
    """step -> loss of the run's current trajectory (trainer.metrics.read_metrics: a step logged
    again after a restart counts once; a line still being written is skipped)."""
    from trainer.metrics import read_metrics

    return {record["step"]: record["loss"] for record in read_metrics(run_dir, "train")}


def assert_same_losses(run_dir: Path, golden: dict[int, float], rel: float = 1e-6) -> None:
    losses = train_losses(run_dir)
    assert sorted(losses) == sorted(golden), f"steps {sorted(losses)} != golden {sorted(golden)}"
    for step, loss in golden.items():
        assert abs(losses[step] - loss) <= rel * abs(loss), f"step {step}: loss {losses[step]} != golden {loss}"


@dataclass
class S3TestServer:
    endpoint: str  # 127.0.0.1:PORT
    bucket: str

    def uri(self, path: str) -> str:
        """An s3:// URI for output.dir; pyarrow reads the endpoint from the query string."""
        return f"s3://{self.bucket}/{path}?endpoint_override={self.endpoint}&scheme=http&region=us-east-1"

    def filesystem(self) -> Any:
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(
            endpoint_override=self.endpoint,
            scheme="http",
            region="us-east-1",
            access_key="testing",
            secret_key="testing",
        )


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3TestServer]:
    """A real S3 endpoint on loopback (moto's server): the HTTP protocol pyarrow and Ray use against
    AWS, with no account. Credentials are dummies in the environment, as a user would set theirs."""
    from moto.server import ThreadedMotoServer

    from cluster.local import free_port

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        os.environ[key] = value
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    s3 = S3TestServer(endpoint=f"127.0.0.1:{port}", bucket="ftl-test")
    import pyarrow.fs as pafs

    pafs.S3FileSystem(
        endpoint_override=s3.endpoint,
        scheme="http",
        region="us-east-1",
        access_key="testing",
        secret_key="testing",
        allow_bucket_creation=True,
    ).create_dir(s3.bucket)
    try:
        yield s3
    finally:
        server.stop()
