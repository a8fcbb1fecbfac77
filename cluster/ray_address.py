"""The form of a Ray address (cluster.ray.address, $RAY_ADDRESS), judged before Ray reads it.

Trial 60b: `garbage:::`, `localhost:abc`, ` ` and `:6379` reached ray.init, whose ValueError
("Invalid address format") was a 37-line traceback, exit 1, and a run directory listed as failed.
The forms Ray takes: `auto` (the cluster `ray start` last started on this machine), `local` (a
new local Ray), HOST:PORT of a head's GCS, `ray://HOST:PORT` (Ray Client) and an http(s)://
address of a head's dashboard (what Ray Jobs use).
"""

from __future__ import annotations

SOURCE = "cluster.ray.address / $RAY_ADDRESS"
_SCHEMES = ("ray", "http", "https")
KEYWORDS = ("auto", "local")


def address_form_problem(address: str, source: str = SOURCE) -> str | None:
    """Why `address` is no Ray address (one line naming `source`, the setting it came from), or None."""
    text = address.strip()
    if text in KEYWORDS:
        return None
    if not text:
        return (
            f"{_prefix(source)}{address!r} is empty; give the head's HOST:PORT (e.g. 10.0.0.5:6379), or leave it unset"
        )
    scheme, separator, rest = text.partition("://")
    if not separator:
        scheme, rest = "", text
    rest = rest.rstrip("/")
    host, colon, port = rest.rpartition(":")
    if not colon or rest.endswith("]"):  # no port: `host`, `[::1]` (trial 60c: said as "the port '1]'")
        host, port, colon = rest, "", ""
    bare_ipv6 = ":" in host and not (host.startswith("[") and host.endswith("]"))
    needs_port = not scheme
    port_ok = (port.isdigit() and 0 < int(port) < 65536) or (not port and not needs_port)
    problem = (
        (f"{scheme}:// is no scheme Ray takes" if scheme and scheme not in _SCHEMES else None)
        or (f"the port {port!r} is no number from 1 to 65535" if colon and not port_ok else None)
        or ("no :PORT after the host" if not colon and needs_port else None)
        or ("no host" if not host.strip("[]") else None)
        or ("the host holds a space" if any(c.isspace() for c in host) else None)
        or ("an IPv6 host is written in brackets, [::1]:6379" if bare_ipv6 else None)
    )
    if problem is None:
        return None
    return (
        f"{_prefix(source)}{address!r} is no Ray address ({problem}); give the head's HOST:PORT (as `ray start --head` "
        "printed it, e.g. 10.0.0.5:6379), ray://HOST:10001, or auto for the cluster started on this machine"
    )


def _prefix(source: str) -> str:
    """`source: ` naming the setting the address came from; nothing where the caller says it."""
    return f"{source}: " if source else ""
