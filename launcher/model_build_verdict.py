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
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return _failed(f"transformers {version} cannot build the model it describes ({type(exc).__name__}: {first})")
    return {
        "error": None,
        "shapes": {name: list(param.shape) for name, param in model.named_parameters()},
        "prefix": str(getattr(model, "base_model_prefix", "") or ""),
        "defaulted": defaulted_sizes(config.to_dict(), fields),
    }


_MAPPINGS = {
    "causal_lm": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "sequence_classification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "token_classification": "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
    "image_classification": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
}


def _failed(error: str) -> dict[str, Any]:
    return {"error": error, "shapes": {}, "prefix": "", "defaulted": {}}


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
