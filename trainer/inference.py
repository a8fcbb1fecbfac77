"""Load a run's fine-tuned model for a quick look, and generate a reply to one prompt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.errors import TrainerInputError
from trainer.evaluate import generate_texts
from trainer.run_layout import RunLayout


def load_for_inference(path: Path, device: str) -> tuple[Any, Any]:
    """`path` is a run directory (final/merged, else base + final/adapter), an export
    (RUN_DIR/exports/step-N: merged/ or adapter/) or a model directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    layout = RunLayout(path)
    outputs = layout.final if layout.final.is_dir() else path
    merged, adapter = outputs / "merged", outputs / "adapter"
    if (merged / "config.json").exists():
        model_dir = merged
    elif (adapter / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(str(adapter)).to(device)
        return model, AutoTokenizer.from_pretrained(str(adapter))
    elif (path / "config.json").exists():
        model_dir = path
    else:
        raise TrainerInputError(
            f"{path}: no final/merged or final/adapter (has the run finished? `ftl export {path}` "
            f"writes its latest checkpoint to {layout.exports}/step-N; pass that directory)"
        )
    return AutoModelForCausalLM.from_pretrained(str(model_dir)).to(device), AutoTokenizer.from_pretrained(
        str(model_dir)
    )


def generate_reply(
    model: Any, tokenizer: Any, prompt: str, *, raw: bool, max_new_tokens: int, device: str, **sampling: Any
) -> str:
    if raw or not tokenizer.chat_template:
        ids = tokenizer(prompt)["input_ids"]
    else:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return generate_texts(model, tokenizer, [list(ids)], max_new_tokens, 1, device, **sampling)[0]
