"""Whether a model keeps packed examples apart: packed rows carry restarting position ids and no
attention mask, and transformers builds the block-diagonal mask from them only for models whose
mask code reads position ids (Llama, Mistral, Qwen, Gemma, GPT-2, ...). Others (OPT, Bloom, MPT:
learned or ALiBi positions with a plain causal mask) let every example attend to the ones before
it in its row: training on such rows is silently wrong, so it is refused.

The check runs the model itself (two rows of 22 tokens, no gradient): the same second document
packed after two different first ones must get the same logits.
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.errors import TrainerInputError

FIRST, SECOND = 13, 9  # the two probe documents' lengths
LEAK_TOLERANCE = 1e-4  # relative change of the second document's logits (measured: 0 where isolated, >= 5e-3 where not)


def check_packed_examples_stay_apart(model: torch.nn.Module, device: str) -> None:
    """Raise TrainerInputError (naming data.packing) when the model lets packed examples see each other."""
    hf: Any = model  # a transformers (or PEFT) model: its methods are not torch.nn.Module's
    vocab = int(hf.get_input_embeddings().weight.shape[0])
    generator = torch.Generator().manual_seed(0)
    second = torch.randint(min(10, vocab - 1), vocab, (1, SECOND), generator=generator)
    firsts = [torch.randint(min(10, vocab - 1), vocab, (1, FIRST), generator=generator) for _ in range(2)]
    positions = torch.cat([torch.arange(FIRST), torch.arange(SECOND)])[None].to(device)
    was_training = model.training
    model.eval()  # no dropout: the forwards must be comparable
    try:
        with torch.no_grad():
            seen = [
                model(input_ids=torch.cat([first, second], 1).to(device), position_ids=positions, use_cache=False)
                .logits[0, FIRST:]
                .float()
                for first in firsts
            ]
    finally:
        model.train(was_training)
    # The same second example after two different first ones, in the same shapes: equal up to
    # rounding where the first is masked out; any leak moves its logits by far more.
    if not all(torch.isfinite(logits).all() for logits in seen):
        return  # a NaN model is the loss check's to report
    leak = float((seen[0] - seen[1]).abs().max()) / max(float(seen[0].abs().max()), 1e-6)
    if leak <= LEAK_TOLERANCE:
        return
    name = type(hf.get_base_model() if hasattr(hf, "get_base_model") else hf).__name__  # under PEFT
    raise TrainerInputError(
        f"data.packing: {name} does not keep packed examples apart (its attention ignores the restarting position "
        "ids, so each example would attend to the examples before it in its row); set data.packing: false"
    )
