"""`ftl plan` and the fit check `ftl train` runs before launching."""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass

from cluster.gpu_probe import cuda_available
from launcher.config_loader import load_config
from launcher.errors import UserError
from launcher.plan.hardware import Accelerator, accelerator, parse_size, ram_share
from launcher.plan.memory import RAY_LOCAL_SERVICES, RAY_WORKER_EXTRA
from launcher.plan.planner import Target, plan_run
from launcher.plan.render import render, size
from launcher.run_config import RunConfig
from trainer.errors import EXIT_FAILED, TrainerInputError
from trainer.logging_setup import quiet_third_party


def plan_command(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    quiet_third_party()  # the planner's meta model imports transformers, PEFT and bitsandbytes: no chatter
    _check_flags(args)
    from launcher.preflight import architecture_problem, model_config_problems

    unreadable = model_config_problems(cfg)
    if unreadable:  # a damaged config.json: a JSONDecodeError traceback from the planner otherwise
        raise UserError("; ".join(unreadable))
    from launcher.model_check import model_load_problem

    # An encoder as a causal LM, an encoder-decoder, a model transformers cannot build or load: a
    # traceback from the meta model, or a plan of a model the workers cannot load (trial 57b).
    architecture = architecture_problem(cfg) or model_load_problem(cfg, need_weights=False)
    if architecture:
        raise UserError(architecture)
    from launcher.preflight import freeze_problem

    freezing = freeze_problem(cfg)  # on the run's model, task head and all (the planner's may be another class)
    if freezing:
        raise UserError(freezing)
    own = own_code_reason(cfg)
    if own:
        raise UserError(f"cannot plan this model: {own}")
    acc = (
        accelerator(args.gpu, args.gpu_memory, args.peak_tflops)
        if args.gpu
        else this_machine(args.gpu_memory, args.peak_tflops)
    )
    per_node = args.gpus_per_node or (cfg.cluster.workers if args.nodes == 1 else 1)
    target = Target(ram_share(acc, per_node), per_node, args.nodes)
    try:
        plan = plan_run(cfg, target, mfu=args.mfu, price_per_gpu_hour=args.price_per_gpu_hour)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # a traceback before (trial 58b)
        raise UserError(f"cannot plan this model: {cannot_plan_reason(cfg, exc)}") from None
    print(render(plan))
    beside, whose = ray_on_cpu_bytes(cfg) if not acc.is_gpu else (0, "")
    if beside:  # the per-worker table is the trainer's; Ray's library and daemons come on top (the fit check adds them)
        what = "its library in each worker" + (", and the local Ray's own processes" if "local" in whose else "")
        print(
            f"on Ray    + {size(beside)} of RAM for Ray ({what}): {size(plan.memory.total_bytes * per_node + beside)} "
            f"in all for {per_node} worker(s), as `ftl train`'s fit check counts"
        )
    from launcher.hub_cache import warn_unavailable_offline
    from launcher.plan.catalogue import is_short_name

    if not is_short_name(cfg.model.path):  # planned from the catalogue: no hub model to miss (48b)
        warn_unavailable_offline(cfg)  # planned, but not trainable on this machine
    if not args.gpu:
        from launcher.preflight import gpu_only_problems

        for problem in gpu_only_problems(cfg):  # planned as asked; `ftl train` here refuses it
            print(f"ftl: WARNING: `ftl train` on this machine refuses this config: {problem}", file=sys.stderr)
    return 0 if plan.memory.fits else EXIT_FAILED  # does not fit


MAX_GPUS = 4096  # as cluster.workers


def _check_flags(args: argparse.Namespace) -> None:
    """The plan's own flags, as strictly as config keys: a negative node count or a NaN price
    would print a plan of nonsense with a verdict."""
    if args.mfu is not None and not 0 < args.mfu <= 1:
        raise UserError(f"--mfu {args.mfu}: a fraction of peak throughput, in (0, 1]")
    for flag, value in (("--nodes", args.nodes), ("--gpus-per-node", args.gpus_per_node)):
        if value is not None and not 1 <= value <= MAX_GPUS:
            raise UserError(f"{flag} {value}: a count from 1 to {MAX_GPUS}")
    if args.nodes * (args.gpus_per_node or 1) > MAX_GPUS:
        raise UserError(f"--nodes {args.nodes} x --gpus-per-node {args.gpus_per_node}: more than {MAX_GPUS} GPUs")
    if args.peak_tflops is not None and not (math.isfinite(args.peak_tflops) and args.peak_tflops > 0):
        raise UserError(f"--peak-tflops {args.peak_tflops}: a positive number of TFLOP/s per GPU")
    price = args.price_per_gpu_hour
    if price is not None and not (math.isfinite(price) and price >= 0):
        raise UserError(f"--price-per-gpu-hour {price}: a price of 0 or more")


def this_machine(memory: str | None = None, peak_tflops: float | None = None) -> Accelerator:
    """The first CUDA device when there is one, else the CPU with its available RAM."""
    if cuda_available():
        import torch

        props = torch.cuda.get_device_properties(0)
        total = parse_size(memory) if memory else props.total_memory
        return Accelerator(props.name, total, peak_tflops, torch.cuda.is_bf16_supported())
    return accelerator("cpu", memory, peak_tflops)


def ray_on_cpu_bytes(cfg: RunConfig) -> tuple[int, str]:
    """What Ray itself takes of a CPU machine's RAM beside the planned workers, and how to say it."""
    if cfg.cluster.backend != "ray":
        return 0, ""
    extra = RAY_WORKER_EXTRA * cfg.cluster.workers
    if cfg.cluster.ray.address or os.environ.get("RAY_ADDRESS"):
        return extra, " on Ray"  # a running cluster's own processes are in use already
    return extra + RAY_LOCAL_SERVICES, " and the local Ray's own processes"


@dataclass(frozen=True)
class FitVerdict:
    """Whether the run fits this machine: `fits` None when it cannot be judged (`said` says why);
    else `said` is the need against what is available."""

    fits: bool | None
    said: str
    hints: str = ""
    tight: str = ""  # a run that fits with under 10% to spare: what may happen, and the way to room

    def refusal(self) -> str:
        return f"{self.said} (see `ftl plan` for the breakdown){'; it would fit with: ' + self.hints if self.hints else ''}"


def unsizable_model(cfg: RunConfig) -> str:
    """Why the fit check cannot judge a run whose model.path it finds nowhere (no folder, not in the
    Hugging Face cache, no built-in architecture), and the ways on."""
    from launcher.hub_cache import downloads_off

    model = cfg.model.path
    from launcher.local_paths import relative_to_cwd

    where = relative_to_cwd(model).strip() + " " if relative_to_cwd(model) else ""
    offline = ", and downloads are off (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE)" if downloads_off() else ""
    return (
        f"model.path: {model!r} {where}is no model folder with a config.json, nor a model in the Hugging Face "
        f"cache{offline}, so the fit check cannot size this run: point model.path at a model folder, or pass "
        f"--skip-fit-check to launch it anyway (the workers then download {model!r} from the hub, which needs "
        "network access)"
    )


def unsizable_model_problem(cfg: RunConfig) -> str | None:
    """unsizable_model's sentence when the fit check would find model.path nowhere (a local path
    that does not exist is check_inputs' to say), else None."""
    from launcher.hub_cache import downloads_off
    from launcher.local_paths import looks_local
    from launcher.plan.catalogue import model_config_fields

    # Offline, an uncached hub name is hub_cache's to say (it is refused before the fit check).
    if cfg.cluster.backend == "slurm" or looks_local(cfg.model.path) or downloads_off():
        return None
    try:
        model_config_fields(cfg.model.path, cfg.model.revision)
    except UserError:
        return unsizable_model(cfg)
    return None


def own_code_reason(cfg: RunConfig) -> str | None:
    """Why the planner does not size a model of its folder's own code (auto_map, trusted); asked
    before the planner starts, which would import torch and transformers only to fail (~6 s of
    every validate and train of such a model)."""
    from launcher.plan.catalogue import model_config_fields

    try:
        _, fields = model_config_fields(cfg.model.path, cfg.model.revision)
    except (UserError, OSError, ValueError):
        return None
    if isinstance(fields, dict) and fields.get("auto_map") and cfg.model.trust_remote_code:
        return (
            "its modelling code is the model folder's own (auto_map, model.trust_remote_code), which the planner "
            "does not run: it sizes models of transformers' own classes"
        )
    return None


def cannot_plan_reason(cfg: RunConfig, exc: BaseException) -> str:
    """Why the planner could not build this model, in one short line: transformers' errors go on to
    list every model type it knows (trial 58b: a line of 12,104 characters)."""
    own = own_code_reason(cfg)
    if own:
        return own
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    first = lines[0] if lines else ""
    cut = first.find(" Should contain one of")  # AutoConfig's list of every model type
    first = first[:cut] if cut > 0 else first
    if len(first) > 300:
        first = first[:300].rsplit(" ", 1)[0] + " ..."
    return f"{type(exc).__name__}: {first}"


def fit_verdict(cfg: RunConfig) -> FitVerdict:
    """The fit check's judgement (check_fit before `ftl train`, a row of `ftl doctor`). On GPU the
    budget is one device per worker; on a CPU-only machine all local workers share the available
    RAM. A config that names what the model does not have raises TrainerInputError."""
    if cfg.cluster.backend == "slurm":  # the run's machines are the allocation's, not this login node
        return FitVerdict(
            None,
            "skipped: a Slurm job runs on the allocation's nodes; `ftl plan CONFIG --gpu TYPE --gpus-per-node N` "
            "plans for them",
        )
    own = own_code_reason(cfg)
    if own:
        return FitVerdict(None, f"skipped: cannot plan this model ({own})")
    workers = cfg.cluster.workers
    acc = ram_share(this_machine(), workers)  # on CPU each worker gets its share of the RAM, as in `ftl plan`
    try:
        plan = plan_run(cfg, Target(acc, workers, 1), with_throughput=False)
    except UserError as exc:  # a model.path it does not know (a hub name, or a typo)
        if "is neither a model folder" in str(exc):
            # Not the catalogue's short names as a way out: no worker loads those (trial 47b).
            raise UserError(unsizable_model(cfg)) from None
        raise UserError(
            f"{exc}. The fit check cannot judge this run; pass --skip-fit-check to launch it anyway"
        ) from None
    except TrainerInputError:  # the config names what this model does not have: the workers would refuse it too
        raise
    except Exception as exc:  # noqa: BLE001 - reported, then the run goes on
        return FitVerdict(None, f"skipped: cannot plan this model ({cannot_plan_reason(cfg, exc)})")
    memory = plan.memory
    if acc.is_gpu:
        need, have, what = memory.total_bytes, acc.memory_bytes, f"per GPU ({acc.name})"
    else:
        beside, whose = ray_on_cpu_bytes(cfg)
        need, have, what = (
            memory.total_bytes * workers + beside,
            acc.memory_bytes * workers,
            # cluster.workers is per node (trial 59b: "for 1 worker(s)" of a two-node run of 2 workers).
            f"of RAM for {workers} worker(s){' on each of the ' + str(cfg.cluster.nodes) + ' nodes' if cfg.cluster.nodes > 1 else ''}{whose}",
        )
    said = (
        f"the run needs about {size(need)} {what}; {size(have)} available"
        if need <= have
        else f"this run needs about {size(need)} {what} but {size(have)} is available"
    )
    hints = "; ".join(
        f"{s.change.description} ({' '.join(_as_config_keys(s.change.overrides))})" for s in plan.suggestions[:3]
    )
    # Trial 56a: 21.04 of 22.22 GiB passed, and the estimate is not exact (nor is what else the
    # machine runs meanwhile); on Ray the memory monitor ends a worker at 95% of the machine's memory.
    monitor = (
        " (Ray's memory monitor ends a worker once the machine's memory use passes 95%)"
        if not acc.is_gpu and cfg.cluster.backend == "ray"
        else ""
    )
    tight = (
        f"the run's estimated need is over 90% of what is available, and the estimate is approximate: it may run "
        f"out of memory{monitor}; a smaller training.micro_batch_size with more "
        "training.gradient_accumulation_steps (the same global batch) leaves room"
        if have * 0.9 < need <= have
        else ""
    )
    return FitVerdict(need <= have, said, hints, tight)


# `ftl plan`'s hardware flags in a suggestion, as the config keys `ftl train` takes instead.
PLAN_FLAG_KEYS = {"--nodes": "cluster.nodes", "--gpus-per-node": "cluster.workers"}


def _as_config_keys(overrides: list[str]) -> list[str]:
    shown = []
    for override in overrides:
        flag, _, value = override.partition(" ")
        shown.append(f"{PLAN_FLAG_KEYS[flag]}={value}" if flag in PLAN_FLAG_KEYS else override)
    return shown


def check_fit(cfg: RunConfig) -> None:
    """Refuse a run that cannot fit on this machine (fit_verdict); one it cannot judge only warns:
    the check must never block a run it cannot judge."""
    verdict = fit_verdict(cfg)
    if verdict.fits is None:
        print(f"ftl: fit check {verdict.said}", file=sys.stderr)
        return
    if verdict.fits:
        print(f"ftl: fit check: {verdict.said}", file=sys.stderr)
        if verdict.tight:
            print(f"ftl: WARNING: {verdict.tight}", file=sys.stderr)
        if not cuda_available():
            _note_oversubscribed_cores(cfg)
        return
    raise UserError(f"{verdict.refusal()}. Pass --skip-fit-check to launch anyway")


def _note_oversubscribed_cores(cfg: RunConfig) -> None:
    """More CPU workers on this machine than it has cores: each gets a fraction of one, and the
    collectives wait on the slowest (3 FSDP workers on 2 cores: 453 tokens/s against about 8,000
    with 2). Said, not refused: it trains correctly, only slowly."""
    if cfg.cluster.ray.address or os.environ.get("RAY_ADDRESS"):
        return  # the workers run on the cluster's machines
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = cfg.cluster.workers
    if workers > cores:
        print(
            f"ftl: note: {workers} workers on {cores} CPU core(s): each gets less than a core and every step waits "
            f"on the slowest; expect it many times slower than cluster.workers={cores}",
            file=sys.stderr,
        )
