"""The checks behind scripts/gpu_smoke.sh; each prints one PASS/FAIL/SKIP line."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "assets/models/ftl-tiny-llama"
DATA = REPO / "assets/data/fictional-qa"
RESULTS: list[tuple[str, str, str]] = []
# The backend every training of the smoke runs on (`--backend`); None = the config's default (Ray).
BACKEND: list[str | None] = [None]
# `--only`: words of the checks to run (the cuda check always runs); empty = every check.
ONLY: list[str] = []


def check(name: str) -> Callable[[Callable[[], str]], Callable[[], str]]:
    def register(fn: Callable[[], str]) -> Callable[[], str]:
        if ONLY and name != "cuda" and not any(word.lower() in name.lower() for word in ONLY):
            return fn
        try:
            detail = fn()
            status = "SKIP" if detail.startswith("skip:") else "PASS"
        except Exception as exc:  # report and go on: the point is one line per item
            status, detail = "FAIL", f"{type(exc).__name__}: {exc}"
            traceback.print_exc(file=sys.stderr)
        RESULTS.append((status, name, detail))
        print(f"{status:<5} {name}: {detail}", flush=True)
        return fn

    return register


def train(tmp: Path, name: str, **sections: dict) -> list[float]:
    config = {
        "model": {"path": str(MODEL)},
        "data": {"train": str(DATA / "train.jsonl"), "validation": str(DATA / "valid.jsonl"), "max_seq_len": 128},
        "method": {"type": "lora"},
        "training": {"max_steps": 10, "micro_batch_size": 8, "learning_rate": 2e-3, "progress_bar": False},
        "eval": {"max_samples": 32, "generation": {"max_samples": 32}},
        "output": {"dir": str(tmp / name)},
    }
    if BACKEND[0]:
        config["cluster"] = {"backend": BACKEND[0]}
    for key, value in sections.items():
        config.setdefault(key, {}).update(value)
    (tmp / f"{name}.yaml").write_text(yaml.safe_dump(config))
    out = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "train", str(tmp / f"{name}.yaml")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"ftl train ({name}) exited {out.returncode}: {out.stderr[-1500:]}")
    from trainer.metrics import read_metrics

    return [record["loss"] for record in read_metrics(tmp / name, "train")]


def main() -> int:
    import argparse

    import torch

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--backend",
        choices=["ray", "local", "torchrun"],
        help="backend of every training (default: the config's, Ray); local or torchrun where Ray is not installed",
    )
    parser.add_argument("--only", default="", help="comma-separated words: run only the checks whose name has one")
    args = parser.parse_args()
    BACKEND[0] = args.backend
    ONLY[:] = [word.strip() for word in args.only.split(",") if word.strip()]

    tmp = Path(tempfile.mkdtemp(prefix="ftl-gpu-smoke-"))

    @check("cuda")
    def _cuda() -> str:
        assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}, bf16={torch.cuda.is_bf16_supported()}"

    if RESULTS[-1][0] == "FAIL":
        print("no CUDA device: the other checks need one")
        return 1

    @check("flash-attn packed rows")
    def _flash() -> str:
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            return "skip: flash-attn not installed"
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from trainer.data.batches import RowDataset, make_batch
        from trainer.data.tokenized import load_tokenized
        from trainer.loss import forward_logits

        tok = AutoTokenizer.from_pretrained(str(MODEL))
        model = (
            AutoModelForCausalLM.from_pretrained(
                str(MODEL), dtype=torch.bfloat16, attn_implementation="flash_attention_2"
            )
            .cuda()
            .eval()
        )
        data = load_tokenized(
            str(DATA / "valid.jsonl"), "chat", tok, max_seq_len=128, too_long="truncate", skip_bad_rows=False
        )
        packed = make_batch(RowDataset(data, [[0, 1, 2, 3]], packed=True), [0], tok.pad_token_id)
        worst, offset = 0.0, 0
        with torch.no_grad():
            logits = forward_logits(model, {k: v.cuda() for k, v in packed.items()})[0].float()
            for i in range(4):
                ids, _ = data.example(i)
                alone = forward_logits(model, {"input_ids": torch.tensor(ids[None], dtype=torch.long).cuda()})[
                    0
                ].float()
                worst = max(worst, float((logits[offset : offset + len(ids)] - alone).abs().max()))
                offset += len(ids)
        assert worst < 5e-2, f"packed vs one-by-one max |diff| {worst} (bf16)"
        losses = train(tmp, "flash", model={"attn_implementation": "flash_attention_2"})
        return f"packed = one-by-one within {worst:.1e} (bf16); 10 LoRA steps loss {losses[0]:.3f} -> {losses[-1]:.3f}"

    @check("bf16 training (dtype auto)")
    def _bf16() -> str:
        losses = train(tmp, "bf16", method={"type": "full"}, training={"learning_rate": 3e-4})
        log = (tmp / "bf16" / "logs" / "rank-0.log").read_text()
        assert "torch.bfloat16" in log, "dtype auto did not pick bf16"
        assert losses[-1] < losses[0], losses
        return f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"

    @check("QLoRA 4-bit CUDA kernels")
    def _qlora() -> str:
        losses = train(tmp, "qlora", method={"type": "qlora"})
        assert losses[-1] < losses[0], losses
        return f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"

    @check("loss without full logits: chunked / Liger / Cut Cross-Entropy vs full logits")
    def _loss_kernels() -> str:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from trainer.config import LossConfig
        from trainer.data.batches import RowDataset, make_batch
        from trainer.data.tokenized import load_tokenized
        from trainer.loss import loss_sum
        from trainer.loss_kernels import installed

        tok = AutoTokenizer.from_pretrained(str(MODEL))
        model = AutoModelForCausalLM.from_pretrained(str(MODEL), dtype=torch.bfloat16).cuda().train()
        data = load_tokenized(
            str(DATA / "valid.jsonl"), "chat", tok, max_seq_len=128, too_long="truncate", skip_bad_rows=False
        )
        batch = {
            k: v.cuda()
            for k, v in make_batch(
                RowDataset(data, [[0, 1, 2], [3, 4, 5]], packed=True), [0, 1], tok.pad_token_id
            ).items()
        }

        def run(settings: LossConfig) -> tuple[float, torch.Tensor]:
            model.zero_grad(set_to_none=True)
            summed, _ = loss_sum(model, batch, settings)
            summed.backward()
            return float(summed), model.lm_head.weight.grad.float().clone()

        ref_loss, ref_grad = run(LossConfig(chunked=False))
        variants = {"chunked": LossConfig(kernel="none", chunk_tokens=64)}
        variants.update({name: LossConfig(kernel=name) for name in ("liger", "cut_cross_entropy") if installed(name)})
        report = []
        for name, settings in variants.items():
            loss, grad = run(settings)
            loss_diff = abs(loss - ref_loss) / abs(ref_loss)
            grad_diff = float((grad - ref_grad).norm() / ref_grad.norm())
            assert loss_diff < 1e-2 and grad_diff < 5e-2, (
                f"{name}: loss rel diff {loss_diff:.2e}, head grad rel diff {grad_diff:.2e} (bf16)"
            )
            report.append(f"{name} {loss_diff:.1e}/{grad_diff:.1e}")
        for name in ("liger", "cut_cross_entropy"):
            if installed(name):  # the configured path end to end: startup check, training, evaluation
                losses = train(
                    tmp,
                    f"loss-{name}",
                    method={"type": "full"},
                    training={"learning_rate": 3e-4, "loss": {"kernel": name}},
                )
                assert losses[-1] < losses[0], losses
                report.append(f"{name} trains {losses[0]:.3f} -> {losses[-1]:.3f}")
        missing = [n for n in ("liger", "cut_cross_entropy") if not installed(n)]
        return (
            "loss/head-grad rel diff "
            + ", ".join(report)
            + (f"; not installed: {', '.join(missing)}" if missing else "")
        )

    @check("NCCL all-reduce")
    def _nccl() -> str:
        code = (
            "import os, torch, torch.distributed as dist; dist.init_process_group('nccl'); r = dist.get_rank();"
            "torch.cuda.set_device(r); t = torch.ones(1, device='cuda') * (r + 1); dist.all_reduce(t);"
            "n = dist.get_world_size(); assert t.item() == n * (n + 1) / 2, t; dist.destroy_process_group()"
        )
        n = min(torch.cuda.device_count(), 2)
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                f"--nproc-per-node={n}",
                "--no-python",
                sys.executable,
                "-c",
                code,
            ],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr[-1500:]
        return f"{n} rank(s)"

    @check("optimizers: fused AdamW, 8-bit, paged 8-bit, step in backward")
    def _optimizers() -> str:
        from trainer.config import TrainingConfig
        from trainer.optim import build_optimizer

        assert build_optimizer(torch.nn.Linear(8, 8).cuda(), TrainingConfig()).defaults["fused"], (
            "AdamW is not fused on CUDA"
        )
        full = {"method": {"type": "full"}}
        losses = {}
        for name, training in {
            "adamw": {},
            "adamw_8bit": {"optimizer": "adamw_8bit"},
            "paged_adamw_8bit": {"optimizer": "paged_adamw_8bit"},
            "in_backward": {"optimizer_in_backward": True},
        }.items():
            losses[name] = train(
                tmp, f"opt-{name}", training={"learning_rate": 3e-4, "max_grad_norm": None, **training}, **full
            )
            assert losses[name][-1] < losses[name][0], (name, losses[name])
        # The same maths, only the moment of the step differs: bf16 tolerance.
        worst = max(abs(a - b) / abs(b) for a, b in zip(losses["in_backward"], losses["adamw"]))
        assert worst < 2e-2, f"in-backward vs adamw max relative loss difference {worst:.3g}"
        return "; ".join(f"{name} {run[0]:.3f} -> {run[-1]:.3f}" for name, run in losses.items())

    @check("strategy parity: none vs FSDP2 vs ZeRO-2")
    def _parity() -> str:
        workers = min(torch.cuda.device_count(), 2)
        micro = 8 // workers
        ref = train(tmp, "p-none", parallel={"mixed_precision": "bf16"})
        fsdp = train(
            tmp,
            "p-fsdp",
            parallel={"strategy": "fsdp", "mixed_precision": "bf16"},
            cluster={"workers": workers},
            training={"micro_batch_size": micro},
        )
        zero = train(
            tmp,
            "p-zero2",
            parallel={"strategy": "deepspeed", "zero_stage": 2, "mixed_precision": "bf16"},
            cluster={"workers": workers},
            training={"micro_batch_size": micro},
        )
        worst = max(abs(a - b) / abs(b) for run in (fsdp, zero) for a, b in zip(run, ref))
        assert worst < 2e-2, f"max relative loss difference {worst:.3g} (bf16 tolerance 2e-2)"
        return f"{workers} worker(s); max relative loss difference {worst:.2e} over 10 steps"

    def close(run: list[float], ref: list[float], tolerance: float) -> float:
        worst = max(abs(a - b) / abs(b) for a, b in zip(run, ref))
        assert len(run) == len(ref) and worst < tolerance, (
            f"max relative loss difference {worst:.3g} (tolerance {tolerance})"
        )
        return worst

    @check("method.adapter_dtype=compute (bf16 QLoRA)")
    def _adapter_dtype() -> str:
        ref = train(tmp, "ad-f32", method={"type": "qlora", "adapter_dtype": "float32"})
        low = train(tmp, "ad-compute", method={"type": "qlora", "adapter_dtype": "compute"})
        assert low[-1] < low[0], low
        return f"loss float32 {ref[0]:.3f} -> {ref[-1]:.3f}, compute {low[0]:.3f} -> {low[-1]:.3f}"

    @check("activation offloading (peak memory, losses)")
    def _offload() -> str:
        from trainer.activation_offload import enable_activation_offloading
        from trainer.config import MethodConfig, ModelConfig
        from trainer.methods import apply_method
        from trainer.model_builder import load_model

        def peak(offload: bool) -> tuple[int, float]:
            method = MethodConfig(type="lora", lora={"dropout": 0.0})
            torch.manual_seed(0)
            model = apply_method(
                load_model(ModelConfig(path=str(MODEL), gradient_checkpointing=True), method, "cuda"), method, True
            )
            if offload:
                enable_activation_offloading(model, "cuda")
            ids = torch.randint(5, 1000, (8, 1024), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            after_forward = torch.cuda.memory_allocated() - base
            loss.backward()
            torch.cuda.synchronize()
            return after_forward, float(loss)

        kept, loss = peak(False)
        offloaded, offloaded_loss = peak(True)
        assert abs(offloaded_loss - loss) < 1e-4 * abs(loss), (loss, offloaded_loss)
        assert offloaded < kept, f"held after forward: {offloaded} B offloaded vs {kept} B"
        ref = train(tmp, "off-ref", model={"gradient_checkpointing": True})
        run = train(tmp, "off-on", model={"gradient_checkpointing": True, "activation_offloading": True})
        worst = close(run, ref, 1e-3)
        return (
            f"GPU memory held after forward (8 x 1024 tokens, checkpointing): {kept / 2**20:.1f} -> {offloaded / 2**20:.1f} MiB; "
            f"10 LoRA steps within {worst:.1e} of no offload"
        )

    @check("torch.compile of the decoder layers")
    def _compile() -> str:
        ref = train(tmp, "c-eager", model={"gradient_checkpointing": True})
        run = train(tmp, "c-compiled", model={"gradient_checkpointing": True, "compile": True})
        return f"10 LoRA steps (bf16) within {close(run, ref, 2e-2):.1e} of eager"

    @check("Liger kernels (RMSNorm, RoPE, SwiGLU)")
    def _liger() -> str:
        import importlib.util

        if importlib.util.find_spec("liger_kernel") is None:
            return "skip: liger-kernel not installed (pip install 'ftl[liger]')"
        ref = train(tmp, "l-ref", method={"type": "full"}, training={"learning_rate": 3e-4})
        run = train(
            tmp, "l-liger", model={"liger_kernels": True}, method={"type": "full"}, training={"learning_rate": 3e-4}
        )
        log = (tmp / "l-liger" / "logs" / "rank-0.log").read_text()
        assert "Liger RMSNorm, RoPE and SwiGLU kernels applied" in log, "Liger was not applied"
        return f"10 full steps (bf16) within {close(run, ref, 2e-2):.1e} of the eager kernels"

    failed = [r for r in RESULTS if r[0] == "FAIL"]
    print(f"\n{len(RESULTS) - len(failed)} passed or skipped, {len(failed)} failed; work dir {tmp}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
