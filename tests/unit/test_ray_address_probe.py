"""A Ray address where nothing listens is refused at once (Ray itself would retry it forever)."""

from __future__ import annotations

import socket

import pytest

from cluster.ray_driver import RayRunFailed, refuse_silent_address


@pytest.fixture(autouse=True)
def _no_earlier_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    import cluster.ray_driver

    monkeypatch.setattr(cluster.ray_driver, "_answered_at", {})  # each test asks afresh


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


def test_a_listening_address_and_the_forms_ray_resolves_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    import cluster.ray_driver

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        listening = f"127.0.0.1:{server.getsockname()[1]}"
        refuse_silent_address(listening)
        refuse_silent_address(f"http://{listening}/")
        # `auto` is what Ray finds on this machine (Ray's lookup stood in for: no test starts a Ray here).
        monkeypatch.setattr(cluster.ray_driver, "auto_address", lambda: listening)
        refuse_silent_address("auto")
    refuse_silent_address("local")


def test_an_address_that_answered_moments_ago_is_not_probed_again() -> None:
    """Train's pre-start check asks first; connect() then takes its answer (a token-authenticated
    GCS costs ~0.5 s a probe). A stale answer is asked again."""
    import cluster.ray_driver
    from cluster.ray_driver import ANSWER_FRESH_S, silent_address_problem

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        assert silent_address_problem(address) is None
    refuse_silent_address(address)  # nothing listens now, but it answered moments ago
    cluster.ray_driver._answered_at[address] -= ANSWER_FRESH_S + 1
    with pytest.raises(RayRunFailed, match="nothing answers there"):
        refuse_silent_address(address)
    with pytest.raises(RayRunFailed, match="nothing answers there"):  # a refusal is not kept as an answer
        refuse_silent_address(address)


def test_auto_with_no_cluster_on_this_machine_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trial 60b: Ray's "Could not find any running Ray instance", exit 1, and a failed run directory."""
    import cluster.ray_driver

    def none_runs() -> str:
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(cluster.ray_driver, "auto_address", none_runs)
    with pytest.raises(RayRunFailed, match="no Ray cluster runs on this machine"):
        refuse_silent_address("auto")


@pytest.mark.parametrize(
    ("address", "said"),
    [
        ("garbage:::", "the port '' is no number"),
        ("localhost:abc", "the port 'abc' is no number"),
        (":6379", "no host"),
        ("head", "no :PORT after the host"),
        ("[::1]", "no :PORT after the host"),
        ("my head:6379", "the host holds a space"),
        ("::1:6379", "an IPv6 host is written in brackets"),
        ("ftp://head:6379", "ftp:// is no scheme Ray takes"),
        (" ", "is empty"),
    ],
)
def test_a_malformed_address_is_refused_by_name_before_ray_reads_it(address: str, said: str) -> None:
    """Trial 60b: Ray's ValueError ("Invalid address format") was a 37-line traceback, exit 1."""
    from cluster.config import RayConfig
    from cluster.ray_address import address_form_problem

    problem = address_form_problem(address)
    assert problem and said in problem and problem.startswith("cluster.ray.address / $RAY_ADDRESS: "), problem
    with pytest.raises(ValueError, match="is no Ray address|is empty"):
        RayConfig(address=address)
    for fine in ("auto", "local", "10.0.0.5:6379", "ray://head:10001", "ray://head", "http://[::1]:8265", "[::1]:6379"):
        assert address_form_problem(fine) is None and RayConfig(address=fine).address == fine
