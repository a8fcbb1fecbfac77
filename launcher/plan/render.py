"""The text report of `ftl plan`."""

from __future__ import annotations

from launcher.plan.memory import MemoryPlan
from launcher.plan.planner import Plan
from launcher.plan.throughput import Throughput

FLOP_CONVENTION = (
    "FLOPs/token: 6N full, 4N + 6N_adapter frozen-base adapters, + 12*layers*seq*q_dim attention "
    "(N = matmul parameters, a mixture's active experts only); checkpointing adds a recomputed forward; DPO adds its reference model's forward"
)


def size(n: float) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def memory_table(memory: MemoryPlan) -> list[str]:
    heading = "per-GPU memory (rank 0)" if memory.setup.accelerator.is_gpu else "per-worker memory (rank 0, in CPU RAM)"
    lines = [f"  {heading:<62}{'':>12}"]
    for item in memory.items:
        if item.where == "gpu" and item.bytes:
            lines.append(f"    {item.label:<60}{size(item.bytes):>12}")
    lines.append(
        f"    {'peak of live tensors (at the larger of: activations, gradients)':<60}{size(memory.peak_bytes):>12}"
    )
    where = "CUDA context, NCCL, allocator slack" if memory.setup.accelerator.is_gpu else "python + torch + libraries"
    framework = memory.overhead_bytes - memory.retention_bytes
    lines.append(f"    {'framework overhead (' + where + ')':<60}{size(framework):>12}")
    if memory.retention_bytes:
        label = "allocator retention (freed activations glibc keeps)"
        lines.append(f"    {label:<60}{size(memory.retention_bytes):>12}")
    lines.append(f"    {'total':<60}{size(memory.total_bytes):>12}")
    offloaded = [i for i in memory.items if i.where != "gpu" and i.bytes]
    for item in offloaded:
        lines.append(f"    {'[' + item.where + '] ' + item.label:<60}{size(item.bytes):>12}")
    if memory.host_bytes and memory.setup.accelerator.is_gpu:
        lines.append(f"    {'[host] total in CPU RAM per GPU (offloaded)':<60}{size(memory.host_bytes):>12}")
    return lines


def verdict(memory: MemoryPlan) -> str:
    capacity = size(memory.capacity_bytes)
    device = memory.setup.accelerator.name
    if memory.fits:
        return f"FITS: {size(memory.total_bytes)} of {capacity} per {device}, headroom {size(memory.headroom_bytes)}"
    return f"DOES NOT FIT: {size(memory.total_bytes)} needed, {capacity} per {device} ({size(-memory.headroom_bytes)} short)"


def throughput_lines(t: Throughput, workers: int) -> list[str]:
    lines = [
        f"  {FLOP_CONVENTION}",
        f"  {t.model_flops_per_token / 1e9:.3g} GFLOP/token (model), {t.hardware_flops_per_token / 1e9:.3g} GFLOP/token executed",
    ]
    if t.tokens_per_s is None:
        lines.append("  tokens/s: no peak throughput for this device; pass --peak-tflops (and --mfu) to estimate")
        return lines
    lines.append(
        f"  {t.tokens_per_s:,.0f} tokens/s on {workers} worker(s) at {t.peak_tflops:g} TFLOP/s peak x MFU {t.mfu:g} (assumed; --mfu to change)"
    )
    if t.tokens is None:
        if t.run_seconds is not None:  # training.max_steps sets the run's tokens without the data (a mixture)
            lines.append(f"  epoch: {t.no_tokens_reason}; time: {duration(t.run_seconds)} for the configured steps")
        else:
            lines.append(f"  epoch: {t.no_tokens_reason}; no time estimate")
        return lines
    lines.append(
        f"  epoch: {t.tokens.real_tokens:,} tokens ({t.tokens.slots:,} computed positions with packing/padding), from {t.tokens.source}"
    )
    if t.epoch_seconds is not None and t.run_seconds is not None:
        scoring = (
            f" (incl. {duration(t.reference_seconds)} scoring the training pairs with the reference model before step 1)"
            if t.reference_seconds is not None
            else ""
        )
        lines.append(
            f"  time: {duration(t.epoch_seconds)} per epoch, {duration(t.run_seconds)} for the configured run{scoring}"
        )
    if t.cost is not None:
        lines.append(f"  cost: {t.cost:,.2f} at the given price per GPU-hour")
    return lines


def render(plan: Plan) -> str:
    inv, memory, setup = plan.inventory, plan.memory, plan.memory.setup
    acc = setup.accelerator
    arch = inv.arch
    top = acc.peak_for(setup.precision)
    peak = f", {top:g} TFLOP/s{' fp32' if top != acc.peak_tflops else ''}" if top else ""
    lines = [
        f"model     {inv.label}: {inv.total() / 1e6:,.1f}M parameters ({arch.model_type}, {arch.layers} layers, hidden {arch.hidden}), "
        f"{inv.total(True) / 1e6:,.2f}M trainable",
        f"hardware  {plan.target.nodes} node(s) x {plan.target.gpus_per_node} x {acc.name} ({size(acc.memory_bytes)}{peak})",
        *([f"note      {acc.note}"] if acc.note else []),
        f"setup     {setup.describe()}, {setup.precision} compute",
        "",
        *memory_table(memory),
        "",
        f"verdict   {verdict(memory)}",
    ]
    if plan.suggestions:
        lines += ["", "changes that make it fit (cheapest first):"]
        for s in plan.suggestions:
            per = "GPU" if s.memory.setup.accelerator.is_gpu else "worker"  # a CPU plan is per worker's RAM share
            lines.append(f"  - {s.change.description}: {size(s.memory.total_bytes)} per {per}")
            lines.append(f"      {' '.join(s.change.overrides)}")
    elif not memory.fits:
        lines += ["", "no single change or pair of changes fits; plan more GPUs with --gpus-per-node/--nodes"]
    if plan.throughput:
        lines += ["", "throughput", *throughput_lines(plan.throughput, setup.workers)]
    lines += [f"  note: {n}" for n in memory.notes + plan.notes]
    return "\n".join(lines)
