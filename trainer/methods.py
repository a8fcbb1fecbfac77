"""Fine-tuning methods as model transforms: full (no-op), LoRA, DoRA, QLoRA — all through PEFT."""

from __future__ import annotations

import difflib
import logging
from typing import Any

import torch

from trainer.config import MethodConfig
from trainer.errors import TrainerInputError
from trainer.model_builder import enable_checkpointing

log = logging.getLogger(__name__)


def peft_lora_config(
    method: MethodConfig,
    *,
    task_type: str | None = "CAUSAL_LM",
    exclude_modules: str | None = None,
    new_modules: list[str] | None = None,
    model: torch.nn.Module | None = None,
) -> Any:
    """`task_type` SEQ_CLS also trains and saves the classification head (None: no task type, for
    image classifiers); `exclude_modules` (a regex on module names) keeps adapters off frozen blocks
    (transfer.freeze.first_n_blocks); `new_modules` (an encoder's freshly initialised pooler, a new
    image classifier) train in full and are saved with the adapter, like the head. `model`: the
    model it will adapt, whose tied head and embeddings stay tied when modules_to_save takes one."""
    from peft import LoraConfig

    lora = method.lora
    modules_to_save = list(lora.modules_to_save) + [m for m in new_modules or [] if m not in lora.modules_to_save]
    keep_tied = False
    if model is not None:
        modules_to_save, keep_tied = modules_to_save_keeping_tie(model, modules_to_save)
    return LoraConfig(
        # PEFT then trains one shared copy of a tied head/embedding matrix and its merge keeps the tie;
        # without it, it trained and exported them as two (PEFT warned, the export untied them).
        ensure_weight_tying=keep_tied,
        task_type=task_type,
        exclude_modules=exclude_modules,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        use_rslora=lora.rslora,
        use_dora=method.type == "dora",
        modules_to_save=modules_to_save or None,
    )


def apply_method(
    model: torch.nn.Module,
    method: MethodConfig,
    gradient_checkpointing: bool,
    *,
    task_type: str | None = "CAUSAL_LM",
    exclude_modules: str | None = None,
    new_modules: list[str] | None = None,
) -> torch.nn.Module:
    if method.type == "full":
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model

    from peft import get_peft_model, prepare_model_for_kbit_training

    fp32 = method.adapters_in_fp32
    if method.type == "qlora":
        if fp32:
            # Casts norms/embeddings/head to fp32 for stable training of the quantized base; our
            # own checkpointing switch already ran in the model builder.
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        else:
            # The same minus the upcast: everything not quantized stays in the compute dtype.
            for parameter in model.parameters():
                parameter.requires_grad_(False)
        if gradient_checkpointing:
            enable_checkpointing(model)
    # autocast_adapter_dtype: PEFT creates bf16/fp16 adapters in fp32 unless told not to.
    check_target_modules(model, method.lora.target_modules)
    try:
        peft_model = get_peft_model(
            model,
            peft_lora_config(
                method, task_type=task_type, exclude_modules=exclude_modules, new_modules=new_modules, model=model
            ),
            autocast_adapter_dtype=fp32,
        )
    except ValueError as exc:
        expert_problem = fused_expert_problem(str(exc), method)
        if expert_problem:
            raise TrainerInputError(expert_problem) from None
        if "not found in the base model" not in str(exc) and "Target module" not in str(exc):
            raise
        raise TrainerInputError(
            f"method.lora.target_modules={method.lora.target_modules!r}: {str(exc).splitlines()[0]} This model's "
            f"linear layers are named: {', '.join(linear_layer_names(model))} (or use all-linear)"
        ) from None
    if not fp32:
        _cast_trainable(peft_model, compute_dtype(model, method))
    _note_unadapted_experts(peft_model, method.lora.target_modules)
    trainable, total = count_parameters(peft_model)
    log.info("%s: %d trainable of %d parameters (%.3f%%)", method.type, trainable, total, 100 * trainable / total)
    return peft_model


# The module names PEFT ties for ensure_weight_tying (peft.utils.constants.EMBEDDING_LAYER_NAMES).
PEFT_TIED_NAMES = ("embed_tokens", "lm_head")


def modules_to_save_keeping_tie(model: torch.nn.Module, modules_to_save: list[str]) -> tuple[list[str], bool]:
    """modules_to_save as PEFT gets it, and whether PEFT keeps the model's tied head and input
    embeddings tied (ensure_weight_tying): when it takes either of the two. PEFT recognises them
    by name only (embed_tokens, lm_head): GPT-2's `wte` gets its `lm_head` added, the same matrix."""
    # A transformers PreTrainedModel (torch's Module type does not declare these accessors).
    head = getattr(model, "get_output_embeddings", lambda: None)()
    embeddings = getattr(model, "get_input_embeddings", lambda: None)()
    if head is None or embeddings is None or head.weight is not embeddings.weight:
        return modules_to_save, False
    short = {id(module): name.split(".")[-1] for name, module in model.named_modules()}
    head_name, embeddings_name = short.get(id(head), ""), short.get(id(embeddings), "")
    saved = {name.split(".")[-1] for name in modules_to_save}
    if not saved & {head_name, embeddings_name}:
        return modules_to_save, False
    if saved & set(PEFT_TIED_NAMES):
        return modules_to_save, True
    if head_name in PEFT_TIED_NAMES:
        return [*modules_to_save, head_name], True
    log.warning(
        "method.lora.modules_to_save: this model's LM head (%s) and input embeddings (%s) share one matrix, "
        "which PEFT can keep tied only under the names %s: they train as two copies and the merged export "
        "unties them (one vocabulary x hidden matrix more)",
        head_name,
        embeddings_name,
        " / ".join(PEFT_TIED_NAMES),
    )
    return modules_to_save, False


