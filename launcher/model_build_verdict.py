"""Build a config.json's model on the meta device, as the workers' from_pretrained would build it,
and say why not when it cannot be built. Imports torch and transformers (seconds): called by
launcher/model_check.py only when its cache has no answer for this config."""

from __future__ import annotations

import difflib
from typing import Any

from trainer.weight_shapes import defaulted_sizes


def build_verdict(fields: dict[str, Any], head_type: str) -> dict[str, Any]:
    import torch
    import transformers
    from transformers.models.auto import modeling_auto
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    from launcher.plan.inventory_build import hf_config
    from trainer.transfer.heads import AUTO_MODEL_CLASSES

    model_type = str(fields["model_type"])
    version = transformers.__version__
    if model_type not in CONFIG_MAPPING_NAMES and fields.get("auto_map"):
        return _failed(
            f"model_type {model_type!r} is not an architecture transformers {version} knows, and the folder brings "
            "its own modelling code (auto_map), which runs only with model.trust_remote_code: true; set it if you "
            "trust that code"
        )
    if model_type not in CONFIG_MAPPING_NAMES:
        close = difflib.get_close_matches(model_type, list(CONFIG_MAPPING_NAMES), n=1, cutoff=0.75)
        return _failed(
            f"model_type {model_type!r} is not an architecture transformers {version} knows (a model newer than "
            "this transformers, one whose modelling code the folder would bring (auto_map, trust_remote_code), or "
            f"a typo{f': did you mean {close[0]!r}?' if close else ''}); upgrade transformers, or set model_type "
            "to the model's own"
        )
    auto_name = AUTO_MODEL_CLASSES[head_type]
    mapping = getattr(modeling_auto, _MAPPINGS[head_type])
    if model_type not in mapping:
        return _failed(_no_class(fields, model_type, head_type, auto_name, version))
    try:
        config = hf_config(fields)
        if head_type != "causal_lm":
            config.num_labels = 2  # the head is new, of the run's size: not compared with the weights
        with torch.device("meta"):
            model = getattr(transformers, auto_name).from_config(config)
    except Exception as exc:  # noqa: BLE001 - whatever transformers raises is the answer
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        first = " ".join(lines[:2]) if lines and lines[0].endswith(":") else (lines[0] if lines else "")
        return _failed(f"transformers {version} cannot build the model it describes ({type(exc).__name__}: {first})")
    return {
        "error": None,
        "shapes": {name: list(param.shape) for name, param in model.named_parameters()},
        "prefix": str(getattr(model, "base_model_prefix", "") or ""),
        "defaulted": defaulted_sizes(config.to_dict(), fields),
        "packing_problem": _packing_problem(fields) if head_type == "causal_lm" else None,
        "position_limit": _position_limit(model),
    }


def _position_limit(model: Any) -> int | None:
    from trainer.sequence_length import learned_position_limit

    try:
        return learned_position_limit(model)
    except Exception:  # noqa: BLE001 - a model whose positions are not found: the workers check
        return None


# Size keys of the architectures' configs, and the small value the packing probe builds them at.
_PROBE_SIZES = {
    ("num_hidden_layers", "n_layer", "n_layers", "num_layers"): 2,
    ("hidden_size", "n_embd", "d_model", "word_embed_proj_dim"): 64,
    ("num_attention_heads", "n_head", "n_heads"): 4,
    ("head_dim",): 16,
    ("intermediate_size", "n_inner", "ffn_dim", "d_ff"): 128,
    ("moe_intermediate_size", "shared_expert_intermediate_size"): 32,
}
_PROBE_VOCAB = 512


def _packing_problem(fields: dict[str, Any]) -> str | None:
    """The workers' packing probe (trainer/data/packing_check.py) on a tiny random model of the same
    architecture: whether its attention keeps packed examples apart is its code's, not its sizes' or
    weights'. None when they stay apart, or when no tiny copy could be built (the workers check)."""
    import torch
    import transformers

    from launcher.plan.inventory_build import hf_config
    from trainer.data.packing_check import check_packed_examples_stay_apart
    from trainer.errors import TrainerInputError

    tiny = _tiny_fields(fields)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = transformers.AutoModelForCausalLM.from_config(hf_config(tiny))
            check_packed_examples_stay_apart(model, "cpu")
    except TrainerInputError as exc:
        return str(exc)
    except Exception:  # noqa: BLE001 - no tiny copy of this architecture: the workers' probe decides
        return None
    return None


def _tiny_fields(fields: dict[str, Any]) -> dict[str, Any]:
    tiny = dict(fields)
    nested = [key for key in ("text_config", "vision_config", "audio_config") if isinstance(tiny.get(key), dict)]
    for key in nested:
        tiny[key] = dict(tiny[key])
    for section in [tiny, *(tiny[key] for key in nested)]:
        for keys, value in _PROBE_SIZES.items():
            for key in keys:
                if isinstance(section.get(key), int):
                    section[key] = value
        if isinstance(section.get("layer_types"), list):  # one entry a layer (sliding or full attention)
            section["layer_types"] = section["layer_types"][:2]
        if isinstance(section.get("rotary_dim"), int):  # GPT-J, CodeGen: rotary within a head of 16
            section["rotary_dim"] = min(section["rotary_dim"], 8)
        kv = section.get("num_key_value_heads")
        if isinstance(kv, int):
            section["num_key_value_heads"] = 1 if kv == 1 else 2  # grouped as before: 4 query heads share them
        if isinstance(section.get("vocab_size"), int) and section["vocab_size"] > _PROBE_VOCAB:
            section["vocab_size"] = _PROBE_VOCAB
            for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
                if isinstance(section.get(key), int) and section[key] >= _PROBE_VOCAB:
                    section[key] = None
    return tiny


_MAPPINGS = {
    "causal_lm": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "sequence_classification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "token_classification": "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
    "image_classification": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
}


def _failed(error: str) -> dict[str, Any]:
    return {
        "error": error,
        "shapes": {},
        "prefix": "",
        "defaulted": {},
        "packing_problem": None,
        "position_limit": None,
    }


def _no_class(fields: dict[str, Any], model_type: str, head_type: str, auto_name: str, version: str) -> str:
    architectures = fields.get("architectures")
    named = f" ({architectures[0]})" if isinstance(architectures, list) and architectures else ""
    what = f"a {model_type} model{named} has no {auto_name} class in transformers {version}"
    if head_type != "causal_lm":
        return f"{what}, so it cannot take transfer.head.type {head_type}; use a model that has one"
    if isinstance(fields.get("text_config"), dict) or isinstance(fields.get("vision_config"), dict):
        return (
            f"{what}: it is a multimodal model, and ftl trains a causal LM (transfer.head.type causal_lm) through "
            "that class; use a text model, or a multimodal one transformers also loads as a causal LM (Gemma 3)"
        )
    return (
        f"{what}, and ftl trains a causal LM unless transfer.head.type names a task head; use a decoder-only text "
        "model, or give this one a task head (transfer.head.type: sequence_classification or token_classification)"
    )
