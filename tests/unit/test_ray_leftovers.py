"""A local Ray's processes end with the run: orphans are adopted by the launcher and ended after
ray.shutdown(), and nothing else is touched. Real processes, in a fresh interpreter (being a
subreaper is process-wide, so not in the test process itself)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_CHILD_SUBREAPER is Linux's")

SCRIPT = textwrap.dedent(
    """
    import json, os, signal, subprocess, sys, time
    import psutil
    from cluster.ray_leftovers import adopt_orphans, end_leftover_ray_processes

    assert adopt_orphans()
    # A child that starts three grandchildren and exits at once, so they are orphaned (as Ray's
    # workers are when the raylet goes): one named like a Ray actor, one like it that ignores
    # SIGTERM, one that is not Ray's.
    starter = (
        "import subprocess;"
        "subprocess.Popen(['bash', '-c', 'exec -a ray::Leftover sleep 600']);"
        "subprocess.Popen(['bash', '-c', 'trap \\"\\" TERM; exec -a ray::Stubborn sleep 600']);"
        "subprocess.Popen(['sleep', '601'])"
    )
    subprocess.run([sys.executable, "-c", starter], check=True)
    def execed():  # each bash has exec'd its sleep (under load that can take a while)
        try:
            kids = psutil.Process().children()
            return len(kids) == 3 and all(p.name() == "sleep" for p in kids)
        except psutil.Error:
            return False

    deadline = time.time() + 60
    while not execed() and time.time() < deadline:
        time.sleep(0.05)
    adopted = {p.pid: " ".join(p.cmdline()) for p in psutil.Process().children()}
    ended = end_leftover_ray_processes(grace_s=1.0)
    alive = {pid: cmd for pid, cmd in adopted.items() if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE}
    print(json.dumps({"adopted": sorted(adopted.values()), "ended": sorted(adopted[p] for p in ended), "alive": sorted(alive.values())}))
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    """
)


def test_orphaned_ray_processes_are_adopted_and_ended_and_nothing_else() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    # all three were re-parented to the launcher, not to init
    assert seen["adopted"] == ["ray::Leftover 600", "ray::Stubborn 600", "sleep 601"]
    assert seen["ended"] == ["ray::Leftover 600", "ray::Stubborn 600"]  # the stubborn one by SIGKILL
    assert seen["alive"] == ["sleep 601"]
