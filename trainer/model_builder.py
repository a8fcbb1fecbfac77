"""Load the tokenizer and the base model: dtype, attention backend, quantization, checkpointing."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from trainer.config import MethodConfig, ModelConfig
from trainer.errors import TrainerInputError
from trainer.tokenizer_files import NO_TOKENIZER_FILES, lacks_tokenizer_files

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: str) -> torch.dtype:
    if name != "auto":
        return DTYPES[name]
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def dtype_note(model_cfg: ModelConfig, device: str) -> str | None:
    """model.dtype auto widening a 16-bit checkpoint to float32 (on CPU, or a GPU without bf16): the
    run and its merged export are float32, twice the checkpoint's size, which nothing said (trial
    58a). Read from a local folder's config.json; None for a hub model or when nothing widens."""
    if model_cfg.dtype != "auto":
        return None
    try:
        fields = json.loads((Path(str(model_cfg.path)).expanduser() / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    text = fields.get("text_config") if isinstance(fields.get("text_config"), dict) else {}
    saved = fields.get("dtype") or fields.get("torch_dtype") or text.get("dtype") or text.get("torch_dtype")
    if saved not in ("bfloat16", "float16") or resolve_dtype("auto", device) != torch.float32:
        return None
    where = "on CPU" if not device.startswith("cuda") else "on this GPU (no bfloat16)"
    return (
        f"model.dtype auto: the checkpoint's weights are {saved}, and {where} they train in float32, so a merged "
        f"export is float32 too (twice the checkpoint's size); set model.dtype: {saved} to keep {saved}"
    )


def resolve_attention(name: str, device: str, model_class: Any = None) -> str | None:
    """flash-attn only where it can run (installed + CUDA + a model class that supports it); else
    None: transformers' own choice, SDPA where the model supports it and eager where not (Gemma 2,
    whose logit soft-capping SDPA cannot do). `model_class` is only needed for `auto` on CUDA."""
    flash_available = importlib.util.find_spec("flash_attn") is not None
    if name == "auto":
        if flash_available and device.startswith("cuda") and getattr(model_class, "_supports_flash_attn", False):
            return "flash_attention_2"
        return None
    if name == "flash_attention_2" and not (flash_available and device.startswith("cuda")):
        raise TrainerInputError(
            "model.attn_implementation=flash_attention_2 needs the flash-attn package and a CUDA device; "
            "install the gpu extra (pip install 'ftl[gpu]') or use auto"
        )
    return name


def load_inputs(cfg: ModelConfig, data_format: str) -> Any:
    """What turns the data into model inputs: the image processor for image data, else the tokenizer."""
    if data_format == "image_classification":
        from trainer.data.images import load_image_inputs

        return load_image_inputs(cfg)
    return load_tokenizer(cfg)


def load_tokenizer(cfg: ModelConfig) -> Any:
    from transformers import AutoTokenizer

    source = cfg.tokenizer or cfg.path
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        missing = f" ({NO_TOKENIZER_FILES})" if lacks_tokenizer_files(source) else ""
        raise TrainerInputError(
            f"model.tokenizer / model.path: cannot load a tokenizer from {source!r}{missing}: {exc}"
        ) from None
    if not tokenizer("Hello world", add_special_tokens=False)["input_ids"]:
        # transformers builds an empty tokenizer (no vocabulary) from a folder that has a model's
        # config but no tokenizer files, without an error (BPE models): every row would be no tokens.
        raise TrainerInputError(
            f"model.tokenizer / model.path: the tokenizer loaded from {source!r} is empty (it turns text into no "
            f"tokens): {NO_TOKENIZER_FILES}"
        )
    ensure_pad_token(tokenizer)
    return tokenizer


def ensure_pad_token(tokenizer: Any) -> None:
    """Give a tokenizer without a pad token one it already has. Padding positions never carry loss
    or attention, so any token serves: EOS where there is one, else UNK or BOS, else the token with
    id 0 (base-model tokenizers often have no pad, some not even an EOS)."""
    if tokenizer.pad_token_id is not None:
        return
    for candidate in (tokenizer.eos_token, tokenizer.unk_token, tokenizer.bos_token):
        if candidate is not None:
            tokenizer.pad_token = candidate
            return
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(0)


# Formats whose examples end with the tokenizer's EOS (a chat template writes its own end of turn).
EOS_ENDED_FORMATS = ("alpaca", "completion", "text")


def missing_eos_notice(tokenizer: Any, data_format: str) -> str | None:
    """Why training on this format without an EOS token is probably not what the user wants."""
    if data_format not in EOS_ENDED_FORMATS or getattr(tokenizer, "eos_token_id", 0) is not None:
        return None
    if data_format == "alpaca" and tokenizer.chat_template:
        return None  # rendered as a chat: the template ends the answer
    return (
        f"the tokenizer has no EOS token, so {data_format} examples are trained without an end marker and the "
        "model will not learn where an answer ends; set eos_token in the tokenizer's tokenizer_config.json "
        "(or model.tokenizer to one that has it)"
    )


def missing_tokenizer_config_notice(tokenizer: Any, model_cfg: ModelConfig) -> str | None:
    """A local tokenizer folder without tokenizer_config.json: transformers builds the tokenizer from
    tokenizer.json alone, without the BOS/EOS/pad tokens that file names, and nothing says so; the
    rows then lose the BOS the model was pretrained with (trial 37b)."""
    source = Path(model_cfg.tokenizer or model_cfg.path)
    if not source.is_dir() or (source / "tokenizer_config.json").is_file() or not hasattr(tokenizer, "bos_token"):
        return None  # a hub name, a complete folder, or an image processor
    if any(getattr(tokenizer, name, None) is not None for name in ("bos_token", "eos_token")):
        return None
    return (
        f"the tokenizer folder {source} has no tokenizer_config.json, so the tokenizer has no BOS, EOS or pad token "
        "defined: examples may lack the model's start and end markers; copy tokenizer_config.json (and "
        "special_tokens_map.json, if there is one) from the base model into that folder"
    )


def load_model(
    model_cfg: ModelConfig,
    method_cfg: MethodConfig,
    device: str,
    *,
    auto_class: Any = None,
    head_kwargs: dict[str, Any] | None = None,
    loading_info: dict[str, Any] | None = None,
) -> torch.nn.Module:
    """`auto_class`/`head_kwargs` load another task head (e.g. sequence classification) on the same checkpoint;
    `loading_info`, when given, receives transformers' report of missing, unexpected and mismatched weights."""
    from transformers import AutoModelForCausalLM

    auto_class = auto_class or AutoModelForCausalLM
    dtype = resolve_dtype(model_cfg.dtype, device)
    wants_class = model_cfg.attn_implementation == "auto" and device.startswith("cuda")
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "attn_implementation": resolve_attention(
            model_cfg.attn_implementation, device, _model_class(model_cfg, auto_class) if wants_class else None
        ),
        "revision": model_cfg.revision,
        "trust_remote_code": model_cfg.trust_remote_code,
        **(head_kwargs or {}),
    }
    if method_cfg.type == "qlora":
        kwargs["quantization_config"] = quantization = quantization_config(method_cfg, dtype)
        kwargs["device_map"] = {"": device}
        log.info(
            "QLoRA: base weights quantized to 4-bit %s%s by bitsandbytes on %s, computing in %s",
            quantization.bnb_4bit_quant_type,
            " (double quantization)" if quantization.bnb_4bit_use_double_quant else "",
            device,
            str(quantization.bnb_4bit_compute_dtype).removeprefix("torch."),
        )
    if auto_class is AutoModelForCausalLM:
        _refuse_unsupported_architecture(model_cfg)
    try:
        model, info = auto_class.from_pretrained(model_cfg.path, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as exc:
        if "attn_implementation" in str(exc):  # transformers: this model has no such attention
            raise TrainerInputError(
                f"model.attn_implementation={model_cfg.attn_implementation} cannot be used with {model_cfg.path!r}: "
                f"{_first_sentence(str(exc))} Use model.attn_implementation: auto (SDPA where the model supports "
                "it, else eager) or eager."
            ) from None
        kind = "a causal LM" if auto_class is AutoModelForCausalLM else f"a model for {auto_class.__name__}"
        raise TrainerInputError(f"model.path: cannot load {kind} from {model_cfg.path!r}: {exc}") from None
    except RuntimeError as exc:
        if "PytorchStreamReader" in str(exc):  # a cut-off pytorch_model.bin (trial 58b: "run the same command again")
            raise TrainerInputError(
                f"model.path: a weights file in {model_cfg.path!r} is damaged ({_first_sentence(str(exc))}); copy the "
                "model folder again (a cut-off download or copy)"
            ) from None
        if "ignore_mismatched_sizes" not in str(exc):
            raise
        # transformers' own words point at a load report printed in this worker's log, away from the
        # error a Ray or Slurm run shows (trial 57b): the mismatches, named here.
        raise TrainerInputError(_shape_mismatch_message(model_cfg, auto_class, head_kwargs or {})) from None
    except SafetensorError as exc:
        # A cut-off or damaged weights file: an input error (exit 2, never retried), not a failure
        # whose advice was to rerun or raise cluster.ray.max_failures (trial 37b).
        raise TrainerInputError(
            f"model.path: a weights file in {model_cfg.path!r} is damaged ({exc}); copy the model folder again "
            "(a cut-off download or copy)"
        ) from None
    _refuse_random_blocks(model, info, model_cfg)
    if loading_info is not None:
        loading_info.update(info)
    if method_cfg.type == "qlora":
        use_exact_cpu_4bit_kernels(model)
        _warn_unquantized_experts(model)
    else:
        model.to(device)
    model.config.use_cache = False
    if model_cfg.gradient_checkpointing:
        enable_checkpointing(model)
    log.info("model %s: %s, attention=%s", model_cfg.path, dtype, model.config._attn_implementation)
    return model


def _warn_unquantized_experts(model: torch.nn.Module) -> None:
    """bitsandbytes quantizes linear layers; a mixture's fused 3-D expert weights (transformers 5's
    Mixtral) stay as they are: said, as the log's "quantized to 4-bit" would otherwise claim them."""
    experts = sum(p.numel() for name, p in model.named_parameters() if ".experts." in name and p.dim() >= 3)
    if experts:
        # A 4-bit weight stores two values per element.
        total = sum(p.numel() * (2 if type(p).__name__ == "Params4bit" else 1) for p in model.parameters())
        log.warning(
            "QLoRA: %d mixture-of-experts weights (%.0f%% of the model's parameters) are not quantized: "
            "bitsandbytes quantizes linear layers, and this model's experts are fused 3-D parameters",
            experts,
            100 * experts / max(total, 1),
        )


def _refuse_unsupported_architecture(model_cfg: ModelConfig) -> None:
    """An encoder or an encoder-decoder asked to train as a causal LM (trainer/architecture_check.py)."""
    from transformers import AutoConfig

    from trainer.architecture_check import unsupported_architecture

    try:
        config = AutoConfig.from_pretrained(
            model_cfg.path, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code
        )
    except (OSError, ValueError):
        return  # from_pretrained says what is wrong with it
    problem = unsupported_architecture(config.to_dict(), "causal_lm")
    if problem:
        raise TrainerInputError(problem)


def _refuse_random_blocks(model: torch.nn.Module, info: dict[str, Any], model_cfg: ModelConfig) -> None:
    """Whole blocks the weights do not hold (config.json's layer count above the checkpoint's):
    transformers starts them from random values with a note, and the run trains a model half
    random (trial 58a). A parameter missing inside a loaded block (a newer norm) is left to it."""
    from trainer.weight_shapes import wholly_missing_blocks

    names = [name for name, _ in model.named_parameters()]
    absent = wholly_missing_blocks(list(info.get("missing_keys") or []), names)
    if absent:
        span = f"{absent[0]}-{absent[-1]}" if len(absent) > 1 else str(absent[0])
        raise TrainerInputError(
            f"model.path: the weights in {model_cfg.path} hold no values for blocks {span} of the model its "
            "config.json describes (they would train from random values); set the layer count (num_hidden_layers) "
            "in config.json to the checkpoint's, or use the weights that came with it"
        )


def _shape_mismatch_message(model_cfg: ModelConfig, auto_class: Any, head_kwargs: dict[str, Any]) -> str:
    """Which weights of model.path have other shapes than the model its config.json describes."""
    from transformers import AutoConfig

    from trainer.weight_shapes import checkpoint_shapes, defaulted_sizes, mismatch_problem, shape_mismatches

    folder = Path(str(model_cfg.path)).expanduser()
    held = checkpoint_shapes(folder) if folder.is_dir() else None
    fallback = (
        f"model.path: the weights in {model_cfg.path} do not fit the model its config.json describes (transformers' "
        "load report in the worker's log lists them); use the config.json that came with these weights"
    )
    if held is None:
        return fallback
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=model_cfg.trust_remote_code)
        for key in ("num_labels", "id2label", "label2id"):
            if key in head_kwargs:
                setattr(config, key, head_kwargs[key])
        with torch.device("meta"):
            model = auto_class.from_config(config, trust_remote_code=model_cfg.trust_remote_code)
        fields = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - the fallback still says what happened
        return fallback
    shapes = {name: list(param.shape) for name, param in model.named_parameters()}
    prefix = str(getattr(model, "base_model_prefix", "") or "")
    mismatches = shape_mismatches(shapes, held, prefix)
    if not mismatches:
        return fallback
    return mismatch_problem(str(model_cfg.path), mismatches, defaulted_sizes(config.to_dict(), fields))


def _first_sentence(text: str) -> str:
    """transformers' attention errors go on to advise code calls (a Whisper example): the first sentence is the fact."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    end = line.find(". ")
    return line[: end + 1] if end > 0 else line


def _model_class(model_cfg: ModelConfig, auto_class: Any) -> Any:
    """The class `auto_class` would build for this checkpoint (None when unknown: remote code)."""
    from transformers import AutoConfig
    from transformers.models.auto.auto_factory import _get_model_class

    try:
        config = AutoConfig.from_pretrained(
            model_cfg.path, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code
        )
        return _get_model_class(config, auto_class._model_mapping)
    except (OSError, ValueError, KeyError):
        return None  # from_pretrained reports what is wrong with the checkpoint


def quantization_config(method_cfg: MethodConfig, model_dtype: torch.dtype) -> Any:
    from transformers import BitsAndBytesConfig

    q = method_cfg.quantization
    compute = model_dtype if q.compute_dtype == "auto" else DTYPES[q.compute_dtype]
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=compute,
        # Storage dtype equal to the compute dtype is what lets FSDP2/ZeRO-3 shard the 4-bit weights.
        bnb_4bit_quant_storage=compute,
    )


def use_exact_cpu_4bit_kernels(model: torch.nn.Module) -> None:
    """Keep bitsandbytes from switching 4-bit layers to its bf16 CPU inference kernel.

    On AVX512-BF16 CPUs, Linear4bit repacks its weights the first time it runs in eval mode and
    from then on computes in bf16 through a kernel without a gradient path to its input, even
    back in train mode: training after the first evaluation would silently change. Training
    and evaluation must run the same (dequantize + matmul in the compute dtype) path.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def enable_checkpointing(model: torch.nn.Module) -> None:
    """Activation checkpointing per decoder layer. Non-reentrant, so it works with frozen inputs
    (LoRA, QLoRA) without making the embeddings require grad."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
