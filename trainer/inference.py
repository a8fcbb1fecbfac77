"""Load a run's fine-tuned model for a quick look, and render prompts and conversations for it."""

from __future__ import annotations

import json
from pathlib import Path
from shlex import quote  # a path with a space in a command to paste (trial 60b)
from typing import Any

from trainer.checkpointing.protocol import committed_checkpoints
from trainer.errors import TrainerInputError
from trainer.evaluate import generate_texts
from trainer.model_builder import ensure_pad_token
from trainer.run_layout import RunLayout


def load_for_inference(path: Path, device: str) -> tuple[Any, Any]:
    """`path` is a run directory (final/merged, else base + final/adapter), an export
    (RUN_DIR/exports/step-N: merged/ or adapter/) or a model directory. The tokenizer can pad."""
    model, tokenizer = _load(path, device)
    ensure_pad_token(tokenizer)  # prompts are left-padded in batches; pad positions are never attended to
    return model, tokenizer


def _load(path: Path, device: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    layout = RunLayout(path)
    outputs = layout.final if layout.final.is_dir() else path
    merged, adapter = outputs / "merged", outputs / "adapter"
    if (path / "adapter_config.json").exists():  # an adapter folder itself (final/adapter, exports/step-N/adapter)
        merged, adapter = path / "merged", path
    if (merged / "config.json").exists():
        model_dir = merged
    elif (adapter / "adapter_config.json").exists():
        _refuse_a_non_generative_adapter(adapter)
        return _adapter_model(adapter, device), AutoTokenizer.from_pretrained(str(adapter))
    elif (path / "config.json").exists():
        model_dir = path
    else:
        raise TrainerInputError(_no_model_here(path, layout))
    _refuse_a_non_generative_model(model_dir)
    return AutoModelForCausalLM.from_pretrained(str(model_dir)).to(device), AutoTokenizer.from_pretrained(
        str(model_dir)
    )


def _adapter_model(adapter: Path, device: str) -> Any:
    """The base named by the adapter with the adapter on top. A QLoRA adapter was trained over the
    4-bit base, so that base is loaded 4-bit again, quantized as the run did (its export.json says
    how): over the full-precision base it computed a model nobody trained (logits off by ~1.4 on
    the bundled model)."""
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    quantization = _qlora_quantization(adapter.parent / "export.json")
    if quantization is None:
        return AutoPeftModelForCausalLM.from_pretrained(str(adapter)).to(device)
    from trainer.config import MethodConfig
    from trainer.model_builder import quantization_config, resolve_dtype, use_exact_cpu_4bit_kernels

    method = MethodConfig.model_validate({"type": "qlora", "quantization": quantization})
    dtype = resolve_dtype("auto", device)
    base_name = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = AutoModelForCausalLM.from_pretrained(
        base_name, quantization_config=quantization_config(method, dtype), dtype=dtype, device_map={"": device}
    )
    use_exact_cpu_4bit_kernels(base)  # the kernels training used (see the helper)
    return PeftModel.from_pretrained(base, str(adapter))


def _qlora_quantization(export_info: Path) -> dict[str, Any] | None:
    """The quantization settings of a QLoRA export (its defaults for an export made before they
    were recorded), or None for any other adapter."""
    try:
        info = json.loads(export_info.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("method") != "qlora":
        return None
    return info.get("quantization") or {}


def _export_of(export: Path, checkpoint: Path) -> bool:
    """Whether `export` holds `checkpoint`'s step, by its export.json (trial 62b: an export of
    step 8 named step-4 was offered for checkpoint 4)."""
    try:
        info = json.loads((export / "export.json").read_text())
        manifest = json.loads((checkpoint / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and isinstance(manifest, dict) and info.get("step") == manifest.get("step")


def _no_model_here(path: Path, layout: RunLayout) -> str:
    """What to pass instead: a checkpoint is exported from its run directory, a run is exported."""
    if path.is_file() and path.name == "latest" and path.parent.name == "checkpoints":
        path = path.parent / path.read_text().strip()  # the pointer (trial 62c): said of the checkpoint it names
    if not path.exists():  # e.g. a checkpoint retention has deleted since (trial 38a)
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        return f"{path} does not exist (the nearest folder that does: {parent})"
    if (path / "manifest.json").is_file() and path.parent.name == "checkpoints":
        run_dir = path.parent.parent
        export = RunLayout(run_dir).exports / path.name
        if _export_of(export, path):
            return f"{path} is a checkpoint, not a model; it was exported to {export}: pass that directory"
        return (
            f"{path} is a checkpoint, not a model: `ftl export {quote(str(run_dir))} --checkpoint {quote(str(path))}` writes it to "
            f"{RunLayout(run_dir).exports}/{path.name}; pass that directory"
        )
    if not (path / "config.yaml").is_file():
        return f"{path}: not a model directory, an adapter folder, an export or a run directory (no config.json)"
    exported = sorted(
        (p for p in layout.exports.glob("step-*") if p.is_dir() and p.name[5:].isdigit()), key=lambda p: int(p.name[5:])
    )
    if exported:  # a stopped run exported before: name what is there
        return (
            f"{path}: no final/merged or final/adapter (the run has not finished); its latest export is "
            f"{exported[-1]}: pass that directory (or `ftl export {quote(str(path))}` for its latest checkpoint, its best "
            "one with early stopping)"
        )
    if not committed_checkpoints(path):  # export would only say "no valid checkpoint" (trial 38c)
        return (
            f"{path}: no model yet: the run has not finished and saved no checkpoint (`ftl runs {quote(str(path.parent))}` says "
            "whether it failed and why); train it (`ftl train` with its config resumes or starts it) first"
        )
    return (
        f"{path}: no final/merged or final/adapter (has the run finished? `ftl export {quote(str(path))}` "
        f"writes its latest checkpoint to {layout.exports}/step-N; pass that directory)"
    )


# Architectures that write text token by token (transformers' naming); a classifier or tagger
# loaded as one would get a made-up LM head and print noise.
GENERATIVE_HEADS = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
# How to use what is not a generator instead: transformers' pipeline task per head.
PIPELINE_TASKS = {
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "ForImageClassification": "image-classification",
}
PEFT_TASKS = {"SEQ_CLS": "ForSequenceClassification", "TOKEN_CLS": "ForTokenClassification"}


def _refuse_a_non_generative_model(model_dir: Path) -> None:
    try:
        architectures = json.loads((model_dir / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return  # transformers reports an unreadable config itself
    if architectures and not any(str(name).endswith(GENERATIVE_HEADS) for name in architectures):
        raise TrainerInputError(_not_a_generator(model_dir, str(architectures[0])))


def _refuse_a_non_generative_adapter(adapter: Path) -> None:
    try:
        settings = json.loads((adapter / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return
    task = settings.get("task_type") if isinstance(settings, dict) else None
    if task in PEFT_TASKS:
        raise TrainerInputError(_not_a_generator(adapter, f"adapter for a *{PEFT_TASKS[task]} model ({task})"))
    base = settings.get("base_model_name_or_path") if isinstance(settings, dict) else None
    if task != "CAUSAL_LM" and isinstance(base, str) and (Path(base) / "config.json").is_file():
        _refuse_a_non_generative_model(Path(base))


def _not_a_generator(where: Path, what: str) -> str:
    task = next((task for head, task in PIPELINE_TASKS.items() if head in what), None)
    use = (
        f'transformers\' pipeline("{task}", model=...) (see docs/transfer-learning.md)'
        if task
        else "the model's own transformers class"
    )
    return (
        f"{where}: a {what}, not a text generator: `ftl generate` writes text with a causal language "
        f"model, and this one would only print noise; to use it, load it with {use}"
    )


def generate_reply(
    model: Any, tokenizer: Any, prompt: str, *, raw: bool, max_new_tokens: int, device: str, **sampling: Any
) -> str:
    ids = prompt_ids(tokenizer, prompt, raw=raw)
    return generate_texts(model, tokenizer, [ids], max_new_tokens, 1, device, **sampling)[0]


def prompt_ids(tokenizer: Any, prompt: str, *, raw: bool, system: str | None = None) -> list[int]:
    """A user message as the model sees it: in the chat template (when the tokenizer has one),
    or as-is with --raw (as training renders a completion-format prompt)."""
    if raw or not tokenizer.chat_template:
        return list(tokenizer(prompt)["input_ids"])
    return conversation_ids(tokenizer, [{"role": "user", "content": prompt}], system=system)


def conversation_ids(tokenizer: Any, messages: list[dict[str, str]], *, system: str | None = None) -> list[int]:
    """A conversation rendered with the chat template, ending where the assistant's reply starts."""
    if not tokenizer.chat_template:
        raise TrainerInputError(
            "the tokenizer has no chat template, so a conversation (--chat, or an input row of messages) cannot be "
            "rendered; give plain text prompts instead (--prompt TEXT, or --input rows with a 'prompt' string), "
            "which this model continues as they are"
        )
    if system is not None:
        messages = [{"role": "system", "content": system}, *messages]
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except TemplateError as exc:  # a template's raise_exception(), e.g. "Only user and assistant roles"
        hint = "; leave out --system (this template takes no system message)" if system is not None else ""
        raise TrainerInputError(f"the model's chat template refuses this conversation: {exc}{hint}") from None
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
