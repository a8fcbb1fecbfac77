"""Entry point of the planner: a run config + target hardware -> memory, throughput, suggestions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from launcher.plan.catalogue import model_config_fields
from launcher.plan.hardware import Accelerator
from launcher.plan.inventory import Inventory, with_block_scales
from launcher.plan.inventory_cache import cached_inventory
from launcher.plan.memory import MemoryPlan, plan_memory
from launcher.plan.setup import Setup
from launcher.plan.suggest import Suggestion, evaluator, lean_changes, leanest, suggest
from launcher.plan.throughput import DEFAULT_MFU, Throughput, count_tokens, estimate
from launcher.run_config import RunConfig
from trainer.config import MethodConfig

# Bytes per element of the model dtypes, by name: the fit check before every `ftl train` plans from
# a cached inventory without importing torch (a second of CPU per launch).
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class Target:
    accelerator: Accelerator
    gpus_per_node: int = 1
    nodes: int = 1

    @property
    def workers(self) -> int:
        return self.gpus_per_node * self.nodes


@dataclass
class Plan:
    cfg: RunConfig
    target: Target
    inventory: Inventory
    memory: MemoryPlan
    suggestions: list[Suggestion] = field(default_factory=list)
    throughput: Throughput | None = None
    notes: list[str] = field(default_factory=list)


def resolve_setup(cfg: RunConfig, target: Target) -> Setup:
    acc = target.accelerator
    gpu_bf16 = acc.is_gpu and acc.bf16
    model_dtype = cfg.model.dtype if cfg.model.dtype != "auto" else ("bfloat16" if gpu_bf16 else "float32")
    precision = (
        cfg.parallel.mixed_precision if cfg.parallel.mixed_precision != "auto" else ("bf16" if gpu_bf16 else "fp32")
    )
    if model_dtype in ("bfloat16", "float16") and precision == "fp32":
        precision = "bf16" if model_dtype == "bfloat16" else "fp16"  # 16-bit weights compute in 16 bits
    # Preference objectives score chosen and rejected side by side (twice the sequences per
    # micro-batch) from the full logits (trainer/preference_loss.py), DPO with full fine-tuning
    # against a frozen copy of the weights (trainer/preference_reference.py).
    preference = cfg.training.objective if cfg.training.objective != "sft" else ""
    sequences = cfg.training.micro_batch_size * (2 if preference else 1)
    attention = cfg.model.attn_implementation
    flash_here = attention == "auto" and acc.is_gpu and _flash_attn_installed()
    if attention == "auto":
        attention = "sdpa"  # flash-attn keeps the same tensors alive as SDPA's memory-efficient kernels
    # Packed rows, or a micro-batch of several rows padded to the longest: transformers gives SDPA a
    # (rows, 1, seq, seq) mask, and flash-attn (auto, where it is installed) runs without one.
    masked = (cfg.data.packing or sequences > 1) and cfg.data.format != "image_classification"
    return Setup(
        method=cfg.method.type,
        strategy=cfg.parallel.strategy_for(target.workers),
        zero_stage=cfg.parallel.zero_stage,
        offload_optimizer=cfg.parallel.offload_optimizer,
        offload_params=cfg.parallel.offload_params,
        reshard_after_forward=cfg.parallel.reshard_after_forward,
        workers=target.workers,
        gpus_per_node=target.gpus_per_node,
        micro_batch=sequences,
        accumulation=cfg.training.gradient_accumulation_steps,
        seq_len=cfg.data.max_seq_len,
        packing=cfg.data.packing,
        checkpointing=cfg.model.gradient_checkpointing,
        attention=attention,
        param_bytes=DTYPE_BYTES[model_dtype],
        precision=precision,
        lora_dropout=cfg.method.lora.dropout,
        accelerator=acc,
        # A classification head's loss is over its labels, never chunked (trial 46b: "chunked loss" planned).
        loss_chunked=cfg.training.loss.chunked and not preference and cfg.transfer.head.type == "causal_lm",
        chunk_tokens=cfg.training.loss.chunk_tokens,
        optimizer=cfg.training.optimizer,
        optimizer_in_backward=cfg.training.optimizer_in_backward,
        clipping=cfg.training.max_grad_norm is not None,
        adapter_dtype=resolve_adapter_dtype(cfg.method),
        activation_offloading=cfg.model.activation_offloading,
        compile=cfg.model.compile,
        liger=cfg.model.liger_kernels,
        preference=preference,
        reference=cfg.reference_kind() or "",
        attention_mask=masked and attention == "sdpa" and not flash_here,
    )


def _flash_attn_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def resolve_adapter_dtype(method: MethodConfig) -> str:
    """method.adapter_dtype as the trainer resolves it (trainer/methods.py): float32 | compute."""
    return "float32" if method.adapters_in_fp32 else "compute"


def compute_dtype(cfg: RunConfig, setup: Setup, method: MethodConfig) -> str:
    if method.type == "qlora" and method.quantization.compute_dtype != "auto":
        return method.quantization.compute_dtype
    return weights_dtype(cfg, setup)


def weights_dtype(cfg: RunConfig, setup: Setup) -> str:
    """The name of the dtype the trainer loads the weights in."""
    return "float16" if cfg.model.dtype == "float16" else {2: "bfloat16", 4: "float32"}[setup.param_bytes]


def inventory_for(cfg: RunConfig, setup: Setup, method: MethodConfig | None = None) -> Inventory:
    """What the trainer holds for this method; the adapter dtype is the setup's (a suggestion may change it)."""
    method_cfg = method or cfg.method
    label, fields = model_config_fields(cfg.model.path, cfg.model.revision)
    dtype = weights_dtype(cfg, setup)
    adapter = (
        compute_dtype(cfg, setup, method_cfg) if setup.adapter_dtype == "compute" and method_cfg.uses_adapter else None
    )
    inventory = cached_inventory(label, fields, method_cfg, dtype, adapter, cfg.transfer.freeze)
    if method_cfg.type == "qlora":
        inventory = with_block_scales(inventory, method_cfg.quantization.double_quant)
    return inventory


