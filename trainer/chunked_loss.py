"""Next-token cross-entropy without the full logits: the LM head and the loss run in chunks of
tokens, and only on positions that carry a label.

How it stays correct under every strategy: during one forward the LM head module's own `forward`
is replaced by one that computes the summed loss from the hidden states it is given, and returns
that scalar in place of the logits. The head is still called by the model as usual, so FSDP2 and
ZeRO-3 have gathered its weight when the loss reads it, and every hook (ZeRO-3's re-gather before
backward, FSDP2's gradient reduction) runs as it would for the logits.

Memory: one chunk of logits (compute dtype + an fp32 copy that becomes the softmax in place), the
gradient of the selected hidden rows, and the head's weight gradient (summed in the weight's dtype,
no extra weight-sized buffer); the gradients are computed in the forward and only scaled in backward.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from trainer.config import VOCAB_SLICE
from trainer.data.batches import IGNORE_INDEX
from trainer.errors import TrainerInputError
from trainer.said_once import SaidOnce

log = logging.getLogger(__name__)

# Config attributes of models that transform the logits after the head (Gemma 2/3 soft-capping,
# Cohere's logit_scale, Granite's logits_scaling, Falcon-H1's lm_head_multiplier): the loss must
# see those logits, so these models keep the full-logits path.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "lm_head_multiplier")

_LOGGED = SaidOnce()


def log_once(message: str) -> None:
    if _LOGGED.first(message):
        log.info(message)


def innermost(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP / DeepSpeed engine wrappers (both keep it as `.module`)."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def chunkable_head(model: torch.nn.Module) -> tuple[torch.nn.Linear | None, str]:
    """The LM head when the chunked loss can stand in for it, else None and the reason."""
    inner = innermost(model)
    get_head = getattr(inner, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if head is None:
        return None, "the model has no output embeddings (LM head)"
    # Exactly nn.Linear: LoRA/DoRA layers, modules_to_save wrappers and quantized Linear4bit (a
    # subclass) compute something else than weight @ hidden.
    if type(head) is not torch.nn.Linear:
        return (
            None,
            # Its module named: PEFT's LoRA layer is also called Linear (trial 46b: "a Linear, not a plain Linear").
            f"the LM head is {type(head).__module__}.{type(head).__name__}, not torch's plain Linear (an adapter, "
            "modules_to_save or quantization wraps it)",
        )
    if "forward" in vars(head):
        return None, "the LM head's forward is already patched (e.g. accelerate hooks)"
    config = getattr(inner, "config", None)
    for name in LOGIT_TRANSFORMS:
        value = getattr(config, name, None)
        if value not in (None, 1, 1.0):
            return None, f"the model transforms its logits after the head ({name}={value})"
    return head, ""


@contextlib.contextmanager
def head_forward_replaced(head: torch.nn.Module, forward: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """`head(x)` runs `forward(x)` inside the module call (hooks included) for the duration."""
    head.forward = forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        del head.forward


def lm_loss_sum(
    model: torch.nn.Module,
    head: torch.nn.Linear,
    inputs: dict[str, torch.Tensor],
    labels: torch.Tensor,
    chunk_tokens: int,
    kernel: Callable[..., torch.Tensor] | None = None,
) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the label positions of `labels`, and their count.
    `kernel(hidden_rows, weight, bias, targets)` is a fused CUDA loss used instead of the chunks."""
    # The hidden state at t predicts label t+1; the last position of each row predicts nothing.
    following = torch.full_like(labels, IGNORE_INDEX)
    following[:, :-1] = labels[:, 1:]
    following = following.reshape(-1)
    rows = (following != IGNORE_INDEX).nonzero().squeeze(1)
    targets = following.index_select(0, rows)
    computed: list[torch.Tensor] = []

    def loss_instead_of_logits(hidden: torch.Tensor) -> torch.Tensor:
        if computed:
            raise TrainerInputError(
                "training.loss.chunked: the model called its LM head twice in one forward; "
                "set training.loss.chunked: false for this model"
            )
        flat = hidden.reshape(-1, hidden.size(-1))
        if flat.size(0) != following.numel():
            raise TrainerInputError(
                f"training.loss.chunked: the LM head got {flat.size(0)} positions, the batch has "
                f"{following.numel()}; set training.loss.chunked: false for this model"
            )
        selected = flat.index_select(0, rows)
        if kernel is not None and rows.numel() > 0:
            loss = kernel(selected, head.weight, head.bias, targets)
        else:
            loss = linear_cross_entropy_sum(selected, head.weight, head.bias, targets, chunk_tokens)
        computed.append(loss.detach())
        return loss

    with head_forward_replaced(head, loss_instead_of_logits):
        output = model(**inputs, use_cache=False)
    returned = output.logits
    # The model's own output carries the loss (so wrappers' backward hooks run); it must be our
    # scalar, untouched: a model that post-processes its logits would make it something else.
    if (
        not computed
        or returned.dim() != 0
        or returned.dtype != torch.float32
        or not _same_value(returned.detach(), computed[0])
    ):
        raise TrainerInputError(
            "training.loss.chunked: the model changes the LM head's output before returning it, so the "
            "chunked loss would not be its loss; set training.loss.chunked: false for this model"
        )
    return returned, int(rows.numel())


