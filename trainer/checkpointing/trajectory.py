"""Which run a start continues, and what becomes of checkpoints that belong to another one.

A trajectory is the sequence of steps one training run follows; `checkpoints/step-N` only ever
holds the current trajectory's checkpoints, so resume (auto) and retention see no other. A start
decides on rank 0, before any model work (`plan_start`), and acts once the chosen checkpoint
passed every check (`begin`):

- resume: auto   continue from the newest valid checkpoint (a fresh start when there is none).
- resume: never  start at step 0. Checkpoints already in checkpoints/ are another run's: the start
                 is refused, naming them, unless checkpoint.move_aside is set, which moves them
                 (with that run's metrics.jsonl and tensorboard/) into a branch.
- resume: PATH   continue from PATH (step N). This run directory's checkpoints after step N are
                 the abandoned rest of the old trajectory and move into a branch, with their
                 metrics records after step N. When PATH is not one of this run directory's own
                 checkpoints (another run's, or a branch's), everything here is another
                 trajectory and moves, as for `never`.

A branch is `checkpoints/branches/<time>-from-step-N/` (N: where it left the trajectory that now
continues): never deleted, never resumed by `auto`, never counted by retention. Resume it by
pointing checkpoint.resume at one of its step-N folders.

The request that started the current trajectory is recorded in checkpoints/trajectory.json. A
start with the same request (`never`, or the same PATH) is that run started again (a restart by
Ray, torchrun or a Slurm requeue, or the same command after a stop) and continues its own
checkpoints like `auto`: a request is carried out once.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from shlex import quote  # a path with a space in a command to paste (trial 60b)
from typing import Any

from trainer.checkpointing.compat import trainable_state_problem
from trainer.checkpointing.protocol import (
    INVALID_PREFIX,
    MANIFEST,
    atomic_write_text,
    checkpoints_dir,
    committed_checkpoints,
    fsync_dir,
    latest_valid_checkpoint,
    newer_format_checkpoint,
    read_manifest,
    step_of,
    update_latest_hint,
    validate_checkpoint,
)
from trainer.errors import TrainerInputError
from trainer.logging_setup import warn_loudly
from trainer.metrics import move_records_after
from trainer.run_layout import METRICS_FILE, RunLayout

log = logging.getLogger(__name__)

TRAJECTORY_FILE = "trajectory.json"
BRANCHES_DIR = "branches"


@dataclass
class StartPlan:
    resume_from: Path | None
    request: str  # "auto", "never", or the resolved checkpoint path
    set_aside: list[Path] = field(default_factory=list)  # step-N folders of another trajectory
    branch_step: int = 0  # where the set-aside trajectory leaves the one that continues
    whole_run: bool = False  # everything here is another run's (its metrics and tensorboard move too)
    record: bool = True  # this start begins a trajectory: record its request


def plan_start(run_dir: Path, mode: str, *, move_aside: bool) -> StartPlan:
    """Rank 0. Raises TrainerInputError for a start that would mix two runs or a bad PATH."""
    recorded = read_record(run_dir)
    request = mode if mode in ("auto", "never") else str(Path(mode).resolve())
    again = (recorded or {}).get("request") == request
    if mode == "auto" or again:
        latest = latest_valid_checkpoint(run_dir)
        if latest is not None:
            return StartPlan(latest, request, record=False)
        if mode == "auto":  # a fresh start; a record of another request no longer describes this run
            return StartPlan(None, "auto", record=recorded is not None)
        # Started before with this request but nothing of its own committed yet: carry it out again
        # (what metrics that attempt logged are its own: superseded by the next start record, not moved).
    if mode == "never":
        earlier = committed_checkpoints(run_dir)
        if earlier and not move_aside:
            raise TrainerInputError(_never_over_earlier(run_dir, earlier))
        return StartPlan(None, "never", set_aside=_step_dirs(run_dir), whole_run=not again)
    path = Path(request)
    problem = validate_checkpoint(path) if path.is_dir() else "not a directory"
    if problem:
        raise TrainerInputError(_bad_resume_path(mode, problem))
    step = int(read_manifest(path)["step"])
    own = path.parent == checkpoints_dir(run_dir).resolve()
    later = [p for p in _step_dirs(run_dir) if not own or step_of(p) > step]
    return StartPlan(path, request, set_aside=later, branch_step=step, whole_run=not own and not again)


def refusal_before_launch(
    run_dir: Path,
    mode: str,
    *,
    move_aside: bool,
    max_steps: int | None,
    objective: str | None = None,
    loss_type: str | None = None,
    method: dict[str, Any] | None = None,
    layout_check: Callable[[Path, dict[str, Any]], str | None] | None = None,
    transfer: dict[str, Any] | None = None,
    num_blocks: int | None = None,
) -> str | None:
    """The refusal the workers' start would end in (plan_start, then the resume point's step
    against max_steps), found by the launcher before any backend starts, without reading weights:
    only sizes are checked, and one checkpoint's checksums before refusing because of it. None
    when the start looks fine; the workers still make every check (checksums, what fits)."""
    recorded = read_record(run_dir)
    request = mode if mode in ("auto", "never") else str(Path(mode).resolve())
    newer = newer_format_checkpoint(run_dir) if mode != "never" else None
    if newer:
        return newer
    if mode == "auto" or (recorded or {}).get("request") == request:
        fast_valid = (
            p for p in reversed(committed_checkpoints(run_dir)) if validate_checkpoint(p, checksums=False) is None
        )
        resume_from = next(fast_valid, None)
    elif mode == "never":
        earlier = committed_checkpoints(run_dir)
        return _never_over_earlier(run_dir, earlier) if earlier and not move_aside else None
    else:
        resume_from = Path(request)
        problem = validate_checkpoint(resume_from, checksums=False) if resume_from.is_dir() else "not a directory"
        if problem:
            return _bad_resume_path(mode, problem)
    if resume_from is None:
        return None
    manifest = read_manifest(resume_from)
    problem = past_max_steps(resume_from, int(manifest.get("step", 0)), max_steps, run_dir)
    if problem is None and objective is not None:
        problem = objective_changed(resume_from, manifest, objective, loss_type)
    if problem is None and method is not None:  # `method`: the config's method section as JSON values
        problem = trainable_state_problem(resume_from, manifest, method, transfer, num_blocks)
    if problem is None and layout_check is not None:  # another strategy, ZeRO stage or optimizer
        problem = layout_check(resume_from, manifest)
    # A corrupt one is not what the workers resume (auto falls back to an older checkpoint).
    return problem if problem and validate_checkpoint(resume_from) is None else None


def move_preview(run_dir: Path, mode: str, *, move_aside: bool) -> str | None:
    """What a start with this checkpoint.resume would move into a branch, said by `ftl validate`
    before `ftl train` moves it (None: nothing would move, or the start is refused). Reads only."""
    recorded = read_record(run_dir)
    request = mode if mode in ("auto", "never") else str(Path(mode).resolve())
    if mode == "auto" or (recorded or {}).get("request") == request:
        return None
    layout = RunLayout(run_dir)
    history = [item.name for item in (layout.metrics, layout.tensorboard) if item.exists()]
    if mode == "never":
        if not move_aside:
            return None  # refused (refusal_before_launch says why)
        later, step, whole = _step_dirs(run_dir), 0, True
    else:
        path = Path(request)
        try:
            step = int(read_manifest(path)["step"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # not a checkpoint: refused
        whole = path.parent != checkpoints_dir(run_dir).resolve()
        later = [p for p in _step_dirs(run_dir) if whole or step_of(p) > step]
    if not later and not (whole and history):
        return None
    moved = [_names(later)] if later else []
    if whole:
        moved += history
    elif later:
        moved.append(f"the metrics after step {step}")
    where = checkpoints_dir(run_dir) / BRANCHES_DIR / f"<time>-from-step-{step}"
    return (
        f"`ftl train` with checkpoint.resume={mode} would move {', '.join(moved)} to {where}/ (kept, not resumed by "
        "auto and not counted by retention; resume them by naming one of their step-N folders)"
    )


def objective_changed(checkpoint: Path, manifest: dict, objective: str, loss_type: str | None = None) -> str | None:
    """Why resuming `checkpoint` under another training.objective (or DPO loss_type) is refused, or
    None. A resume continues one run: its optimizer state, its loss curve and its metrics (a DPO
    loss of 0.69 and an ORPO loss of 1.15 are not better and worse; trial 44b: an IPO resume of a
    sigmoid run jumped from 0.66 to 12 within one curve); another objective is another run."""
    recorded = manifest.get("config")
    training = recorded.get("training") if isinstance(recorded, dict) else None
    before = training.get("objective", "sft") if isinstance(training, dict) else None
    if before is None:
        return None
    setting, was, now = "training.objective", before, objective
    if before == objective:
        preference = training.get("preference") if isinstance(training, dict) else None
        was_loss = preference.get("loss_type") if isinstance(preference, dict) else None
        if objective != "dpo" or loss_type is None or was_loss in (None, loss_type):
            return None
        setting, was, now = "training.preference.loss_type", was_loss, loss_type
    return (
        f"{checkpoint} was trained with {setting}={was}, and this config says {now}: a resume "
        f"continues one objective (its optimizer state, loss and metrics). To train {now} on these weights, "
        f"export them (`ftl export {quote(str(checkpoint.parent.parent))} --checkpoint {checkpoint.name} --merge`) and start "
        f"a new output.dir with model.path set to the merged model; or set {setting} back to "
        f"{was} to continue"
    )


def past_max_steps(checkpoint: Path, step: int, max_steps: int | None, run_dir: Path) -> str | None:
    """Why resuming `checkpoint` (at `step`) is refused under training.max_steps, or None."""
    if not max_steps or step <= max_steps:
        return None
    return (
        f"the run's latest checkpoint ({checkpoint.name}) is past training.max_steps={max_steps}: nothing is left to "
        f"train, and finishing would label {step} steps as {max_steps}; set training.max_steps above {step} to "
        f"train further, or export these weights with `ftl export {quote(str(run_dir))}`"
    )


def _never_over_earlier(run_dir: Path, earlier: list[Path]) -> str:
    root = checkpoints_dir(run_dir)
    return (
        f"checkpoint.resume=never, but {root} holds checkpoints of an earlier run ({_names(earlier)}); starting "
        "over here would mix two runs. Use a new output.dir, or set checkpoint.move_aside=true to move them to "
        f"{root / BRANCHES_DIR}/ (nothing is deleted), or checkpoint.resume=auto to continue that run."
    )


def _bad_resume_path(mode: str, problem: str) -> str:
    path = Path(mode)
    if path.name == "checkpoints" and path.is_dir():  # the run's checkpoints folder itself
        path = path.parent
    if (path / "checkpoints").is_dir() and not (Path(mode) / MANIFEST).exists():
        # A run directory, not one of its checkpoints: "no manifest (the write did not finish)"
        # sent the user looking for an interrupted save (trial 37b).
        # Read-only (latest_valid_checkpoint would move an invalid one aside, in another run's folder).
        fine = [c for c in committed_checkpoints(path) if validate_checkpoint(c, checksums=False) is None]
        latest = fine[-1] if fine else None
        pick = f"checkpoint.resume={latest}" if latest is not None else "one of its checkpoints/step-N folders"
        return (
            f"checkpoint.resume={mode!r} is {'a run' if path == Path(mode) else 'the checkpoints folder of a run'} "
            f"directory, not a checkpoint: name one of its checkpoints, e.g. {pick}"
        )
    not_a_checkpoint = _what_else_it_is(Path(mode))
    if not_a_checkpoint:
        return f"checkpoint.resume={mode!r} {not_a_checkpoint}"
    return f"checkpoint.resume={mode!r}: cannot resume from it: {problem}"


def _what_else_it_is(path: Path) -> str | None:
    """A folder without a manifest that was never a checkpoint write: said as what it is, with the
    key that takes it (trial 63e: an empty folder was said as "the write did not finish")."""
    example = "e.g. runs/x/checkpoints/step-40"
    if (path / MANIFEST).exists() or not path.is_dir():
        return None
    if not any(path.iterdir()):
        return f"is an empty folder, not a checkpoint: name a checkpoint folder ({example}), or use auto or never"
    if (path / "adapter_config.json").is_file():
        return (
            "is an adapter (adapter_config.json), not an ftl checkpoint: to train on from its weights, set "
            f"method.lora.init_from={path}; to resume a run, name its checkpoint folder ({example})"
        )
    if (path / "config.json").is_file():
        return (
            "is a model folder (config.json), not an ftl checkpoint: to fine-tune it, set "
            f"model.path={path}; to resume a run, name its checkpoint folder ({example})"
        )
    if (path.parent / "checkpoints").is_dir() and ((path / "adapter").is_dir() or (path / "merged").is_dir()):
        # A run's final/ (trial 64c: the path a user most likely types, said as an unfinished write).
        fine = [c for c in committed_checkpoints(path.parent) if validate_checkpoint(c, checksums=False) is None]
        pick = f"checkpoint.resume={fine[-1]}" if fine else f"one of {path.parent / 'checkpoints'}/step-N"
        adapter = f"; to start a new run from its adapter, method.lora.init_from={path / 'adapter'}"
        return (
            f"is the final model folder of a run, not a checkpoint: to go on training that run, name one of its "
            f"checkpoints, e.g. {pick}{adapter if (path / 'adapter').is_dir() else ''}"
        )
    if not re.fullmatch(r"step-\d+", path.name):  # a step-N folder without a manifest: a write that did not finish
        return f"holds no {MANIFEST}, so it is no ftl checkpoint: name a checkpoint folder ({example})"
    return None


def begin(run_dir: Path, plan: StartPlan) -> Path | None:
    """Rank 0, once the resume point passed every check: move another trajectory's checkpoints
    and metrics into a branch and record the request. Returns the branch, if one was made.
    The record is written last: a crash before it repeats the plan at the next start."""
    run_dir = Path(run_dir)
    root = checkpoints_dir(run_dir)
    metrics, tensorboard = RunLayout(run_dir).metrics, RunLayout(run_dir).tensorboard
    history = plan.whole_run and (metrics.exists() or tensorboard.exists())
    branch = None
    if plan.set_aside or history:
        branch = _new_branch(root, f"from-step-{plan.branch_step}")
        for folder in plan.set_aside:
            os.replace(folder, branch / folder.name)
        if plan.whole_run:
            for item in (metrics, tensorboard):
                if item.exists():
                    os.replace(item, branch / item.name)
        else:
            move_records_after(run_dir, plan.branch_step, branch / METRICS_FILE)
        fsync_dir(root)
        update_latest_hint(root)
        _announce(plan, branch)
    if plan.record:
        root.mkdir(parents=True, exist_ok=True)
        write_record(
            run_dir,
            {
                "request": plan.request,
                "step": plan.branch_step if plan.resume_from else 0,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
    return branch


def set_aside_foreign(final: Path) -> Path:
    """Rank 0, in a save: `final` (step-N) exists but this process did not write it (another
    writer, or a folder without a valid manifest). Move it out of the way instead of taking it
    for this run's checkpoint, loudly; never delete it."""
    if validate_checkpoint(final, checksums=False) is None:
        aside = _new_branch(final.parent, f"replaced-{final.name}") / final.name
    else:
        aside = final.with_name(f"{INVALID_PREFIX}{final.name}-{int(time.time())}")
    os.replace(final, aside)
    message = (
        f"{final} already existed but was not written by this run; moved it to {aside} and saving this run's step there"
    )
    warn_loudly(log, message)
    return aside


