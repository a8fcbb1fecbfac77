"""One run at a time per run directory: RUN_DIR/.ftl-lock, held for the whole life of a run by
the process that owns it (the `ftl train` launcher on the local, Ray and torchrun backends, the
job's driver for a Ray Job, rank 0 under a user's own torchrun, the job itself under Slurm).

Why a lock file and not flock()/fcntl(): run directories live on NFS or Lustre shared by several
nodes, where POSIX locks are unreliable or switched off, and a lock taken on one node must be
seen from the others. Creating the file with O_CREAT|O_EXCL is atomic on local filesystems and
on NFSv3+. The file names its holder (host, pid, start time) and carries a heartbeat that a
background thread refreshes every HEARTBEAT_S seconds (each refresh renames a complete file over
the old one, so a reader never sees half of one).

A lock is stale, and the next run takes it over and says so, when
- its holder ran on this host and that process is gone (or the host rebooted since);
- its holder ran on another host and its heartbeat is older than STALE_AFTER_S (a host's clock
  may be off by far less than that);
- it was handed to a Slurm job that Slurm says has ended, or it belongs to the Slurm job that is
  starting now (a requeued job takes its own lock back, even from a node that died).
Taking over first renames the stale file aside: of several processes racing for it exactly one
rename succeeds, and the others find the winner's new lock.

The launchers of one multi-node torchrun launch (`ftl train` on every node with the same
rendezvous) share the lock: the first one holds it, the others join its group.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from cluster.slurm_states import FINAL_STATES
from trainer.errors import InputError
from trainer.run_layout import LOCK_FILE, RunLayout

HEARTBEAT_S = 10.0
STALE_AFTER_S = 120.0
READ_RETRIES = 20  # a file caught between its creation and its first write reads as empty
ATTEMPTS = 10

_held: dict[Path, RunLock] = {}  # locks this process owns, for hand_over_to_slurm_job


class RunDirLocked(InputError):
    """Another live run holds the run directory; the message names it and what to do."""


@dataclass(frozen=True)
class Holder:
    token: str
    purpose: str  # "ftl train", "ftl export", "Slurm job 123"
    host: str
    pid: int | None  # None: reserved for a Slurm job that has not started yet
    started: float
    heartbeat: float
    pid_start: str | None = None  # the process's start time in clock ticks (tells a reused pid apart)
    boot_id: str | None = None
    slurm_job: str | None = None
    group: str | None = None
    requeued: bool = False  # reserved by the job itself for its requeued start

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        if self.pid is None and self.requeued:
            return f"Slurm job {self.slurm_job} (requeued on {self.host} at {since}, waiting to resume)"
        if self.pid is None:
            return f"Slurm job {self.slurm_job} (submitted from {self.host} at {since}, not started yet)"
        job = f", Slurm job {self.slurm_job}" if self.slurm_job and self.slurm_job not in self.purpose else ""
        return f"{self.purpose} on host {self.host}, pid {self.pid}{job}, since {since}"


class RunLock:
    """An acquired lock (or, for a member of a multi-node launch, the group's lock it joined).
    Use as a context manager; leaving it releases the lock on every outcome."""

    def __init__(self, path: Path, holder: Holder, owned: bool):
        self.path, self.holder, self.owned = path, holder, owned
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def acquire(
        cls,
        run_dir: Path,
        purpose: str,
        *,
        group: str | None = None,
        slurm_job: str | None = None,
        wait_s: float = 0.0,
        stale_after_s: float = STALE_AFTER_S,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> RunLock:
        """Take RUN_DIR's lock or raise RunDirLocked naming its holder. `slurm_job`: this process
        is that Slurm job, which takes back a lock it was handed at submission or held before a
        requeue. `wait_s`: keep trying that long while another process holds it."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return cls._acquire(Path(run_dir), purpose, group, slurm_job, stale_after_s, heartbeat_s)
            except RunDirLocked:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(1.0)

    @classmethod
    def _acquire(
        cls,
        run_dir: Path,
        purpose: str,
        group: str | None,
        slurm_job: str | None,
        stale_after_s: float,
        heartbeat_s: float,
    ) -> RunLock:
        path = RunLayout(run_dir).lock
        for _ in range(ATTEMPTS):
            now = time.time()
            mine = Holder(
                token=uuid.uuid4().hex,
                purpose=purpose,
                host=socket.gethostname(),
                pid=os.getpid(),
                started=now,
                heartbeat=now,
                pid_start=_pid_start(os.getpid()),
                boot_id=_boot_id(),
                slurm_job=slurm_job,
                group=group,
            )
            if _create(path, mine):
                lock = cls(path, mine, owned=True)
                lock._start_heartbeat(heartbeat_s)
                return lock
            holder = read_holder(path)
            if holder is None:
                continue  # released meanwhile
            reason = stale_reason(holder, stale_after_s, slurm_job)
            if reason is None:
                if group is not None and holder.group == group:
                    return cls(path, holder, owned=False)
                raise RunDirLocked(
                    locked_message(Path(run_dir), holder, stale_after_s, for_a_start=purpose != "ftl export")
                )
            own_reservation = slurm_job is not None and holder.slurm_job == slurm_job  # no news to print
            if _remove_stale(path, holder) and not own_reservation:
                print(
                    f"ftl: taking over the lock of {run_dir} from {holder.describe()}: {reason}",
                    file=sys.stderr,
                    flush=True,
                )
        raise RunDirLocked(
            f"{run_dir}: could not take the run directory's lock ({path}): other processes keep taking it; "
            "is another ftl starting on the same output.dir?"
        )

    def release(self) -> None:
        self._stop_heartbeat()
        _held.pop(self.path, None)
        if not self.owned:
            return
        self.owned = False
        current = read_holder(self.path)
        if current is not None and current.token == self.holder.token:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def hand_over_to_slurm_job(self, job_id: str, requeued: bool = False) -> None:
        """After sbatch (or, `requeued`, when the job itself is about to be requeued): the lock now
        stands for the queued job, which takes it when it starts; this process no longer releases
        it. Until then no other run can start on the directory."""
        if not self.owned:
            return
        self._stop_heartbeat()
        now = time.time()
        reserved = replace(
            self.holder,
            token=uuid.uuid4().hex,
            purpose=f"Slurm job {job_id}",
            pid=None,
            pid_start=None,
            started=now,
            heartbeat=now,
            slurm_job=job_id,
            requeued=requeued,
        )
        if self._rewrite(reserved):
            self.holder = reserved
        self.owned = False
        _held.pop(self.path, None)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _start_heartbeat(self, every_s: float) -> None:
        _held[self.path] = self
        self._thread = threading.Thread(target=self._beat, args=(every_s,), name="ftl-run-lock-heartbeat", daemon=True)
        self._thread.start()

    def _stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        self._thread = None

    def _beat(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                if not self._rewrite(replace(self.holder, heartbeat=time.time())):
                    taker = read_holder(self.path)
                    print(
                        f"ftl: WARNING: lost the lock of {self.path.parent} (this process stalled for longer than the stale "
                        f"limit?){'; it is now held by ' + taker.describe() if taker else ''}. Two runs may now write to "
                        "this run directory.",
                        file=sys.stderr,
                        flush=True,
                    )
                    self.owned = False
                    return
            except OSError as exc:  # a hiccup of a network filesystem; the next beat tries again
                print(
                    f"ftl: WARNING: could not refresh the run directory lock {self.path}: {exc}",
                    file=sys.stderr,
                    flush=True,
                )

    def _rewrite(self, holder: Holder) -> bool:
        """Replace the lock file's content if it is still ours; False when it is not."""
        current = read_holder(self.path)
        if current is None or current.token != self.holder.token:
            return False
        tmp = self.path.with_name(f"{LOCK_FILE}.tmp-{self.holder.token}")
        tmp.write_text(json.dumps(asdict(holder)))
        os.replace(tmp, self.path)
        self.holder = holder
        return True


def hand_over_to_slurm_job(run_dir: Path, job_id: str) -> None:
    """Called once sbatch accepted the job: the lock this process holds on RUN_DIR (if any)
    becomes the job's."""
    lock = _held.get(RunLayout(run_dir).lock)
    if lock is not None:
        lock.hand_over_to_slurm_job(job_id)


def read_holder(path: Path) -> Holder | None:
    """The lock's holder; None when there is no lock file. An unreadable one (a holder that died
    between creating and writing it) is described by its modification time only."""
    for _ in range(READ_RETRIES):
        try:
            text = path.read_text()
            modified = path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            return Holder(**json.loads(text))
        except (ValueError, TypeError):
            time.sleep(0.1)
    return Holder(
        token="?", purpose="unknown (unreadable lock file)", host="?", pid=None, started=modified, heartbeat=modified
    )


def stale_reason(holder: Holder, stale_after_s: float = STALE_AFTER_S, slurm_job: str | None = None) -> str | None:
    """Why `holder` no longer holds the lock, or None while it does."""
    if slurm_job is not None and holder.slurm_job == slurm_job:
        return f"it belongs to this Slurm job ({slurm_job}): reserved at submission or held before a requeue"
    if holder.pid is None and holder.slurm_job:
        state = _slurm_job_state(holder.slurm_job)
        if state is not None:
            return None if state == "ACTIVE" else f"Slurm job {holder.slurm_job} has ended ({state})"
    elif holder.pid is not None and holder.host == socket.gethostname():
        if holder.boot_id and _boot_id() and holder.boot_id != _boot_id():
            return f"{holder.host} has rebooted since"
        return None if _pid_alive(holder.pid, holder.pid_start) else f"process {holder.pid} on {holder.host} is gone"
    age = time.time() - holder.heartbeat
    return f"no heartbeat from {holder.host} for {age:.0f} s" if age > stale_after_s else None


def locked_message(
    run_dir: Path, holder: Holder, stale_after_s: float = STALE_AFTER_S, for_a_start: bool = True
) -> str:
    """`for_a_start`: a run's start, which may take another output.dir; an export waits for the
    run (trial 62b: an export was told to choose another output.dir)."""
    age = max(0.0, time.time() - holder.heartbeat)
    if holder.pid is None or holder.purpose.startswith("Slurm job"):  # a job's own process: Slurm stops it
        stop = f"cancel it (scancel {holder.slurm_job})" if holder.slurm_job else "make sure no ftl uses it"
    elif holder.purpose.startswith("Ray Job "):  # a job's driver: no terminal of its own
        stop = f"stop it (`ftl stop {holder.purpose.removeprefix('Ray Job ')} --address HEAD`; it checkpoints first)"
    else:
        stop = (
            f"stop it (Ctrl-C in its terminal, or `kill -INT {holder.pid}` on {holder.host}; it checkpoints first"
            f"{f'; or scancel {holder.slurm_job}' if holder.slurm_job else ''})"
        )
    lock = f"{holder.describe()} (lock {RunLayout(run_dir).lock}, last heartbeat {age:.0f} s ago)"
    if for_a_start:
        said = (
            f"output.dir {run_dir} is in use by another run: {lock}. Wait for that run to end, {stop}, or choose "
            "another output.dir."
        )
    elif holder.purpose == "ftl export":
        said = f"{run_dir} is being exported by another ftl export: {lock}. Export again once it has ended."
    else:
        said = (
            f"{run_dir} is in use by a run: {lock}. Export once that run has ended, or {stop} and export the "
            "checkpoint it writes then."
        )
    return (
        f"{said} A lock whose process is gone is taken over automatically (at once on {holder.host}, after "
        f"{stale_after_s:.0f} s without heartbeat from another host)."
    )


def _create(path: Path, holder: Holder) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, json.dumps(asdict(holder)).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def _remove_stale(path: Path, judged: Holder) -> bool:
    """Move the stale lock aside, atomically; False if another process got there first or the
    lock changed since it was judged (then it is put back)."""
    aside = path.with_name(f"{LOCK_FILE}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    moved = read_holder(aside)
    if moved is not None and (moved.token, moved.heartbeat) == (judged.token, judged.heartbeat):
        aside.unlink()
        return True
    try:  # a heartbeat or a new holder arrived in between: restore it unless a newer lock exists
        os.link(aside, path)
    except FileExistsError:
        pass
    except OSError:  # no hard links on this filesystem
        if not path.exists():
            os.rename(aside, path)
    aside.unlink(missing_ok=True)
    return False


def _pid_alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    stat = _proc_stat(pid)
    if stat is None:
        return True  # no /proc: trust kill(0)
    state, start = stat
    return state != "Z" and (started is None or start == started)


def _pid_start(pid: int) -> str | None:
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks) from /proc/PID/stat (Linux)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()  # after the command name, which may hold spaces
    return fields[0], fields[19]


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _slurm_job_state(job_id: str) -> str | None:
    """ "ACTIVE" while Slurm still holds the job (queued, running, requeued), its final state once
    it ended, None when Slurm cannot be asked from here."""
    import shutil
    import subprocess

    if shutil.which("scontrol") is None:
        return None
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return "gone from Slurm's records" if "Invalid job id" in out.stderr else None
    fields = dict(f.split("=", 1) for f in out.stdout.split() if "=" in f)
    state = fields.get("JobState", "")
    return state if state in FINAL_STATES else "ACTIVE"
