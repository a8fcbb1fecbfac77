"""How many OpenMP threads a torchrun worker gets: this machine's cores split between the workers
on it. Trial 51b ran two ftl "nodes" on one machine (a rendezvous on 127.0.0.1): each gave its one
worker every core, and the run was 11 times slower than with the cores split."""

from __future__ import annotations

from cluster.config import ClusterConfig
from cluster.torchrun import workers_on_this_machine


def test_nodes_meeting_on_loopback_share_this_machines_cores() -> None:
    one_node = ClusterConfig(backend="torchrun", workers=2)
    assert workers_on_this_machine(one_node) == 2
    for endpoint in ("127.0.0.1:29511", "localhost:29511", "[::1]:29511"):
        here = ClusterConfig(backend="torchrun", workers=1, nodes=2, torchrun={"rdzv_endpoint": endpoint})
        assert workers_on_this_machine(here) == 2, endpoint
    # A rendezvous host elsewhere: each node is its own machine.
    apart = ClusterConfig(backend="torchrun", workers=2, nodes=4, torchrun={"rdzv_endpoint": "node-1:29511"})
    assert workers_on_this_machine(apart) == 2
