"""The keeper of a local Ray's daemon group (see ray_daemon_group.py), run as a script.

It leads the process group that the daemons of ftl's local Ray join. It waits for EOF on stdin,
which ftl holds the only write end of: ftl released it or died (SIGKILL included). Then it ends its
group: SIGTERM (Ray's daemons shut down), up to GRACE_S for them to go, then SIGKILL, which ends the
keeper too. Standard library only, started with -I -S: nothing of ftl or Ray is imported here.
"""

import os
import signal
import sys
import time

GRACE_S = 1.0


def others_in_my_group() -> bool:
    """A live process other than this one in this process group (from /proc: no psutil here)."""
    me, group = os.getpid(), os.getpgrp()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        # After the command's closing parenthesis: state, ppid, pgrp.
        if fields[0] != b"Z" and int(fields[2]) == group:
            return True
    return False


def main() -> None:
    # The group's SIGTERM below reaches the keeper too; a Ctrl-C is not for it (not in the
    # terminal's foreground group anyway).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while sys.stdin.buffer.read(4096):
        pass
    if not others_in_my_group():
        return
    os.killpg(0, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while others_in_my_group() and time.monotonic() < deadline:
        time.sleep(0.05)
    if others_in_my_group():
        os.killpg(0, signal.SIGKILL)


if __name__ == "__main__":
    main()