def _same_value(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise-equal scalars, NaN equal to NaN: a diverged step's loss is our NaN, returned untouched,
    and must reach the loop's "loss is nan" report, not be taken for a model that changes the head's output."""
    return bool(torch.equal(a, b) or (a.isnan() & b.isnan()).item())


def linear_cross_entropy_sum(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, chunk_tokens: int
) -> torch.Tensor:
    """sum_i CE(hidden_i @ weight.T + bias, targets_i), `chunk_tokens` rows of logits at a time."""
    wanted = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias))
    if wanted:
        return _LinearCrossEntropySum.apply(hidden, weight, bias, targets, chunk_tokens)
    loss, _, _, _ = _chunks(hidden, weight, bias, targets, chunk_tokens, (False, False, False))
    return loss


class _LinearCrossEntropySum(torch.autograd.Function):
    """Gradients are computed chunk by chunk in forward (so no chunk's logits outlive it);
    backward only scales them by the incoming gradient."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        chunk_tokens: int,
    ) -> torch.Tensor:
        needs = tuple(ctx.needs_input_grad[:3])
        loss, ctx.grad_hidden, ctx.grad_weight, ctx.grad_bias = _chunks(
            hidden, weight, bias, targets, chunk_tokens, needs
        )
        return loss

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grads = (ctx.grad_hidden, ctx.grad_weight, ctx.grad_bias)
        ctx.grad_hidden = ctx.grad_weight = ctx.grad_bias = None  # backward runs once; drop our references
        scaled = tuple(None if g is None else g.mul_(grad_output) for g in grads)
        return (*scaled, None, None)


def _chunks(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    chunk_tokens: int,
    needs: tuple[bool, bool, bool],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    device_type = hidden.device.type
    # The dtype the head's matmul runs in: autocast's when on (as F.linear would), else the inputs'.
    compute = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    need_hidden, need_weight, need_bias = needs
    count = hidden.size(0)
    with torch.autocast(device_type, enabled=False):
        w = weight.to(compute)
        b = bias.to(compute) if bias is not None else None
        h_all = hidden.to(compute)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty(hidden.shape, dtype=compute, device=hidden.device) if need_hidden else None
        # The head's weight gradient is summed in the weight's own dtype, so no buffer beyond the
        # gradient itself is ever weight-sized. Same dtype as the matmul: each chunk's product is
        # added inside addmm (fp32 accumulation, one rounding per chunk, as Liger's kernel does).
        # fp32 weights under 16-bit autocast: products of VOCAB_SLICE rows at a time, added in fp32.
        grad_weight = torch.zeros(weight.shape, dtype=weight.dtype, device=weight.device) if need_weight else None
        grad_bias = (
            torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_bias and bias is not None else None
        )
        for start in range(0, count, chunk_tokens):
            h = h_all[start : start + chunk_tokens]
            t = targets[start : start + chunk_tokens]
            logits = F.linear(h, w, b)
            scores = logits.float()  # the same tensor when computing in fp32
            del logits
            lse = torch.logsumexp(scores, dim=-1)
            total += (lse - scores.gather(1, t[:, None]).squeeze(1)).sum()
            if not any(needs):
                continue
            # d(sum CE)/d logits = softmax - one_hot(target), built in place in the fp32 scores.
            scores.sub_(lse[:, None]).exp_()
            scores.scatter_add_(1, t[:, None], scores.new_full((t.numel(), 1), -1.0))
            grad_logits = scores.to(compute)
            del scores
            if grad_hidden is not None:
                torch.mm(grad_logits, w, out=grad_hidden[start : start + chunk_tokens])
            if grad_weight is not None:
                if grad_weight.dtype == compute:
                    grad_weight.addmm_(grad_logits.t(), h)
                else:
                    for v in range(0, grad_weight.size(0), VOCAB_SLICE):
                        grad_weight[v : v + VOCAB_SLICE] += grad_logits[:, v : v + VOCAB_SLICE].t() @ h
            if grad_bias is not None:
                grad_bias += grad_logits.float().sum(0)
            del grad_logits
    return (
        total,
        grad_hidden.to(hidden.dtype) if grad_hidden is not None else None,
        grad_weight,
        grad_bias.to(bias.dtype) if grad_bias is not None and bias is not None else None,
    )
