"""`ftl` command line. Imports nothing heavy at module import time so `ftl --help` is instant;
each verb imports what it needs when it runs."""

from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftl",
        description="Fine-tune language models from one YAML config, on a laptop CPU or a cluster.",
        epilog="Overrides use key.path=value, e.g. `ftl train cfg.yaml training.learning_rate=1e-4 output.dir=runs/x`.",
    )
    parser.add_argument("--version", action="version", version=f"ftl {_version()}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    train = verbs.add_parser("train", help="validate a config and run the fine-tune it describes")
    train.add_argument("config", help="YAML config file")
    train.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")
    train.add_argument(
        "--skip-fit-check", action="store_true", help="launch even when `ftl plan` predicts the run does not fit"
    )

    slurm = verbs.add_parser("slurm", help="submit the run to Slurm as a batch job (sbatch), or print the script")
    slurm.add_argument("config", help="YAML config file")
    slurm.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")
    slurm.add_argument("--nodes", type=int, help="cluster.nodes")
    slurm.add_argument("--workers-per-node", type=int, help="cluster.workers (one per GPU)")
    slurm.add_argument("--gpus-per-node", type=int, help="cluster.slurm.gpus_per_node")
    slurm.add_argument("--time", help="cluster.slurm.time, e.g. 04:00:00")
    slurm.add_argument("--partition", help="cluster.slurm.partition")
    slurm.add_argument("--account", help="cluster.slurm.account")
    slurm.add_argument("--qos", help="cluster.slurm.qos")
    slurm.add_argument("--mode", choices=("torchrun", "ray"), help="cluster.slurm.mode")
    slurm.add_argument(
        "--dry-run",
        action="store_true",
        help="print the sbatch script and check what a submission checks (exit 2 if it would be refused); "
        "submit nothing, write nothing",
    )

    submit = verbs.add_parser("submit", help="submit the run to a Ray cluster as a Ray Job; prints the job id")
    submit.add_argument("config", help="YAML config file")
    submit.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")
    submit.add_argument("--address", help="Ray job server, e.g. http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS)")
    submit.add_argument(
        "--python",
        help="Python executable on the cluster, with ftl's dependencies (default: this one for a head on this "
        "machine, else python)",
    )
    submit.add_argument("--follow", action="store_true", help="stream the job's log until it ends")
    for verb, text in (
        ("status", "show a Ray Job's state"),
        ("logs", "print a Ray Job's log"),
        ("stop", "stop a Ray Job (it checkpoints first)"),
    ):
        job = verbs.add_parser(verb, help=text)
        job.add_argument("job_id")
        job.add_argument("--address", help="Ray job server, e.g. http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS)")
        if verb == "logs":
            job.add_argument("--follow", action="store_true", help="keep streaming until the job ends")

    validate = verbs.add_parser("validate", help="print the resolved config, or every error in it")
    validate.add_argument("config")
    validate.add_argument("overrides", nargs="*", metavar="key.path=value")
    validate.add_argument(
        "--data",
        action="store_true",
        help="instead of the config, read every row of every configured dataset as training would: every bad "
        "row, token counts, lengths, packing efficiency and examples with their trained tokens marked "
        "(exit code 2 when training would refuse the data)",
    )
    validate.add_argument(
        "--examples", type=int, default=3, metavar="N", help="with --data: examples to show (default 3)"
    )

    export = verbs.add_parser(
        "export",
        help="write a loadable model: a finished run's final/ (from the weights it "
        "finished with), else the latest checkpoint into RUN_DIR/exports/step-N",
    )
    export.add_argument("run_dir")
    export.add_argument("--merge", action="store_true", help="also write a merged full model (merged/)")
    export.add_argument(
        "--checkpoint",
        help="a specific checkpoint instead of the latest valid one: its directory, or its name in the run "
        "(step-25, 25, checkpoints/step-25 or latest) "
        "(written to exports/step-N, never to final/)",
    )
    export.add_argument("--out", help="write the export into this directory instead")

    generate = verbs.add_parser("generate", help="generate text with a run's fine-tuned model")
    generate.add_argument("run_dir", help="a run directory (uses final/) or any model directory")
    source = generate.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="user message (chat template applied unless --raw)")
    source.add_argument(
        "--input",
        metavar="FILE",
        help="a .jsonl/.json/.csv/.parquet file of rows with a 'prompt' string, a 'messages' list (ShareGPT: 'conversations') or an alpaca "
        "'instruction' (with 'input', 'system'); "
        "each row is written out with its completion added",
    )
    source.add_argument(
        "--chat", action="store_true", help="interactive chat: one user turn per line of stdin; empty line or EOF ends"
    )
    generate.add_argument("--output", metavar="FILE", help="with --input: the JSONL file to write (default: stdout)")
    generate.add_argument(
        "--field", default="completion", help="with --input: the output field for the reply (default: completion)"
    )
    generate.add_argument("--batch-size", type=int, default=8, help="prompts generated together (default 8)")
    generate.add_argument("--system", help="a system message before each conversation (chat template only)")
    generate.add_argument("--raw", action="store_true", help="feed prompts as-is, without the chat template")
    generate.add_argument("--max-new-tokens", type=int, default=None, help="at most this many new tokens (default 64)")
    generate.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    generate.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling, with --temperature > 0")
    generate.add_argument(
        "--seed",
        type=int,
        default=None,
        help="the sampling seed (with --temperature > 0); default: a new one each call, printed so it can be repeated",
    )

    runs = verbs.add_parser(
        "runs",
        help="list runs under a directory: status (failed ones with their reason), latest valid checkpoint, "
        "last loss, eval score, tokens/s, wall time",
    )
    runs.add_argument(
        "dir", nargs="?", default="runs", help="a directory of runs, or one run directory (default: ./runs)"
    )
    runs.add_argument("--verify", action="store_true", help="also verify checkpoint checksums (reads every file)")
    runs.add_argument("--json", action="store_true", help="print the runs as a JSON list (every field, for scripts)")
    report = verbs.add_parser(
        "report", help="plot a run's metrics (PNGs and one HTML page); --compare overlays other runs"
    )
    report.add_argument("run_dir")
    report.add_argument("--compare", nargs="+", default=[], metavar="RUN_DIR", help="runs to overlay on the plots")
    report.add_argument("--out", help="write the report here (default: RUN_DIR/report)")
    _add_plan_and_doctor(verbs)
    return parser


