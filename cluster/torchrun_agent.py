"""torchrun's agent (`torch.distributed.run`) as ftl starts it: the same agent and arguments, but a
failed worker group ends with one line naming the rank and its exit code (the workers' own
output says why) instead of torchrun's traceback, and the agent exits with that worker's code
(a signal N as 128 + N), so a worker's input error (exit 2) reaches the launcher as 2.

A rendezvous on loopback stays on loopback: torch's agent hosts two TCPStore servers (the c10d
rendezvous store and the store it shares with its workers) and TCPStore listens on every
interface whatever host it is given. When the rendezvous endpoint is a loopback address, this
agent hands both servers a socket it bound to that address (cluster/loopback.py), and the node's
address (the workers' MASTER_ADDR) is that loopback address.

    python -m cluster.torchrun_agent [torchrun arguments] -m cluster.worker RUN_DIR
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from cluster.loopback import LOOPBACK
from trainer.errors import EXIT_INPUT_ERROR


def main(argv: list[str] | None = None) -> int:
    _quiet_store_shutdown()
    _quiet_what_ftl_says()
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(argv if argv is not None else sys.argv[1:])
    if _rendezvous_on_loopback(args):
        args.local_addr = "127.0.0.1"
        _keep_agent_stores_on_loopback()
    _say_which_worker_a_restart_follows()
    try:
        run(args)
    except ChildFailedError as exc:
        rank, failure = _root_failure(exc.failures)
        code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode
        if code != EXIT_INPUT_ERROR:  # an input error was printed by the worker itself
            print(f"torchrun: {_failed_worker(rank, failure)}", file=sys.stderr, flush=True)
        return code
    except SignalException as exc:
        # A stop signal (srun passing on a scancel or a requeue, a terminal's Ctrl-C): the agent
        # passed it on to the workers, which stopped at a checkpoint and said so; not a crash.
        return 128 + int(exc.sigval)
    return 0


def _quiet_store_shutdown() -> None:
    """At the end of a good multi-node run the agent that hosts the rendezvous store may exit before
    another agent's rendezvous shutdown reaches it: torch then prints a C++ warning with a 30-frame
    stack and a warning that the shutdown failed, after a run that finished (trial 51b). The agent's
    own C++ warnings are turned off (errors still show; TORCH_CPP_LOG_LEVEL, when set, decides), for
    this process only: torch reads the level once, when it is loaded, and the workers get the
    environment as it was. The shutdown warning is dropped: nothing is left to shut down."""
    import logging
    import os

    if "torch" not in sys.modules and "TORCH_CPP_LOG_LEVEL" not in os.environ:
        os.environ["TORCH_CPP_LOG_LEVEL"] = "ERROR"
        try:
            import torch  # noqa: F401  (reads the level now)
        finally:
            del os.environ["TORCH_CPP_LOG_LEVEL"]

    class DropShutdownFailure(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "failed to shutdown the rendezvous" not in record.getMessage()

    logging.getLogger("torch.distributed.elastic.rendezvous.dynamic_rendezvous").addFilter(DropShutdownFailure())


# torch's agent logs these in its own format (`W1206 15:51:04.923000 15964 .../api.py:1028] ...`)
# around a worker's failure; ftl's `torchrun: worker rank 1 (pid N) was killed by SIGKILL; ...`
# line says the same of the worker that failed, and the workers say how they stopped (trial 54a).
SAID_BY_FTL = ("Sending process ", "failed (exitcode: ")


def _quiet_what_ftl_says() -> None:
    import logging

    class DropSaidByFtl(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not str(record.msg).startswith(SAID_BY_FTL)

    logging.getLogger("torch.distributed.elastic.multiprocessing.api").addFilter(DropSaidByFtl())


def _root_failure(failures: dict[int, Any]) -> tuple[int, Any]:
    """The failure that ended the group: a worker killed by a signal (kill -9, out of memory) before
    the ranks that failed because of it (a peer's "connection reset" exits 1). torch's first failure
    is the earliest timestamp, and a surviving rank's error file can be stamped before the agent's
    monitor notices the killed one, which has none: then the killed rank went unnamed."""
    killed = {rank: failure for rank, failure in failures.items() if failure.exitcode < 0}
    candidates = killed or failures
    rank = min(candidates, key=lambda r: candidates[r].timestamp)
    return rank, candidates[rank]


def _say_which_worker_a_restart_follows() -> None:
    """torch's agent restarts a failed group with an INFO log line that names no worker (session 41:
    a user could not tell which rank died, nor why the loss curve had a resume in it). The agent's
    monitor is wrapped to print the failed worker first, as the final failure is printed."""
    from torch.distributed.elastic.agent.server.api import WorkerState
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent

    monitor = LocalElasticAgent._monitor_workers

    def monitor_and_say(self: Any, group: Any) -> Any:
        result = monitor(self, group)
        if result.state in (WorkerState.FAILED, WorkerState.UNHEALTHY) and result.failures:
            left = self._remaining_restarts
            if left > 0:  # the agent restarts the group now; with none left, main() says the failure
                rank, failure = _root_failure(result.failures)
                most = group.spec.max_restarts
                print(
                    f"torchrun: {_failed_worker(rank, failure)}; restarting the workers from the latest "
                    f"checkpoint (restart {most - left + 1} of {most}, cluster.torchrun.max_restarts)",
                    file=sys.stderr,
                    flush=True,
                )
        return result

    LocalElasticAgent._monitor_workers = monitor_and_say  # type: ignore[method-assign]


def _failed_worker(rank: int, failure: Any) -> str:
    """'worker rank 1 (pid 11795) was killed by SIGKILL' / '... failed with exit code 1'."""
    if failure.exitcode < 0:
        try:
            how = f"was killed by {signal.Signals(-failure.exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-failure.exitcode}"
    else:
        how = f"failed with exit code {failure.exitcode}"
    pid = f" (pid {failure.pid})" if getattr(failure, "pid", None) else ""
    return f"worker rank {rank}{pid} {how}"


def _rendezvous_on_loopback(args: Any) -> bool:
    # --standalone picks localhost:0 itself (inside run()); otherwise the endpoint says.
    if args.standalone:
        return True
    host = (args.rdzv_endpoint or "").rsplit(":", 1)[0].strip("[]")
    return host in LOOPBACK


def _keep_agent_stores_on_loopback() -> None:
    """Both of the agent's TCPStore servers are created through a constructor that binds the
    listening socket to the loopback host first (torch offers no bind address of its own)."""
    import torch.distributed as dist
    from torch.distributed.elastic.rendezvous import c10d_rendezvous_backend, dynamic_rendezvous

    from cluster.loopback import listen_on

    def loopback_store(
        host_name: str, port: int, world_size: int | None = None, is_master: bool = False, **kwargs: Any
    ) -> Any:
        if is_master and host_name in LOOPBACK and kwargs.get("master_listen_fd") is None:
            try:
                listener = listen_on("127.0.0.1" if host_name == "localhost" else host_name, port)
            except OSError as exc:  # torch's callers take a RuntimeError as "another agent hosts it"
                raise RuntimeError(f"cannot listen on {host_name}:{port}: {exc}") from exc
            port = listener.getsockname()[1]
            # detach(): the store's server owns the descriptor from here on.
            kwargs["master_listen_fd"] = listener.detach()
        return dist.TCPStore(host_name, port, world_size, is_master, **kwargs)

    # The module looks TCPStore up by name when it creates its store; a function stands in for the class.
    c10d_rendezvous_backend.TCPStore = loopback_store  # type: ignore[misc,assignment]

    def create_server(self: Any, master_addr: str, master_port: int) -> Any:
        return loopback_store(master_addr, master_port, is_master=True, multi_tenant=True)

    dynamic_rendezvous.DynamicRendezvousHandler._create_tcp_store_server = create_server  # type: ignore[method-assign]


if __name__ == "__main__":
    sys.exit(main())
