"""Benchmark: peak memory and tokens/s of issue 13's lean settings against the current path, on CPU.

    nice -n 19 .venv/bin/python scripts/bench/lean_memory.py                  # a few minutes on 2 cores
    nice -n 19 .venv/bin/python scripts/bench/lean_memory.py --hidden 512 --layers 4 --micro-batch 4 \\
        --seq-len 1024 --chunk-tokens 1024 --repeats 3                         # the issue's shape (long)

A randomly initialised Llama with a 128k vocabulary (built in-process from a LlamaConfig, saved to a
temporary folder so ftl's own model builder loads it) is fine-tuned with LoRA and with full
fine-tuning through ftl's real trainer code, built as trainer/run.py builds it:
trainer.transfer.setup.build_model (model builder + method) with trainer.model_options, the
strategy's wrap with trainer.optim.build_optimizer, and trainer.loop.train_loop (which calls
trainer.loss with training.loss). Each setting is measured against the current path (full logits + torch AdamW)
in the same run:

- peak memory: the peak of live tensor bytes over two training steps, torch's MemTracker (a
  TorchDispatchMode that sees every tensor forward, backward and the optimizer create and free);
- tokens/s: timed steps without the tracker, settings interleaved within each repetition, median
  over repetitions;
- "loss path alone": the peak extra bytes of the LM head + loss (forward and backward) of a model
  with no decoder layers, full logits vs chunked, with the head frozen (LoRA, QLoRA) and trained
  (full fine-tuning) (target: >= 3x leaner at a 128k vocabulary).

A setting the trainer in this build does not implement yet (its config key is read nowhere in
trainer/ but its definition) is printed as "not available in this build". Where TRL is installed
its SFTTrainer runs the same model and data for comparison; otherwise the script says so.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

VOCAB = 128_256  # Llama 3's vocabulary


@dataclass
class Setting:
    name: str
    overrides: dict[str, Any]  # dotted config key -> value
    needs: list[str] = field(default_factory=list)  # config keys the trainer must implement
    note: str = ""


SETTINGS = [
    Setting("current path (full logits, AdamW)", {"training.loss.chunked": False}),
    Setting("chunked loss", {"training.loss.chunked": True}, ["loss.chunked"]),
    Setting(
        "+ 8-bit AdamW",
        {"training.loss.chunked": True, "training.optimizer": "adamw_8bit"},
        ["loss.chunked", "adamw_8bit"],
    ),
    Setting(
        "+ optimizer step in backward",
        {
            "training.loss.chunked": True,
            "training.optimizer": "adamw_8bit",
            "training.optimizer_in_backward": True,
            "training.max_grad_norm": None,
        },
        ["loss.chunked", "adamw_8bit", "optimizer_in_backward"],
        "no gradient clipping",
    ),
    Setting(
        "+ activation offloading",
        {
            "training.loss.chunked": True,
            "training.optimizer": "adamw_8bit",
            "training.optimizer_in_backward": True,
            "training.max_grad_norm": None,
            "model.activation_offloading": True,
            "model.gradient_checkpointing": True,
        },
        ["loss.chunked", "adamw_8bit", "optimizer_in_backward", "activation_offloading"],
        "with checkpointing; on a CPU there is nowhere to offload to",
    ),
]


def wired(key: str) -> bool:
    """Whether the trainer reads this setting anywhere but its own definition in trainer/config.py."""
    name = key.split(".")[-1] if key != "adamw_8bit" else key
    pattern = re.compile(rf"\b{re.escape(name)}\b")
    for path in (REPO / "trainer").rglob("*.py"):
        if path.name == "config.py" and path.parent.name == "trainer":
            continue
        if pattern.search(path.read_text(errors="replace")):
            return True
    return False


def bitsandbytes_runs_here() -> str | None:
    """None when bitsandbytes' 8-bit AdamW steps on this CPU, else why not."""
    try:
        import bitsandbytes as bnb

        p = torch.nn.Parameter(torch.zeros(4096))
        opt = bnb.optim.AdamW8bit([p], lr=1e-3)
        p.grad = torch.ones_like(p)
        opt.step()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not here", reported
        return f"bitsandbytes 8-bit AdamW does not run here ({type(exc).__name__})"


