"""transfer.head.class_weights: resolved from the training rows (balanced) or given per label, the
loss as the weighted mean of the examples' losses over the global batch, and the settings refused
where they cannot apply."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainer.loss import loss_sum, target_count
from trainer.transfer.class_weights import class_weights_note, resolved_class_weights
from trainer.transfer.config import HeadConfig

LABELS = ["a", "b", "c"]


def _head(weights: object) -> HeadConfig:
    return HeadConfig.model_validate({"type": "sequence_classification", "labels": LABELS, "class_weights": weights})


def test_balanced_weights_follow_sklearns_rule_and_a_list_is_taken_as_given() -> None:
    classes = np.array([0] * 50 + [1] * 50 + [2] * 12)
    weights = resolved_class_weights(_head("balanced"), classes)
    assert weights is not None
    np.testing.assert_allclose(weights, [112 / (3 * 50), 112 / (3 * 50), 112 / (3 * 12)], rtol=1e-6)
    # Every class then weighs the same in total: rows x weight is equal across classes.
    np.testing.assert_allclose(np.bincount(classes) * weights, [112 / 3] * 3, rtol=1e-6)
    missing = resolved_class_weights(_head("balanced"), np.array([0, 0, 1]))
    assert missing is not None and missing[2] == 1.0  # a class with no row: weight 1, nothing to weigh
    given = resolved_class_weights(_head([1.0, 2.0, 0.5]), classes)
    assert given is not None and given.tolist() == [1.0, 2.0, 0.5]
    by_name = resolved_class_weights(_head({"c ": 0.5, "b": 2.0}), classes)  # a label left out weighs 1
    assert by_name is not None and by_name.tolist() == [1.0, 2.0, 0.5]
    assert resolved_class_weights(_head(None), classes) is None
    # A number as a key names the label written as that number (`labels: [1, 2, 3]` are "1", "2", "3").
    ratings = HeadConfig.model_validate(
        {"type": "sequence_classification", "labels": [1, 2, 3], "class_weights": {2: 5, "3": 2}}
    )
    assert ratings.class_weights == {"2": 5.0, "3": 2.0}
    rated = resolved_class_weights(ratings, classes)
    assert rated is not None and rated.tolist() == [1.0, 5.0, 2.0]
    assert class_weights_note(_head("balanced"), weights).startswith(
        "class weights (balanced, from the training rows): a: 0.747, b: 0.747, c: 3.11"
    )


def test_a_decimal_key_names_the_decimal_label() -> None:
    """Trial 49a: `{1.5: 4.0}` with labels ["0.5", "1.0", "1.5"] was "no label name"."""
    head = HeadConfig.model_validate(
        {"type": "sequence_classification", "labels": ["0.5", "1.0", "1.5"], "class_weights": {1.5: 4.0}}
    )
    assert head.class_weights == {"1.5": 4.0}


@pytest.mark.parametrize(
    "head,said",
    [
        ({"type": "sequence_classification", "labels": LABELS, "class_weights": [1, 2]}, "has 2 weights for 3 labels"),
        ({"type": "sequence_classification", "labels": LABELS, "class_weights": [1, 0, 2]}, "0 is not a weight from"),
        # Trial 41a: float32 made 1e39 inf (a NaN loss blamed on the learning rate) and 1e-46 zero.
        ({"type": "sequence_classification", "labels": LABELS, "class_weights": [1e39, 1, 1]}, "scale them into"),
        ({"type": "sequence_classification", "labels": LABELS, "class_weights": [1e-46, 1, 1]}, "is not a weight from"),
        ({"type": "sequence_classification", "labels": LABELS, "class_weights": [True, 1, 1]}, "True is not a number"),
        ({"type": "sequence_classification", "labels": LABELS, "class_weights": ["x", 1, 1]}, "'x' is not a number"),
        ({"type": "sequence_classification", "labels": LABELS, "class_weights": "Balanced"}, "did you mean 'balanced'"),
        ({"type": "sequence_classification", "labels": LABELS, "class_weights": {"bb": 2}}, "did you mean 'b'"),
        ({"type": "sequence_classification", "labels": LABELS, "class_weights": {}}, "weighs no class; leave it out"),
        # Trial 47b: rows may give a label by id; these keys are names, and the id's name is said.
        ({"type": "sequence_classification", "labels": LABELS, "class_weights": {1: 3}}, "label id 1 is 'b': the keys"),
        ({"type": "sequence_classification", "labels": LABELS, "class_weights": {True: 2}}, "the key True is no label"),
        ({"type": "token_classification", "labels": ["O", "B-X"], "class_weights": "balanced"}, "applies to sequence"),
        ({"type": "causal_lm", "class_weights": "balanced"}, "applies to sequence_classification"),
    ],
)
def test_class_weights_where_they_cannot_apply_are_refused(head: dict, said: str) -> None:
    with pytest.raises(ValueError, match=said):
        HeadConfig.model_validate(head)


class _Logits(torch.nn.Module):
    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, **_: object) -> object:
        return type("Out", (), {"logits": self.logits})()


def test_the_weighted_loss_over_split_batches_is_the_weighted_mean_of_the_whole() -> None:
    """Summed per micro-batch and divided by the global batch's weight sum (as the loop does): the
    same as torch's weighted mean cross-entropy over the whole batch, however it is split."""
    torch.manual_seed(0)
    logits, labels = torch.randn(8, 3), torch.tensor([0, 1, 2, 2, 1, 0, 2, 2])
    weights = torch.tensor([0.5, 1.0, 3.0])
    expected = F.cross_entropy(logits, labels, weight=weights)
    total, count = torch.tensor(0.0), 0.0
    for part in (slice(0, 3), slice(3, 8)):
        batch = {"input_ids": torch.zeros(1), "class_labels": labels[part], "example_weights": weights[labels[part]]}
        summed, _ = loss_sum(_Logits(logits[part]), batch)
        total, count = total + summed, count + target_count(batch)
    assert torch.allclose(total / count, expected)
    plain = {"input_ids": torch.zeros(1), "class_labels": labels}
    unweighted, _ = loss_sum(_Logits(logits), plain)
    assert torch.allclose(unweighted / target_count(plain), F.cross_entropy(logits, labels))


