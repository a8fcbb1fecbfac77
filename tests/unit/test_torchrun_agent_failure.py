"""Which failed worker the torchrun agent names: the one killed by a signal, not the rank that
exited 1 because its peer was gone. torch's "first failure" is the earliest timestamp, and the
surviving rank's error file was stamped before the agent noticed the killed one (a CI run said
"worker rank 0 failed with exit code 1" and exited 1 for a kill -9 of rank 1)."""

from __future__ import annotations

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from cluster.torchrun_agent import _root_failure


def _failure(rank: int, exitcode: int, timestamp: int) -> ProcessFailure:
    failure = ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=exitcode, error_file="")
    failure.timestamp = timestamp
    return failure


def test_a_killed_worker_is_named_before_the_rank_that_failed_because_of_it() -> None:
    failures = {0: _failure(0, 1, timestamp=100), 1: _failure(1, -9, timestamp=101)}
    error = ChildFailedError("worker", failures)
    assert error.get_first_failure()[0] == 0  # torch's choice: the earliest stamp
    rank, failure = _root_failure(error.failures)
    assert (rank, failure.exitcode) == (1, -9)


def test_without_a_killed_worker_the_first_failure_is_named() -> None:
    failures = {0: _failure(0, 2, timestamp=105), 1: _failure(1, 1, timestamp=101)}
    assert _root_failure(ChildFailedError("worker", failures).failures)[0] == 1
