"""Prepare the run directory: refuse to clobber a finished run or a directory ftl did not make,
take the run directory's lock, write the config snapshot (what every worker reads) and the
environment record (versions, git hash, host) that make a run reproducible."""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from cluster.run_lock import RunDirLocked, RunLock, locked_message, read_holder, stale_reason
from launcher.errors import UserError
from launcher.run_config import RunConfig
from trainer.checkpointing.protocol import MANIFEST, committed_checkpoints, step_of
from trainer.run_layout import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    DOCTOR_PROBE,
    LOCK_FILE,
    RUN_MARKER,
    STEP_PREFIX,
    SUMMARY_FILE,
    WRITE_PROBE,
    RunLayout,
)
from trainer.secret_values import REDACTED, redact, redact_argv  # noqa: F401 - redact: shown configs

TRACKED_PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "bitsandbytes",
    "deepspeed",
    "ray",
    "accelerate",
    "datasets",
    "ftl",
)
# Names ftl itself may leave in a directory before its marker (RUN_MARKER, written first into every
# run directory: "ftl made this"): the lock (and its temporary names), the write probe, `ftl doctor`'s probes.
OWN_NAMES = (RUN_MARKER, LOCK_FILE, WRITE_PROBE, DOCTOR_PROBE)


def local_run_dir(cfg: RunConfig) -> Path:
    """Where workers write: output.dir, or for a URI output.dir its local working copy."""
    from cluster.run_storage import default_local_dir, is_uri

    if not is_uri(cfg.output.dir):
        return Path(cfg.output.dir)
    return Path(cfg.output.local_dir) if cfg.output.local_dir else default_local_dir(cfg.output.dir)


@contextmanager
def running_in(cfg: RunConfig, argv: list[str] | None = None, purpose: str = "ftl train") -> Iterator[Path]:
    """The prepared run directory, locked for this process until the block ends, whatever the
    outcome (finished, stopped, failed, Ctrl-C)."""
    snapshot = RunLayout(local_run_dir(cfg)).config
    previous = snapshot.read_text(encoding="utf-8") if snapshot.is_file() else None
    with ExitStack() as hold:
        run_dir = prepare_run_dir(cfg, argv, hold=hold, purpose=purpose)
        committed = committed_checkpoints(run_dir)
        try:
            yield run_dir
        except BaseException:
            # A start that committed no checkpoint (refused: a resume whose checkpoint does not fit
            # the changed config, bad data; failed: a corrupt weights file of a changed model.path,
            # trial 37b; stopped before its first step) left nothing written with this config: the
            # run directory keeps the config its checkpoints were written with, as before the attempt.
            if previous is not None and committed_checkpoints(run_dir) == committed:
                try:
                    _atomic_write(snapshot, previous)
                except OSError:
                    pass  # the disk is full (what failed the start, reported as it is): config.yaml stays the new one
            raise


def _train_on_hint(run_dir: Path, asked: str | None = None) -> str:
    """How to train a finished run further (more steps, another epoch): a new run that starts
    from its last checkpoint, or from the one checkpoint.resume names (`asked`) when it is one of
    this run's (trial 38c: the hint named the latest instead). A continuation that wrote no
    checkpoint of its own (early stopping found nothing better) goes on from the checkpoint it
    continued from (trial 45a: no hint at all)."""
    summary = _finished_summary(run_dir)
    checkpoints = committed_checkpoints(run_dir)
    chosen = next((c for c in checkpoints if asked and Path(asked).resolve() == c.resolve()), None)
    if checkpoints:
        start, which = chosen or checkpoints[-1], "that checkpoint" if chosen else "its last checkpoint"
    else:
        origin = (summary.get("continued_from") or {}).get("path")
        if not isinstance(origin, str) or not Path(origin).is_dir():
            return ""
        start, which = Path(origin), "the checkpoint it continued from (it wrote none of its own)"
    resume = shlex.quote(f"checkpoint.resume={start}")
    step = step_of(start)
    hint = (
        f"; to train it further, start a new run from {which} with more steps: output.dir=runs/my-run-2 "
        f"{resume} training.max_steps=N (N above {step}: it counts on from step {step}; or more training.epochs)"
    )
    early = (summary.get("transfer") or {}).get("early_stopping") or {}
    stopped = early.get("stopped_at") if isinstance(early, dict) else None
    if isinstance(stopped, int) and step < stopped:
        # Trial 45a: the continuation replayed steps 25-32 exactly and stopped at 32 again.
        # Trial 47a: said as a sure replay, and a longer decaying schedule trained on to a better best.
        hint += (
            f". Early stopping stopped this run at step {stopped}, after that checkpoint: from it the same "
            f"transfer.early_stopping settings (patience {early.get('patience')}, min_delta {early.get('min_delta')}) "
            f"train steps {step + 1}-{stopped} again and stop there if their learning rates are the same "
            "(training.lr_scheduler=constant; a decaying schedule over more steps changes them, and the run may "
            "then train further); loosen them (or set transfer.early_stopping.enabled=false) to train further"
        )
    return hint


