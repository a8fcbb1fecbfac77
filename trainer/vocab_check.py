"""Token ids against the model's embedding table. A tokenizer larger than the model it is paired
with (another model's tokenizer, or added tokens without resize_token_embeddings) gives ids past
the table: an IndexError deep in the first forward on CPU, a device assert on CUDA, from whichever
rank meets such a token first, and a rerun fails the same way (trial 35b). Checked on the
tokenized data before the first step, said once with what to do."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from trainer.errors import TrainerInputError


def check_token_ids_fit(
    model: torch.nn.Module, id_sets: dict[str, np.ndarray], pad_id: int | None, model_path: str, tokenizer_path: str
) -> None:
    """`id_sets`: name (train, validation, ...) -> its token ids."""
    get_embeddings: Any = getattr(model, "get_input_embeddings", None)
    embeddings = get_embeddings() if callable(get_embeddings) else None
    rows = getattr(embeddings, "num_embeddings", None)
    if not isinstance(rows, int):
        return  # no embedding table to index (an image model) or one ftl cannot read: nothing to check
    highest = {name: int(ids.max()) for name, ids in id_sets.items() if ids.size}
    if pad_id is not None:
        highest["the pad token"] = int(pad_id)
    past = {name: top for name, top in highest.items() if top >= rows}
    if not past:
        return
    name, top = max(past.items(), key=lambda item: item[1])
    raise TrainerInputError(
        f"token ids reach {top} ({name}) but the model at {model_path} has {rows} token embeddings: the "
        f"tokenizer ({tokenizer_path}) is not this model's. Use the model's own tokenizer (model.tokenizer), "
        f"or give the model rows for the new tokens first (model.resize_token_embeddings(len(tokenizer)), then "
        "save_pretrained, and point model.path at it)"
    )
