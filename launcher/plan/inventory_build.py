"""What ftl will hold in memory for a model (inventory.py), derived without weights.

The model is built on the meta device from its config (exact parameter names and shapes, no
memory), then transformed as the trainer does: QLoRA quantizes every linear layer except the
output head and PEFT's prepare step upcasts the remaining 16-bit parameters to fp32; adapter
methods run the real PEFT `get_peft_model` on the meta model (so targeted layers, DoRA
magnitudes and adapter dtypes are PEFT's own answer, not a re-implementation). Static freezing
(`transfer.freeze`) is the trainer's own: no adapters on frozen blocks, then the frozen
parameters stop requiring grad, so they count as frozen weights without gradient or optimizer
state (what FSDP2, ZeRO and DDP allocate for them)."""

from __future__ import annotations

from typing import Any

import torch

from launcher.plan.inventory import Architecture, Inventory, ParamInfo
from trainer.config import MethodConfig
from trainer.model_builder import DTYPES
from trainer.transfer.config import FreezeConfig


def hf_config(fields: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    fields = dict(fields)
    model_type = fields.pop("model_type", None)
    if not model_type:
        raise ValueError("config.json has no model_type")
    for key in ("architectures", "transformers_version", "auto_map", "quantization_config", "torch_dtype", "dtype"):
        fields.pop(key, None)
    return AutoConfig.for_model(model_type, **fields)


def auto_class(config: Any) -> Any:
    """The causal LM; for a vision backbone (ViT, ResNet, ...) its image classifier; for an encoder
    with no causal-LM class (DeBERTa-v2, ModernBERT, DistilBERT) its sequence classifier (the
    head ftl puts on it: a task head of num_labels x hidden, small beside the encoder); else the
    bare model."""
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForImageClassification,
        AutoModelForSequenceClassification,
    )
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    if config.model_type in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        return AutoModelForImageClassification
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return AutoModelForCausalLM
    if config.model_type in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        return AutoModelForSequenceClassification
    return AutoModel


def build_inventory(
    label: str,
    config_fields: dict[str, Any],
    method: MethodConfig,
    dtype: str,
    adapter_dtype: str | None = None,
    freeze: FreezeConfig | None = None,
) -> Inventory:
    """dtype: the model's parameter dtype by name (float32, bfloat16, float16).
    adapter_dtype: for adapter methods, the dtype adapters (and QLoRA's non-quantized
    embeddings/head/norms) are kept in; None = PEFT's default (fp32 adapters, QLoRA upcast to fp32).
    freeze: the run's static freezing (gradual unfreezing's later stages train what it leaves)."""
    from trainer.sequence_length import learned_position_limit
    from trainer.transfer.freezing import apply_freezing
    from trainer.transfer.model_parts import model_parts
    from trainer.transfer.setup import either_pattern, frozen_blocks_regex
    from trainer.transfer.text_only import freeze_outside_the_text_model, outside_text_model_regex

    config = hf_config(config_fields)
    with torch.device("meta"):
        model = auto_class(config).from_config(config, dtype=DTYPES[dtype])
    learned_positions = learned_position_limit(model)
    quantized: dict[int, int] = {}
    if method.type == "qlora":
        quantized = _quantize_like_bnb(model, method, upcast=adapter_dtype is None)
    if method.uses_adapter:
        from peft import get_peft_model

        from trainer.errors import TrainerInputError
        from trainer.methods import check_target_modules, fused_expert_problem, peft_lora_config

        if method.type != "qlora":
            model.requires_grad_(False)
        # As the workers: no adapters on frozen blocks, nor on a multimodal model's towers (text data).
        exclude = either_pattern(
            frozen_blocks_regex(model, freeze) if freeze else None,
            outside_text_model_regex(model) if auto_class(config).__name__ == "AutoModelForCausalLM" else None,
        )
        # An image classifier: no PEFT task type, its head trained in full (as trainer/transfer/heads.py does).
        built_as = auto_class(config).__name__
        image = built_as == "AutoModelForImageClassification"
        # An encoder's classifier trains in full beside its adapters (PEFT's SEQ_CLS), as the workers do.
        task_type = {"AutoModelForCausalLM": "CAUSAL_LM", "AutoModelForSequenceClassification": "SEQ_CLS"}
        lora = peft_lora_config(
            method,
            task_type=task_type.get(built_as),
            exclude_modules=exclude,
            new_modules=["classifier"] if image else None,
            model=model,
        )
        check_target_modules(model, method.lora.target_modules)  # PEFT's own error is a bare traceback
        with torch.device("meta"):
            try:
                model = get_peft_model(model, lora)
            except ValueError as exc:  # the workers would refuse it the same way
                problem = fused_expert_problem(str(exc), method)
                if problem is None:
                    raise
                raise TrainerInputError(problem) from None
        if adapter_dtype is not None:
            for param in model.parameters():
                if param.requires_grad:
                    param.data = param.data.to(DTYPES[adapter_dtype])
    else:
        model.requires_grad_(True)
        if auto_class(config).__name__ == "AutoModelForCausalLM":
            freeze_outside_the_text_model(model)
    if freeze is not None and freeze.any:
        # The patterns are checked on the run's own model, with its task head (preflight.freeze_problem):
        # this one may be another class (a classifier's causal or masked LM).
        apply_freezing(model, model_parts(model), freeze, announce=False, check_patterns=False)
    head = model.get_output_embeddings()
    head_id = id(head.weight) if head is not None and getattr(head, "weight", None) is not None else None
    head_name = next((name for name, p in model.named_parameters() if id(p) == head_id), None)
    if head_name is None:  # PEFT modules_to_save wraps the head: the trained copy is the one that counts
        head_name = next((name for name, p in model.named_parameters() if "lm_head" in name and p.requires_grad), None)
    params = [_param_info(name, p, quantized.get(id(p))) for name, p in model.named_parameters()]
    by_id = {id(p): info for (_, p), info in zip(model.named_parameters(), params)}
    layers = _decoder_layers(model)
    layer_bytes = [sum(by_id[id(p)].nbytes for p in layer.parameters()) for layer in layers]
    root_bytes = sum(p.nbytes for p in params) - sum(layer_bytes)
    targets = [
        (m.in_features, m.out_features, m.r[name])
        for m in model.modules()
        if hasattr(m, "lora_A") and hasattr(m, "in_features")
        for name in m.lora_A
    ]
    chunkable, reason = _head_chunkable(model)
    return Inventory(
        label,
        _architecture(config, layers),
        params,
        max(layer_bytes, default=0),
        root_bytes,
        targets,
        head_name,
        chunkable,
        reason,
        extras={"learned_positions": learned_positions},
    )


