"""Trained tokens the frozen output layer cannot tell apart. A token the model's pretraining never
predicted (a small model's unused vocabulary) or one added to the tokenizer (its row initialised to
the mean) has an output-layer row that is nearly the same vector as other such tokens' rows. An
adapter on the other layers moves the hidden state, which raises or lowers all those tokens
together: their loss stays high and the gradient that would separate them is near zero (trial 52a:
answers the bundled model split into single letters kept ~5 nats a token under LoRA, and `ftl
generate` answered `CorCor.`). Said once before the first step, with what to do."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

# Rows closer than this (cosine) are one direction to the hidden state: measured 0.999 between the
# bundled model's never-predicted tokens, against below 0.5 between tokens it learned.
SAME_DIRECTION = 0.99
# Tokens whose row points nearly along the mean row are the usual suspects (added tokens start at
# the mean; a large never-trained share dominates it); the most frequent trained tokens are checked too.
NEAR_MEAN = 0.9
CHECKED_TOKENS = 2048
# Below this share of the trained tokens the loss barely notices.
SHARE_WARNED = 0.01
ROWS_PER_CHUNK = 8192


def indistinct_tokens_warning(model: Any, ids: np.ndarray, mask: np.ndarray, tokenizer: Any) -> str | None:
    """A warning when at least 1% of the trained (loss-bearing) tokens are tokens whose row in a
    frozen output layer points the way another trained token's row does; None otherwise, and for a
    head that trains (full fine-tuning, modules_to_save) or one it cannot read (quantized, sharded)."""
    head = model.get_output_embeddings() if callable(getattr(model, "get_output_embeddings", None)) else None
    weight = getattr(head, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.requires_grad:
        return None
    if weight.is_meta or not weight.is_floating_point():  # a quantized head: its rows are not vectors here
        return None
    targets = ids[mask.astype(bool)].astype(np.int64)
    targets = targets[(targets >= 0) & (targets < weight.shape[0])]
    if targets.size == 0:
        return None
    counts = np.bincount(targets, minlength=weight.shape[0])
    indistinct = _indistinct(weight.detach(), counts)
    share = counts[indistinct].sum() / counts.sum()
    if share < SHARE_WARNED:
        return None
    shown = ", ".join(_token_text(tokenizer, int(i)) for i in indistinct[np.argsort(-counts[indistinct])][:5])
    name = _module_name(model, head)
    return (
        f"{counts[indistinct].sum()} of {counts.sum()} trained tokens ({100 * share:.0f}%; {len(indistinct)} distinct, "
        f"most often {shown}) are tokens the model's output layer cannot tell apart: their rows in it point the same "
        "way (tokens its pretraining never predicted, or added to the tokenizer), and an adapter on the other layers "
        f"cannot separate them, so their loss stays high; train the output layer too (method.lora.modules_to_save="
        f"[{name}]), or fine-tune fully (method.type=full), or use a model whose vocabulary covers this data"
    )


def _indistinct(weight: torch.Tensor, counts: np.ndarray) -> np.ndarray:
    """The trained token ids whose row's cosine with another trained token's row reaches SAME_DIRECTION."""
    used = np.nonzero(counts)[0]
    mean = torch.zeros(weight.shape[1], dtype=torch.float32, device=weight.device)
    for start in range(0, weight.shape[0], ROWS_PER_CHUNK):
        mean += weight[start : start + ROWS_PER_CHUNK].float().sum(0)
    mean = torch.nn.functional.normalize(mean, dim=0)
    near_mean = []
    for start in range(0, len(used), ROWS_PER_CHUNK):
        chunk = torch.as_tensor(used[start : start + ROWS_PER_CHUNK], device=weight.device)
        rows = torch.nn.functional.normalize(weight[chunk].float(), dim=1)
        near_mean.append(chunk[(rows @ mean) >= NEAR_MEAN].cpu().numpy())
    suspects = np.concatenate(near_mean) if near_mean else np.zeros(0, np.int64)
    by_count = lambda tokens: tokens[np.argsort(-counts[tokens], kind="stable")][:CHECKED_TOKENS]  # noqa: E731
    checked = np.unique(np.concatenate([by_count(suspects), by_count(used)]))
    if len(checked) < 2:
        return np.zeros(0, np.int64)
    rows = torch.nn.functional.normalize(weight[torch.as_tensor(checked, device=weight.device)].float(), dim=1)
    similar = rows @ rows.T
    similar.fill_diagonal_(-1.0)
    return checked[(similar.max(dim=1).values >= SAME_DIRECTION).cpu().numpy()]


def _token_text(tokenizer: Any, token_id: int) -> str:
    """The token as text, its vocabulary name, or its id (a new id the tokenizer has no entry for)."""
    for read in (lambda: tokenizer.decode([token_id]), lambda: tokenizer.convert_ids_to_tokens(token_id)):
        try:
            text = read()
        except Exception:  # a tokenizer that cannot read this id one way may the other
            continue
        if isinstance(text, str) and text:
            return repr(text)
    return f"id {token_id}"


def _module_name(model: Any, head: Any) -> str:
    """The output layer's name as modules_to_save takes it (the last part: `lm_head`, `embed_out`)."""
    for name, module in model.named_modules():
        if module is head and name:
            return name.rsplit(".", 1)[-1]
    return "lm_head"
