"""data.max_seq_len against the model's own position limit (config.max_position_embeddings,
GPT-2's n_positions). Past it, a model with a learned position table (GPT-2, OPT) indexes outside
the table (an index error on CPU, a device assert on CUDA); a rotary model (Llama, Qwen, ...) runs
but on positions it never saw in pre-training, which the user may intend (RoPE scaling)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from trainer.errors import TrainerInputError

if TYPE_CHECKING:  # torch is imported by the model code that calls these; the launcher's refusal needs none
    import torch

log = logging.getLogger(__name__)


def learned_position_limit(model: torch.nn.Module) -> int | None:
    """How many positions the model's learned position table has; None without one (rotary, ALiBi)
    or without a stated limit. Reads modules only: works on a meta model (the planner's)."""
    from trainer.transfer.model_parts import decoder_blocks, position_tables

    limit = _position_limit(model)
    tables = position_tables(model, decoder_blocks(model)) if limit is not None else []
    if not tables:
        return None
    # RoBERTa-family encoders number positions from their padding index + 1 (the rows below are
    # unused): a table of 514 rows with padding index 1 holds 512 positions.
    paddings = [getattr(t, "padding_idx", None) for t in tables]
    offsets = [int(index) + 1 for index in paddings if isinstance(index, int)]
    return int(limit) - max(offsets, default=0) if limit is not None else None


def refuse_past_learned_positions(max_seq_len: int, limit: int | None) -> None:
    if limit is not None and max_seq_len > limit:
        raise TrainerInputError(
            f"data.max_seq_len={max_seq_len} is longer than the model's {limit} positions (its learned position "
            f"table has no row past them); set data.max_seq_len to at most {limit}"
        )


def check_sequence_length(model: torch.nn.Module, max_seq_len: int, warn: bool = True) -> None:
    """`warn`: this worker says the warning (rank 0: every rank would say the same)."""
    refuse_past_learned_positions(max_seq_len, learned_position_limit(model))
    limit = _position_limit(model)
    if limit is None or max_seq_len <= limit or not warn:
        return
    text = _text_config(model)
    # transformers 5 names the rotary settings rope_parameters (rope_scaling before).
    key = "rope_parameters" if getattr(text, "rope_parameters", None) else "rope_scaling"
    scaling = getattr(text, key, None)
    log.warning(
        "data.max_seq_len=%d is longer than the model's max_position_embeddings=%d%s: positions past it were not "
        "seen in pre-training; quality may drop there",
        max_seq_len,
        limit,
        f" ({key} {scaling})" if scaling else "",
    )


def _text_config(model: torch.nn.Module) -> Any:
    hf: Any = model
    config = hf.get_base_model().config if hasattr(hf, "get_base_model") else hf.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _position_limit(model: torch.nn.Module) -> int | None:
    text = _text_config(model)
    limit = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
    return limit if isinstance(limit, int) else None
