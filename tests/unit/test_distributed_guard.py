"""A multi-worker run whose process group vanishes mid-run (Ray Train destroys it on the survivors
when a worker or node dies) must fail, not carry on as if it trained alone: seen on a node loss,
where a survivor logged a wrong loss and committed a checkpoint without the dead rank's state."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from trainer.distributed import ProcessGroupLost, all_reduce_sum, barrier, expect_world


def test_collectives_refuse_to_go_local_when_the_group_is_gone() -> None:
    assert not dist.is_initialized()
    expect_world(2)
    try:
        with pytest.raises(ProcessGroupLost, match="destroyed mid-run"):
            all_reduce_sum([1.0, 2.0], "cpu")
        with pytest.raises(ProcessGroupLost):
            barrier()
    finally:
        expect_world(1)
    assert all_reduce_sum([1.0, 2.0], "cpu") == [1.0, 2.0]  # a single-process run needs no group