def test_validate_data_says_the_weights_training_would_use() -> None:
    import subprocess

    from tests.conftest import FTL, REPO

    out = subprocess.run(
        [*FTL, "validate", "configs/examples/classification.yaml", "--data", "transfer.head.class_weights=[1,2,4]"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "class weights (transfer.head.class_weights): country: 1, person: 2, creature: 4" in out.stdout


def test_validate_data_says_the_balanced_weights_of_the_rows_left_after_a_validation_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trial 62d: validate --data said the balanced weights of the whole file (82 rows), training
    those of the 66 left after data.validation_split held some out."""
    import launcher.cli
    from launcher.config_loader import load_config
    from tests.conftest import REPO
    from trainer.data.prepare import prepare_data
    from trainer.model_builder import load_tokenizer

    overrides = [
        "transfer.head.class_weights=balanced",
        "data.validation=null",
        "data.validation_split=0.3",
        f"data.cache_dir={tmp_path}",
        f"output.dir={tmp_path / 'run'}",
    ]
    config = str(REPO / "configs/examples/classification.yaml")
    assert launcher.cli.main(["validate", config, "--data", *overrides]) == 0
    [said] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("class weights")]
    cfg = load_config(config, overrides)
    head = cfg.transfer.head
    prepared = prepare_data(
        cfg.data,
        load_tokenizer(cfg.model),
        seed=cfg.training.seed,
        micro_batch_size=cfg.training.micro_batch_size,
        want_prompts=False,
        max_prompts=None,
        label_names=head.label_names,
    )
    weights = resolved_class_weights(head, prepared.train.examples.classes)
    assert weights is not None and said == class_weights_note(head, weights), said


def test_a_label_written_without_a_space_before_its_weight_is_said_so() -> None:
    """Trial 62d: `class_weights={rare:4}` (YAML: one key `rare:4`, no value) said "None is not a number"."""
    with pytest.raises(ValueError, match="a label with no weight; write each as `name: weight`, with a space"):
        _head({"country:4": None})
