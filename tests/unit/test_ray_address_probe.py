"""A Ray address where nothing listens is refused at once (Ray itself would retry it forever)."""

from __future__ import annotations

import socket

import pytest

from cluster.ray_driver import RayRunFailed, refuse_silent_address


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when this returns: nothing listens there


@pytest.mark.parametrize("form", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}"])
def test_nothing_listening_is_refused_with_the_address(form: str) -> None:
    address = form.format(port=_closed_port())
    with pytest.raises(RayRunFailed, match="nothing answers there") as refused:
        refuse_silent_address(address)
    assert address in str(refused.value) and "cluster.ray.address" in str(refused.value)


def test_a_listening_address_and_the_forms_ray_resolves_pass() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        refuse_silent_address(f"127.0.0.1:{server.getsockname()[1]}")
    refuse_silent_address("auto")
    refuse_silent_address("local")
