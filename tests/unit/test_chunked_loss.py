"""The chunked loss (training.loss.chunked) equals the full-logits loss, in value and in every
gradient, and never builds the [batch, tokens, vocab] logits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import QA_DATA
from trainer.chunked_loss import linear_cross_entropy_sum
from trainer.config import LossConfig, MethodConfig, ModelConfig
from trainer.data.batches import IGNORE_INDEX, RowDataset, make_batch
from trainer.data.tokenized import load_tokenized
from trainer.errors import TrainerInputError
from trainer.loss import loss_sum

# fp32 on CPU: only the summation order differs (chunks, fp32 accumulation of the head gradient).
LOSS_RTOL = 1e-5
GRAD_ATOL, GRAD_RTOL = 1e-5, 1e-4

FULL_LOGITS = LossConfig(chunked=False)


def reference(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor
) -> torch.Tensor:
    return F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")


@pytest.mark.parametrize("rows,chunk", [(37, 16), (64, 16), (5, 1024), (0, 16)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_function_matches_cross_entropy_of_the_linear(rows: int, chunk: int, with_bias: bool) -> None:
    torch.manual_seed(rows)
    hidden = torch.randn(rows, 24, requires_grad=True)
    weight = torch.randn(301, 24, requires_grad=True)
    bias = torch.randn(301, requires_grad=True) if with_bias else None
    targets = torch.randint(0, 301, (rows,))
    inputs = [t for t in (hidden, weight, bias) if t is not None]
    expected = reference(hidden, weight, bias, targets)
    expected_grads = torch.autograd.grad(expected * 0.37, inputs, allow_unused=True)
    got = linear_cross_entropy_sum(hidden, weight, bias, targets, chunk)
    grads = torch.autograd.grad(got * 0.37, inputs)
    torch.testing.assert_close(got, expected, rtol=LOSS_RTOL, atol=1e-6)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e if e is not None else torch.zeros_like(g), atol=GRAD_ATOL, rtol=GRAD_RTOL)
    assert torch.isfinite(got) and (rows or float(got.detach()) == 0.0)


def test_function_without_grad_is_the_same_loss() -> None:
    hidden, weight = torch.randn(50, 8), torch.randn(40, 8)
    targets = torch.randint(0, 40, (50,))
    with torch.no_grad():
        torch.testing.assert_close(
            linear_cross_entropy_sum(hidden, weight, None, targets, 16),
            reference(hidden, weight, None, targets),
            rtol=LOSS_RTOL,
            atol=0,
        )


def test_bf16_autocast_follows_the_full_path_within_bf16_tolerance() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(70, 32, requires_grad=True)
    weight = torch.randn(500, 32, requires_grad=True)
    targets = torch.randint(0, 500, (70,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = reference(hidden, weight, None, targets)
        got = linear_cross_entropy_sum(hidden, weight, None, targets, 16)
    e_grads = torch.autograd.grad(expected, [hidden, weight])
    grads = torch.autograd.grad(got, [hidden, weight])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=2e-3, atol=0)
    for g, e in zip(grads, e_grads):
        assert g.dtype == e.dtype
        torch.testing.assert_close(g, e, atol=2e-2, rtol=2e-2)


def test_bf16_weights_sum_the_head_gradient_in_bf16_within_bf16_tolerance() -> None:
    """16-bit weights: the head's weight gradient is summed over the chunks in its own dtype (no
    fp32 weight-sized buffer); the result stays within bf16 tolerance of one matmul over all rows."""
    torch.manual_seed(1)
    hidden = torch.randn(70, 32, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(500, 32, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, 500, (70,))
    expected = reference(hidden, weight, None, targets)
    got = linear_cross_entropy_sum(hidden, weight, None, targets, 16)
    e_grads = torch.autograd.grad(expected, [hidden, weight])
    grads = torch.autograd.grad(got, [hidden, weight])
    torch.testing.assert_close(got, expected, rtol=2e-3, atol=0)
    for g, e in zip(grads, e_grads):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g, e, atol=3e-2, rtol=3e-2)


def test_fp32_weights_under_autocast_sum_vocab_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32 weights, bf16 matmuls: the gradient is summed in fp32 a few vocabulary rows at a time;
    slicing changes no value."""
    import trainer.chunked_loss as chunked_loss

    torch.manual_seed(2)
    hidden = torch.randn(40, 16, requires_grad=True)
    weight = torch.randn(300, 16, requires_grad=True)
    targets = torch.randint(0, 300, (40,))

    def weight_grad() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = linear_cross_entropy_sum(hidden, weight, None, targets, 8)
        return torch.autograd.grad(loss, [weight])[0]

    whole = weight_grad()
    monkeypatch.setattr(chunked_loss, "VOCAB_SLICE", 7)
    sliced = weight_grad()
    assert whole.dtype == sliced.dtype == torch.float32
    torch.testing.assert_close(sliced, whole, atol=1e-6, rtol=1e-5)