def _note_unadapted_experts(model: torch.nn.Module, targets: str | list[str]) -> None:
    """all-linear reaches a mixture's fused 3-D expert weights only on the architectures PEFT knows
    (Mixtral, Qwen3-MoE; Qwen2-MoE from PEFT 0.22, before which it took the attention and the shared
    expert only): said when the experts got nothing, as the user asked for every linear layer (a list
    or a pattern names what it adapts)."""
    if targets != "all-linear":
        return
    named = list(model.named_parameters())
    experts = [n for n, p in named if ".experts." in n and p.dim() >= 3 and "lora_" not in n]
    if experts and not any(".experts." in n and "lora_" in n for n, _ in named):
        log.warning(
            "LoRA: all-linear leaves the %d fused expert weights of this mixture of experts (e.g. %s) without "
            "an adapter (PEFT adapts fused experts of some architectures only); only the other layers train",
            len(experts),
            experts[0],
        )


def _default_said(section: Any, key: str) -> str:
    """' (the default)' when `key` holds its default value (trial 63c: a refusal of dropout=0.05 that
    the user never wrote)."""
    field = type(section).model_fields.get(key)
    return " (the default)" if field is not None and getattr(section, key) == field.default else ""


def fused_expert_problem(error: str, method: MethodConfig) -> str | None:
    """PEFT adapts a mixture-of-experts model's fused 3-D expert weights (transformers 5's Mixtral:
    one gate_up_proj / down_proj parameter for all experts) with a wrapper that takes neither
    dropout nor DoRA; its ValueError, said as the config keys to change (None: another error)."""
    if "ParamWrapper" not in error:
        return None
    attention = "method.lora.target_modules: [q_proj, k_proj, v_proj, o_proj] to adapt the attention only"
    if "dropout" in error:
        return (
            f"method.lora.dropout={method.lora.dropout}{_default_said(method.lora, 'dropout')}: this model's experts "
            "are fused 3-D weights, which PEFT "
            f"adapts only without dropout; set method.lora.dropout: 0, or {attention}"
        )
    if "dora" in error.lower():
        return (
            "method.type=dora: PEFT cannot apply DoRA to this model's fused 3-D expert weights; use method.type: "
            f"lora (with method.lora.dropout: 0), or {attention}"
        )
    return None


def check_target_modules(model: torch.nn.Module, targets: str | list[str]) -> None:
    """Every listed name must name a module (PEFT matches a full name or its last parts, and is
    silent about a name that matches nothing as long as another one matches: a typo trained
    nothing there)."""
    names = [name for name, _ in model.named_modules() if name]
    if isinstance(targets, str):
        if targets != "all-linear":
            _check_target_pattern(targets, dict(model.named_modules()), linear_layer_names(model))
            import re

            _refuse_tied_targets(model, [name for name in names if re.fullmatch(targets, name)])
        return
    adapted = [name for name in names if any(name == t or name.endswith("." + t) for t in targets)]
    _refuse_tied_targets(model, adapted)
    modules = dict(model.named_modules())
    containers = _not_adaptable(modules, adapted)
    if containers:  # trial 63c: `experts` (a mixture's fused experts) passed validate; PEFT's repr crashed plan
        shown = ", ".join(f"{name} ({type(modules[name]).__name__})" for name in containers[:3])
        fused = any(p.dim() >= 3 for name in containers for p in modules[name].parameters(recurse=False))
        raise TrainerInputError(
            f"method.lora.target_modules names modules LoRA cannot adapt: {shown}"
            f"{f' and {len(containers) - 3} more' if len(containers) > 3 else ''}; list the model's linear "
            f"layers by name instead ({', '.join(linear_layer_names(model))}), or use all-linear"
            + (" (which adapts a mixture's fused experts where PEFT can, with method.lora.dropout: 0)" if fused else "")
        )
    missing = [t for t in targets if not any(name == t or name.endswith("." + t) for name in names)]
    if missing:
        linear = linear_layer_names(model)
        close = {t: difflib.get_close_matches(t, linear, n=1, cutoff=0.7) for t in missing}
        hints = "; ".join(f"did you mean {c[0]!r} for {t!r}?" for t, c in close.items() if c)
        raise TrainerInputError(
            f"method.lora.target_modules: {', '.join(repr(t) for t in missing)} name(s) no module of this model"
            f"{'; ' + hints if hints else ''}; its linear layers are named: {', '.join(linear)} (or use all-linear)"
        )


