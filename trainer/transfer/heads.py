"""Task heads. `sequence_classification`: transformers' *ForSequenceClassification on a causal-LM
or encoder checkpoint (the backbone loads the pretrained weights, the head of num_labels is new;
a pretrained head of another size is replaced). A decoder's `score` head reads the last
non-padding token; an encoder pools the way its own class does (BERT: the pooler on [CLS]). Loss
is cross-entropy per example; evaluation adds accuracy and macro-F1. The export is a plain
*ForSequenceClassification folder (or a PEFT SEQ_CLS adapter that saves the head with it).

`token_classification`: transformers' AutoModelForTokenClassification (a new head of num_labels on
every token's hidden state), trained and scored on the first sub-token of each word
(trainer/data/word_tags.py); evaluation adds token accuracy and, for BIO tags, entity-level
precision/recall/F1 (trainer/transfer/entity_metrics.py). Export: a *ForTokenClassification folder
(or a PEFT TOKEN_CLS adapter with the head)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from trainer.config import ModelConfig
from trainer.data.batches import IGNORE_INDEX, RowDataset, make_batch
from trainer.data.prepare import EvalSet
from trainer.distributed import all_reduce_sum
from trainer.errors import TrainerInputError
from trainer.evaluate import lockstep_batches
from trainer.loss import forward_logits
from trainer.strategies.base import Strategy
from trainer.transfer.config import HeadConfig
from trainer.transfer.entity_metrics import EntityCounts
from trainer.transfer.model_parts import HEAD, model_parts

log = logging.getLogger(__name__)

# transformers' Auto class and PEFT's task type of each head type.
AUTO_MODEL_CLASSES = {
    "causal_lm": "AutoModelForCausalLM",
    "sequence_classification": "AutoModelForSequenceClassification",
    "token_classification": "AutoModelForTokenClassification",
    "image_classification": "AutoModelForImageClassification",
}
PEFT_TASK_TYPES = {
    "causal_lm": "CAUSAL_LM",
    "sequence_classification": "SEQ_CLS",
    "token_classification": "TOKEN_CLS",
}


def auto_model_class(head: HeadConfig) -> Any:
    import transformers

    return getattr(transformers, AUTO_MODEL_CLASSES[head.type])


def head_load_kwargs(head: HeadConfig, pad_token_id: int | None, model: ModelConfig | None = None) -> dict[str, Any]:
    """from_pretrained keyword arguments that give the model its task head. `model`: where the
    checkpoint is, needed (to load its config) when transfer.head.dropout is set."""
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
    kwargs = {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
        "pad_token_id": pad_token_id,
        # A checkpoint that already has a classification head for another label set: start a new one.
        "ignore_mismatched_sizes": True,
    }
    if head.dropout is not None and model is not None:
        # Not every model config has the attribute (Llama's does not; its token-classification head
        # still reads it), and from_pretrained passes unknown keywords to the model's constructor,
        # so the value goes onto a loaded config.
        from transformers import AutoConfig

        mismatched = kwargs.pop("ignore_mismatched_sizes")  # a from_pretrained argument, not a config field
        config = AutoConfig.from_pretrained(
            model.path, revision=model.revision, trust_remote_code=model.trust_remote_code, **kwargs
        )
        config.classifier_dropout = head.dropout
        return {"config": config, "ignore_mismatched_sizes": mismatched}
    return kwargs


def check_new_head(model: torch.nn.Module, loading_info: dict[str, Any]) -> None:
    """Log which head weights are new; refuse a checkpoint whose body does not fit its own config
    (ignore_mismatched_sizes would silently re-initialise it)."""
    parts = model_parts(model).parts
    mismatched = sorted(loading_info.get("mismatched_keys") or [])
    body = [key[0] for key in mismatched if parts.get(key[0], None) is None or parts[key[0]].kind != HEAD]
    if body:
        raise TrainerInputError(
            f"model.path: the checkpoint's weights do not fit the model outside the task head ({', '.join(body[:5])}); "
            "check that model.path holds a complete checkpoint of the architecture its config.json names"
        )
    log.info("%s", new_head_message(sorted(loading_info.get("missing_keys") or []), mismatched))


def new_head_message(missing: list[str], mismatched: list[tuple[str, Any, Any]]) -> str:
    """One line: the head weights created for this task (absent from the checkpoint, or replaced
    because the pretrained head was for another number of labels)."""
    clauses = []
    if missing:
        clauses.append(f"new (not in the checkpoint): {', '.join(missing)}")
    if mismatched:
        replaced = ", ".join(f"{name} {_shape(old)} -> {_shape(new)}" for name, old, new in mismatched)
        clauses.append(f"replaced (pretrained head of another size): {replaced}")
    return "task head: " + ("; ".join(clauses) or "every weight loaded from the checkpoint")


def _shape(shape: Any) -> str:
    return "x".join(str(n) for n in shape)


def peft_task_type(head: HeadConfig) -> str | None:
    """PEFT has no image-classification task type: none, and the head saved whole (head_modules_to_save)."""
    return PEFT_TASK_TYPES.get(head.type)


def _scored_batches(
    model: torch.nn.Module, eval_set: EvalSet, batch_size: int, pad_id: int, strategy: Strategy, max_samples: int | None
) -> Any:
    """(batch, logits on the CPU) of this rank's share of the eval set, in eval mode. Every rank
    runs the same number of forwards (sharded strategies need it); the padding ones are not yielded."""
    count = min(len(eval_set.examples), max_samples or len(eval_set.examples))
    rows = RowDataset(eval_set.examples, [[i] for i in range(count)], packed=False)
    was_training = model.training
    model.eval()
    for indices in lockstep_batches(
        count, batch_size, strategy.rank, strategy.world_size, strategy.forward_is_collective
    ):
        batch = make_batch(rows, indices or [0], pad_id)
        logits = forward_logits(model, {k: v.to(strategy.device) for k, v in batch.items()})
        if indices is not None:
            yield batch, logits.float().cpu()
    model.train(was_training)


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
    confusion = torch.zeros(num_labels, num_labels, dtype=torch.float64)  # [true, predicted]
    for batch, logits in _scored_batches(model, eval_set, batch_size, pad_id, strategy, max_samples):
        for truth, guess in zip(batch["class_labels"].tolist(), logits.argmax(-1).tolist()):
            confusion[truth, guess] += 1
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


@torch.no_grad()
def token_classification_scores(
    model: torch.nn.Module,
    eval_set: EvalSet,
    batch_size: int,
    pad_id: int,
    strategy: Strategy,
    max_samples: int | None,
    head: HeadConfig,
) -> dict[str, float]:
    """token_accuracy (over scored words) and, for BIO tags, entity_precision / entity_recall /
    entity_f1 over the eval set (all ranks' counts summed before dividing)."""
    names = head.label_names
    counts = EntityCounts()
    for batch, logits in _scored_batches(model, eval_set, batch_size, pad_id, strategy, max_samples):
        tags, predicted = batch["token_labels"], logits.argmax(-1)
        for row_tags, row_predicted in zip(tags, predicted):
            scored = row_tags != IGNORE_INDEX  # the first sub-token of each word
            counts.add(
                [names[i] for i in row_tags[scored].tolist()], [names[i] for i in row_predicted[scored].tolist()]
            )
    counts = EntityCounts.from_list(all_reduce_sum(counts.as_list(), strategy.device))
    scores = {"token_accuracy": counts.token_accuracy()}
    if head.tags_entities:
        scores.update(counts.entity_scores())
    return scores
