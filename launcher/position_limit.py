"""data.max_seq_len against a rotary model's pre-training context, read from its config.json
before anything loads (validate, plan). Past it the model still runs (rotary positions have no
table to index outside), but on positions it never saw, which the user may intend (RoPE scaling):
a warning, not a refusal. A learned position table (GPT-2, OPT) is refused by plan and train
(trainer/sequence_length.py), which build the model to know it has one."""

from __future__ import annotations

from typing import Any

from launcher.errors import UserError
from launcher.run_config import RunConfig


def rotary_context_note(cfg: RunConfig) -> str | None:
    """What to say when max_seq_len passes a rotary model's max_position_embeddings; else None
    (also when the model's config.json cannot be read here: train says what is wrong with it)."""
    from launcher.plan.catalogue import model_config_fields

    try:
        _, fields = model_config_fields(cfg.model.path, cfg.model.revision)
    except (UserError, OSError, ValueError):
        return None
    return rotary_note_for(fields, cfg.data.max_seq_len)


def rotary_note_for(fields: dict[str, Any], max_seq_len: int) -> str | None:
    nested = fields.get("text_config")
    text: dict[str, Any] = nested if isinstance(nested, dict) else fields
    limit = text.get("max_position_embeddings") or text.get("n_positions")  # n_positions: GPT-J
    if not isinstance(limit, int) or max_seq_len <= limit or not _is_rotary(text):
        return None
    scaling = text.get("rope_scaling") or (text.get("rope_parameters") or {}).get("rope_type")
    scaled = f", rope scaling {scaling}" if scaling and scaling != "default" else ""
    return (
        f"data.max_seq_len={max_seq_len} is longer than the model's max_position_embeddings={limit}{scaled}: "
        "it trains on positions it never saw in pre-training, and quality may drop there; "
        f"set data.max_seq_len to at most {limit} unless you mean to extend its context"
    )


def _is_rotary(text: dict[str, Any]) -> bool:
    """Rotary models name their rotary settings (rope_theta, rope_parameters, rotary_pct, ...)."""
    return any(key.startswith(("rope", "rotary", "partial_rotary")) for key in text)