def _head_chunkable(model: torch.nn.Module) -> tuple[bool, str]:
    """The trainer's own test of whether the chunked loss can stand in for this model's head."""
    from trainer.chunked_loss import chunkable_head

    head, reason = chunkable_head(model)
    return head is not None, reason


def _quantize_like_bnb(model: torch.nn.Module, method: MethodConfig, upcast: bool = True) -> dict[int, int]:
    """Mark the linear layers transformers' bitsandbytes integration quantizes (all but the
    output head), freeze everything, and upcast the rest like PEFT's prepare_model_for_kbit_training
    (unless the adapters keep the compute dtype: then the rest stays in it too).
    Returns {id(weight): compute element size}."""
    head = model.get_output_embeddings()
    marked = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            marked[id(module.weight)] = _compute_dtype(method, module.weight.dtype).itemsize
    model.requires_grad_(False)
    for param in model.parameters():
        if upcast and id(param) not in marked and param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.to(torch.float32)
    return marked


def _compute_dtype(method: MethodConfig, model_dtype: torch.dtype) -> torch.dtype:
    name = method.quantization.compute_dtype
    return model_dtype if name == "auto" else DTYPES[name]


def _param_info(name: str, param: torch.Tensor, quant_storage_size: int | None) -> ParamInfo:
    numel = param.numel()
    dim0 = param.shape[0] if param.dim() else 1
    if quant_storage_size is None:
        return ParamInfo(name, numel, dim0, param.element_size(), numel, param.requires_grad)
    # Params4bit packs two 4-bit values per byte into a (n, 1) tensor of the storage dtype.
    per_element = 2 * quant_storage_size
    stored = (numel + per_element - 1) // per_element
    return ParamInfo(name, numel, stored, quant_storage_size, stored, False, quantized=True, scale_bytes=0)


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def _architecture(config: Any, layers: list[torch.nn.Module]) -> Architecture:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    norms = 2
    if layers:  # RMSNorm (Llama, Qwen, ...) or LayerNorm (GPT-2, OPT, ...) of the hidden size
        norms = sum(
            1
            for m in layers[0].modules()
            if type(m).__name__.endswith(("RMSNorm", "LayerNorm"))
            and getattr(m, "weight", None) is not None
            and m.weight.numel() == text.hidden_size
        )
    return Architecture(
        model_type=text.model_type,
        hidden=text.hidden_size,
        layers=text.num_hidden_layers,
        heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        intermediate=_intermediate_size(text, layers),
        vocab=getattr(text, "vocab_size", None) or config.num_labels,  # an image classifier's logits: its classes
        experts_per_token=getattr(text, "num_experts_per_tok", None) or 1,
        norms_per_layer=norms or 2,
        experts=next((n for n in (getattr(text, k, None) for k in _EXPERT_COUNT_NAMES) if isinstance(n, int)), 0),
    )


# What configs call the routed experts per layer: Mixtral, Qwen-MoE / OLMoE, DeepSeek.
_EXPERT_COUNT_NAMES = ("num_local_experts", "num_experts", "n_routed_experts")


# What configs call the MLP's inner width: Llama-style, OPT, GPT-2 (None: 4 x hidden), Falcon/GPT-J, T5-style.
_INTERMEDIATE_NAMES = ("intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size", "d_ff")


def _intermediate_size(text: Any, layers: list[torch.nn.Module]) -> int:
    for name in _INTERMEDIATE_NAMES:
        value = getattr(text, name, None)
        if isinstance(value, int) and value > 0:
            return value
    if layers:  # the widest weight of a decoder layer is its MLP's inner width
        widths = [max(p.shape) for p in layers[0].parameters() if p.dim() == 2]
        if widths:
            return int(max(widths))
    return 4 * int(text.hidden_size)  # the transformer default (GPT-2's n_inner=None)
