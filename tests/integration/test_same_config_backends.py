"""The promise of one config for every place: configs/examples/lora.yaml, unchanged except for
`cluster.*` (and the same shortening overrides for all), on the local, Ray, torchrun and Slurm
backends, with two workers each. All four must train identically, step by step."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.cluster_fixtures import train_losses
from tests.conftest import FTL, REPO

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

EXAMPLE = REPO / "configs" / "examples" / "lora.yaml"
# Shorter, and the same for every backend: 3 steps, small evaluations (the generation-scored one
# too: 4 prompts instead of 200, still at start and end on both splits), no periodic checkpoints.
SHORT = [
    "training.max_steps=3",
    "training.progress_bar=false",
    "eval.max_samples=8",
    "eval.generation.max_samples=4",
    "eval.every_steps=0",
    "checkpoint.every_steps=0",
]


@pytest.mark.starts_ray  # its Ray leg
def test_one_example_config_trains_identically_on_local_ray_torchrun_and_slurm(tmp_path, slurm):
    from cluster.local import free_port

    legs = {
        "local": ["cluster.backend=local", "cluster.workers=2"],
        "ray": ["cluster.backend=ray", "cluster.workers=2"],  # a local Ray started by ftl, as in the quickstart
        "slurm": ["cluster.backend=slurm", "cluster.nodes=1", "cluster.workers=2"],  # 2-node jobs: test_backends
    }
    runs: dict[str, Path] = {}
    for name, cluster in legs.items():
        runs[name] = tmp_path / name
        out = subprocess.run(
            [*FTL, "train", str(EXAMPLE), *SHORT, *cluster, f"output.dir={runs[name]}"],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=REPO,
            env=dict(os.environ),
        )
        assert out.returncode == 0, f"{name}:\n{out.stderr[-3000:]}"
        if name == "slurm":
            assert "1 node(s) n1" in out.stderr or "1 node(s) n2" in out.stderr, out.stderr[-2000:]
            assert (runs[name] / "slurm-job.sbatch").exists()  # the rendered script is kept with the run
    # torchrun: two agents (node ranks 0 and 1) meeting in a c10d rendezvous on localhost. Each
    # "node" would split its own cores between its workers; these two share this machine's, so
    # each gets one thread, as each local worker does (two would oversubscribe the cores).
    runs["torchrun"] = tmp_path / "torchrun"
    endpoint = f"127.0.0.1:{free_port()}"
    agents = [
        subprocess.Popen(
            [
                *FTL,
                "train",
                str(EXAMPLE),
                *SHORT,
                "cluster.backend=torchrun",
                "cluster.nodes=2",
                "cluster.workers=1",
                f"cluster.torchrun.rdzv_endpoint={endpoint}",
                f"output.dir={runs['torchrun']}",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for _ in range(2)
    ]
    outputs = [agent.communicate(timeout=900) for agent in agents]
    assert [a.returncode for a in agents] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]

    reference = train_losses(runs["local"])
    assert sorted(reference) == [1, 2, 3]
    for name, run_dir in runs.items():
        losses = train_losses(run_dir)
        assert losses.keys() == reference.keys(), name
        for step, loss in reference.items():
            assert abs(losses[step] - loss) <= 1e-6 * abs(loss), f"{name} step {step}: {losses[step]} != local {loss}"
        assert (run_dir / "final" / "adapter" / "adapter_model.safetensors").exists(), name
