"""The local backend binds the rendezvous store's socket before any worker starts and hands it to
rank 0 (cluster/loopback.py): no other process can take the port in between. Real sockets, a real
TCPStore, real worker processes (both ways the local backend starts them)."""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
from pathlib import Path

import pytest

from cluster.loopback import LISTENER_FD_VARIABLE, inherited_listener, rendezvous_listener, store_on
from tests.conftest import FTL, write_config
from trainer.errors import InputError

TIMEOUT = datetime.timedelta(seconds=30)


def test_rank_0_serves_the_store_on_the_socket_it_was_handed(monkeypatch: pytest.MonkeyPatch) -> None:
    listener = rendezvous_listener(None)
    port = listener.getsockname()[1]
    monkeypatch.setenv(LISTENER_FD_VARIABLE, str(listener.detach()))
    store = store_on("127.0.0.1", port, 0, 1, TIMEOUT)  # a world of 1: the server waits for no one
    # Taken once: nothing this process starts later finds it.
    assert LISTENER_FD_VARIABLE not in os.environ
    from torch.distributed import TCPStore

    client = TCPStore("127.0.0.1", port, is_master=False, timeout=TIMEOUT)
    client.set("said", "by rank 1")
    assert store.get("said") == b"by rank 1"


def test_a_socket_for_another_port_is_not_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    with rendezvous_listener(None) as listener:
        monkeypatch.setenv(LISTENER_FD_VARIABLE, str(os.dup(listener.fileno())))
        assert inherited_listener(listener.getsockname()[1] + 1) is None
        assert LISTENER_FD_VARIABLE not in os.environ


def test_a_configured_port_that_is_taken_is_the_users_to_change() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(InputError, match=r"cluster.master_port \d+ cannot be used.*choose another port"):
            rendezvous_listener(taken.getsockname()[1])


@pytest.mark.parametrize("preload", [False, True], ids=["subprocess", "forkserver"])
def test_two_workers_meet_on_the_handed_socket(preload: bool, tmp_path: Path) -> None:
    """Rank 0 binds nothing itself (a bind of the port while the launcher still holds the socket
    would fail), and both ranks run a collective through the store."""
    from cluster.local import spawn_module

    out = tmp_path / "sum"
    spawn_module(
        "tests.unit.rendezvous_worker",
        [str(out)],
        2,
        rendezvous_listener(None),
        tmp_path / "logs",
        rank0_to_terminal=False,
        preload=["torch"] if preload else (),
    )
    assert out.read_text() == "3.0"


@pytest.mark.integration
def test_train_refuses_a_taken_master_port_before_any_worker_starts(tmp_path: Path, tiny_model_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(
            tmp_path / "c.yaml",
            tiny_model_dir,
            tmp_path / "run",
            parallel={"strategy": "ddp"},
            cluster={"backend": "local", "workers": 2, "master_port": port},
        )
        done = subprocess.run([*FTL, "train", str(config)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"cluster.master_port {port} cannot be used" in done.stderr
    assert not (tmp_path / "run" / "logs" / "worker-1.out").exists()
    assert "Traceback" not in done.stderr
