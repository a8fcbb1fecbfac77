"""ftl's DPO losses against TRL's DPOTrainer (a dev dependency) on the same batch of pairs.

TRL's own loss code runs: a DPOTrainer is built on the tiny random model (policy: perturbed weights, so
the loss is not ln 2; reference: the unperturbed model) and `trainer.compute_loss` scores a batch in
TRL's collated format. ftl scores the same token ids and masks through PreferenceObjective with the
model's own logits. Two documented differences of TRL 1.16 are applied, not hidden:
- TRL's `sigmoid` loss ignores `label_smoothing` (only its `robust`, `exo_pair` and `aot*` losses use it);
  ftl's sigmoid with label smoothing is cDPO, (1 - e) * sigmoid loss(h) + e * sigmoid loss(-h), and
  TRL's sigmoid loss of -h is its loss on the batch with chosen and rejected swapped.
- TRL's `ipo` divides each log-ratio by its completion's token count; ftl's `ipo` is the paper's
  sequence-level form, so TRL's equals ftl's IPO formula applied to per-token mean log-probs.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.unit.test_preference import PAIRS
from trainer.config import PreferenceConfig
from trainer.data.batches import IGNORE_INDEX
from trainer.data.formats import render_example
from trainer.data.sources import Row
from trainer.preference_loss import PreferenceObjective, dpo_losses, sequence_logps

pytest.importorskip("trl")

# Three pairs of different lengths: plain strings and chat style (the chat pair's prompt is the longest).
ROWS = [*PAIRS, {"prompt": "Q: river of Ondavel?\nA:", "chosen": " The Mirrow.", "rejected": " Kesh."}]


@pytest.fixture(scope="module")
def setup(tiny_model_dir: Path, tokenizer: Any) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    reference = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    policy = copy.deepcopy(reference)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    examples = []
    for row in ROWS:
        ex = render_example(Row("t", row), "preference", tokenizer)
        assert ex.rejected is not None
        start = ex.loss_mask.index(1)  # the responses start where the loss does; the prompt is shared
        assert ex.input_ids[:start] == ex.rejected.input_ids[:start] and ex.rejected.loss_mask.index(1) == start
        examples.append(
            {
                "prompt_ids": ex.input_ids[:start],
                "chosen_ids": ex.input_ids[start:],
                "rejected_ids": ex.rejected.input_ids[start:],
            }
        )
    collate = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)
    swapped = [{**e, "chosen_ids": e["rejected_ids"], "rejected_ids": e["chosen_ids"]} for e in examples]
    return {
        "policy": policy,
        "reference": reference,
        "batch": collate(examples),
        "swapped": collate(swapped),
        "pairs": len(examples),
    }


def _ftl_batch(trl_batch: dict[str, torch.Tensor], pairs: int) -> dict[str, torch.Tensor]:
    """TRL's collated batch in ftl's form: the same ids and mask, labels only on the completion tokens."""
    labels = trl_batch["input_ids"].masked_fill(trl_batch["completion_mask"] == 0, IGNORE_INDEX)
    return {
        "input_ids": trl_batch["input_ids"],
        "attention_mask": trl_batch["attention_mask"],
        "labels": labels,
        "pairs": torch.tensor(pairs),
    }


def _trl_losses(
    setup: dict[str, Any], tmp_path: Path, tokenizer: Any, loss_type: str, beta: float, batches: list[str]
) -> list[float]:
    """TRL's mean loss over the pairs of each of `batches` (keys of `setup`), from DPOTrainer.compute_loss."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=str(tmp_path),
        loss_type=[loss_type],
        beta=beta,
        use_cpu=True,
        report_to="none",
        bf16=False,  # DPOConfig defaults to bf16; float32 as in ftl's computation, for a tight tolerance
    )
    # DPOTrainer requires a train dataset; compute_loss below is given the batch directly.
    dataset = Dataset.from_list([{"prompt": "p", "chosen": " c", "rejected": " r"}])
    # Copies: the trainer patches the models' forward (its fused LM head) and may move them.
    trainer = DPOTrainer(
        model=copy.deepcopy(setup["policy"]),
        ref_model=copy.deepcopy(setup["reference"]),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trainer.model.eval()
    with torch.no_grad():
        return [float(trainer.compute_loss(trainer.model, setup[key])) for key in batches]


# transformers' TrainingArguments warns about the gradient_checkpointing field that DPOConfig sets.
@pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning")
@pytest.mark.parametrize(
    "loss_type,beta,eps", [("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.2), ("ipo", 0.1, 0.0), ("hinge", 0.3, 0.0)]
)
def test_dpo_loss_matches_trl(
    setup: dict[str, Any], tmp_path: Path, tokenizer: Any, loss_type: str, beta: float, eps: float
) -> None:
    settings = PreferenceConfig(loss_type=loss_type, beta=beta, label_smoothing=eps)
    batch, pairs = _ftl_batch(setup["batch"], setup["pairs"]), setup["pairs"]
    policy, reference = setup["policy"], setup["reference"]
    objective = PreferenceObjective("dpo", settings, lambda _model, b: sequence_logps(reference, b))
    with torch.no_grad():
        summed, counted, _ = objective.loss_sum(policy, batch)
    assert counted == pairs
    ftl = float(summed) / pairs
    assert abs(ftl - math.log(2)) > 1e-3  # the policy differs from the reference

    trl = _trl_losses(setup, tmp_path, tokenizer, loss_type, beta, ["batch", "swapped"] if eps else ["batch"])
    if eps:  # cDPO: TRL's sigmoid loss of h and, from the swapped batch, of -h
        assert ftl == pytest.approx((1 - eps) * trl[0] + eps * trl[1], rel=1e-5, abs=1e-6)
    elif loss_type == "ipo":
        # TRL's length-normalised IPO is ftl's formula on per-token mean log-probs ...
        with torch.no_grad():
            mean, ref_mean = sequence_logps(policy, batch, mean=True), sequence_logps(reference, batch, mean=True)
        per_token, _, _ = dpo_losses(mean[:pairs], mean[pairs:], ref_mean[:pairs], ref_mean[pairs:], settings)
        assert float(per_token.mean()) == pytest.approx(trl[0], rel=1e-5, abs=1e-6)
        # ... and differs from ftl's sequence-level IPO (the responses are several tokens long).
        assert abs(ftl - trl[0]) > 1e-2 * abs(trl[0])
    else:
        assert ftl == pytest.approx(trl[0], rel=1e-5, abs=1e-6)
