"""`ftl runs [DIR]`: the runs under a directory, what state each is in, where it would resume, and
how it went (last loss, eval score, tokens/s, wall time); `--json` for scripts.

Reads only run directories (their config.yaml marks them); never imports torch, never modifies anything:
a checkpoint that fails validation is reported, not moved aside (resume does that).
"""

from __future__ import annotations

import json
import signal
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cluster.run_lock import read_holder, stale_reason
from launcher.continuation import continued_line
from launcher.failure_record import failure_line, read_failure
from launcher.run_dir import is_ftl_run
from launcher.tracker_outcome import tracker_failures, tracker_gaps
from trainer.checkpointing.protocol import (
    checkpoints_dir,
    committed_checkpoints,
    step_of,
    unfinished_checkpoints,
    validate_checkpoint,
)
from trainer.config import dpo_reference
from trainer.console import duration
from trainer.metrics import changed_config_starts, continued_from, current_trajectory, parse_records, wall_time
from trainer.run_layout import RunLayout
from trainer.transfer.early_stopping import worse_base

# Scores shown for an evaluation, best first; eval_loss when none of the others was measured.
EVAL_SCORES = ("preference_accuracy", "exact_match", "accuracy", "macro_f1", "entity_f1", "token_accuracy")


@dataclass
class RunInfo:
    path: Path
    status: str
    step: int | None
    checkpoint: str | None
    note: str = ""
    last_loss: float | None = None
    tokens_per_s: float | None = None  # the median over the logged steps (the first step's warm-up aside)
    speed_unit: str = "tok/s"  # what tokens_per_s counts: images for an image run
    wall_s: float | None = None  # summed over its starts: first to last metric record of each
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)  # split -> latest eval record's scores
    failure: str | None = None  # why the latest start failed (status "failed")
    invalid_checkpoints: list[str] = field(default_factory=list)  # committed ones that failed validation
    watched: str | None = None  # the score early stopping judged the run by: shown first
    from_adapter: bool = False  # started from method.lora.init_from: step 0 scored that adapter
    method: str = "-"  # what it trains and by which loss, e.g. "lora dpo (ipo)" (training_method)
    marks: dict[str, str] = field(default_factory=dict)  # split -> the final table's * and ! (score_marks)
    marks_note: str = ""  # what the shown score's marks mean: said once for all the runs it applies to

    def eval_score(self) -> str:
        """The first split's latest score, e.g. `validation exact_match 0.750`."""
        for split, scores in self.evals.items():
            first = (self.watched,) if self.watched else ()
            name = next((k for k in (*first, *EVAL_SCORES) if k in scores), "eval_loss")
            if name in scores:
                if scores.get("label") == "base":  # the step-0 evaluation, perhaps the only one yet
                    whose = " (starting adapter)" if self.from_adapter else " (base model)"
                    if self.step:  # steps trained since, not evaluated yet (trial 45b: read as this model's)
                        whose = f" (step 0: {whose[2:]}"
                else:
                    whose = ""
                if "weights_step" in scores:  # early stopping's final eval: the best step's weights
                    whose = f" (step {scores['weights_step']}'s weights)"
                # The loss too: a score every run has at 0 (exact match early on) tells nothing apart.
                loss = f" loss {scores['eval_loss']:.3f}" if name != "eval_loss" and "eval_loss" in scores else ""
                shown = split + self.marks.get(split, "")
                return f"{shown} {'loss' if name == 'eval_loss' else name} {scores[name]:.3f}{loss}{whose}"
        return "-"

    def speed(self) -> str:
        return "-" if self.tokens_per_s is None else f"{self.tokens_per_s:.0f} {self.speed_unit}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


def _config_section(run_dir: Path, name: str) -> dict[str, Any]:
    """One section of the run's config.yaml; {} when it cannot be read."""
    try:
        import yaml

        values = yaml.safe_load(RunLayout(run_dir).config.read_text(encoding="utf-8")) or {}
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    section = values.get(name) if isinstance(values, dict) else None
    return section if isinstance(section, dict) else {}


def speed_unit(run_dir: Path) -> str:
    """What a run's tokens_per_s counts: an image run's batches count images (trainer/data/batches.py)."""
    return "img/s" if _config_section(run_dir, "data").get("format") == "image_classification" else "tok/s"


def started_from_adapter(run_dir: Path) -> bool:
    """Whether the run's adapters started from method.lora.init_from: its step-0 scores are that adapter's."""
    lora = _config_section(run_dir, "method").get("lora")
    return isinstance(lora, dict) and bool(lora.get("init_from"))


HEAD_NAMES = {
    "sequence_classification": "seq-cls",
    "token_classification": "token-cls",
    "image_classification": "image-cls",
}