def config_accepts(cfg: RunConfig, overrides: list[str]) -> bool:
    """Whether the config still validates with these key.path=value overrides (its cross-field rules)."""
    from pydantic import ValidationError

    from launcher.config_yaml import load_config_yaml

    raw = cfg.model_dump(mode="json")
    for override in overrides:
        key, _, value = override.partition("=")
        *sections, last = key.split(".")
        target = raw
        for part in sections:
            target = target.setdefault(part, {})
        target[last] = load_config_yaml(value)
    try:
        RunConfig.model_validate(raw)
    except ValidationError:
        return False
    return True


def _inventories(cfg: RunConfig, setup: Setup) -> Callable[[str, str], Inventory]:
    return lambda m, a: inventory_for(cfg, setup.but(adapter_dtype=a), cfg.method.model_copy(update={"type": m}))


def leanest_overrides(cfg: RunConfig, target: Target) -> list[str]:
    """The overrides of the leanest lean-memory settings valid for this run (each one that makes
    it leaner), as the suggestions combine them; [] when there is none."""
    setup = resolve_setup(cfg, target)
    evaluate = evaluator(setup, inventory_for(cfg, setup), _inventories(cfg, setup))
    bundle = leanest(None, setup, evaluate)
    if bundle is None:
        best = min(lean_changes(setup), key=lambda c: evaluate(c).total_bytes, default=None)
        bundle = best if best is not None and config_accepts(cfg, best.overrides) else None
    if bundle is None or not config_accepts(cfg, bundle.overrides):
        return []
    return list(bundle.overrides)