def _refuse_tied_targets(model: torch.nn.Module, adapted: list[str]) -> None:
    """A LoRA on the LM head or the input embeddings of a model that ties them (one matrix for both):
    training adapts one use of the matrix, and merging writes the delta into the shared matrix, so the
    merged model (what `ftl generate` runs) changes the other use too and is not the model trained
    and scored (trial 46b: eval loss 7.2565 trained, 7.3156 merged)."""
    # A transformers PreTrainedModel (torch's Module type does not declare these accessors).
    head = getattr(model, "get_output_embeddings", lambda: None)()
    embeddings = getattr(model, "get_input_embeddings", lambda: None)()
    if head is None or embeddings is None or getattr(head, "weight", None) is not getattr(embeddings, "weight", 1):
        return  # not tied
    modules = dict(model.named_modules())
    tied = [name for name in adapted if modules.get(name) is head or modules.get(name) is embeddings]
    if tied:
        raise TrainerInputError(
            f"method.lora.target_modules adapts {', '.join(tied)}, whose weight the model shares between its input "
            "embeddings and its LM head (tie_word_embeddings): merging the adapter would change both uses, so the "
            "merged model would not be the one trained; train the shared matrix whole instead "
            f"(method.lora.modules_to_save=[{tied[0].rsplit('.', 1)[-1]}], which keeps them tied) or leave it out"
        )


# Module types PEFT's LoRA adapts (torch's, transformers' GPT-2 Conv1D, bitsandbytes' quantized linears).
ADAPTABLE = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
ADAPTABLE_NAMES = ("Conv1D", "Linear4bit", "Linear8bitLt", "MultiheadAttention")


def _not_adaptable(modules: dict[str, torch.nn.Module], names: list[str]) -> list[str]:
    """The named modules that are no layer LoRA adapts (containers, a mixture's fused experts)."""
    return [
        name
        for name in names
        if not isinstance(modules[name], ADAPTABLE) and type(modules[name]).__name__ not in ADAPTABLE_NAMES
    ]


def _check_target_pattern(pattern: str, modules: dict[str, torch.nn.Module], linear: list[str]) -> None:
    """A string other than all-linear is PEFT's regular expression, matched against each module's
    full name: one that matches none adapts nothing, one that matches a container (`.*` matches the
    whole model) is refused by PEFT; both were said only after the workers loaded the model (trials
    39a, 40a: `all_linear`, `q_proj`, `.*`)."""
    import re

    names = [name for name in modules if name]
    matched = [name for name in names if re.fullmatch(pattern, name)]
    if matched:
        containers = _not_adaptable(modules, matched)
        if containers:
            shown = ", ".join(f"{name or 'the model'} ({type(modules[name]).__name__})" for name in containers[:3])
            raise TrainerInputError(
                f"method.lora.target_modules={pattern!r} matches modules LoRA cannot adapt: {shown}"
                f"{f' and {len(containers) - 3} more' if len(containers) > 3 else ''}; a pattern must match layers "
                rf"only, e.g. '.*\.(q_proj|v_proj)' (its linear layers are named: {', '.join(linear)}), or use all-linear"
            )
        return
    if pattern.replace("_", "-").lower() == "all-linear":
        hint = "did you mean all-linear?"
        tail = ""
    else:
        if pattern in linear:
            hint = f"to name modules, give a list: [{pattern}]"
        else:
            close = difflib.get_close_matches(pattern, linear, n=1, cutoff=0.7)
            hint = f"to name modules, give a list, e.g. [{close[0] if close else linear[0] if linear else 'q_proj'}]"
        tail = ", or use all-linear"
    raise TrainerInputError(
        f"method.lora.target_modules={pattern!r} is read as a regular expression over full module names (e.g. "
        f"{names[-1]!r}) and matches none of this model's; {hint} (its linear layers are named: {', '.join(linear)})"
        f"{tail}"
    )


def linear_layer_names(model: torch.nn.Module) -> list[str]:
    """The distinct last names of the model's linear layers (what LoRA's target_modules match)."""
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if name
        and (isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Conv1D", "Linear4bit", "Linear8bitLt"))
    }
    return sorted(names)


def compute_dtype(model: torch.nn.Module, method: MethodConfig) -> torch.dtype:
    """The dtype the model computes in: QLoRA's bitsandbytes compute dtype, else the loaded dtype."""
    quantization = getattr(getattr(model, "config", None), "quantization_config", None)
    if method.type == "qlora" and quantization is not None:
        return quantization.bnb_4bit_compute_dtype
    return next(p.dtype for p in model.parameters() if p.dtype.is_floating_point)


def _cast_trainable(model: torch.nn.Module, dtype: torch.dtype) -> None:
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype.is_floating_point and parameter.dtype != dtype:
            parameter.data = parameter.data.to(dtype)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