# Short names in the listing's method column for DPO's reference (trainer.config.dpo_reference).
REFERENCE_NAMES = {"adapters_disabled": "base", "copy": "copy", "precomputed": "precomputed"}
ADAPTER_METHODS = ("lora", "dora", "qlora")


def training_method(run_dir: Path) -> str:
    """The method and objective of the run's latest start, e.g. "lora sft", "full dpo (ipo)",
    "lora seq-cls": runs of one sweep that differ in those tell apart in the listing (trial 44b).
    "-" when the run directory holds no config (trial 60b: "lora sft" was made up from defaults)."""
    if not RunLayout(run_dir).config.is_file():
        return "-"
    method = _config_section(run_dir, "method").get("type", "lora")
    head = (_config_section(run_dir, "transfer").get("head") or {}).get("type", "causal_lm")
    if head in HEAD_NAMES:
        return f"{method} {HEAD_NAMES[head]}"
    training = _config_section(run_dir, "training")
    objective = training.get("objective", "sft")
    if objective != "dpo":
        return f"{method} {objective}"
    preference = training.get("preference") or {}
    loss = preference.get("loss_type", "sigmoid")
    # Which reference the rewards are measured against (session 41: runs over `reference` looked alike).
    lora = _config_section(run_dir, "method").get("lora") or {}
    strategy = _config_section(run_dir, "parallel").get("strategy", "ddp")
    reference = dpo_reference(
        preference.get("reference", "auto"), method in ADAPTER_METHODS, bool(lora.get("init_from")), strategy
    )
    smoothing = preference.get("label_smoothing") or 0
    if loss == "sigmoid" and isinstance(smoothing, (int, float)) and smoothing > 0:
        loss = f"cdpo {smoothing:g}"  # conservative DPO: its own loss (trial 63d: listed as plain sigmoid)
    details = ([loss] if loss != "sigmoid" else []) + [f"ref {REFERENCE_NAMES.get(reference, reference)}"]
    return f"{method} {objective} ({', '.join(details)})"


def find_runs(parent: Path) -> list[Path]:
    """The run directories ftl made (its marker): another tool's folder with a config.yaml is none."""
    if is_ftl_run(parent):
        return [parent]
    return sorted(p for p in parent.iterdir() if p.is_dir() and is_ftl_run(p))


