"""The `ftl` verbs. Each returns the process exit code."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from launcher.config_loader import config_to_yaml, load_config
from launcher.data_format_probe import data_format_problems
from launcher.errors import StartRefused, UserError
from launcher.preflight import check_inputs, start_refusal
from launcher.run_config import RunConfig
from launcher.run_dir import (
    launch_held_by_a_run,
    load_snapshot,
    local_run_dir,
    lock_run_dir,
    output_dir_problems,
    running_in,
    storage_problems,
)
from trainer.errors import EXIT_FAILED, EXIT_STOPPED, STOP_SIGNAL_CODES, FtlError
from trainer.run_layout import CONFIG_FILE, RUN_MARKER, RunLayout


def validate(config_path: str, overrides: list[str], data: bool = False, examples: int = 3) -> int:
    cfg = load_config(config_path, overrides)
    # The model checks and the fit check build the model with transformers and PEFT: no chatter.
    _quiet_libraries(import_transformers=False)
    from launcher.hub_datasets import hub_dataset_problems

    # A Hub name nothing here can load: said as train's check says it, with --data too (trial 57a:
    # the loader's ConnectionError there).
    problems = check_inputs(cfg) + hub_dataset_problems(cfg)
    if not data:  # --data reads every row and reports each bad one
        problems += data_format_problems(cfg)
    from cluster.gpu_probe import local_ray_shortfall

    shortfall = local_ray_shortfall(cfg.cluster)
    problems += [shortfall] if shortfall else []
    from cluster.run_storage import display_uri, is_uri

    refusal = start_refusal(cfg, local_run_dir(cfg))  # what `ftl train` would refuse in output.dir as it is now
    # output.dir on object storage first, as `ftl train` checks it: a finished run there is finished in
    # its working copy too, and said once (trial 55a: twice, the copy called output.dir).
    run_dir_problems = storage_problems(cfg)
    uri = display_uri(cfg.output.dir) if is_uri(cfg.output.dir) else None
    if not run_dir_problems:
        run_dir_problems = output_dir_problems(local_run_dir(cfg), cfg.checkpoint.resume, uri)
    # A finished run (or a folder not ftl's) is the refusal, alone: the checkpoint's own refusal beside it
    # (past max_steps: "set max_steps above N") gave advice the finished run's refusal then refused (trial 60b).
    run_dir_problems = run_dir_problems or ([refusal] if refusal else [])
    # --data checks the data: a config whose output.dir holds a finished run (trial 36b) is still one
    # whose new data a user wants to look at; the refusal is said after the report instead.
    problems += [] if data else run_dir_problems
    from launcher.start_checks import model_problems

    problems += model_problems(cfg)  # the workers refuse them too, later
    from launcher.plan.command import unsizable_model_problem

    unsizable = unsizable_model_problem(cfg)
    fit_refusal, fit = (None, None) if problems or unsizable else _fit_check(cfg)
    problems += [fit_refusal] if fit_refusal else []
    if problems:
        # Named: a sweep script's log then says which of its configs failed (trial 63a).
        raise UserError(
            f"config {config_path} is well-formed but its inputs are not:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    from launcher.hub_cache import warn_unavailable_offline

    warn_unavailable_offline(cfg)  # the config is valid; training it on this machine would fail
    from launcher.tracking_check import missing_tracker_packages

    for missing in missing_tracker_packages(cfg):
        print(f"ftl: WARNING: {missing}", file=sys.stderr)
    if unsizable:  # trial 47b: validate said valid, and train refused it at once
        print(f"ftl: WARNING: `ftl train` would refuse this at its fit check: {unsizable}", file=sys.stderr)
    elif fit:
        print(f"ftl: WARNING: {fit}", file=sys.stderr)
    from launcher.position_limit import rotary_context_note
    from launcher.preflight import lora_rank_note
    from launcher.run_length import run_length_warnings, unfreezing_past_the_run
    from trainer.config import (
        local_revision_note,
        mixture_notes,
        periodic_eval_without_data,
        same_data_warnings,
        unused_method_settings,
        unused_zero_stage,
    )

    steps = cfg.training.max_steps  # with epochs, the run's length needs the data: --data counts it
    notes = (
        *(run_length_warnings(cfg, steps) if steps else []),  # trial 56a: said by a worker only
        None if steps else unfreezing_past_the_run(cfg, None),
        rotary_context_note(cfg),
        local_revision_note(cfg),
        periodic_eval_without_data(cfg),
        *same_data_warnings(cfg),
        unused_zero_stage(cfg),
        *unused_method_settings(cfg),
        *mixture_notes(cfg),
    )
    from launcher.model_check import model_load_warning

    for note in (*notes, lora_rank_note(cfg), model_load_warning(cfg)):
        if note:
            print(f"ftl: WARNING: {note}", file=sys.stderr)
    if data:
        _quiet_libraries()
        from launcher.data_check import data_command

        code = data_command(cfg, examples)
        for problem in run_dir_problems:
            print(f"ftl: note: `ftl train` with this config would be refused: {problem}", file=sys.stderr)
        return code
    sys.stdout.write(config_to_yaml(cfg))
    print(f"# {config_path}: valid", file=sys.stderr)
    from cluster.run_storage import bucket_ahead_note
    from launcher.failure_record import retry_note
    from launcher.preflight import resume_change_preview, start_move_preview

    previews = (
        bucket_ahead_note(cfg.output.dir, local_run_dir(cfg)) if is_uri(cfg.output.dir) else None,
        retry_note(local_run_dir(cfg), cfg.checkpoint.resume),
        start_move_preview(cfg, local_run_dir(cfg)),
        resume_change_preview(cfg, local_run_dir(cfg)),
    )
    for preview in previews:
        if preview:
            print(f"ftl: note: {preview}", file=sys.stderr)
    return 0


def _fit_check(cfg: RunConfig) -> tuple[str | None, str | None]:
    """(what the model refuses of this config, found by the fit check's model build; what `ftl
    train`'s fit check on this machine would refuse or warn of). Trial 56a: validate said valid to
    micro_batch_size=100000, and train refused it at once; trial 58a: LoRA dropout on a Mixtral's
    fused experts, refused by plan and train, was valid. A fitting run costs the check
    milliseconds once its model's inventory is cached; only a refusal's suggestions take seconds."""
    from launcher.plan.command import fit_verdict
    from trainer.errors import TrainerInputError

    try:
        verdict = fit_verdict(cfg)
    except TrainerInputError as exc:
        return str(exc), None
    except Exception:  # noqa: BLE001 - what the fit check cannot judge, validate's other checks say
        return None, None
    if verdict.fits is False:
        return None, f"`ftl train` on this machine would refuse this at its fit check: {verdict.refusal()}"
    return None, verdict.tight or None


def train(config_path: str, overrides: list[str], fit_check: bool = True) -> int:
    cfg = load_config(config_path, overrides)
    from launcher.start_checks import problems_before_start

    _quiet_libraries(import_transformers=False)  # workers elsewhere load the model, not this process
    problems = problems_before_start(cfg)
    if problems:
        raise UserError(f"cannot start {config_path}:\n" + "\n".join(f"  - {p}" for p in problems))
    from launcher.model_check import model_load_warning
    from launcher.tracking_check import missing_tracker_packages
    from trainer.config import local_revision_note, unused_method_settings

    for missing in (
        *missing_tracker_packages(cfg),
        local_revision_note(cfg),
        model_load_warning(cfg),
        *unused_method_settings(cfg),  # the keys the user's config wrote (the workers see a full snapshot)
    ):  # said before the start
        if missing:
            print(f"ftl: WARNING: {missing}", file=sys.stderr)
    from cluster.gpu_probe import local_gpu_shortfall
    from cluster.torchrun import started_by_torchrun

    # Under a user's own torchrun the workers are already started (each checks its GPU: cluster/worker.py).
    shortfall = None if started_by_torchrun() else local_gpu_shortfall(cfg.cluster.backend, cfg.cluster.workers)
    if shortfall:
        raise UserError(f"cannot start: {shortfall}")

    held = None if started_by_torchrun() else launch_held_by_a_run(cfg)
    if held:  # before the fit check's lines (trial 45b); the lock itself is taken below
        raise UserError(held)
    # A resume the workers would refuse (another objective or loss type, state that cannot load) is
    # refused before the fit check's lines too (trial 46a: the fit line came first); again under the
    # lock below, where nothing can have changed the run directory since.
    refusal = (
        None
        if started_by_torchrun() or not _refused_early(local_run_dir(cfg))
        else start_refusal(cfg, local_run_dir(cfg))
    )
    if refusal:
        _record_refusal(local_run_dir(cfg), refusal)
        raise StartRefused(refusal)
    # Under a user's own torchrun every worker runs this: local rank 0 checks the fit for its node
    # (a refusal there ends the group through torchrun), the others would only print it again.
    if fit_check and not (started_by_torchrun() and os.environ.get("LOCAL_RANK", "0") != "0"):
        from launcher.plan.command import check_fit

        check_fit(cfg)

    if started_by_torchrun():
        return _train_as_torchrun_worker(cfg)
    if cfg.cluster.backend == "slurm":
        from cluster.slurm import check_slurm_client, queue_warnings

        check_slurm_client()  # before the run directory exists
        for warning in queue_warnings(cfg.cluster):
            print(f"ftl: WARNING: {warning}", file=sys.stderr)
    # This process holds the run directory's lock until the run ends, however it ends (on Slurm
    # the job takes it over once submitted: cluster/slurm.py).
    # A Ray Job's driver holds the lock as that job: a second start names the job to stop.
    job = os.environ.get("FTL_RAY_JOB_ID")
    with running_in(cfg, purpose=f"Ray Job {job}" if job else "ftl train") as run_dir:
        print(f"ftl: run directory {run_dir}", file=sys.stderr)
        from cluster.launch import launch
        from cluster.run_storage import display_uri, is_uri
        from launcher.failure_record import recording_failure

        with recording_failure(run_dir):  # `ftl runs` shows a failed start as failed, with the reason
            refusal = start_refusal(cfg, run_dir)  # the workers would refuse it, after a backend start
            if refusal:
                raise StartRefused(refusal)
            try:
                summary = launch(cfg, run_dir, cfg.cluster)
            except FtlError as exc:
                if exc.exit_code == EXIT_STOPPED or exc.exit_code in STOP_SIGNAL_CODES:
                    _say_failed_trackers(run_dir)
                raise
        from cluster.results import reported_here

        if cfg.output.report and reported_here(run_dir):  # one launcher of a multi-node torchrun run writes it
            written = time.time()
            write_report_after_run(run_dir, cfg.tracking)
            if is_uri(cfg.output.dir):  # the run was mirrored as the driver ended: the report follows it
                from cluster.run_storage import push_written

                push_written(cfg.output.dir, run_dir, since=written)
    print(format_summary(summary))
    if is_uri(cfg.output.dir):  # the paths above are the working copy's (trial 53a: the URI went unsaid)
        print(f"stored      {display_uri(cfg.output.dir)} (the paths above: its working copy)")
    return 0


def _say_failed_trackers(run_dir: Path) -> None:
    """A stopped run prints no final table: a tracker that failed is said here, with what to do
    (an MLflow run whose server went away shows RUNNING until ended; a resume continues it)."""
    from launcher.tracker_outcome import tracker_failure_lines

    for line in tracker_failure_lines(run_dir):
        print(f"ftl: tracking: {line}", file=sys.stderr)


def _refused_early(run_dir: Path) -> bool:
    """Whether a start's refusal is said before the fit check: a new run directory, or an ftl run
    that is not finished (a finished run's own refusal, with how to train it further, and a folder
    of the user's come first, from preparing the run directory, as before)."""
    from launcher.run_dir import finished_run_problem, is_ftl_run

    return not run_dir.exists() or (is_ftl_run(run_dir) and finished_run_problem(run_dir) is None)


def _record_refusal(run_dir: Path, refusal: str) -> None:
    """A refused start of an existing run, recorded as under the run's lock (`ftl runs`: "the last
    start was refused: ..." beside a still resumable run); a directory that is not an ftl run's, or
    none yet, gets nothing."""
    from launcher.failure_record import record_failure
    from launcher.run_dir import is_ftl_run

    if run_dir.is_dir() and is_ftl_run(run_dir):
        error = StartRefused(refusal)
        record_failure(run_dir, error.cause().strip(), type(error).__name__, error.exit_code, refused=True)


def _train_as_torchrun_worker(cfg: Any) -> int:
    """`torchrun [...] -m launcher.cli train CONFIG`: the user's torchrun owns the processes and
    the rendezvous; this process is one worker of it (cluster.backend/workers/nodes are ignored)."""
    from cluster.torchrun import TorchrunPrepareFailed, run_as_torchrun_worker

    # Rank 0 prepares the run directory and holds its lock until this process ends its run.
    with contextlib.ExitStack() as hold:
        try:
            summary = run_as_torchrun_worker(
                lambda: hold.enter_context(running_in(cfg)), cfg.cluster.collective_timeout_s
            )
        except TorchrunPrepareFailed as exc:
            raise UserError(str(exc)) from None
    if summary is not None:  # rank 0, the run finished: its report, as under ftl's own backends (trial 51b)
        if cfg.output.report:
            write_report_after_run(local_run_dir(cfg), cfg.tracking)
        print(format_summary(summary))
    return 0


def _checkpoint_path(run_dir: Path, checkpoint: str) -> Path:
    """--checkpoint as a path (from the current directory or the run's), or the name of one of the
    run's checkpoints (`step-25`, `25`, `latest`): trial 41b's `--checkpoint step-25` and trial
    42a's `checkpoints/step-35` (as the console prints it) were looked for in the current directory."""
    checkpoint = checkpoint.strip()
    given = Path(checkpoint).expanduser()
    checkpoints = RunLayout(run_dir).checkpoints
    name = f"step-{checkpoint}" if checkpoint.isdigit() else checkpoint
    if given.parts[-2:] == ("checkpoints", "latest"):  # the pointer file as a path: what it names, in ITS folder
        for pointer in (given, run_dir / given):  # trial 60c: another run's `latest` exported this run's
            if pointer.is_file():
                return (pointer.parent / pointer.read_text().strip()).resolve()
        name = "latest"
    if name == "latest" and (checkpoints / "latest").is_file():
        name = (checkpoints / "latest").read_text().strip()  # the name of the newest committed one
    for candidate in (given, run_dir / given, checkpoints / name):
        if candidate.is_dir():
            return candidate.resolve()
    # Missing: said with the run's own checkpoint path when it names one (a typo, or one keep_last
    # deleted), else as given (trial 43a: runs/x/checkpoints/runs/x/checkpoints/step-10).
    if given.is_absolute() or len(given.parts) > 1:
        return given.resolve()
    return (checkpoints / name).resolve()


def export(run_dir: str, merge: bool, checkpoint: str | None, out: str | None = None) -> int:
    for flag, value in (("--out", out), ("--checkpoint", checkpoint)):
        if value is not None and not value.strip():  # an empty value meant "not given" (or the cwd)
            raise UserError(f"{flag} is empty; name a folder, or leave the flag out")
    cfg = load_snapshot(Path(run_dir))
    if out is not None:
        from launcher.local_paths import nearest_existing, new_entry_refusal

        # The export is written beside --out first (a hidden folder, renamed into place).
        where = nearest_existing(Path(out).resolve().parent)
        if not where.is_dir():  # trial 60c: `afile/sub`, a FileExistsError traceback
            raise UserError(f"--out {out}: {where} is a file, not a folder; choose another --out")
        refusal = new_entry_refusal(where)
        if refusal:  # trial 60b: a PermissionError traceback
            raise UserError(f"--out {out}: cannot write in {where} ({refusal}); choose another --out")
    _quiet_libraries()
    from cluster.local import default_device
    from trainer.export import export_run

    # Not while the run trains (its final/ and checkpoints are in flux), nor two exports at once.
    with lock_run_dir(Path(run_dir), "ftl export"):
        try:
            done = export_run(
                cfg,
                Path(run_dir),
                checkpoint=_checkpoint_path(Path(run_dir), checkpoint) if checkpoint else None,
                merge=merge,
                device=default_device(),
                out=Path(out).resolve() if out else None,
            )
        except OSError as exc:  # trial 60c: an --out folder that cannot be replaced, a traceback
            at = f" at {exc.filename}" if exc.filename else ""
            raise UserError(
                f"the export stopped{at}: {exc.strerror or exc}; an earlier export there is as it was "
                "(choose another --out, or free the disk)"
            ) from None
    if not done.written:
        has_merged = (done.path / "merged").is_dir()
        print(
            f"{done.path} already holds the finished run's model (step {done.step})"
            + (", merged too" if has_merged else "")
            + "; nothing to export ("
            + ("" if has_merged else "--merge adds a merged model, ")
            + "--out DIR writes a copy elsewhere)"
        )
    else:
        again = (
            " (merged/ too: the export there before had one, and an old one would not match)"
            if done.merged_as_before
            else ""
        )
        best = (
            f", the best evaluation under early stopping (the latest checkpoint, {done.passed_over}, is exported by "
            f"--checkpoint {done.passed_over})"
            if done.passed_over
            else ""
        )
        replaced = f"; it replaced the export of {done.replaced} there" if done.replaced else ""
        print(f"exported step {done.step}{best} (from {done.source}) to {done.path}{again}{replaced}")
    return 0


def generate(args: argparse.Namespace) -> int:
    _quiet_libraries()
    from launcher.generate_command import generate_command

    return generate_command(args)


def runs(parent: str, verify: bool = False, as_json: bool = False) -> int:
    from launcher.runs import describe_run, find_runs, format_runs, runs_json

    path = Path(parent)
    if not path.is_dir():
        what = "is a file, not a directory" if path.exists() else "no such directory"
        raise UserError(f"{parent}: {what}; pass the parent directory of your runs (output.dir's parent)")
    found = find_runs(path)
    infos = [describe_run(run, verify=verify) for run in found]
    if as_json:
        print(runs_json(infos))
    elif not found:
        print(f"no runs under {parent} (ftl marks each run directory it makes with a {RUN_MARKER} file)")
    else:
        print(format_runs(infos))
    # --verify is a check a script can use: exit 1 when a checkpoint newer than the latest valid one is corrupt.
    return EXIT_FAILED if verify and any(info.invalid_checkpoints for info in infos) else 0


def format_summary(summary: dict[str, Any]) -> str:
    weighted = (
        " (class-weighted: transfer.head.class_weights)" if (summary.get("data") or {}).get("class_weights") else ""
    )
    means = (
        f" (single steps; the means of the first and last {summary['loss_mean_steps']} logged steps: "
        f"{_fmt(summary['first_loss_mean'])} -> {_fmt(summary['last_loss_mean'])})"
        if summary.get("loss_mean_steps")
        else ""
    )
    continued = summary.get("continued_from")
    origin_step = continued.get("step") if isinstance(continued, dict) else None
    # A continuation counts on from the step it continued (trial 47a: "55 steps" for a run that trained 25).
    here = f" ({summary['steps'] - origin_step} in this run)" if isinstance(origin_step, int) and origin_step else ""
    lines = [
        f"\nFine-tune finished: {summary['steps']} steps{here}, train loss {_fmt(summary['first_loss'])} -> "
        f"{_fmt(summary['last_loss'])}{means}{weighted}"
    ]
    for change in summary.get("resumed_with_config_changes") or []:
        # Trial 59d: a resume under another beta, and the loss line above spanned both without a word.
        lines.append(
            f"resumed at step {change.get('step')} under another config ({change.get('config_change')}): "
            "the loss and the scores span both configs"
        )
    if summary.get("skipped_steps"):
        lines.append(
            f"fp16: {summary['skipped_steps']} of {summary['steps']} steps overflowed and changed no weight "
            "(dynamic loss scaling); a run where most do needs bf16 or fp32 (parallel.mixed_precision)"
        )
    if continued:  # a finished run trained further in a new output.dir
        from launcher.continuation import continued_line

        lines.append(continued_line(continued, base_scores=True))
    data = summary.get("data", {})
    if data:
        mode = "packed into" if data.get("packing") else "padded in batches,"
        slots = f"{100 * data.get('token_efficiency', 0):.1f}% of token slots hold real tokens"
        if data.get("token_efficiency_expected"):  # padded shuffled batches: a mean over shuffles (trial 60a)
            slots = f"about {slots} (the mean over shuffles of the batches)"
        if data.get("format") == "image_classification":
            lines.append(f"data: {data['train_examples']} images")  # no tokens: slots and padding mean nothing here
        elif data.get("format") == "preference":  # a row is a pair of sequences (trial 45a: "16 examples, 8 rows")
            lines.append(
                f"data: {data['train_rows']} pairs ({data['train_examples']} sequences) padded in batches; {slots}"
            )
        else:
            lines.append(f"data: {data['train_examples']} examples {mode} {data['train_rows']} rows; {slots}")
        from trainer.data.cut_note import cut_examples_note  # numpy: not for every command

        cut = cut_examples_note(data)
        if cut is not None:
            lines.append(f"data: {cut}")
    scores = summary.get("scores", {})
    if scores:
        # Classification runs report accuracy, token classification entity F1 (token accuracy without BIO
        # tags), preference runs preference accuracy, generation runs exact match.
        reported = {key for entry in scores.values() for part in entry.values() for key in part}
        exact = "exact match (normalized)" if summary.get("exact_match_rule") == "normalized" else "exact match"
        metric, title = ("exact_match", exact)
        if "entity_f1" in reported:
            metric, title = ("entity_f1", "entity F1")
        elif "token_accuracy" in reported:
            metric, title = ("token_accuracy", "token accuracy")
        elif "accuracy" in reported:
            metric, title = ("accuracy", "accuracy")
        elif "preference_accuracy" in reported:
            metric, title = ("preference_accuracy", "pref. accuracy")
        # No column of "n/a -> n/a" when no evaluation scored the metric (generation off).
        columns = [(metric, title)] if metric in reported else []
        if metric == "accuracy" and "macro_f1" in reported:
            # Beside accuracy always: on imbalanced classes a head that answers the majority class
            # for every row shows "0.0% -> 40.0%" alone (trial 36b), its macro F1 14.3%.
            columns.append(("macro_f1", "macro F1"))
        if metric == "preference_accuracy" and "exact_match" in reported:
            # Generation scored the chosen answers too (eval.generation on): shown, not only logged (trial 37a).
            columns.append(("exact_match", exact))
        watched = (summary.get("transfer", {}).get("early_stopping") or {}).get("metric")
        if (
            isinstance(watched, str)
            and watched in reported
            and watched not in {"eval_loss", *(key for key, _ in columns)}
        ):
            # The score early stopping chose final/ by (macro F1 on imbalanced classes: accuracy
            # alone hides a collapsed classifier), next to the usual one.
            columns.append((watched, watched.replace("_f1", " F1").replace("_", " ")))
        # A run whose adapters started from method.lora.init_from: its step-0 scores are that adapter's.
        before = "start" if summary.get("started_from") else "base"
        header = f"{'held-out set':<14}{f'eval loss ({before} -> tuned)':<30}"
        # Each column as wide as its title and a space (trial 38c: "pref. accuracy (base -> tuned)" is 30
        # characters, and the next title ran on from it).
        widths = [max(30, len(f"{name} ({before} -> tuned)") + 2) for _, name in columns]
        titles = (f"{name + f' ({before} -> tuned)':<{width}}" for (_, name), width in zip(columns, widths))
        lines.append((header + "".join(titles)).rstrip())
        partial: list[str] = []
        recall: list[str] = []
        repeats: list[str] = []
        for split, entry in scores.items():
            base, final = entry.get("base", {}), entry.get("final", {})
            loss = f"{_fmt(base.get('eval_loss'))} -> {_fmt(final.get('eval_loss'))}"
            cells = "".join(
                f"{_pct(base.get(key)) + ' -> ' + _pct(final.get(key)):<{width}}"
                for (key, _), width in zip(columns, widths)
            )
            of = _scored_part(summary, split, pairs=metric == "preference_accuracy")
            matched = "exact_match" in (key for key, _ in columns)
            generated = _exact_match_part(summary, split) if matched else ""
            generated_rows = (data.get(f"{split}_exact_match_of") if matched else None) or 0
            if of and matched and not generated and generated_rows:
                # eval.generation.max_samples, not eval.max_samples, bounds exact match (trial 52b: 3.5% "of 40").
                of += f" (exact match on all {generated_rows}, eval.generation.max_samples)"
            partial += [f"* {split}: {of}"] if of else []
            partial += [f"+ {split}: {generated}"] if generated else []
            shared = (data.get("overlap") or {}).get(split)
            pairs = metric == "preference_accuracy"
            trained_on = _shared_line("!", split, shared, "training", pairs) if shared else ""
            also = data.get("test_in_validation") if split == "test" else None
            in_validation = _shared_line("=", split, also, "validation", pairs) if also else ""
            marks = ("*" if of else "") + ("+" if generated else "") + ("!" if trained_on else "")
            marks += "=" if in_validation else ""
            lines.append(f"{split + marks:<14}{loss:<30}{cells}".rstrip())
            recall += [trained_on] if trained_on else []
            repeats += [in_validation] if in_validation else []
        if partial:
            lines += partial + ["  (not comparable with scores of whole sets)"]
        if recall:  # trial 47a: said only before training, not beside the scores people copy
            lines += recall + ["  (their scores measure recall of trained rows, not generalization)"]
        if repeats:  # session 42: said only before training
            lines += repeats + ["  (on them the test score repeats the validation score: not an independent measure)"]
        if summary.get("started_from"):
            lines.append(f"start = the adapter the run started from ({summary['started_from']})")
    stopping = summary.get("transfer", {}).get("early_stopping")
    best = stopping.get("best_step") if stopping else None
    # The best step of the run this one continued: its checkpoint is there (trial 44a: looked for here).
    elsewhere = (
        f", a checkpoint of the run continued from: {stopping['best_dir']}"
        if stopping and stopping.get("best_dir")
        else ""
    )
    from trainer.transfer.early_stopping import worse_base

    worse = worse_base(stopping) if stopping else None
    if worse is not None:  # the weights final/ holds are worse than the model training started from
        elsewhere += f"; worse than the base model's {_fmt(worse)}"
    said_before = len(lines)
    if stopping and stopping.get("stopped_at") is not None:
        # Why, in the rule's own terms (trial 43b: step 70's lower loss was within min_delta, unsaid).
        why = (
            f" after {stopping['patience']} evaluation{'s in a row' if stopping.get('patience') != 1 else ''} "
            "without beating the best by more than "
            f"min_delta {stopping['min_delta']:g}"
            if isinstance(stopping.get("patience"), int) and isinstance(stopping.get("min_delta"), (int, float))
            else ""
        )
        total = summary.get("total_steps")
        # Patience used up at the last planned step stopped nothing (trial 61b: "stopped at step 38" of 38).
        stopped = (
            f"ran all {total} steps (patience ran out at the last evaluation{why})"
            if isinstance(total, int) and stopping["stopped_at"] >= total
            else f"stopped at step {stopping['stopped_at']}{why}"
        )
        lines.append(
            f"early stopping: {stopped}; final/ holds the best step {best} "
            f"({stopping['split']} {stopping['metric']} {_fmt(stopping['best'])}{elsewhere})"
        )
    elif stopping and best is not None and best != summary.get("steps"):
        # It ran to the end, but an earlier evaluation was the best: final/ is that step's model.
        lines.append(
            f"early stopping: ran all {summary.get('steps')} steps; final/ holds the best step {best} "
            f"({stopping['split']} {stopping['metric']} {_fmt(stopping['best'])}{elsewhere})"
        )
    if worse is not None and len(lines) == said_before:  # the last step was the best, and worse than the base
        lines.append(
            f"early stopping: the best evaluation, step {best} ({stopping['split']} {stopping['metric']} "
            f"{_fmt(stopping['best'])}), is worse than the base model's {_fmt(worse)}"
        )
    lost = stopping.get("lost_best") if stopping else None
    if isinstance(lost, dict) and isinstance(lost.get("value"), (int, float)):
        lines.append(
            f"early stopping: the best of the run continued from, step {lost.get('step')} ({stopping['split']} "
            f"{stopping['metric']} {_fmt(lost['value'])}), was not kept ({lost.get('path')}), so final/ holds "
            "this run's own best"
        )
    final_dir = Path(summary["final_dir"])
    for name in ("adapter", "merged"):
        if (final_dir / name).exists():
            lines.append(f"{name:<8} {final_dir / name}")
    from launcher.tracker_outcome import tracker_lines

    lines += tracker_lines(final_dir.parent)  # where MLflow / W&B logged, or why not
    return "\n".join(lines)


def _scored_part(summary: dict[str, Any], split: str, pairs: bool) -> str:
    """'scored on the first 64 of 200 examples' when eval.max_samples left part of the set out."""
    limit = summary.get("eval_max_samples")
    examples = (summary.get("data") or {}).get(f"{split}_examples")
    if not limit or not isinstance(examples, int):
        return ""
    count, what = (examples // 2, "pairs") if pairs else (examples, "examples")
    return f"scored on the first {limit} of {count} {what}" if limit < count else ""


def _shared_line(mark: str, split: str, shared: list[int], other: str, pairs: bool) -> str:
    """'! validation: 30 of 1000 rows are also in the training data' ('= test: ... validation data'),
    and how many of the examples eval.max_samples scored are (trial 48b: the whole set's count
    beside scores of its first 64)."""
    line = f"{mark} {split}: {shared[0]} of {shared[1]} rows are also in the {other} data"
    if len(shared) == 4:
        line += f" ({shared[2]} of the first {shared[3]} {'pairs' if pairs else 'examples'}, which were scored)"
    return line


def _exact_match_part(summary: dict[str, Any], split: str) -> str:
    """'exact match on 4 of 10 pairs (...)' when generation scored part of the set: the first
    eval.generation.max_samples rows, less those too long to generate an answer for (trial 38c:
    4 of 10 pairs were scored, and nothing said it)."""
    data = summary.get("data") or {}
    scored, rows = data.get(f"{split}_exact_match_scored"), data.get(f"{split}_exact_match_of")
    if not isinstance(scored, int) or not isinstance(rows, int) or scored >= rows:
        return ""
    what = "pairs" if data.get("format") == "preference" else "examples"
    longer = data.get(f"{split}_exact_match_left_out", 0)
    why = [f"{longer} longer than data.max_seq_len left out"] if longer else []
    if scored + longer < rows:
        why.insert(0, f"the first {scored + longer}, eval.generation.max_samples")
    return f"exact match on {scored} of {rows} {what} ({'; '.join(why)})"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _quiet_libraries(import_transformers: bool = True) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from trainer.logging_setup import quiet_third_party

    quiet_third_party(import_transformers)


def report(run_dir: str, compare: list[str], out: str | None) -> int:
    from launcher.report.write import refuse_foreign_target, write_report
    from launcher.run_dir import is_ftl_run
    from trainer.run_layout import RunLayout

    runs = [Path(run_dir), *(Path(other) for other in compare)]
    for run in runs:
        if not RunLayout(run).is_run_dir() or not is_ftl_run(run):
            raise UserError(
                f"{run}: not a run directory (no {CONFIG_FILE}, or not one ftl made); pass the run's output.dir"
            )
    seen: dict[Path, Path] = {}
    for run in runs:
        earlier = seen.setdefault(run.resolve(), run)
        if earlier is not run:  # two identical curves under one label: nothing to compare
            raise UserError(f"{run} is given twice ({earlier}); compare different runs")
    target = Path(out) if out else _default_report_folder(runs)
    if out:  # the default, RUN/report, is the run's own
        refuse_foreign_target(target)
    page = write_report(runs, target)
    print(f"report written: {page}")
    for run in runs:  # trial 60b: a report of a run still training read as the whole run
        if not RunLayout(run).is_finished():
            print(f"  {run} has not finished: the report shows it as far as its metrics go now{_still_training(run)}")
    return 0


def _still_training(run: Path) -> str:
    from cluster.run_lock import read_holder, stale_reason
    from trainer.run_layout import RunLayout

    holder = read_holder(RunLayout(run).lock)
    if holder is None or stale_reason(holder) is not None:
        return ""
    return " (it is training now)"


def _default_report_folder(runs: list[Path]) -> Path:
    """RUN/report for one run; a comparison goes to RUN/report/compare-OTHER[-OTHER...] (trial 57a: it
    replaced the run's own end-of-run report, and on object storage the bucket's copy of it too)."""
    from trainer.run_layout import RunLayout

    own = RunLayout(runs[0]).report
    if len(runs) == 1:
        return own
    names = "-".join(re.sub(r"[^A-Za-z0-9._-]+", "_", run.resolve().name) for run in runs[1:])
    return own / f"compare-{names[:80]}"


def write_report_after_run(run_dir: Path, tracking: Any) -> None:
    """The report of a run that just ended, in RUN_DIR/report/, also given to the run's MLflow / W&B
    runs. Never fails the run: a problem (matplotlib missing, a full disk) is a warning."""
    try:
        from launcher.report.write import write_report
        from trainer.run_layout import RunLayout
        from trainer.tracking.trackers import upload_after_run

        page = write_report([run_dir], RunLayout(run_dir).report)
        print(f"ftl: report {page}", file=sys.stderr)
        upload_after_run(tracking, run_dir, [RunLayout(run_dir).report])
    except Exception as exc:  # the run itself is done and intact
        print(
            f"ftl: WARNING: could not write the run's report ({type(exc).__name__}: {exc}); "
            f"`ftl report {run_dir}` retries",
            file=sys.stderr,
        )