@pytest.fixture(scope="module")
def qa_examples(tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return load_tokenized(
        str(QA_DATA / "valid.jsonl"),
        "chat",
        tokenizer,
        max_seq_len=128,
        too_long="truncate",
        skip_bad_rows=False,
        cache_root=tmp_path_factory.mktemp("cache"),
    )


def qa_batch(examples: Any, packed: bool, pad_id: int) -> dict[str, torch.Tensor]:
    if packed:  # two rows of several examples each, so the rows carry document boundaries
        return make_batch(RowDataset(examples, [[0, 1, 2], [3, 4, 5, 6]], packed=True), [0, 1], pad_id)
    return make_batch(RowDataset(examples, [[i] for i in range(5)], packed=False), list(range(5)), pad_id)


def build(model_dir: Path, method: str, tied: bool = False) -> torch.nn.Module:
    from trainer.methods import apply_method
    from trainer.model_builder import load_model

    torch.manual_seed(0)
    cfg = MethodConfig(type=method, lora={"r": 4, "alpha": 8, "dropout": 0.0})  # type: ignore[arg-type]
    model = load_model(ModelConfig(path=str(model_dir)), cfg, "cpu")
    if tied:
        model.lm_head.weight = model.get_input_embeddings().weight
    model = apply_method(model, cfg, gradient_checkpointing=False)
    if method != "full":  # adapters start at zero (B = 0): make them count in the gradients
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)
    return model.train()


def loss_and_grads(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], settings: LossConfig
) -> tuple[float, int, dict[str, torch.Tensor], torch.Tensor]:
    """Summed loss, target count, every trainable parameter's gradient, and the gradient of the
    final hidden states (the head's input)."""
    norm = next(m for name, m in model.named_modules() if name.endswith("model.norm"))
    seen: list[torch.Tensor] = []

    def keep(module: torch.nn.Module, args: Any, out: torch.Tensor) -> None:
        out.retain_grad()
        seen.append(out)

    handle = norm.register_forward_hook(keep)
    model.zero_grad(set_to_none=True)
    summed, count = loss_sum(model, batch, settings)
    (summed * 0.01).backward()
    handle.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return float(summed), count, grads, seen[0].grad.clone()


@pytest.mark.parametrize(
    "method,packed,tied",
    [
        ("full", False, False),
        ("full", True, False),
        ("full", True, True),
        ("lora", False, False),
        ("lora", True, False),
        ("dora", True, False),
        ("qlora", True, False),
        ("qlora", False, False),
    ],
)
def test_loss_and_gradients_equal_the_full_logits_path(
    tiny_model_dir: Path, tokenizer: Any, qa_examples: Any, method: str, packed: bool, tied: bool
) -> None:
    model = build(tiny_model_dir, method, tied)
    batch = qa_batch(qa_examples, packed, tokenizer.pad_token_id)
    tokens = int(batch["labels"].numel())
    chunk = 48  # does not divide the label count
    expected_loss, expected_count, expected_grads, expected_hidden = loss_and_grads(model, batch, FULL_LOGITS)
    loss, count, grads, hidden = loss_and_grads(model, batch, LossConfig(chunk_tokens=chunk))
    assert count == expected_count and 0 < count < tokens and count % chunk != 0
    assert loss == pytest.approx(expected_loss, rel=LOSS_RTOL)
    assert grads.keys() == expected_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(
            grad, expected_grads[name], atol=GRAD_ATOL, rtol=GRAD_RTOL, msg=lambda m, name=name: f"{name}: {m}"
        )
    torch.testing.assert_close(hidden, expected_hidden, atol=GRAD_ATOL, rtol=GRAD_RTOL)


def test_all_ignored_batch_gives_zero_loss_and_zero_gradients(
    tiny_model_dir: Path, tokenizer: Any, qa_examples: Any
) -> None:
    model = build(tiny_model_dir, "full")
    batch = qa_batch(qa_examples, True, tokenizer.pad_token_id)
    batch["labels"] = torch.full_like(batch["labels"], IGNORE_INDEX)
    loss, count, grads, _ = loss_and_grads(model, batch, LossConfig(chunk_tokens=16))
    assert (loss, count) == (0.0, 0)
    assert all(torch.isfinite(g).all() and not g.any() for g in grads.values())