def _summary_problem(layout: RunLayout) -> str | None:
    """Why the summary the trainer writes last does not say the run finished (None: it does)."""
    try:
        summary = json.loads(layout.summary.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"{layout.summary.name} is unreadable ({type(exc).__name__}), so it does not say the run finished"
    if not isinstance(summary, dict):
        return f"{layout.summary.name} holds no summary (a JSON {type(summary).__name__}), so it does not say the run finished"
    return None


def describe_run(run_dir: Path, verify: bool = False) -> RunInfo:
    records = parse_records(RunLayout(run_dir).metrics)  # a torn last line is skipped
    trajectory = current_trajectory(records)
    train = [r for r in trajectory if r.get("kind") == "train"]
    step = train[-1].get("step") if train else None
    valid, notes, invalid = None, [], []
    for candidate in reversed(committed_checkpoints(run_dir)):
        if valid is not None and not verify:
            break  # without --verify only what a resume would look at: the newest down to the first valid one
        problem = validate_checkpoint(candidate, checksums=verify)
        if problem is None:
            valid = valid or candidate
            continue
        # With --verify an older one too (trial 36a: a flipped byte in a kept step-100 went unsaid,
        # exit 0): a milestone one would export or resume from later.
        older = " (older than the latest valid one)" if valid is not None else ""
        notes.append(f"{candidate.name} invalid{older}: {problem}")
        invalid.append(candidate.name)
    latest = step_of(valid) if valid is not None else -1
    for unfinished in unfinished_checkpoints(checkpoints_dir(run_dir)):
        # Never left so by a save (the manifest is written before the folder gets its name): a copy
        # or a filesystem that lost it. A resume sets a newer one aside and goes back further.
        back = (
            f"; the next resume sets it aside and starts from {valid.name}"
            if valid and step_of(unfinished) > latest
            else ""
        )
        notes.append(f"{unfinished.name} has no manifest.json, so it is not a checkpoint{back}")
        invalid.append(unfinished.name)
    # A resume under another config: config.yaml holds only the latest start's, so the change is said here.
    notes.extend(
        f"resumed at step {c['step']} under another config ({c['config_change']})"
        for c in changed_config_starts(records)
    )
    notes.extend(f"tracking.{name} failed ({why})" for name, why in tracker_failures(run_dir).items())
    notes.extend(
        f"tracking.{name}{'' if name == 'tensorboard' else chr(39) + 's run'} lacks {what}"
        for name, what in tracker_gaps(run_dir).items()
    )
    origin = continued_from(records)
    if origin is not None:  # its first steps and the base model's scores are that run's (trial 38c)
        notes.append(continued_line(origin, base_scores=False))
    layout = RunLayout(run_dir)
    holder = read_holder(layout.lock)
    gone = stale_reason(holder) if holder is not None else None
    failure = read_failure(run_dir)
    summary_problem = _summary_problem(layout) if layout.is_finished() else None
    if summary_problem:
        notes.insert(0, summary_problem)
    early = _early_stopping(layout) if layout.is_finished() and not summary_problem else {}
    if isinstance(early.get("best_step"), int) and early["best_step"] != step:
        # STEP and LOSS are where the loop stopped; what final/ holds is another step's weights.
        best = early["best_step"]
        notes.insert(0, f"early stopping: final/ holds step {best}'s weights (the best evaluation), not step {step}'s")
    if worse_base(early) is not None:
        notes.insert(0, f"early stopping: the best evaluation is worse than the base model's ({worse_base(early):.4g})")
    if (
        layout.is_finished() and not summary_problem
    ):  # the trainer's summary, written last (final/ alone may be a crashed finish)
        status = "finished"
    elif holder is not None and gone is None:
        # A lock without a process is a Slurm job's reservation: submitted or requeued, not running yet.
        status = "queued" if holder.pid is None else "running"  # running: or exporting; the note says who
        notes.insert(0, f"in use by {holder.describe()}")
    elif failure is None and step is None and holder is not None and holder.pid is None and _job_failed(gone):
        # `ftl slurm` returned at submission: a job that never started its workers left only its lock.
        status, failure = "failed", {"reason": f"{gone}; see scontrol show job {holder.slurm_job}"}
    elif failure is None and step is None and holder is not None and holder.pid is None and "(CANCELLED" in str(gone):
        # Cancelled while it waited in the queue (scancel, Ctrl-C of `ftl train`): nothing ran, nothing
        # failed (trial 45b: listed as failed).
        status = "not started"
        notes.insert(0, str(gone))
    elif failure is not None and not (failure.get("refused") and valid is not None):
        status = "failed"  # the latest start failed; the checkpoint column says where a rerun resumes
    elif valid is not None:
        status = "resumable"
        if failure is not None:  # refused before any worker ran: the checkpoints are as they were
            notes.insert(0, f"the last start was refused: {failure_line(str(failure['reason']))}")
    elif step is not None:
        status = "no checkpoint"
    else:
        status = "not started"
        stop = _stop_before_first_step(run_dir)
        if stop:
            notes.insert(0, stop)
    marks = score_marks(layout) if status == "finished" else {}
    shown = next(iter(_latest_evals(trajectory)), None)
    # trial 52a: a partial or trained-on set's score sat beside whole ones, unmarked
    marks_note = _marks_note(shown, marks[shown]) if shown in marks else ""
    speeds = [r["tokens_per_s"] for r in train[1:] or train if isinstance(r.get("tokens_per_s"), (int, float))]
    return RunInfo(
        run_dir,
        status,
        step,
        valid.name if valid else None,
        "; ".join(notes),
        last_loss=train[-1].get("loss") if train else None,
        tokens_per_s=statistics.median(speeds) if speeds else None,
        speed_unit=speed_unit(run_dir),
        wall_s=wall_time(records),
        evals=_latest_evals(trajectory),
        failure=str(failure["reason"]) if failure and status == "failed" else None,
        invalid_checkpoints=invalid,
        watched=early.get("metric") if isinstance(early.get("metric"), str) else watched_metric(run_dir),
        from_adapter=started_from_adapter(run_dir),
        method=training_method(run_dir),
        marks=marks,
        marks_note=marks_note,
    )


def score_marks(layout: RunLayout) -> dict[str, str]:
    """The final table's marks of a finished run's sets: `*` scored on the first eval.max_samples
    examples only, `!` some of its rows are training rows, `=` (the test set) some of its rows are
    validation rows (trial 57a: left out here)."""
    try:
        summary = json.loads(layout.summary.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(summary, dict):
        return {}
    data: dict[str, Any] = summary["data"] if isinstance(summary.get("data"), dict) else {}
    limit = summary.get("eval_max_samples")
    marks = {}
    for split in summary.get("scores") or {}:
        examples = data.get(f"{split}_examples")
        count = examples // 2 if isinstance(examples, int) and data.get("format") == "preference" else examples
        mark = "*" if isinstance(limit, int) and isinstance(count, int) and limit < count else ""
        # Exact match on part of the set (eval.generation.max_samples), as the final table marks it
        # (trial 64b: the listing dropped the mark, and its note said eval.max_samples).
        generated, of = data.get(f"{split}_exact_match_scored"), data.get(f"{split}_exact_match_of")
        mark += "+" if isinstance(generated, int) and isinstance(of, int) and 0 < generated < of else ""
        mark += "!" if (data.get("overlap") or {}).get(split) else ""
        mark += "=" if split == "test" and data.get("test_in_validation") else ""
        if mark:
            marks[split] = mark
    return marks


def _marks_note(split: str, mark: str) -> str:
    said = {
        "*": "scored on its first eval.max_samples examples only",
        "+": "exact match on its first eval.generation.max_samples rows only",
        "!": "some of its rows are training rows",
        "=": "some of its rows are validation rows",
    }
    return f"{split}{mark}: " + "; ".join(said[m] for m in mark) + " (the run's final table says how many)"


def _stop_before_first_step(run_dir: Path) -> str | None:
    """The workers' last outcome when they were stopped before training a step (a preemption or
    scancel of a Slurm job while it loaded the model, Ctrl-C): said, since the run is otherwise
    "not started" with no trace of the start (trial 45b)."""
    from cluster.results import read_result
    from trainer.outcome import OutcomeKind

    outcome = read_result(run_dir)
    if outcome.kind is not OutcomeKind.STOPPED or outcome.checkpoint:
        return None
    try:
        how = f" by {signal.Signals(int(outcome.signum)).name}" if outcome.signum is not None else ""
    except ValueError:
        how = f" by signal {outcome.signum}"
    return f"its last start was stopped{how} before training a step: nothing to resume from; start it again"


def watched_metric(run_dir: Path) -> str | None:
    """The score early stopping judges a run by, from its config: shown first while it runs or is
    stopped too, not only once finished (trial 39b: accuracy, then macro_f1 for the same run)."""
    early = _config_section(run_dir, "transfer").get("early_stopping")
    if not isinstance(early, dict) or not early.get("enabled"):
        return None
    metric = early.get("metric", "eval_loss")
    return metric if isinstance(metric, str) else None


def _early_stopping(layout: RunLayout) -> dict[str, Any]:
    """A finished run's early stopping: the step whose weights final/ holds (best_step) and the
    score it judged by (metric); {} without early stopping."""
    try:
        early = json.loads(layout.summary.read_text(encoding="utf-8"))["transfer"]["early_stopping"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return early if isinstance(early, dict) else {}


def _job_failed(stale: str | None) -> bool:
    """A Slurm job that ended without completing (stale_reason's "Slurm job N has ended (STATE)")."""
    return (
        bool(stale)
        and "has ended (" in str(stale)
        and not any(ended in str(stale) for ended in ("(COMPLETED)", "(CANCELLED"))
    )


def format_runs(infos: list[RunInfo]) -> str:
    header = ("RUN", "STATUS", "STEP", "LATEST VALID CHECKPOINT", "LOSS", "EVAL", "SPEED", "WALL", "METHOD")
    rows = [header]
    for info in infos:
        rows.append(
            (
                str(info.path),
                info.status,
                "-" if info.step is None else str(info.step),
                info.checkpoint or "-",
                "-" if info.last_loss is None else f"{info.last_loss:.4f}",
                info.eval_score(),
                info.speed(),
                "-" if info.wall_s is None else duration(info.wall_s),
                info.method,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = {2, 4, 6, 7}  # numbers
    lines = [
        "  ".join(
            f"{cell:>{widths[i]}}" if i in right else f"{cell:<{widths[i]}}" for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]
    for info in infos:
        if info.failure:
            lines.append(f"  {info.path.name}: failed: {failure_line(info.failure)}")
        if info.note:
            lines.append(f"  {info.path.name}: {info.note}")
    marked: dict[str, list[str]] = {}  # trial 54a: one line per run, seven times the same
    for info in infos:
        if info.marks_note:
            marked.setdefault(info.marks_note, []).append(info.path.name)
    lines += [f"  {', '.join(names)}: {note}" for note, names in marked.items()]
    return "\n".join(lines)


def runs_json(infos: list[RunInfo]) -> str:
    return json.dumps([info.to_json() for info in infos], indent=1)


def _latest_evals(trajectory: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for record in trajectory:
        if record.get("kind") == "eval" and "split" in record:
            latest[record["split"]] = {
                k: v
                for k, v in record.items()
                if k not in ("kind", "split", "time", "samples") and isinstance(v, (int, float, str))
            }
    return latest