def _finished_summary(run_dir: Path) -> dict[str, Any]:
    try:
        summary = json.loads(RunLayout(run_dir).summary.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def prepare_run_dir(
    cfg: RunConfig, argv: list[str] | None = None, hold: ExitStack | None = None, purpose: str = "ftl train"
) -> Path:
    """Check and write the run directory under its lock. The lock is released on return unless
    `hold` is given: then it is released when `hold` closes."""
    run_dir = local_run_dir(cfg)
    layout = RunLayout(run_dir)
    refuse_foreign_dir(run_dir)  # first: a user's own summary.json does not make an ftl run
    finished = finished_run_problem(run_dir, cfg.checkpoint.resume, uri=_uri_of(cfg))
    if finished:
        raise UserError(finished)
    blocked = file_in_the_way(run_dir)
    if blocked:
        raise UserError(blocked)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f"{WRITE_PROBE}-{os.getpid()}"  # per process: two launchers may probe at once
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UserError(
            f"output.dir {run_dir}: cannot write there ({exc.strerror}); pick a writable directory"
        ) from None
    with ExitStack() as scope:
        scope.enter_context(lock_run_dir(run_dir, purpose, group=_launch_group(cfg, run_dir)))
        if not layout.marker.exists():
            _atomic_write(
                layout.marker, json.dumps({"ftl_run_directory": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            )
        # The snapshot is what the workers read, so it is the config itself: it holds no secrets
        # because load_config refuses them (trainer/secret_values.py).
        snapshot = yaml.safe_dump(
            cfg.snapshot_values(), sort_keys=False, allow_unicode=True, width=2**31
        )  # paths as written, one line
        _atomic_write(layout.config, snapshot)
        _atomic_write(layout.environment, json.dumps(environment_record(argv), indent=1))
        if hold is not None:
            hold.push(scope.pop_all())
    return run_dir


def lock_run_dir(run_dir: Path, purpose: str, group: str | None = None) -> RunLock:
    """RUN_DIR's lock (cluster/run_lock.py), or a UserError naming the run that holds it."""
    try:
        return RunLock.acquire(run_dir, purpose, group=group)
    except RunDirLocked as exc:
        raise UserError(str(exc)) from None


def _launch_group(cfg: RunConfig, run_dir: Path) -> str | None:
    """Multi-node torchrun: `ftl train` runs on every node with the same rendezvous; they share one lock."""
    cluster = cfg.cluster
    if cluster.backend != "torchrun" or cluster.nodes == 1:
        return None
    from cluster.torchrun import rdzv_endpoint

    return f"torchrun {rdzv_endpoint(cluster)} {cluster.torchrun.rdzv_id or run_dir.name}"


def refuse_foreign_dir(run_dir: Path) -> None:
    """A non-empty directory that ftl did not make is the user's: never written to. Accepted: a
    missing or empty directory, one with ftl's marker, and runs made before the marker existed
    (their config.yaml + environment.json in ftl's format). Never one inside another run directory:
    its files are that run's (moved, copied and deleted with it), and `ftl runs` lists only that run."""
    for folder in run_dir.resolve().parents:
        if RunLayout(folder).marker.is_file():
            raise UserError(
                f"output.dir {run_dir} is inside another run directory ({folder}), whose files are that run's own; "
                f"choose an output.dir outside it (e.g. {folder.parent / (folder.name + '-' + run_dir.name)})"
            )
    if not run_dir.is_dir() or RunLayout(run_dir).marker.exists():
        return
    entries = sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(OWN_NAMES))
    if not entries or _made_by_earlier_ftl(run_dir) or _holds_only_copied_checkpoints(run_dir, entries):
        return
    shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
    raise UserError(
        f"output.dir {run_dir} is not empty and is not an ftl run directory (no {RUN_MARKER}; it holds {shown}); "
        "ftl does not write into a directory it did not make. Choose an output.dir that does not exist yet "
        "or is empty (e.g. a new subdirectory)"
    )


def _uri_of(cfg: RunConfig) -> str | None:
    from cluster.run_storage import display_uri, is_uri

    return display_uri(cfg.output.dir) if is_uri(cfg.output.dir) else None


def finished_run_problem(run_dir: Path, asked_resume: str | None = None, uri: str | None = None) -> str | None:
    """`uri`: run_dir is the working copy of that output.dir, whose own finished run is refused by
    the storage check first (trial 55a: the copy was called output.dir, and said again by validate)."""
    if not RunLayout(run_dir).is_finished():
        return None
    if uri:
        return (
            f"the working copy {run_dir} of output.dir {uri} holds a finished run ({SUMMARY_FILE} exists) that "
            f"{uri} does not hold; delete the working copy to start the run anew at {uri}, or choose a new output.dir"
        )
    return (
        f"output.dir {run_dir} already holds a finished run ({SUMMARY_FILE} exists); "
        "choose a new output.dir (e.g. output.dir=runs/my-run-2) or delete the old one"
        + _train_on_hint(run_dir, asked_resume)
    )


def file_in_the_way(run_dir: Path) -> str | None:
    """output.dir is a file, or inside one (no folder can be made there)."""
    blocking = next((p for p in [run_dir, *run_dir.parents] if p.exists() and not p.is_dir()), None)
    if blocking is None:
        return None
    where = "is" if blocking == run_dir else f"is inside {blocking}, which is"
    return f"output.dir {run_dir} {where} a file, not a directory; pick another output.dir"


def output_dir_problems(run_dir: Path, asked_resume: str | None = None, uri: str | None = None) -> list[str]:
    """What `ftl train` refuses in output.dir as it is (for `ftl validate`): a file or a path inside
    one (validate said valid for the latter: trial 37b), a folder of the user's, a finished run, a run
    in progress. `uri`: run_dir is the working copy of that output.dir."""
    blocked = file_in_the_way(run_dir)
    if blocked:
        return [blocked]
    try:
        refuse_foreign_dir(run_dir)
    except UserError as exc:
        return [str(exc)]
    finished = finished_run_problem(run_dir, asked_resume, uri)
    if finished:
        return [finished]
    held = held_by_a_run(run_dir)  # trial 45b: validate said valid, and `ftl train` was refused
    if held:
        return [held]
    unwritable = _write_refusal(run_dir)
    return [unwritable] if unwritable else []


def working_copy_of(given: str) -> str:
    """A run (or folder of runs) given as its object-storage URI, read through its local working
    copy, as the run itself is written (trial 53a: `ftl runs/report/export/generate URI` said "no
    such directory" of the output.dir the user had passed). Anything else is returned as given."""
    from cluster.run_storage import catch_up, default_local_dir, display_uri, is_uri

    if not is_uri(given):
        return given
    shown = display_uri(given)
    local = default_local_dir(given)
    if local.is_dir():
        print(f"ftl: {shown}: reading its local working copy {local}", file=sys.stderr)
        caught_up = catch_up(given, local)
        if caught_up:
            print(f"ftl: note: {caught_up}", file=sys.stderr)
        return str(local)
    raise UserError(
        f"{shown}: ftl reads a run on object storage through its local working copy, and {local} (the default "
        "place of one) is not there; pass the working copy's folder (output.local_dir, if the run set one), or "
        "copy the run from the bucket to a local folder and pass that"
    )


def storage_problems(cfg: RunConfig) -> list[str]:
    """What a start would meet at an output.dir on object storage, before anything starts (trial
    53a: validate checked nothing there; train hung on an unreachable bucket, printed a traceback
    for an unreachable endpoint, and found a file:// target that is a file only after Ray started).
    A file:// target gets the checks a local output.dir gets; a working copy of another URI's run
    is refused (trial 55a: it was resumed into the new URI, which then held the other run)."""
    from cluster.run_storage import StorageError, is_uri, open_remote, storage_problem

    output_dir = cfg.output.dir
    if not is_uri(output_dir):
        return []
    try:
        remote = open_remote(output_dir)
    except StorageError as exc:
        return [str(exc)]
    other = _working_copy_of_another(local_run_dir(cfg), remote.display)
    if other:
        return [other]
    if urlsplit(output_dir).scheme == "file":
        local = Path(remote.path)
        blocked = file_in_the_way(local) or _write_refusal(local)
        if blocked:
            return [blocked.replace(f"output.dir {local}", f"output.dir {remote.display}")]
    problem = storage_problem(remote)
    return [problem] if problem else []


def _working_copy_of_another(run_dir: Path, display: str) -> str | None:
    """The URI whose run a working copy holds (its config snapshot's output.dir), when it is another."""
    try:
        snapshot = yaml.safe_load(RunLayout(run_dir).config.read_text(encoding="utf-8")) or {}
        stored = str(snapshot["output"]["dir"])
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return None  # no run there yet (or not one ftl wrote: its own check says so)
    from cluster.run_storage import display_uri

    held = display_uri(stored) if "://" in stored else stored
    if held == display:
        return None
    return (
        f"output.local_dir {run_dir} is the working copy of {held}, not of {display}: give this run its own "
        "output.local_dir (or leave it out: each URI then gets its own working copy)"
    )


def _write_refusal(run_dir: Path) -> str | None:
    """prepare_run_dir's refusal of a place it cannot write, said before it (trial 50b: validate
    said valid for an immutable folder; train refused it)."""
    from launcher.local_paths import nearest_existing, new_entry_refusal

    where = nearest_existing(run_dir)
    if not where.is_dir():
        return None  # a file in the way: file_in_the_way says it
    refusal = new_entry_refusal(where)
    return f"output.dir {run_dir}: cannot write there ({refusal}); pick a writable directory" if refusal else None


def held_by_a_run(run_dir: Path, group: str | None = None) -> str | None:
    """Why a run in progress (its lock held by a live process or a Slurm job) keeps others out, or
    None. `group`: a multi-node launch's, whose members share the lock (_launch_group)."""
    holder = read_holder(RunLayout(run_dir).lock) if run_dir.is_dir() else None
    if holder is None or stale_reason(holder) is not None or (group is not None and holder.group == group):
        return None
    return locked_message(run_dir, holder)


def launch_held_by_a_run(cfg: RunConfig) -> str | None:
    """held_by_a_run for this config's launch (before the checks that precede taking the lock)."""
    run_dir = local_run_dir(cfg)
    return held_by_a_run(run_dir, _launch_group(cfg, run_dir))


def is_ftl_run(run_dir: Path) -> bool:
    """A directory ftl made for a run: its marker, or a run made before the marker existed."""
    return RunLayout(run_dir).marker.is_file() or _made_by_earlier_ftl(run_dir)


def _holds_only_copied_checkpoints(run_dir: Path, entries: list[str]) -> bool:
    """A new run seeded by copying committed checkpoints into it (RUN/checkpoints/step-N, each with
    ftl's manifest.json): continuing someone's checkpoint elsewhere, or on another worker count."""
    checkpoints = RunLayout(run_dir).checkpoints
    if entries != [CHECKPOINTS_DIR] or not checkpoints.is_dir():
        return False
    steps = list(checkpoints.iterdir())
    return bool(steps) and all(re.fullmatch(rf"{STEP_PREFIX}\d+", p.name) and (p / MANIFEST).is_file() for p in steps)


def _made_by_earlier_ftl(run_dir: Path) -> bool:
    try:
        layout = RunLayout(run_dir)
        config = yaml.safe_load(layout.config.read_text(encoding="utf-8"))
        env = json.loads(layout.environment.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return (
        isinstance(config, dict)
        and {"model", "output"} <= config.keys()
        and isinstance(env, dict)
        and {"packages", "git_commit", "argv"} <= env.keys()
        and "ftl" in (env.get("packages") or {})
    )


def environment_record(argv: list[str] | None = None) -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "packages": versions,
        "git_commit": _git_commit(),
        "argv": redact_argv(list(argv or sys.argv)),
        "cwd": os.getcwd(),  # where argv's relative paths are (trial 51b: the command could not be replayed)
    }


def _git_commit() -> str | None:
    source = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(source), "status", "--porcelain"], capture_output=True, text=True, timeout=5
    )
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def load_snapshot(run_dir: Path) -> RunConfig:
    """The config a run was started with (paths already absolute)."""
    path = RunLayout(run_dir).config
    if not path.exists():
        raise UserError(f"{run_dir}: not a run directory (no {CONFIG_FILE}); pass the output.dir of a run")
    if not is_ftl_run(run_dir):
        raise UserError(
            f"{run_dir}: not an ftl run directory (no {RUN_MARKER}; its {CONFIG_FILE} is not one ftl wrote); "
            "pass the output.dir of a run"
        )
    try:
        return RunConfig.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (ValueError, yaml.YAMLError) as exc:  # pydantic's ValidationError is a ValueError
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{path}: not a config this ftl can read ({first}); was it edited by hand?") from None