def _add_plan_and_doctor(verbs: argparse._SubParsersAction) -> None:
    plan = verbs.add_parser(
        "plan",
        help="predict per-GPU memory, speed, time and cost of a run before launching it",
        description="Exit code 0 when the run fits, 1 when it does not.",
    )
    plan.add_argument("config", help="YAML config file (model.path may be a built-in architecture, e.g. llama-3.1-8b)")
    plan.add_argument("overrides", nargs="*", metavar="key.path=value")
    plan.add_argument(
        "--gpu",
        help="GPU type (H100, H200, A100-80GB, A100-40GB, L40S, A6000, L4, RTX4090, ...) or cpu; "
        "default: this machine's device",
    )
    plan.add_argument("--gpus-per-node", type=int, help="GPUs per node (default: cluster.workers)")
    plan.add_argument("--nodes", type=int, default=1)
    plan.add_argument("--gpu-memory", help="memory per GPU, e.g. 24GiB or 80GB (overrides the table)")
    plan.add_argument("--peak-tflops", type=float, help="dense bf16 peak TFLOP/s per GPU (overrides the table)")
    plan.add_argument("--mfu", type=float, default=0.35, help="assumed model FLOPs utilisation (default 0.35)")
    plan.add_argument("--price-per-gpu-hour", type=float, help="price of one GPU-hour, for the cost estimate")

    doctor = verbs.add_parser(
        "doctor", help="preflight checks: versions, CUDA/NCCL, disk, shared run directory, all-reduce bandwidth"
    )
    doctor.add_argument("config", nargs="?", help="YAML config (run directory, workers, checkpoint sizes); optional")
    doctor.add_argument("overrides", nargs="*", metavar="key.path=value")
    doctor.add_argument(
        "--workers", type=int, help="worker processes for the collective checks (default: cluster.workers, at least 2)"
    )
    doctor.add_argument("--size-mb", type=float, default=64.0, help="all-reduce message size in MB (default 64)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come after flags too (`ftl slurm cfg.yaml --nodes 2 output.dir=x`).
    args, extra = parser.parse_known_args(argv)
    if extra:
        # `key=value`, or `~key` (unset), after a flag (`ftl validate cfg.yaml --data '~data.test'`).
        overrides = [arg for arg in extra if not arg.startswith("-") and ("=" in arg or arg.startswith("~"))]
        if not hasattr(args, "overrides") or len(overrides) != len(extra):
            from trainer.secret_values import redact_argv

            parser.error(f"unrecognized arguments: {' '.join(redact_argv(extra))}")  # a pasted token is not echoed
        args.overrides += extra
    from trainer.errors import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, FtlError
    from trainer.logging_setup import quiet_third_party, setup_launcher_logging

    # Libraries' chatter stays off every command's console, not only train's and plan's (trial 49a:
    # transformers' "add is_decoder=True" from sizing a BERT on the meta device, on every command).
    quiet_third_party(import_transformers=False)
    setup_launcher_logging()
    try:
        return _dispatch(args)
    except FtlError as exc:  # what the user should see and the exit code are the error's own (trainer/errors.py)
        from cluster.stderr_gone import say_to_stderr

        message = exc.report()
        if message is not None and not _said_by_rank0(exc.exit_code):
            say_to_stderr(message + "\n")  # the exit code is the error's even when no one reads it (trial 64d)
        return exc.exit_code
    except KeyboardInterrupt:  # Ctrl-C before the run started, or a force-quit (third Ctrl-C) during it
        from cluster.stderr_gone import say_to_stderr

        say_to_stderr("ftl: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `ftl runs | head -1`: the reader has all it wanted; no traceback
        # Python would flush stdout again at exit and fail the same way: point it at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _copied_to_the_bucket(args: argparse.Namespace, uri: str) -> int:
    """`ftl export URI` / `ftl report URI`: the command on the run's working copy, and what it wrote
    there (exports/, final/, report/) copied to the bucket with the rest of the run (trial 55a: they
    stayed on this machine)."""
    import time
    from pathlib import Path

    from cluster.run_storage import push_written
    from launcher.commands import export, report
    from launcher.run_dir import working_copy_of

    started = time.time()
    if args.verb == "export":
        code = export(args.run_dir, merge=args.merge, checkpoint=args.checkpoint, out=None)
    else:
        code = report(args.run_dir, [working_copy_of(other) for other in args.compare], None)
    if code == 0:
        push_written(uri, Path(args.run_dir), since=started)
    return code


def _said_by_rank0(exit_code: int) -> bool:
    """Under a user's own torchrun every worker runs this CLI: a stop is the same news on every
    rank, and rank 0 says it."""
    from trainer.errors import EXIT_STOPPED, STOP_SIGNAL_CODES

    own_torchrun_rank = "TORCHELASTIC_RUN_ID" in os.environ and os.environ.get("RANK", "0") != "0"
    return own_torchrun_rank and (exit_code == EXIT_STOPPED or exit_code in STOP_SIGNAL_CODES)


def _dispatch(args: argparse.Namespace) -> int:
    if args.verb == "validate":
        from launcher.commands import validate

        return validate(args.config, args.overrides, data=args.data, examples=args.examples)
    if args.verb == "train":
        from launcher.commands import train

        return train(args.config, args.overrides, fit_check=not args.skip_fit_check)
    if args.verb in ("submit", "status", "logs", "stop"):
        from launcher import ray_jobs_commands

        return getattr(ray_jobs_commands, args.verb)(args)
    if args.verb == "slurm":
        from launcher.slurm_submit import slurm

        return slurm(args)
    if args.verb in ("export", "generate", "runs", "report"):  # a run on object storage: its working copy
        from launcher.run_dir import working_copy_of

        if args.verb == "runs":
            args.dir = working_copy_of(args.dir)
        else:
            given, args.run_dir = args.run_dir, working_copy_of(args.run_dir)
            if args.verb in ("export", "report") and given != args.run_dir and not args.out:
                return _copied_to_the_bucket(args, given)  # what it writes into the working copy
        if args.verb == "report" and args.compare:
            args.compare = [working_copy_of(other) for other in args.compare]
    if args.verb == "export":
        from launcher.commands import export

        return export(args.run_dir, merge=args.merge, checkpoint=args.checkpoint, out=args.out)
    if args.verb == "generate":
        from launcher.commands import generate

        return generate(args)
    if args.verb == "runs":
        from launcher.commands import runs

        return runs(args.dir, verify=args.verify, as_json=args.json)
    if args.verb == "report":
        from launcher.commands import report

        return report(args.run_dir, args.compare, args.out)
    if args.verb == "plan":
        from launcher.plan.command import plan_command

        return plan_command(args)
    if args.verb == "doctor":
        from launcher.doctor import doctor_command

        return doctor_command(args)
    raise AssertionError(args.verb)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("ftl")
    except metadata.PackageNotFoundError:
        return "dev"


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
