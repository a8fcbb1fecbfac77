"""`ftl plan` against published memory figures, and where/why ftl differs.

    .venv/bin/python scripts/bench/plan_vs_published.py

1. ZeRO paper (Rajbhandari et al. 2020, Fig. 1 / Table 1): model states per GPU for Ψ = 7.5B
   parameters on 64 GPUs with mixed-precision Adam: DDP 120 GB, ZeRO-1 31.4, ZeRO-2 16.6, ZeRO-3 1.9.
2. QLoRA paper (Dettmers et al. 2023): LLaMA 65B fine-tuned on one 48 GB GPU.
3. torchtune README, "Memory and training speed": Llama 3.1 8B, batch 2, packed to 2048 tokens,
   torch.compile on: full 18.9 GiB (1x RTX 4090) / 37.4 GiB (1x A6000), LoRA 16.2 / 30.3 GiB,
   QLoRA 7.4 GiB (RTX 4090); peak memory per GPU. For each row: ftl's plan before issue 13's lean settings,
   with today's defaults, and with the leanest settings valid for the row, and where ftl is still above, why.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import yaml  # noqa: E402

from launcher.config_loader import load_config  # noqa: E402
from launcher.plan.hardware import GIB, accelerator  # noqa: E402
from launcher.plan.planner import Target, plan_run  # noqa: E402
from launcher.plan.published import model_states, plan_bare  # noqa: E402

DATA = REPO / "assets" / "data" / "fictional-qa" / "train.jsonl"


def config(tmp: Path, **sections: dict) -> object:  # type: ignore[type-arg]
    raw = {
        "model": {"path": "llama-3.1-8b"},
        "data": {"train": str(DATA), "max_seq_len": 2048},
        "method": {"type": "lora"},
        "training": {"micro_batch_size": 2},
        "output": {"dir": str(tmp / "run")},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


def zero_paper() -> None:
    print("1. ZeRO paper: model states per GPU, 7.5B parameters, 64 GPUs (GB = 1e9 bytes)")
    gpu, psi = accelerator("A100-80GB"), 7_500_000_000
    rows = [
        (
            "DDP (fp32 weights, ftl's DDP)",
            120.0,
            plan_bare(psi, strategy="ddp", gpus=64, precision="fp32", param_bytes=4, gpu=gpu),
        ),
        (
            "DDP (bf16 weights, ftl's default on GPU)",
            120.0,
            plan_bare(psi, strategy="ddp", gpus=64, precision="bf16", param_bytes=2, gpu=gpu),
        ),
    ]
    for stage, paper in ((1, 31.4), (2, 16.6), (3, 1.9)):
        rows.append(
            (
                f"ZeRO-{stage} (DeepSpeed, bf16)",
                paper,
                plan_bare(
                    psi, strategy="deepspeed", zero_stage=stage, gpus=64, precision="bf16", param_bytes=2, gpu=gpu
                ),
            )
        )
    print(f"   {'setup':<42}{'paper':>8}{'ftl plan':>10}{'+ buffers':>11}")
    for name, paper, memory in rows:
        states = model_states(memory)
        buffers = sum(i.bytes for i in memory.items if i.kind == "buffer" and i.where == "gpu")
        print(f"   {name:<42}{paper:>8.1f}{states / 1e9:>10.1f}{buffers / 1e9:>11.1f}")
    print(
        "   Model states match the paper's (2+2+12)Ψ accounting. Differences: ftl's DDP trains the weights in their\n"
        "   loaded dtype with torch AdamW (states in that dtype, no fp32 master copy), so with bf16 weights it holds\n"
        "   8Ψ, not 16Ψ; with fp32 weights 16Ψ = 120 GB as in the paper. ftl also counts what the paper leaves out:\n"
        "   DDP's gradient buckets (one more gradient copy), DeepSpeed's reduce/all-gather buckets (5e8 elements each\n"
        "   by default) and the fp32 gradient partition of the optimizer step ('+ buffers')."
    )


def qlora_paper(tmp: Path) -> None:
    print("\n2. QLoRA paper: LLaMA 65B on one 48 GB GPU (NF4 + double quant, LoRA r=64 on all linear layers, bf16)")
    cfg = config(
        tmp,
        model={"path": "llama-65b", "gradient_checkpointing": True},
        data={"max_seq_len": 512},
        method={"type": "qlora", "lora": {"r": 64, "alpha": 16, "dropout": 0.05}},
        training={"micro_batch_size": 1},
    )
    plan = plan_run(cfg, Target(accelerator("A6000")), with_throughput=False)
    m = plan.memory
    print(
        f"   ftl plan, micro-batch 1 x 512 tokens, checkpointing: {m.total_bytes / GIB:.1f} GiB on a 48 GiB A6000 -> "
        f"{'fits' if m.fits else 'does not fit'}"
    )
    for item in m.items:
        if item.where == "gpu" and item.bytes > 0.05 * GIB:
            print(f"     {item.label:<58}{item.bytes / GIB:>7.2f} GiB")
    packed = m.state_bytes("weights, frozen: 4-bit linear")
    scales = m.state_bytes("weights, frozen: 4-bit block")
    quantized = 2 * packed  # 4-bit: two weights per byte
    fp32_frozen = m.state_bytes("weights, frozen: fp32")
    adapters = m.state_bytes("weights, trainable")
    lean = plan_run(
        load_config(tmp / "c.yaml", ["method.adapter_dtype=compute", "training.optimizer=paged_adamw_8bit"]),
        Target(accelerator("A6000")),
        with_throughput=False,
    ).memory
    print(
        f"   Block scales: {8 * scales / quantized:.3f} bits/parameter (the paper: 0.127 with double quantization, 0.5 without).\n"
        f"   ftl {'agrees' if m.fits else 'differs'} with its defaults: {m.total_bytes / GIB:.1f} GiB incl. {m.overhead_bytes / GIB:.1f} GiB "
        "CUDA context/allocator allowance.\n"
        f"   Why: by default PEFT keeps the LoRA adapters in fp32 ({adapters / GIB:.1f} GiB, and fp32 gradients and Adam states for them)\n"
        f"   and its k-bit preparation upcasts embeddings, head and norms to fp32 ({fp32_frozen / GIB:.1f} GiB). With the paper's choices,\n"
        "   bf16 adapters/embeddings/head (method.adapter_dtype=compute) and paged 8-bit optimizer states\n"
        f"   (training.optimizer=paged_adamw_8bit): {lean.total_bytes / GIB:.1f} GiB -> {'fits' if lean.fits else 'does not fit'}."
    )


BEFORE_ISSUE_13 = [
    "training.loss.chunked=false",
    "training.optimizer=adamw",
    "training.optimizer_in_backward=false",
    "model.activation_offloading=false",
]


def lean_overrides(cfg: object, gpu: str) -> list[str]:
    """The leanest settings valid for this run, as `ftl plan`'s suggestions choose them, plus
    activation offloading (valid on every GPU; it trades PCIe copies for memory)."""
    from launcher.plan.planner import config_accepts, leanest_overrides

    overrides = leanest_overrides(cfg, Target(accelerator(gpu)))
    if not cfg.model.activation_offloading and config_accepts(cfg, overrides + ["model.activation_offloading=true"]):
        overrides.append("model.activation_offloading=true")
    return overrides


def torchtune(tmp: Path) -> None:
    print("\n3. torchtune README: Llama 3.1 8B, batch 2 x 2048 packed tokens, peak memory per GPU (GiB)")
    cases = [
        ("full", "RTX4090", 18.9, True),
        ("full", "A6000", 37.4, True),
        ("lora", "RTX4090", 16.2, True),
        ("lora", "A6000", 30.3, False),
        ("qlora", "RTX4090", 7.4, True),
    ]
    print(
        "   ftl columns: 'before' = the path before issue 13 (full logits, torch AdamW, fp32 adapters); 'default' = ftl's\n"
        "   defaults now (chunked loss); 'leanest' = the leanest settings valid for the row (listed below it). Each ftl\n"
        "   figure is 'live tensors / total': the peak of live tensors is what torch's peak-memory counters (and so\n"
        "   torchtune's figures) report; the total adds the CUDA context and a 5% allocator allowance."
    )
    print(f"   {'method':<7}{'GPU':<9}{'torchtune':>10}{'before':>14}{'default':>14}{'leanest':>14}  verdict")
    gaps = []
    for method, gpu, published, checkpointing in cases:
        lora = {
            "r": 8,
            "alpha": 16,
            "dropout": 0.0,
            "target_modules": ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        }
        cfg = config(tmp, model={"gradient_checkpointing": checkpointing}, method={"type": method, "lora": lora})
        path = tmp / "c.yaml"
        lean = lean_overrides(cfg, gpu)
        figures = []
        before = BEFORE_ISSUE_13 + (["method.adapter_dtype=float32"] if method != "full" else [])
        for overrides in (before, [], lean):
            plan = plan_run(load_config(path, overrides), Target(accelerator(gpu)), with_throughput=False)
            memory = plan.memory
            memory.inventory_arch = plan.inventory.arch  # type: ignore[attr-defined]  (for the why-text below)
            figures.append(memory)
        live, total = figures[2].peak_bytes / GIB, figures[2].total_bytes / GIB
        verdict = (
            "at or below"
            if total <= published
            else ("live tensors below, total above" if live <= published else "ABOVE")
        )
        cells = "".join(f"{m.peak_bytes / GIB:>7.1f} /{m.total_bytes / GIB:>5.1f}" for m in figures)
        print(f"   {method:<7}{gpu:<9}{published:>10.1f}{cells}  {verdict}")
        print(
            f"        leanest: {' '.join(lean) or '(the defaults)'}{'' if checkpointing else ' (no checkpointing, as the row)'}"
        )
        paged = sum(i.bytes for i in figures[2].items if i.where == "paged")
        host = figures[2].host_bytes
        if paged or host:
            spill = paged > figures[2].headroom_bytes
            print(
                f"        outside GPU memory: {paged / GIB:.1f} GiB paged optimizer states (CUDA unified memory"
                f"{'; more than the GPU has free, so part pages to CPU RAM every step' if paged and spill else ''}), "
                f"{host / GIB:.1f} GiB offloaded activations (CPU RAM)"
            )
        if live > published:  # would a smaller loss chunk get there?
            smaller = plan_run(
                load_config(path, [*lean, "training.loss.chunk_tokens=256"]),
                Target(accelerator(gpu)),
                with_throughput=False,
            ).memory
            gaps.append((method, gpu, published, figures[2], smaller))
    print(
        "   Where ftl's leanest plan is still above the published figure, and why:"
        if gaps
        else "   ftl's leanest plan's live tensors are at or below every published figure."
    )
    for method, gpu, published, memory, smaller in gaps:
        from launcher.plan.activations import loss_head_bytes

        weights = sum(i.bytes for i in memory.items if i.label.startswith("weights") and i.where == "gpu") / GIB
        chunk = loss_head_bytes(memory.inventory_arch, memory.setup) / GIB
        head_grad = memory.activations.head / GIB - chunk + memory.state_bytes("LM head weight gradient") / GIB
        trained = "full" in method
        acts = memory.activations
        recompute = (acts.per_layer + acts.recompute_workspace) / GIB if acts.checkpointing else 0.0
        print(
            f"   - {method} {gpu}: {memory.peak_bytes / GIB:.2f} GiB live vs {published:.1f}. Of it: weights {weights:.1f} GiB, "
            + (
                f"the recomputed layer's activations and gradients {recompute:.1f} GiB (the peak is in backward), "
                if recompute > acts.head / GIB
                else ""
            )
            + f"one 1024-token loss chunk {chunk:.1f} GiB"
            + (
                f",\n     and the trained head's weight gradient, made in forward "
                f"by the chunked loss, {head_grad:.1f} GiB"
                if trained
                else ""
            )
            + "."
        )
        print(
            f"     With training.loss.chunk_tokens=256: {smaller.peak_bytes / GIB:.2f} GiB live "
            f"({'at or below' if smaller.peak_bytes / GIB <= published else 'still above'}; more, smaller head matmuls). "
            "torchtune also\n     compiles the model (fewer saved activations; ftl counts compiled layers as eager)."
        )
    print(
        "   Why the published figures are lower than 'before': torchtune's full single-device recipe uses paged 8-bit\n"
        "   AdamW (states in unified memory, which peak-memory counters do not see) with the step fused into backward;\n"
        "   its loss is chunked; its QLoRA keeps embeddings/head/adapters in bf16. ftl now has each of these as a setting\n"
        "   (training.optimizer, training.optimizer_in_backward, training.loss, method.adapter_dtype). Full fine-tuning\n"
        "   with the step in backward gives up gradient clipping (training.max_grad_norm=null), as torchtune's does.\n"
        "   The A6000 rows are assumed to run without activation checkpointing for LoRA and with it for full (the README\n"
        "   does not say); the published figures are measurements of torchtune, the ftl figures predictions of ftl."
    )


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        zero_paper()
        qlora_paper(Path(tmp))
        torchtune(Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
