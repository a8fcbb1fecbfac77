"""Whether a Ray cluster joined by HOST:PORT takes this shell's credentials, asked before the start.

Trial 60c: `ray start --head` turns on token authentication (Ray's default here), and Ray sends a
local token only to a cluster it finds itself (`auto`), never to an address given explicitly. A
run given the head's HOST:PORT without RAY_AUTH_MODE=token retried for 20 s ("InvalidAuthToken"
once a second), exited 1 telling the user to check the address, and left a failed run directory.
Ray's GCS client says so at once: the probe makes one, in a process of its own (on a port that
is no GCS it waits 40 s; that process is ended at PROBE_TIMEOUT_S and nothing is said).
"""

from __future__ import annotations

import os
import subprocess
import sys

PROBE_TIMEOUT_S = 10.0
_PROBE = """
import sys
from ray._raylet import GcsClient
try:
    GcsClient(address=sys.argv[1])
except Exception as exc:
    print(type(exc).__name__)
"""


def token_auth_problem(gcs_address: str, source: str) -> str | None:
    """Why the cluster whose GCS is at HOST:PORT refuses this shell's credentials, or None (it takes
    them, or the probe could not tell)."""
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _PROBE, gcs_address],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
        )
    except (subprocess.TimeoutExpired, OSError):
        return None
    if probe.stdout.strip() != "AuthenticationError":
        return None
    mode = os.environ.get("RAY_AUTH_MODE") or "unset"
    return (
        f"cannot join the Ray cluster at {gcs_address} ({source}): it uses token authentication and refused this "
        f"shell's credentials (RAY_AUTH_MODE is {mode}); set RAY_AUTH_MODE=token with the head's token in "
        "~/.ray/auth_token, $RAY_AUTH_TOKEN_PATH or $RAY_AUTH_TOKEN (Ray sends a local token only to a cluster it "
        "finds itself, `auto`, not to an address given explicitly)"
    )
