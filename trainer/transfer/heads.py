"""Task heads. `sequence_classification`: transformers' *ForSequenceClassification on the causal-LM
checkpoint (the backbone loads the pretrained weights, the `score` head of num_labels is new),
scoring the last non-padding token. Loss is cross-entropy per example; evaluation adds accuracy
and macro-F1. The export is a plain *ForSequenceClassification folder (or a PEFT SEQ_CLS adapter
that saves the head with it)."""

from __future__ import annotations

from typing import Any

import torch

from trainer.data.batches import RowDataset, make_batch
from trainer.data.prepare import EvalSet
from trainer.distributed import all_reduce_sum
from trainer.evaluate import lockstep_batches
from trainer.loss import forward_logits
from trainer.strategies.base import Strategy
from trainer.transfer.config import HeadConfig


def auto_model_class(head: HeadConfig) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForImageClassification, AutoModelForSequenceClassification

    if head.type == "image_classification":
        return AutoModelForImageClassification
    return AutoModelForSequenceClassification if head.is_classification else AutoModelForCausalLM


def head_load_kwargs(head: HeadConfig, pad_token_id: int | None) -> dict[str, Any]:
    """from_pretrained keyword arguments that give the model its task head."""
    if not head.is_classification:
        return {}
    names = head.label_names
    if head.type == "image_classification":
        # A pretrained classifier for other classes (another size) is dropped and a new one created;
        # transformers logs the replaced weights with their shapes.
        return {
            "num_labels": len(names),
            "id2label": dict(enumerate(names)),
            "label2id": {n: i for i, n in enumerate(names)},
            "ignore_mismatched_sizes": True,
        }
    # The head pools the last token that is not padding, so the config must know the pad id.
    return {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
        "pad_token_id": pad_token_id,
    }


def peft_task_type(head: HeadConfig) -> str | None:
    """PEFT has no image-classification task type: no task type, and the head saved whole (head_modules_to_save)."""
    if head.type == "image_classification":
        return None
    return "SEQ_CLS" if head.is_classification else "CAUSAL_LM"


def head_modules_to_save(head: HeadConfig, model: torch.nn.Module) -> list[str]:
    """Modules an adapter method trains in full and saves with the adapter: the new image classifier."""
    if head.type != "image_classification":
        return []
    # transformers' image classifiers (ViT, ResNet, ConvNeXt, DINOv2, Swin, ...) name their head `classifier`.
    return ["classifier"] if isinstance(getattr(model, "classifier", None), torch.nn.Module) else []


@torch.no_grad()
def classification_scores(
    model: torch.nn.Module,
    eval_set: EvalSet,
    batch_size: int,
    pad_id: int,
    strategy: Strategy,
    max_samples: int | None,
    num_labels: int,
) -> dict[str, float]:
    """Accuracy and macro-F1 over the eval set (all ranks' shares combined)."""
    count = min(len(eval_set.examples), max_samples or len(eval_set.examples))
    rows = RowDataset(eval_set.examples, [[i] for i in range(count)], packed=False)
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_labels, num_labels, dtype=torch.float64)  # [true, predicted]
    for indices in lockstep_batches(
        count, batch_size, strategy.rank, strategy.world_size, strategy.forward_is_collective
    ):
        batch = make_batch(rows, indices or [0], pad_id)
        predicted = forward_logits(model, {k: v.to(strategy.device) for k, v in batch.items()}).argmax(-1).cpu()
        if indices is not None:
            for truth, guess in zip(batch["class_labels"].tolist(), predicted.tolist()):
                confusion[truth, guess] += 1
    model.train(was_training)
    confusion = torch.tensor(all_reduce_sum(confusion.flatten().tolist(), strategy.device), dtype=torch.float64).view(
        num_labels, num_labels
    )
    return scores_from_confusion(confusion)


def scores_from_confusion(confusion: torch.Tensor) -> dict[str, float]:
    """Accuracy and macro-F1 (F1 averaged over the classes present in the truth or the predictions)."""
    total = float(confusion.sum())
    hits = confusion.diag()
    predicted, actual = confusion.sum(0), confusion.sum(1)
    present = (predicted + actual) > 0
    f1 = 2 * hits / (predicted + actual).clamp(min=1)
    return {
        "accuracy": float(hits.sum()) / total if total else float("nan"),
        "macro_f1": float(f1[present].mean()) if bool(present.any()) else float("nan"),
    }