def test_eval_without_grad_equals_the_full_logits_path(tiny_model_dir: Path, tokenizer: Any, qa_examples: Any) -> None:
    model = build(tiny_model_dir, "lora").eval()
    batch = qa_batch(qa_examples, False, tokenizer.pad_token_id)
    with torch.no_grad():
        expected, n_expected = loss_sum(model, batch, FULL_LOGITS)
        got, n = loss_sum(model, batch, LossConfig(chunk_tokens=32))
    assert n == n_expected and float(got) == pytest.approx(float(expected), rel=LOSS_RTOL)


def test_heads_it_cannot_stand_in_for_keep_the_full_logits(
    tiny_model_dir: Path, tokenizer: Any, qa_examples: Any
) -> None:
    """A LoRA adapter on the head, and a model that soft-caps its logits after the head, both
    take the full-logits path, so their loss is still theirs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    batch = qa_batch(qa_examples, True, tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    adapted = get_peft_model(model, LoraConfig(r=4, target_modules=["lm_head", "q_proj"], init_lora_weights=False))
    with torch.no_grad():
        torch.testing.assert_close(
            loss_sum(adapted, batch, LossConfig())[0], loss_sum(adapted, batch, FULL_LOGITS)[0], rtol=LOSS_RTOL, atol=0
        )

    capped = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    capped.config.final_logit_softcapping = 5.0
    with torch.no_grad():
        torch.testing.assert_close(
            loss_sum(capped, batch, LossConfig())[0], loss_sum(capped, batch, FULL_LOGITS)[0], rtol=LOSS_RTOL, atol=0
        )


def test_a_model_that_changes_the_head_output_is_refused_not_miscomputed(
    tiny_model_dir: Path, tokenizer: Any, qa_examples: Any
) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    original = type(model).forward

    def scaled_forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        out.logits = out.logits * 2.0  # an architecture we do not know that post-processes logits
        return out

    model.forward = scaled_forward.__get__(model)
    with pytest.raises(TrainerInputError, match="training.loss.chunked: false"):
        loss_sum(model, qa_batch(qa_examples, True, tokenizer.pad_token_id), LossConfig())


def test_full_logits_are_never_allocated(tiny_model_dir: Path, tokenizer: Any, qa_examples: Any) -> None:
    """No tensor with batch x tokens x vocab elements (or more) is created in forward or backward,
    and the live-tensor peak drops accordingly (torch's MemTracker)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.integration.memtrack import FrozenAwareMemTracker

    torch.manual_seed(0)
    vocab = 32_000  # large enough that the logits dominate this tiny model's memory
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).train()
    batch = qa_batch(qa_examples, True, tokenizer.pad_token_id)
    full = batch["labels"].numel() * vocab

    class LargestTensor(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    self.largest = max(self.largest, t.numel())
            return out

    def run(settings: LossConfig) -> tuple[int, int]:
        model.zero_grad(set_to_none=True)
        tracker = FrozenAwareMemTracker()
        tracker.track_external(model)
        with tracker, LargestTensor() as largest:
            summed, _ = loss_sum(model, batch, settings)
            summed.backward()
        return largest.largest, tracker.peak_bytes()

    full_largest, full_peak = run(FULL_LOGITS)
    chunk_largest, chunk_peak = run(LossConfig(chunk_tokens=64))
    assert full_largest >= full  # the check sees the logits when they exist
    assert chunk_largest <= 64 * vocab < full  # only a chunk of them, and the head's own weight
    assert chunk_peak < full_peak - 2 * full * 4  # at least two fp32 [B, T, V] tensors fewer at the peak


@pytest.mark.parametrize("kernel", ["liger", "cut_cross_entropy"])
def test_a_named_kernel_that_cannot_run_is_refused_at_startup(kernel: str) -> None:
    from trainer.loss_kernels import check_loss_kernel, installed, select_kernel

    with pytest.raises(TrainerInputError, match=f"training.loss.kernel={kernel} is a CUDA kernel"):
        check_loss_kernel(LossConfig(kernel=kernel), "cpu")
    with pytest.raises(TrainerInputError, match="training.loss.chunked is false"):
        check_loss_kernel(LossConfig(kernel=kernel, chunked=False), "cuda:0")
    if not installed(kernel):
        with pytest.raises(TrainerInputError, match=r"pip install 'ftl\[(liger|cce)\]'"):
            check_loss_kernel(LossConfig(kernel=kernel), "cuda:0")
    check_loss_kernel(LossConfig(kernel="auto"), "cpu")  # auto and none never refuse
    check_loss_kernel(LossConfig(kernel="none"), "cpu")
    assert select_kernel(LossConfig(kernel="auto"), torch.device("cpu"), torch.zeros(1)) is None