def read_record(run_dir: Path) -> dict[str, Any] | None:
    path = checkpoints_dir(run_dir) / TRAJECTORY_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_record(run_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_text(checkpoints_dir(run_dir) / TRAJECTORY_FILE, json.dumps(record, indent=1))


def _step_dirs(run_dir: Path) -> list[Path]:
    """Every step-N folder, committed or not (an uncommitted one would still block step N's save)."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    return sorted(
        (p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()), key=step_of
    )


def _new_branch(root: Path, why: str) -> Path:
    base = root / BRANCHES_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{why}"
    branch, n = base, 1
    while branch.exists():
        n += 1
        branch = base.with_name(f"{base.name}-{n}")
    branch.mkdir(parents=True)
    return branch


def _names(paths: list[Path]) -> str:
    names = [p.name for p in paths]
    return ", ".join(names if len(names) <= 6 else names[:3] + ["..."] + names[-2:])


def _announce(plan: StartPlan, branch: Path) -> None:
    moved = _names(plan.set_aside) or "no checkpoints"
    if plan.resume_from is None:
        message = f"checkpoint.resume=never: moved the earlier run ({moved}, its metrics and tensorboard) to {branch}; starting at step 0"
    elif plan.whole_run:
        message = (
            f"resuming from {plan.resume_from}, which is not a checkpoint of this run directory: moved what was here "
            f"({moved}, metrics, tensorboard) to {branch}"
        )
    else:
        message = (
            f"resuming from {plan.resume_from} (step {plan.branch_step}): the later checkpoints of the earlier "
            f"trajectory ({moved}) and its metrics after step {plan.branch_step} moved to {branch}; "
            "they are kept, not resumed and not counted by retention"
        )
    # INFO for the rank's log file (its console handler shows WARNING and up): the console gets it
    # once, as ftl's own line (as a warning too it was said twice: trial 36a).
    log.info(message)
    print(f"ftl: {message}", file=sys.stderr, flush=True)