def availability(setting: Setting) -> str | None:
    missing = [k for k in setting.needs if not wired(k)]
    if missing:
        return "not available in this build (" + ", ".join(missing) + " not implemented)"
    if "adamw_8bit" in setting.needs:
        return bitsandbytes_runs_here()
    return None


# --- model, data, config ----------------------------------------------------------------------


def save_model(out: Path, hidden: int, layers: int, seq_len: int) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = max(1, hidden // 64)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=int(hidden * 8 / 3) // 64 * 64 or 64,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=max(seq_len, 128),
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(out))
    return out


class RandomTokens:
    """A tokenized set of random examples (ids, loss mask): the interface RowDataset reads."""

    def __init__(self, rows: int, seq_len: int, label_fraction: float, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.ids = [rng.integers(4, VOCAB, seq_len, dtype=np.int64) for _ in range(rows)]
        prompt = int(round(seq_len * (1 - label_fraction)))
        self.mask = np.array([0] * prompt + [1] * (seq_len - prompt), dtype=np.int8)

    classes = None  # not a classification set

    def example(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.ids[index], self.mask

    def lengths(self) -> np.ndarray:
        return np.array([len(i) for i in self.ids])


def run_config(tmp: Path, model_dir: Path, method: str, setting: Setting, args: argparse.Namespace) -> Any:
    from launcher.config_loader import load_config

    raw: dict[str, Any] = {
        "model": {"path": str(model_dir), "dtype": "float32", "attn_implementation": "sdpa"},
        "data": {"train": str(REPO / "assets/data/fictional-qa/train.jsonl"), "max_seq_len": args.seq_len},
        "method": {"type": method, "lora": {"r": 16, "alpha": 32, "dropout": 0.0}},
        "training": {
            "micro_batch_size": args.micro_batch,
            "learning_rate": 1e-4,
            "progress_bar": False,
            "seed": 1,
            "loss": {"chunk_tokens": args.chunk_tokens},
        },
        "output": {"dir": str(tmp / "run")},
        "cluster": {"backend": "local"},
    }
    path = tmp / f"{method}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(
        path,
        [
            f"{k}={'null' if v is None else str(v).lower() if isinstance(v, bool) else v}"
            for k, v in setting.overrides.items()
        ],
    )


# --- one measurement ----------------------------------------------------------------------------


def build(cfg: Any) -> tuple[Any, Any, Any, Any]:
    """Model, optimizer, scheduler and strategy exactly as trainer.run builds them (single process)."""
    from trainer.checkpointing.rng import seed_everything
    from trainer.model_options import apply_model_options
    from trainer.optim import build_optimizer, build_scheduler
    from trainer.strategies import build_strategy
    from trainer.transfer.setup import build_model

    seed_everything(cfg.training.seed)
    strategy = build_strategy(cfg, 1, 0, "cpu")
    base = apply_model_options(build_model(cfg, "cpu", 0, cfg.model.gradient_checkpointing), cfg.model, "cpu")
    model, optimizer = strategy.wrap(base, lambda m: build_optimizer(m, cfg.training))
    return model, optimizer, build_scheduler(optimizer, cfg.training, 1000), strategy


def steps(
    model: Any,
    optimizer: Any,
    scheduler: Any,
    strategy: Any,
    cfg: Any,
    data: Any,
    state: Any,
    n: int,
    tracker: Any = None,
) -> Any:
    from trainer.loop import LoopHooks, train_loop
    from trainer.metrics import MetricsWriter
    from trainer.stopping import StopFlag

    def step_start(state: Any, model: Any) -> Any:
        if tracker is not None:  # MemTracker's per-module stats are per forward; its global peak is kept
            tracker.reset_mod_stats()
        return model

    hooks = LoopHooks(
        evaluate=lambda s: None,
        save=lambda s: "",
        should_eval=lambda s: False,
        should_save=lambda step, stopping: stopping,
        on_step_start=step_start,
    )
    return train_loop(
        model,
        optimizer,
        scheduler,
        data,
        cfg.training,
        state,
        state.step + n,
        strategy=strategy,
        pad_id=0,
        metrics=MetricsWriter(Path("."), enabled=False),
        hooks=hooks,
        stop=StopFlag(),
    )


def peak_bytes(cfg: Any, data: Any) -> int:
    from tests.integration.memtrack import FrozenAwareMemTracker
    from trainer.loop_state import LoopState

    model, optimizer, scheduler, strategy = build(cfg)
    tracker = FrozenAwareMemTracker()
    # With optimizer_in_backward: its per-parameter optimizers (a list is tracked element-wise).
    tracker.track_external(model, getattr(optimizer, "optimizers", optimizer))
    with tracker:
        steps(model, optimizer, scheduler, strategy, cfg, data, LoopState(), 2, tracker)
    return tracker.peak_bytes()


def tokens_per_s(cfg: Any, data: Any, n: int) -> float:
    from trainer.loop_state import LoopState

    model, optimizer, scheduler, strategy = build(cfg)
    state = steps(model, optimizer, scheduler, strategy, cfg, data, LoopState(), 1)  # warm-up (allocations, states)
    before, started = state.tokens_seen, time.perf_counter()
    state = steps(model, optimizer, scheduler, strategy, cfg, data, state, n)
    return (state.tokens_seen - before) / (time.perf_counter() - started)


def loss_path_peak(tmp: Path, args: argparse.Namespace, chunked: bool, train_head: bool) -> int:
    """Peak extra live bytes of one forward + backward of the LM head and ftl's loss (trainer.loss)
    on a model with no decoder layers. The embedding is frozen and its output requires grad (as
    under LoRA, where the layers' adapters need the hidden states' gradient); the head is frozen
    (LoRA, QLoRA) or trained (full fine-tuning: its weight gradient is in both figures)."""
    from tests.integration.memtrack import FrozenAwareMemTracker
    from trainer.data.batches import make_batch
    from trainer.loss import loss_sum

    cfg = run_config(tmp, args.head_only_dir, "full", Setting("", {"training.loss.chunked": chunked}), args)
    model, optimizer, _, strategy = build(cfg)
    inner = strategy.unwrapped(model)
    inner.requires_grad_(False)
    inner.get_output_embeddings().weight.requires_grad_(train_head)
    inner.enable_input_require_grads()
    batch = make_batch(args.data, list(range(args.micro_batch)), 0)
    tracker = FrozenAwareMemTracker()
    tracker.track_external(model, optimizer)
    with tracker:
        baseline = int(tracker.get_tracker_snapshot("current")[torch.device("cpu")]["Total"])
        summed, _ = loss_sum(model, batch, **loss_kwargs(cfg))
        strategy.backward(model, summed)
    return tracker.peak_bytes() - baseline


def loss_kwargs(cfg: Any) -> dict[str, Any]:
    """What this build's loss_sum takes besides (model, batch): the loss settings, once implemented."""
    import inspect

    from trainer.loss import loss_sum

    params = inspect.signature(loss_sum).parameters
    for name in ("loss_cfg", "loss", "cfg", "settings"):
        if name in params:
            return {name: cfg.training.loss}
    return {}


# --- TRL ----------------------------------------------------------------------------------------


def trl_status() -> str | None:
    try:
        import trl  # noqa: F401
    except ImportError:
        return "TRL is not installed here (pip install trl to add SFTTrainer to this comparison); not measured"
    return None


# --- report -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=512, help="up to 4096")
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--chunk-tokens", type=int, default=128, help="training.loss.chunk_tokens")
    parser.add_argument("--label-fraction", type=float, default=1.0, help="share of positions that carry a label")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per setting and repetition")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions (median reported)")
    parser.add_argument("--methods", default="lora,full")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if not 16 <= args.seq_len <= 4096:
        parser.error("--seq-len: 16 to 4096")
    if args.threads:
        torch.set_num_threads(args.threads)
    from trainer.data.batches import RowDataset
    from trainer.logging_setup import quiet_third_party

    quiet_third_party()
    methods = [m for m in args.methods.split(",") if m]
    tokens = RandomTokens(rows=64, seq_len=args.seq_len, label_fraction=args.label_fraction)
    args.data = RowDataset(tokens, [[i] for i in range(64)], packed=True)  # type: ignore[arg-type]
    print(f"load average (1 min) at the start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; random Llama: vocab {VOCAB:,}, hidden {args.hidden}, "
        f"{args.layers} layers, fp32; micro-batch {args.micro_batch} x {args.seq_len} tokens "
        f"({args.label_fraction:.0%} carry a label), chunk {args.chunk_tokens} tokens"
    )
    available = {s.name: availability(s) for s in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="ftl-lean-bench-") as tmp_name:
        tmp = Path(tmp_name)
        model_dir = save_model(tmp / "model", args.hidden, args.layers, args.seq_len)
        args.head_only_dir = save_model(tmp / "head-only", args.hidden, 0, args.seq_len)

        # Loss path alone.
        print("\nloss path alone (LM head + cross-entropy, forward + backward, peak extra bytes; no decoder layers):")
        for train_head, label in ((False, "frozen head (LoRA, QLoRA)"), (True, "trained head (full fine-tuning)")):
            full_logits = loss_path_peak(tmp, args, chunked=False, train_head=train_head)
            if available["chunked loss"]:
                print(f"  {label:<32} full logits {full_logits / 2**20:8.1f} MiB; chunked: {available['chunked loss']}")
                continue
            chunked = loss_path_peak(tmp, args, chunked=True, train_head=train_head)
            print(
                f"  {label:<32} full logits {full_logits / 2**20:8.1f} MiB, chunked {chunked / 2**20:8.1f} MiB"
                f"  -> {full_logits / chunked:.2f}x leaner (target >= 3x)"
            )

        runnable = [s for s in SETTINGS if not available[s.name]]
        for method in methods:
            configs = {s.name: run_config(tmp, model_dir, method, s, args) for s in runnable}
            peaks = {name: peak_bytes(cfg, args.data) for name, cfg in configs.items()}
            speeds: dict[str, list[float]] = {name: [] for name in configs}
            for _ in range(args.repeats):  # interleaved: each repetition runs every setting once
                for name, cfg in configs.items():
                    speeds[name].append(tokens_per_s(cfg, args.data, args.steps))
            base_peak, base_speed = peaks[SETTINGS[0].name], statistics.median(speeds[SETTINGS[0].name])
            print(
                f"\n{method}: peak of live tensors (MemTracker, 2 steps) and tokens/s (median of {args.repeats} interleaved "
                f"repetitions of {args.steps} steps)"
            )
            print(f"  {'setting':<34}{'peak MiB':>10}{'vs current':>12}{'tokens/s':>10}{'vs current':>12}")
            for setting in SETTINGS:
                if available[setting.name]:
                    print(f"  {setting.name:<34}{available[setting.name]}")
                    continue
                speed = statistics.median(speeds[setting.name])
                note = f"  ({setting.note})" if setting.note else ""
                print(
                    f"  {setting.name:<34}{peaks[setting.name] / 2**20:>10.1f}{base_peak / peaks[setting.name]:>11.2f}x"
                    f"{speed:>10.0f}{speed / base_speed:>11.3f}x{note}"
                )
        status = trl_status()
        print(
            f"\nTRL SFTTrainer: {status}"
            if status
            else "\nTRL SFTTrainer: installed, but this script has no SFTTrainer comparison yet (it was written where TRL "
            "is not installed); not measured"
        )
    print("\n'vs current': peak = current / setting (higher is leaner); tokens/s = setting / current (target >= 0.97).")
    print(
        f"load average over the last 5 minutes at the end: {os.getloadavg()[1]:.1f} on {os.cpu_count()} cores "
        "(tokens/s from a shared machine are only as steady as its load)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
