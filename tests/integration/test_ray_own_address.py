"""A local Ray that ftl starts, on a machine where another Ray cluster is the "current" one (the
newest `ray start`, recorded in Ray's temp dir): Ray's own services that look up "the" cluster
without an address must find ftl's. Ray Train's placement-group cleaner asks the state API whether
the run's controller is alive; asked on the other cluster the answer is no, and the cleaner removes
the running run's placement group (found in a review: "Found multiple active Ray instances ...
Connecting to latest cluster" in a run's log)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.cluster_fixtures import RayTestCluster

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

# What the cleaner does (ray.train.v2 placement_group_cleaner: is_actor_alive with no address),
# from a task of the run's Ray (ftl's local one, or the cluster at argv[1] it joins), about an
# actor of that Ray.
PROBE = """
import json, os, sys
import ray
from cluster.config import RayConfig
from cluster.ray_driver import connect, prefer_loopback

if len(sys.argv) > 1:
    assert not connect(RayConfig(address=sys.argv[1]))
else:
    prefer_loopback(RayConfig())
    assert connect(RayConfig())


@ray.remote
class Witness:
    def ping(self):
        return 1


@ray.remote
def ask(actor_id):
    from ray.train.v2._internal.state.util import is_actor_alive

    return os.environ.get("RAY_ADDRESS"), bool(is_actor_alive(actor_id, timeout=60))


witness = Witness.remote()
ray.get(witness.ping.remote())
seen_address, alive = ray.get(ask.remote(witness._actor_id.hex()))
print(json.dumps({
    "own": ray.get_runtime_context().gcs_address,
    "seen": seen_address,
    "alive": alive,
    "driver_env": os.environ.get("RAY_ADDRESS"),
}))
ray.shutdown()
"""


def test_a_local_rays_services_ask_their_own_cluster_not_the_newest_on_the_machine(
    ray_cluster: RayTestCluster,
) -> None:
    # Ray's temp dir holds the sockets (short paths needed) and the "current cluster" record; a
    # private one keeps the record this test writes off the machine's /tmp/ray.
    temp = Path(tempfile.mkdtemp(prefix="ftl-ray-", dir="/tmp"))
    try:
        (temp / "ray").mkdir()  # Ray's temp dir is $RAY_TMPDIR/ray
        (temp / "ray" / "ray_current_cluster").write_text(ray_cluster.address)  # another live cluster
        env = {**os.environ, "RAY_TMPDIR": str(temp), "PYTHONPATH": str(REPO)}
        env.pop("RAY_ADDRESS", None)
        out = subprocess.run(
            [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=REPO, timeout=600
        )
        assert out.returncode == 0, out.stderr[-3000:]
        seen = json.loads(out.stdout.strip().splitlines()[-1])
        assert seen["seen"] == seen["own"] != ray_cluster.address, seen
        assert seen["alive"], f"the state API of another cluster answered for ftl's local Ray: {seen}"
        assert seen["driver_env"] is None  # the driver's own environment is as it was
        assert "multiple active Ray instances" not in out.stderr, out.stderr[-3000:]
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def test_a_joined_clusters_services_ask_that_cluster(ray_cluster: RayTestCluster) -> None:
    """A run that joins a cluster by HOST:PORT: its tasks and actors (Ray Train's controller and
    placement-group cleaner among them) have RAY_ADDRESS naming that cluster, so a second Ray
    instance on the driver's machine is never the one asked about the run's controller."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, ray_cluster.address],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert (seen["seen"], seen["alive"]) == (ray_cluster.address, True), seen