def plan_run(
    cfg: RunConfig,
    target: Target,
    *,
    mfu: float = DEFAULT_MFU,
    price_per_gpu_hour: float | None = None,
    with_throughput: bool = True,
) -> Plan:
    """Memory (always), suggestions when it does not fit, and throughput/time/cost estimates."""
    setup = resolve_setup(cfg, target)
    inventory = inventory_for(cfg, setup)
    limit = inventory.extras.get("learned_positions")
    if limit is not None and cfg.data.max_seq_len > limit:
        # A refusal the workers would make once the model is loaded: said before anything starts.
        from trainer.sequence_length import refuse_past_learned_positions  # imports torch: only here

        refuse_past_learned_positions(cfg.data.max_seq_len, limit)
    attention = attention_refusal(cfg)
    if attention:  # the workers' model load would refuse it, after the data was read
        from trainer.errors import TrainerInputError

        raise TrainerInputError(attention)
    from launcher.position_limit import rotary_context_note

    rotary_note = rotary_context_note(cfg)
    plan = Plan(cfg, target, inventory, plan_memory(inventory, setup))
    if not plan.memory.fits:
        plan.suggestions = suggest(
            setup, inventory, _inventories(cfg, setup), lambda overrides: config_accepts(cfg, overrides)
        )
    if with_throughput:
        counted = count_tokens(cfg)
        tokens = None if isinstance(counted, str) else counted
        plan.throughput = estimate(inventory, setup, cfg, mfu=mfu, price_per_gpu_hour=price_per_gpu_hour, tokens=tokens)
        if isinstance(counted, str):
            plan.throughput.no_tokens_reason = counted
    plan.notes += transfer_notes(cfg, inventory)
    if rotary_note:
        plan.notes.append(rotary_note)
    if setup.strategy == "deepspeed" and setup.zero_stage == 3:
        # Trial 33b: per-worker RSS on CPU (2 workers, the bundled model) minus Ray's share was ~14%
        # over this plan under ZeRO-3, within ~3% for DDP and ZeRO-2, the same arithmetic.
        plan.notes.append(
            "ZeRO-3: DeepSpeed's gather and prefetch buffers are not counted (an estimate, not measured: on CPU "
            "a ZeRO-3 worker used ~14% more than this plan, ZeRO-2 and DDP workers within ~3%, each beside Ray's "
            "library in the worker process, which the 'on Ray' line counts)"
        )
    if setup.method == "dora":
        plan.notes.append(
            "DoRA activations are an approximation (weight-sized temporaries per adapted layer); "
            "parameter, gradient and optimizer figures are exact"
        )
    if cfg.model.attn_implementation == "auto" and target.accelerator.is_gpu:
        plan.notes.append("attention counted as SDPA/flash-attn (no seq x seq scores kept)")
    experts = unquantized_experts(inventory) if setup.method == "qlora" else 0
    if experts:
        plan.notes.append(
            f"QLoRA: {experts / 2**30:.2f} GiB of the base are mixture-of-experts weights that bitsandbytes does "
            "not quantize (fused 3-D parameters, not linear layers): they stay unquantized"
            + (
                ", upcast to fp32 (method.adapter_dtype: compute keeps them in the model's dtype)"
                if setup.adapter_dtype == "float32"
                else ""
            )
        )
    if plan.memory.activations.mask and target.accelerator.is_gpu and setup.attention != "eager":
        plan.notes.append(
            f"packed/padded rows: SDPA keeps {plan.memory.activations.mask / 2**30:.2f} GiB of attention masks "
            "(counted as measured on CPU, in the compute dtype); flash-attn needs none "
            "(pip install 'ftl[gpu]' where the run trains, model.attn_implementation auto)"
        )
    return plan


def transfer_notes(cfg: RunConfig, inventory: Inventory) -> list[str]:
    """How the plan counts the run's transfer-learning settings."""
    transfer, notes = cfg.transfer, []
    if transfer.freeze.any:
        notes.append(
            f"transfer.freeze: {inventory.total(True) / 1e6:,.2f}M of {inventory.total() / 1e6:,.2f}M parameters "
            "trainable; the frozen ones hold no gradient and no optimizer state (counted as frozen weights only)"
        )
    if transfer.gradual_unfreezing.enabled:
        notes.append("gradual unfreezing: counted at its last stage, when every scheduled group trains (the peak)")
    if transfer.head.type == "image_classification":
        notes.append(
            "transfer.head image_classification: activations are counted as for a sequence of data.max_seq_len "
            "tokens (a ViT sees (image_size / patch_size)^2 + 1); set data.max_seq_len near that for a closer estimate"
        )
    elif transfer.head.is_classification:
        notes.append(
            "transfer.head: the classification head is counted as the LM head it replaces "
            "(its weights, gradient and logits are over-estimated)"
        )
    return notes


def unquantized_experts(inventory: Inventory) -> int:
    """Bytes of frozen expert weights a QLoRA load leaves unquantized (bitsandbytes quantizes
    nn.Linear layers; transformers 5 keeps a mixture's experts as fused 3-D parameters)."""
    return sum(p.nbytes for p in inventory.params if ".experts." in p.name and not p.quantized and not p.trainable)


def attention_refusal(cfg: RunConfig) -> str | None:
    """model.attn_implementation=sdpa on a causal LM whose class has no SDPA (Gemma 2: its logit
    soft-capping), in the words of the workers' refusal."""
    if cfg.model.attn_implementation != "sdpa" or cfg.transfer.head.type != "causal_lm":
        return None
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.auto_factory import _get_model_class

    from launcher.plan.inventory_build import hf_config

    try:
        _, fields = model_config_fields(cfg.model.path, cfg.model.revision)
        model_class = _get_model_class(hf_config(fields), AutoModelForCausalLM._model_mapping)
    except Exception:  # noqa: BLE001 - an unknown class: the workers' load says what is wrong
        return None
    if getattr(model_class, "_supports_sdpa", True) is not False:
        return None
    return (
        f"model.attn_implementation=sdpa cannot be used with {cfg.model.path!r}: {model_class.__name__} does not "
        "support SDPA. Use model.attn_implementation: auto (SDPA where the model supports it, else eager) or eager."
    )
