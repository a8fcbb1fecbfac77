"""Models ftl cannot train as the config asks, said from the model's config before anything loads.

ftl trains decoder-only causal LMs, and with a task head (transfer.head) encoders and vision
backbones. Two kinds of model load as a "causal LM" without being one:
- an encoder (BERT, RoBERTa, ELECTRA, ...): transformers gives it an LM head (BertLMHeadModel),
  but its attention is bidirectional unless its config says is_decoder, so each position sees the
  token it is trained to predict: the loss falls fast and the model learns nothing usable;
- an encoder-decoder (T5, BART): no causal-LM class of its own, transformers' error lists every
  class it has.
"""

from __future__ import annotations

from typing import Any

# Encoder families transformers also offers a causal-LM class for (MODEL_FOR_CAUSAL_LM x
# MODEL_FOR_MASKED_LM): causal only with is_decoder (XLM: causal) in their config.
ENCODER_TYPES = frozenset(
    {
        "bert",
        "big_bird",
        "camembert",
        "data2vec-text",
        "electra",
        "ernie",
        "megatron-bert",
        "reformer",
        "rembert",
        "roberta",
        "roberta-prelayernorm",
        "roc_bert",
        "roformer",
        "xlm",
        "xlm-roberta",
        "xlm-roberta-xl",
        "xmod",
    }
)

HEAD_FIX = "transfer.head.type: sequence_classification or token_classification (with transfer.head.labels)"


def unsupported_architecture(fields: dict[str, Any], head_type: str) -> str | None:
    """Why a model with these config.json fields cannot train with this head type (None: it can)."""
    model_type = str(fields.get("model_type", ""))
    if fields.get("is_encoder_decoder"):
        return (
            f"model.path: a {model_type or 'encoder-decoder'} model is an encoder-decoder (sequence-to-sequence) "
            "model, which ftl does not train: it trains decoder-only causal LMs, and encoders or vision models "
            "with a task head (transfer.head); use a decoder-only model"
        )
    causal = bool(fields.get("is_decoder") or fields.get("causal"))
    if head_type == "causal_lm" and model_type in ENCODER_TYPES and not causal:
        return (
            f"model.path: a {model_type} model is an encoder (each token attends to the whole row, the next "
            "tokens too), so as a causal LM it would see every token it is trained to predict; give it a task "
            f"head ({HEAD_FIX}), or use a decoder-only model for text generation"
        )
    return None
