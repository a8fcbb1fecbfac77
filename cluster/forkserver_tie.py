"""Imported first by ftl's forkserver (cluster/preloaded_spawn.py): ties it to the launcher.

multiprocessing's forkserver is meant to exit when its client does, but it keeps copies of the
pipe that would tell it so; here the kernel ends it instead (PR_SET_PDEATHSIG, like every process
ftl starts: cluster/parent_death.py), and with it the workers forked from it. Only in the process
the launcher started as its forkserver (named by FTL_FORKSERVER_PARENT): importing this module
anywhere else does nothing.
"""

from __future__ import annotations

import os

PARENT_VARIABLE = "FTL_FORKSERVER_PARENT"


def _tie_to_launcher() -> None:
    launcher = os.environ.get(PARENT_VARIABLE, "")
    if launcher != str(os.getppid()):
        return
    from cluster.parent_death import die_with_parent

    die_with_parent()


_tie_to_launcher()
