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
trainer/ but its definition) is printed as "not available in this build".

ftl's defaults (what a user gets without setting training.loss or training.optimizer: the chunked
loss with the config's chunk_tokens, torch AdamW) get a row of their own when --chunk-tokens differs
from the config's. Where TRL is installed, its SFTTrainer trains the same model folder on the same
rows (pre-tokenized, with a completion mask equal to ftl's loss mask), micro-batch, sequence length,
LoRA settings, learning rate and clipping, fp32, without checkpointing, twice: with transformers'
default AdamW (fused) and with ftl's (foreach); its peak is MemTracker's over trainer.train() with
max_steps=2 and its tokens/s are timed in the same interleaved repetitions. The script then says per
method whether ftl's defaults are leaner and at least as fast, and lists what could not be made equal.
Where TRL is not installed it says so and skips the comparison.
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
    images = None  # nor an image set
    token_labels = None  # nor a token-classification set

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


def peak_bytes(cfg: Any, data: Any) -> tuple[int, Any]:
    """The peak of live tensor bytes over two training steps, and the trained model."""
    from tests.integration.memtrack import FrozenAwareMemTracker
    from trainer.loop_state import LoopState

    model, optimizer, scheduler, strategy = build(cfg)
    tracker = FrozenAwareMemTracker()
    # With optimizer_in_backward: its per-parameter optimizers (a list is tracked element-wise).
    tracker.track_external(model, getattr(optimizer, "optimizers", optimizer))
    with tracker:
        steps(model, optimizer, scheduler, strategy, cfg, data, LoopState(), 2, tracker)
    return tracker.peak_bytes(), strategy.unwrapped(model)


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


@dataclass
class TrlVariant:
    name: str
    optim: str  # "foreach": torch AdamW(foreach=True), ftl's CPU implementation; else a TrainingArguments.optim


# TRL 1.16 has no loss switch to compare: SFTTrainer always patches the model with its fused LM head
# (trl.trainer.utils.add_fused_lm_head: tiles of 4096 tokens x 32768 vocabulary columns, the full logits
# never built; loss_type "chunked_nll" is a deprecated alias of the default "nll"). Only label smoothing or
# the deprecated compute_loss_func bring the full logits back, and both change what is computed. What does
# differ from ftl is the AdamW implementation: transformers' default on torch >= 2.8 is the fused kernel,
# ftl's on CPU is foreach (bit-reproducible); both are measured.
TRL_VARIANTS = [
    TrlVariant("TRL SFTTrainer (its defaults)", "adamw_torch_fused"),
    TrlVariant("TRL SFTTrainer, foreach AdamW", "foreach"),
]


def placeholder_tokenizer() -> Any:
    """SFTTrainer wants a tokenizer for its pad token; the data is pre-tokenized, so a four-token
    word-level vocabulary with ftl's pad id (0) is all it reads."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )


def trl_dataset(tokens: RandomTokens) -> Any:
    """ftl's rows as SFTTrainer takes pre-tokenized data: input_ids and a completion_mask, which with
    completion_only_loss=True becomes the labels (-100 where ftl's loss mask is 0), so both train on
    the same labelled positions."""
    from datasets import Dataset

    ids, mask = zip(*(tokens.example(i) for i in range(len(tokens.ids))))
    return Dataset.from_dict(
        {"input_ids": [row.tolist() for row in ids], "completion_mask": [row.tolist() for row in mask]}
    )


def trl_trainer(
    ftl_cfg: Any, method: str, variant: TrlVariant, dataset: Any, max_steps: int, out: Path, callbacks: list[Any]
) -> Any:
    """SFTTrainer on the same model folder, micro-batch, sequence length, LoRA settings (r, alpha,
    dropout and target_modules as ftl's config resolves them), learning rate, AdamW hyperparameters
    and gradient clipping as `ftl_cfg`; fp32, no gradient checkpointing, CPU, no eval, no saving."""
    import datasets
    from transformers import AutoModelForCausalLM
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    datasets.disable_progress_bars()  # its dataset preparation's bars would interleave with the table

    train = ftl_cfg.training
    model = AutoModelForCausalLM.from_pretrained(
        ftl_cfg.model.path, dtype=torch.float32, attn_implementation=ftl_cfg.model.attn_implementation
    )
    peft_config = None
    if method != "full":
        from peft import LoraConfig

        lora = ftl_cfg.method.lora
        peft_config = LoraConfig(
            task_type="CAUSAL_LM",
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            use_rslora=lora.rslora,
        )
    args = SFTConfig(
        output_dir=str(out),
        per_device_train_batch_size=train.micro_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        max_steps=max_steps,
        learning_rate=train.learning_rate,
        lr_scheduler_type="cosine",
        weight_decay=train.weight_decay,
        adam_beta1=train.adam_betas[0],
        adam_beta2=train.adam_betas[1],
        adam_epsilon=train.adam_eps,
        max_grad_norm=train.max_grad_norm if train.max_grad_norm is not None else 0.0,
        optim="adamw_torch" if variant.optim == "foreach" else variant.optim,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        seed=train.seed,
        max_length=ftl_cfg.data.max_seq_len,
        packing=False,
        completion_only_loss=True,
        dataloader_num_workers=0,
    )
    optimizer_cls_and_kwargs = None
    if variant.optim == "foreach":
        optimizer_cls_and_kwargs = (
            torch.optim.AdamW,
            {"lr": train.learning_rate, "betas": train.adam_betas, "eps": train.adam_eps, "foreach": True},
        )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=placeholder_tokenizer(),
        peft_config=peft_config,
        callbacks=callbacks,
        optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
    )
    trainer.remove_callback(PrinterCallback)  # prints its log dicts to stdout (with disable_tqdm); ftl's writer is off
    return trainer


def adapted_modules(model: torch.nn.Module) -> list[str]:
    """The modules that carry a LoRA adapter, by name (PeftModel prefixes included)."""
    return sorted(name.removesuffix(".lora_A") for name, _ in model.named_modules() if name.endswith(".lora_A"))


def trl_peak_bytes(ftl_cfg: Any, method: str, variant: TrlVariant, dataset: Any, out: Path) -> tuple[int, Any]:
    """MemTracker's peak over trainer.train() with max_steps=2: the model (tracked before), and what
    train() creates (optimizer and its states, gradients, activations, batches). Also returns the model."""
    from transformers import TrainerCallback

    from tests.integration.memtrack import FrozenAwareMemTracker

    tracker = FrozenAwareMemTracker()

    class ResetModStats(TrainerCallback):  # as ftl's step_start hook: per-module stats are per forward
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            tracker.reset_mod_stats()

    trainer = trl_trainer(ftl_cfg, method, variant, dataset, 2, out, [ResetModStats()])
    tracker.track_external(trainer.model)
    with tracker:
        trainer.train()
    if trainer.state.global_step != 2:
        raise RuntimeError(f"TRL ran {trainer.state.global_step} steps, not 2")
    if getattr(trainer.model, "is_gradient_checkpointing", False):  # SFTConfig's default is on; ftl's rows are off
        raise RuntimeError("SFTTrainer trained with gradient checkpointing; the comparison assumes it off")
    return tracker.peak_bytes(), trainer.model


def trl_tokens_per_s(ftl_cfg: Any, method: str, variant: TrlVariant, dataset: Any, n: int, out: Path) -> float:
    """One warm-up step, then n timed steps, timed from the end of step 1 to the end of step 1 + n
    (the callbacks run after the optimizer and scheduler step). Tokens: SFTTrainer's own count, the
    attention-mask tokens of each batch, which is what ftl's LoopState.tokens_seen counts."""
    from transformers import TrainerCallback

    marks: dict[int, tuple[float, int]] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step in (1, 1 + n):
                marks[state.global_step] = (time.perf_counter(), trainer._total_train_tokens)

    trainer = trl_trainer(ftl_cfg, method, variant, dataset, 1 + n, out, [Clock()])
    trainer.train()
    (t0, tokens0), (t1, tokens1) = marks[1], marks[1 + n]
    return (tokens1 - tokens0) / (t1 - t0)


def trl_note(variant: TrlVariant) -> str:
    if variant.optim == "foreach":
        return "torch AdamW foreach, as ftl on CPU"
    return f"optim {variant.optim}: transformers' default on torch >= 2.8"


def with_ftl_defaults(chunk_tokens: int) -> tuple[list[Setting], str]:
    """The settings to measure and the name of the one that is ftl's default (what a user gets
    without setting anything: training.loss and training.optimizer at their config defaults). When
    --chunk-tokens is not the default chunk size, the defaults are a row of their own."""
    from trainer.config import LossConfig, TrainingConfig

    loss, training = LossConfig(), TrainingConfig()
    if loss.chunked and training.optimizer == "adamw" and not training.optimizer_in_backward:
        if chunk_tokens == loss.chunk_tokens:
            return SETTINGS, "chunked loss"
    name = f"ftl defaults (chunk_tokens {loss.chunk_tokens})"
    needs = ["loss.chunked"] if loss.chunked else []
    note = f"loss.chunked={str(loss.chunked).lower()}, optimizer={training.optimizer}: config defaults"
    return SETTINGS + [Setting(name, {"training.loss.chunk_tokens": loss.chunk_tokens}, needs, note)], name


def check_same_training(ftl_model: torch.nn.Module, trl_model: torch.nn.Module) -> str:
    """Whether ftl and SFTTrainer train the same parameters: the same adapted modules (LoRA) and the
    same number of trainable parameters."""
    ftl_modules, trl_modules = adapted_modules(ftl_model), adapted_modules(trl_model)
    ftl_count = sum(p.numel() for p in ftl_model.parameters() if p.requires_grad)
    trl_count = sum(p.numel() for p in trl_model.parameters() if p.requires_grad)
    if ftl_modules != trl_modules or ftl_count != trl_count:
        return (
            f"NO: ftl {ftl_count:,} trainable parameters, {len(ftl_modules)} adapted modules; "
            f"TRL {trl_count:,}, {len(trl_modules)} (differ: {sorted(set(ftl_modules) ^ set(trl_modules))[:4]})"
        )
    kinds = sorted({name.rsplit(".", 1)[-1] for name in ftl_modules})
    adapted = f", LoRA on {len(ftl_modules)} modules ({', '.join(kinds)})" if ftl_modules else ""
    return f"yes ({ftl_count:,} trainable parameters{adapted})"


TRL_DIFFERENCES = """\
  Same for both: the model folder, the rows and their labelled positions, micro-batch, sequence length, fp32, SDPA
  attention, LoRA r/alpha/dropout/target_modules, learning rate, AdamW betas/eps/weight decay, max_grad_norm, no
  gradient checkpointing, one process on CPU; TRL's loss is its fused LM head (no full logits), ftl's the row named.
  What differs and could not be made equal:
  - TRL 1.16 has no loss option to compare: its only loss path is the fused, chunked LM head (4096 tokens x 32768
    vocabulary columns per tile; loss_type chunked_nll is an alias of nll). On CPU it scores every position (only
    CUDA/XPU skip unlabelled ones), and it also computes per-token entropy and top-1 accuracy for its metrics.
  - TRL batches carry an all-ones attention_mask, ftl's packed rows position_ids (one row each): both causal SDPA.
  - Each trainer draws its own shuffled order of the same rows (all rows have the same length).
  - Timing: TRL from the end of step 1 to the end of step 1+n (TrainerCallback.on_step_end, after the optimizer
    step), ftl around its train_loop call (its loop setup included); tokens are the attention-mask tokens in both.
  - Peak: TRL's around trainer.train() (its optimizer is built inside), ftl's around two train_loop steps after
    build_optimizer; AdamW states are created at the first step in both, inside the tracker."""


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

        settings, default_name = with_ftl_defaults(args.chunk_tokens)
        available.update({s.name: availability(s) for s in settings if s.name not in available})
        runnable = [s for s in settings if not available[s.name]]
        status = trl_status()
        if status is None and available[default_name]:
            status = f"not compared: ftl's default setting cannot run here ({available[default_name]})"
        trl_data = trl_dataset(tokens) if status is None else None
        verdicts: list[str] = []
        for method in methods:
            configs = {s.name: run_config(tmp, model_dir, method, s, args) for s in runnable}
            peaks, ftl_models = {}, {}
            for name, cfg in configs.items():
                peaks[name], ftl_models[name] = peak_bytes(cfg, args.data)
            trl_cfg = configs.get(default_name)
            variants = TRL_VARIANTS if trl_data is not None else []
            trl_models = {}
            for variant in variants:
                peaks[variant.name], trl_models[variant.name] = trl_peak_bytes(
                    trl_cfg, method, variant, trl_data, tmp / "trl"
                )
            speeds: dict[str, list[float]] = {name: [] for name in peaks}
            for _ in range(args.repeats):  # interleaved: each repetition runs every setting once
                for name, cfg in configs.items():
                    speeds[name].append(tokens_per_s(cfg, args.data, args.steps))
                for variant in variants:
                    speeds[variant.name].append(
                        trl_tokens_per_s(trl_cfg, method, variant, trl_data, args.steps, tmp / "trl")
                    )
            base_peak, base_speed = peaks[SETTINGS[0].name], statistics.median(speeds[SETTINGS[0].name])
            print(
                f"\n{method}: peak of live tensors (MemTracker, 2 steps) and tokens/s (median of {args.repeats} interleaved "
                f"repetitions of {args.steps} steps)"
            )
            print(f"  {'setting':<42}{'peak MiB':>10}{'vs current':>12}{'tokens/s':>10}{'vs current':>12}")
            rows = [(s.name, s.note) for s in settings] + [(v.name, trl_note(v)) for v in variants]
            for name, note in rows:
                if available.get(name):
                    print(f"  {name:<42}{available[name]}")
                    continue
                speed = statistics.median(speeds[name])
                note = f"  ({note})" if note else ""
                print(
                    f"  {name:<42}{peaks[name] / 2**20:>10.1f}{base_peak / peaks[name]:>11.2f}x"
                    f"{speed:>10.0f}{speed / base_speed:>11.3f}x{note}"
                )
            if not variants:
                continue
            ftl_model = ftl_models[default_name]
            same = check_same_training(ftl_model, next(iter(trl_models.values())))
            print(f"  same trained parameters as ftl: {same}")
            ftl_peak, ftl_speed = peaks[default_name], statistics.median(speeds[default_name])
            print(f"  ftl's defaults (row '{default_name}') against TRL SFTTrainer:")
            lean_all, fast_all = True, True
            for variant in variants:
                lean = peaks[variant.name] / ftl_peak
                fast = ftl_speed / statistics.median(speeds[variant.name])
                lean_all, fast_all = lean_all and lean > 1.0, fast_all and fast >= 1.0
                print(
                    f"    vs {variant.name:<38} TRL peak / ftl peak {lean:5.2f}x, ftl tokens/s / TRL tokens/s {fast:6.3f}x"
                )
            verdicts.append(
                f"{method}: ftl's defaults are {'leaner' if lean_all else 'NOT leaner'} than TRL SFTTrainer "
                f"({'every' if lean_all else 'not every'} variant above) and {'at least as fast' if fast_all else 'NOT at least as fast'}"
                f" ({'every' if fast_all else 'not every'} variant); measured here, {args.repeats} repetition(s)"
            )
        if status:
            print(f"\nTRL SFTTrainer: {status}")
        elif verdicts:
            print("\nTRL SFTTrainer, in one line per method:")
            for line in verdicts:
                print(f"  {line}")
            print(TRL_DIFFERENCES)
    print("\n'vs current': peak = current / setting (higher is leaner); tokens/s = setting / current (target >= 0.97).")
    print(
        f"load average over the last 5 minutes at the end: {os.getloadavg()[1]:.1f} on {os.cpu_count()} cores "
        "(tokens/s from a shared machine are only as steady as its load)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
