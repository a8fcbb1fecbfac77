"""Pieces of the transfer strategies in isolation: mixture sampling, model parts and unfreezing
groups, per-group learning rates, the slanted triangular schedule, classification scores, the
classification row format, and the config rules for combinations that do not make sense."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from launcher.config_loader import load_config
from launcher.errors import ConfigError
from tests.conftest import write_config
from trainer.config import LoraConfig, MethodConfig, TrainingConfig
from trainer.data.formats import render_example
from trainer.data.mixture import MixtureSampler, MixtureSpan
from trainer.data.sources import Row
from trainer.errors import DataError
from trainer.optim import lr_multiplier
from trainer.transfer.config import LearningRatesConfig
from trainer.transfer.controller import TransferController
from trainer.transfer.heads import scores_from_confusion
from trainer.transfer.model_parts import model_parts
from trainer.transfer.param_groups import build_grouped_optimizer
from trainer.transfer.unfreezing import GradualUnfreezer, unfreezing_groups

SPANS = [MixtureSpan("a", 0, 10, 5.0), MixtureSpan("b", 10, 50, 3.0), MixtureSpan("c", 60, 7, 2.0)]


def test_mixture_sampling_follows_weights_and_resumes_by_position() -> None:
    sampler = MixtureSampler(SPANS, seed=3, shuffle=True)
    rows = np.array(sampler.take(0, 20_000))
    source = np.searchsorted([0, 10, 60], rows, side="right") - 1
    shares = np.bincount(source, minlength=3) / len(rows)
    assert shares == pytest.approx([0.5, 0.3, 0.2], abs=0.01)
    # Within a source, rows go through its epochs: every row of the small source equally often.
    counts_c = np.bincount(rows[source == 2] - 60, minlength=7)
    assert counts_c.max() - counts_c.min() <= 1
    # The stream is a function of the position: a resumed sampler continues it exactly.
    assert MixtureSampler(SPANS, seed=3, shuffle=True).take(12_345, 50) == rows[12_345:12_395].tolist()
    assert MixtureSampler(SPANS, seed=4, shuffle=True).take(0, 50) != rows[:50].tolist()


def _tiny_causal_lm(lora: bool = False) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    if lora:
        from trainer.methods import apply_method

        model = apply_method(model, MethodConfig(type="lora", lora=LoraConfig(r=2)), False)
    return model


def test_model_parts_and_unfreezing_groups_top_to_bottom() -> None:
    model = _tiny_causal_lm()
    parts = model_parts(model)
    assert parts.num_blocks == 3
    assert parts.of("lm_head.weight").kind == "head"
    assert parts.of("module.model.embed_tokens.weight").kind == "embeddings"  # DDP prefix is ignored
    assert (
        parts.of("model.layers.2.mlp.up_proj.weight").kind,
        parts.of("model.layers.2.mlp.up_proj.weight").block,
    ) == ("block", 2)
    assert parts.of("model.norm.weight").kind == "other"
    trainable = set(parts.parts)
    groups = unfreezing_groups(parts, trainable, blocks_per_stage=2)
    assert [label for label, _ in groups] == ["head", "blocks 1-2", "block 0", "embeddings"]
    assert "model.norm.weight" in groups[0][1]

    unfreezer = GradualUnfreezer(model, groups, every_steps=3)
    expected_stage = {0: 0, 2: 0, 3: 1, 5: 1, 6: 2, 9: 3, 100: 3}
    for step, stage in expected_stage.items():
        unfreezer.apply(step)
        assert unfreezer.stage == stage
        on = {n for n, p in model.named_parameters() if p.requires_grad}
        assert on == {n for _, names in groups[: stage + 1] for n in names}, step


def test_lora_model_has_no_head_group_and_unfreezes_adapters_top_down() -> None:
    model = _tiny_causal_lm(lora=True)
    parts = model_parts(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    labels = [label for label, _ in unfreezing_groups(parts, trainable, 1)]
    assert labels == ["block 2", "block 1", "block 0"]  # the LM head is not trained by LoRA


def test_each_group_gets_its_configured_rate() -> None:
    model = _tiny_causal_lm(lora=True)
    parts = model_parts(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    rates = LearningRatesConfig(layer_decay=0.5, lora_plus_ratio=8)
    optimizer = build_grouped_optimizer(model, TrainingConfig(learning_rate=1e-3), rates, parts, trainable)
    by_name = {g["name"]: g for g in optimizer.param_groups}
    for block in range(3):
        distance = 3 - block
        assert by_name[f"block.{block}"]["lr"] == pytest.approx(1e-3 * 0.5**distance)
        assert by_name[f"block.{block}.lora_B"]["lr"] == pytest.approx(8 * 1e-3 * 0.5**distance)
        names_b = {id(p) for p in by_name[f"block.{block}.lora_B"]["params"]}
        assert all(
            ("lora_B" in n) == (id(p) in names_b)
            for n, p in model.named_parameters()
            if f"layers.{block}." in n and p.requires_grad
        )
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable)

    full = _tiny_causal_lm()
    parts = model_parts(full)
    optimizer = build_grouped_optimizer(
        full, TrainingConfig(learning_rate=1e-3), LearningRatesConfig(head=5e-3), parts, set(parts.parts)
    )
    rates_by_group = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert rates_by_group == {"head": 5e-3, "pretrained": 1e-3, "pretrained.no_decay": 1e-3}
    assert optimizer.param_groups[0]["name"] == "head"


def test_slanted_triangular_schedule() -> None:
    total, cut, low = 100, 10, 1 / 32
    values = [lr_multiplier(step, total, cut, "slanted_triangular", low) for step in range(total)]
    assert values[0] == pytest.approx(low)
    assert values[cut] == pytest.approx(1.0) and max(values) == values[cut]
    assert values[5] == pytest.approx(low + (1 - low) * 0.5)
    assert all(a < b for a, b in zip(values[:cut], values[1 : cut + 1]))
    assert all(a > b for a, b in zip(values[cut:], values[cut + 1 :]))
    assert values[-1] == pytest.approx(low + (1 - low) / 90)


def test_slanted_triangular_starts_at_ulmfits_ratio_unless_told() -> None:
    """The shared default min_lr_ratio 0 spent the first step at lr 0 (trial 33a)."""
    assert TrainingConfig(lr_scheduler="slanted_triangular").min_lr_ratio == 1 / 32
    assert TrainingConfig(lr_scheduler="slanted_triangular", min_lr_ratio=0.0).min_lr_ratio == 0.0
    assert TrainingConfig(lr_scheduler="cosine").min_lr_ratio == 0.0
    # A config written out and read back (a run's snapshot, a worker's copy) keeps the value.
    written = TrainingConfig(lr_scheduler="slanted_triangular").model_dump(mode="json")
    assert TrainingConfig.model_validate(written).min_lr_ratio == 1 / 32


def test_accuracy_and_macro_f1_from_confusion() -> None:
    # truth rows, predicted columns: class 0: 3 right 1 wrong; class 1: 2 right; class 2: 0 of 1
    confusion = torch.tensor([[3, 1, 0], [0, 2, 0], [1, 0, 0]], dtype=torch.float64)
    scores = scores_from_confusion(confusion)
    assert scores["accuracy"] == pytest.approx(5 / 7)
    f1 = [2 * 3 / (4 + 4), 2 * 2 / (3 + 2), 0.0]
    assert scores["macro_f1"] == pytest.approx(sum(f1) / 3)


def test_classification_rows(tokenizer: object) -> None:
    names = ["country", "person"]
    example = render_example(
        Row("f.jsonl line 1", {"text": "The capital is Zirra.", "label": "person"}), "classification", tokenizer, names
    )
    assert example.class_label == 1 and example.input_ids[-1] != tokenizer.eos_token_id  # type: ignore[attr-defined]
    assert render_example(Row("x", {"text": "a b", "label": 0}), "classification", tokenizer, names).class_label == 0
    assert render_example(Row("x", {"text": "a b", "label": "1"}), "classification", tokenizer, names).class_label == 1
    with pytest.raises(DataError, match=r"f.jsonl line 7: label 'city' is not one of transfer.head.labels"):
        render_example(Row("f.jsonl line 7", {"text": "a", "label": "city"}), "classification", tokenizer, names)
    with pytest.raises(DataError, match="missing field 'label'"):
        render_example(Row("f.jsonl line 8", {"text": "a"}), "classification", tokenizer, names)


def test_a_label_that_is_a_slip_of_a_name_gets_a_did_you_mean(tokenizer: object) -> None:
    """A case or spelling slip ('Positive', 'positve') named the choices only (trial 33a)."""
    names = ["positive", "negative", "neutral"]

    def refusal(value: str) -> str:
        with pytest.raises(DataError) as refused:
            render_example(Row("f.jsonl line 3", {"text": "a", "label": value}), "classification", tokenizer, names)
        return str(refused.value)

    assert "label 'positve' is not one of" in refusal("positve") and "; did you mean 'positive'?" in refusal("positve")
    assert "; did you mean 'positive'?" in refusal("Positive")
    assert "did you mean" not in refusal("city")


def test_a_label_in_another_unicode_form_or_with_spaces_around_is_the_same_label(tokenizer: object) -> None:
    """An NFD 'météo' (macOS tools write it) was refused with "did you mean 'météo'?" (trial 39b)."""
    import unicodedata

    from trainer.data.word_tags import word_tag_ids

    names = ["good food", unicodedata.normalize("NFC", "météo / weather"), "job, work"]
    decomposed = unicodedata.normalize("NFD", names[1])
    assert decomposed != names[1]

    def label(value: object) -> int:
        return render_example(Row("x", {"text": "a b", "label": value}), "classification", tokenizer, names).class_label

    assert [label(decomposed), label("good food "), label(" job, work")] == [1, 0, 2]
    # The other way round too: the config's names decomposed, the data's composed.
    nfd_names = [unicodedata.normalize("NFD", name) for name in names]
    assert (
        render_example(Row("x", {"text": "a", "label": names[1]}), "classification", tokenizer, nfd_names).class_label
        == 1
    )
    assert word_tag_ids(["Paris"], [unicodedata.normalize("NFD", "B-Lieu-é")], ["O", "B-Lieu-é"])[1] == [1]
    # A slip of such a label gets its did-you-mean in any form (trial 40a).
    with pytest.raises(DataError, match="did you mean 'météo / weather'"):
        label(unicodedata.normalize("NFD", "météo / wether "))


def test_numeric_label_names_read_a_number_as_the_name_in_jsonl_and_csv_alike(tokenizer: object) -> None:
    """Ratings 1-3: JSON 1 was read as the id 1 (the name "2") while the CSV cell "1" was the name
    "1", so a JSONL data set trained on labels shifted by one and 3 was refused."""
    ratings = ["1", "2", "3"]

    def label(value: object, names: list[str] = ratings) -> int:
        return render_example(Row("x", {"text": "a b", "label": value}), "classification", tokenizer, names).class_label

    assert [label(1), label(2), label(3), label("1"), label("3")] == [0, 1, 2, 0, 2]
    with pytest.raises(DataError, match=r"label 0 is not one of .* a number is read as a name, never as an id"):
        label(0)
    with pytest.raises(DataError) as bogus:  # the numeric-names rule is said for a number only (trial 51a)
        label("bogus")
    assert "is not one of transfer.head.labels ['1', '2', '3']" in str(bogus.value)
    assert "never as an id" not in str(bogus.value)
    assert [label(0, ["country", "person"]), label("1", ["country", "person"])] == [0, 1]  # ids still work
    # Decimal ratings (trial 48b: a JSON 1.0 was "not one of ['0.5', '1.0']"), and a 1.0 for the name "1".
    halves = ["0.5", "1.0"]
    assert [label(0.5, halves), label(1.0, halves), label(1, halves), label("1.0", halves)] == [0, 1, 1, 1]
    assert label(1.0) == 0 and label("1.0") == 0  # a CSV cell "1.0" as the JSON 1.0 (trial 49a)
    with pytest.raises(DataError, match="label 1.5 is not one of"):
        label(1.5, halves)
    with pytest.raises(DataError, match="label 1.0 is not one of"):
        label(1.0, ["country", "person"])  # a float is no id
    # JSON true/false is the label named so (trial 49a: "not one of ['true', 'false']"), never an id.
    assert [label(True, ["true", "false"]), label(False, ["True", "False"])] == [0, 1]
    with pytest.raises(DataError, match="label true is not one of"):  # as JSON writes it (49a: True)
        label(True, ["yes", "no"])
    tags = ["0", "1"]  # NER with numeric tags: the same rule
    example = render_example(
        Row("x", {"tokens": ["a", "b"], "tags": [1, "0"]}), "token_classification", tokenizer, tags
    )
    assert [t for t in example.token_labels if t != -100] == [1, 0]


def test_label_numbers_in_the_config_are_names() -> None:
    from trainer.transfer.config import HeadConfig

    head = HeadConfig(type="sequence_classification", labels=[1, 2, 3])
    assert head.labels == ["1", "2", "3"]


KINDS = {"train": "assets/data/fictional-kinds/train.jsonl", "format": "classification", "packing": False}
CLASSIFY = {"head": {"type": "sequence_classification", "labels": ["country", "person", "creature"]}}
NO_GEN = {"generation": {"enabled": False}}


@pytest.mark.parametrize(
    "sections,message",
    [
        ({"transfer": {"freeze": {"all_but_head": True}}}, "use method.type=full with it"),
        (
            {
                "transfer": {"gradual_unfreezing": {"enabled": True}, "freeze": {"all_but_head": True}},
                "method": {"type": "full"},
            },
            "choose one",
        ),
        (
            {"transfer": {"learning_rates": {"lora_plus_ratio": 16}}, "method": {"type": "full"}},
            "needs an adapter method",
        ),
        (
            {
                "transfer": {"gradual_unfreezing": {"enabled": True}},
                "parallel": {"strategy": "deepspeed", "zero_stage": 3},
                "cluster": {"workers": 2},
            },
            "a block unfrozen later would never train; use parallel.strategy=fsdp",
        ),
        (
            {
                "transfer": {"gradual_unfreezing": {"enabled": True}},
                "method": {"type": "full"},
                "training": {"optimizer_in_backward": True, "max_grad_norm": None, "gradient_accumulation_steps": 1},
                "parallel": {"strategy": "fsdp"},
                "cluster": {"workers": 2},
            },
            "would never step; set training.optimizer_in_backward=false (keeps the schedule), or freeze statically",
        ),
        ({"transfer": CLASSIFY, "data": {**KINDS, "packing": True}, "eval": NO_GEN}, "set data.packing=false"),
        ({"transfer": CLASSIFY, "eval": NO_GEN}, "set data.format=classification"),
        ({"data": KINDS, "eval": NO_GEN}, "set transfer.head.type=sequence_classification"),
        (
            {"transfer": {"head": {"type": "sequence_classification"}}, "data": KINDS, "eval": NO_GEN},
            "needs transfer.head.labels",
        ),
        ({"transfer": {"early_stopping": {"enabled": True}}}, "set eval.every_steps"),
        (
            {"transfer": {"freeze": {"patterns": [r"layers\.0\.", "(unclosed"]}}},
            "transfer.freeze.patterns[1]='(unclosed' is not a valid regular expression (missing ), unterminated",
        ),
        (
            {
                "transfer": {**CLASSIFY, "head": {**CLASSIFY["head"], "labels": ["country"]}},
                "data": KINDS,
                "eval": NO_GEN,
            },
            "has one class; a classifier needs at least 2",
        ),
        (
            {
                "transfer": {"freeze": {"all_but_head": True}, "learning_rates": {"layer_decay": 0.5}},
                "method": {"type": "full"},
            },
            "which transfer.freeze.all_but_head keeps frozen (only the head trains)",
        ),
        (
            {"transfer": {"early_stopping": {"enabled": True, "split": "tset"}}, "eval": {"every_steps": 5}},
            "is not an evaluation set of this run (have: validation)",
        ),
        (  # a typo of a set the run has (trial 53b)
            {"transfer": {"early_stopping": {"enabled": True, "split": "valdation"}}, "eval": {"every_steps": 5}},
            "is not an evaluation set of this run (have: validation); did you mean 'validation'?",
        ),
        (
            {
                "transfer": {**CLASSIFY, "head": {**CLASSIFY["head"], "labels": ["country", " ", "creature"]}},
                "data": KINDS,
            },
            # Located at the entry's own line (it was transfer.head's).
            "transfer.head.labels[1] (line 35): is an empty name",
        ),
        (
            {
                "transfer": {**CLASSIFY, "head": {**CLASSIFY["head"], "labels": ["country", "country ", "x"]}},
                "data": KINDS,
            },
            "transfer.head.labels has two names that read as 'country'",
        ),
        (  # which entries repeat (trial 54a: "must be unique" alone), at the repeat's line (trial 57a)
            {
                "transfer": {**CLASSIFY, "head": {**CLASSIFY["head"], "labels": ["country", "x", "country"]}},
                "data": KINDS,
            },
            "transfer.head.labels[2] (line 36): is 'country', as [0] is; class names must be unique: keep one",
        ),
        # Choosing the checkpoint on the test set leaves no held-out score (trial 39b).
        (
            {
                "transfer": {"early_stopping": {"enabled": True, "split": "test"}},
                "eval": {"every_steps": 5},
                "data": {"test": "assets/data/fictional-qa/valid.jsonl"},
            },
            "choosing the checkpoint on it makes that score optimistic",
        ),
        (
            {
                "transfer": {"early_stopping": {"enabled": True, "split": "tset"}},
                "eval": {"every_steps": 5},
                "data": {"test": "assets/data/fictional-qa/valid.jsonl"},
            },
            "is not an evaluation set of this run (have: validation); set",
        ),
        (
            {
                "transfer": {**CLASSIFY, "early_stopping": {"enabled": True, "metric": "entity_f1"}},
                "data": KINDS,
                "eval": {**NO_GEN, "every_steps": 5},
            },
            "(transfer.head.labels: O, B-TYPE, I-TYPE ...); use accuracy, macro_f1 or eval_loss",
        ),
        (
            {
                "transfer": {**CLASSIFY, "early_stopping": {"enabled": True, "metric": "exact_match"}},
                "data": KINDS,
                "eval": {**NO_GEN, "every_steps": 5},
            },
            "a sequence_classification head generates none; use accuracy, macro_f1 or eval_loss",
        ),
        (
            {"transfer": {"early_stopping": {"enabled": True, "metric": "accuracy"}}, "eval": {"every_steps": 5}},
            "needs transfer.head.type=sequence_classification",
        ),
        (
            {
                "data": {
                    "train": None,
                    "validation": None,
                    "mixture": [{"name": "test", "train": "assets/data/fictional-qa/train.jsonl"}],
                }
            },
            "reserved",
        ),
        ({"data": {"mixture": [{"name": "a", "train": "assets/data/fictional-qa/train.jsonl"}]}}, "not both"),
        # LoRA on a causal LM (the default method of write_config's configs) leaves the LM head frozen.
        ({"transfer": {"learning_rates": {"head": 1e-2}}}, "no trainable parameter belongs to the head"),
    ],
)
def test_combinations_that_make_no_sense_are_rejected(
    sections: dict, message: str, tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import REPO

    monkeypatch.chdir(REPO)
    path = write_config(tmp_path / "c.yaml", tiny_model_dir, tmp_path / "run", **sections)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any(message in problem for problem in info.value.problems), info.value.problems


def test_early_stopping_rule_and_its_state_survive_a_resume() -> None:
    from trainer.transfer.config import EarlyStoppingConfig
    from trainer.transfer.early_stopping import EarlyStopping

    losses = {2: 5.0, 4: 4.0, 6: 3.95, 8: 3.5, 10: 3.49, 12: 3.6, 14: 3.2}
    cfg = EarlyStoppingConfig(enabled=True, patience=2, min_delta=0.1)

    def run(stopper: EarlyStopping, steps: list[int]) -> None:
        for step in steps:
            if not stopper.should_stop:
                stopper.update(step, {"validation": {"eval_loss": losses[step]}})

    whole = EarlyStopping(cfg)
    run(whole, sorted(losses))
    # 6 and 10 miss min_delta; 8 resets the count; 10, 12 are two misses in a row -> stop at 12.
    assert (whole.best_step, whole.best, whole.stopped_at) == (8, 3.5, 12)
    first = EarlyStopping(cfg)
    run(first, [2, 4, 6, 8, 10])
    resumed = EarlyStopping(cfg)
    resumed.load_state_dict(json_round_trip(first.state_dict()))
    run(resumed, [12, 14])
    assert resumed.state_dict() == whole.state_dict()
    accuracy = EarlyStopping(EarlyStoppingConfig(enabled=True, metric="accuracy", patience=1))
    accuracy.update(1, {"validation": {"accuracy": 0.5}})
    accuracy.update(2, {"validation": {"accuracy": 0.6}})
    assert accuracy.best_step == 2 and not accuracy.should_stop  # higher is better for accuracy


def test_a_resume_and_the_summary_say_the_stage_and_patience_of_the_weights_they_name() -> None:
    """Trial 53b: a resume said nothing of its unfreezing stage or early-stopping count (right, but in
    the rank log only), and summary.json listed the stage at the stop, while final/ held the best
    step's weights, trained in an earlier stage (block 0 never trained there)."""
    from trainer.transfer.config import EarlyStoppingConfig, TransferConfig
    from trainer.transfer.early_stopping import EarlyStopping

    model = torch.nn.Linear(2, 2)
    groups = [("head", ["weight"]), ("block 1", ["bias"]), ("block 0", []), ("embeddings", [])]
    unfreezer = GradualUnfreezer(model, groups, every_steps=4)
    unfreezer.apply(13)  # stage 4 of 4 at the stop
    early = EarlyStopping(EarlyStoppingConfig(enabled=True, metric="accuracy", patience=2))
    early.update(6, {"validation": {"accuracy": 0.9}})
    early.update(10, {"validation": {"accuracy": 0.8}})
    transfer = TransferConfig(early_stopping={"enabled": True, "metric": "accuracy", "patience": 2})
    controller = SimpleNamespace(unfreezer=unfreezer, early=early, cfg=SimpleNamespace(transfer=transfer), counts={})
    assert TransferController.resumed_note(controller, 13) == (  # type: ignore[arg-type]
        "resumed with gradual unfreezing in stage 4 of 4 (head, block 1, block 0, embeddings train); early stopping "
        "at 1 of 2 evaluations without improvement, best validation accuracy 0.9 at step 6"
    )
    summary = TransferController.summary(controller)["gradual_unfreezing"]  # type: ignore[arg-type]
    assert (summary["stage"], summary["stages"]) == (4, 4)  # counted from 1, as the console says it
    # Step 6 trained in stage 2 (steps 5-8): what final/ holds.
    assert summary["final_dir"] == {"step": 6, "stage": 2, "stages": 4, "unfrozen": ["head", "block 1"]}


def test_patience_the_run_cannot_use_up_is_warned_of_by_validate_and_training(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Trial 53b: patience 50 with 10 evaluations was valid without a word; the run never stops early."""
    from launcher.cli import main
    from tests.conftest import REPO
    from trainer.transfer.config import EarlyStoppingConfig
    from trainer.transfer.early_stopping import patience_past_the_run

    stopping = EarlyStoppingConfig(enabled=True, patience=3)
    assert patience_past_the_run(stopping, 4, 17) is None  # evaluations at 4, 8, 12, 16: stops at 16 at the latest
    said = patience_past_the_run(stopping, 4, 16)  # 4, 8, 12 before the last step: one too few
    assert said is not None and said.startswith(
        "transfer.early_stopping.patience=3: stopping takes 4 evaluations (the best, then 3 without improvement), "
        "and this run has 3 before its last step (every 4 of 16 steps), so it never stops early"
    ), said
    assert patience_past_the_run(EarlyStoppingConfig(enabled=False, patience=3), 4, 16) is None
    example = str(REPO / "configs/examples/vision_transfer.yaml")
    assert main(["validate", example, "transfer.early_stopping.patience=50"]) == 0
    assert "ftl: WARNING: transfer.early_stopping.patience=50: stopping takes 51" in capsys.readouterr().err
    assert main(["validate", example]) == 0
    assert "early_stopping.patience" not in capsys.readouterr().err


def test_early_stopping_on_a_handful_of_examples_is_warned_of() -> None:
    """Trial 53b: a 1-row validation set chose the checkpoint (loss 0.0000) without a word."""
    from trainer.transfer.config import EarlyStoppingConfig
    from trainer.transfer.early_stopping import few_examples_note

    stopping = EarlyStoppingConfig(enabled=True, metric="accuracy")
    said = few_examples_note(stopping, {"validation": 1, "test": 500})
    assert said is not None and said.startswith(
        "early stopping watches validation accuracy, scored on 1 example: with so few, which step scores best is "
        "largely chance"
    ), said
    assert few_examples_note(stopping, {"validation": 20}) is None
    assert few_examples_note(EarlyStoppingConfig(enabled=False), {"validation": 1}) is None


def test_validate_data_warns_of_early_stopping_on_a_handful_of_examples(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trial 54a: the docs said validate warned too; only train did."""
    from launcher.cli import main
    from tests.conftest import REPO

    example = str(REPO / "configs/examples/encoder_classification.yaml")  # early stopping on validation accuracy
    small = tmp_path / "small.jsonl"
    small.write_text("".join((REPO / "assets/data/fictional-kinds/valid.jsonl").read_text().splitlines(True)[:12]))
    assert main(["validate", example, "--data", f"data.validation={small}", "--examples", "0"]) == 0
    assert "warning: early stopping watches validation accuracy, scored on 12 examples" in capsys.readouterr().out
    assert main(["validate", example, "--data", "--examples", "0"]) == 0
    assert "early stopping watches" not in capsys.readouterr().out  # 90 rows


def test_a_stage_says_its_groups_with_the_verb_they_take() -> None:
    """Trial 54a: "stage 6 of 6: embeddings trains too"."""
    from trainer.transfer.controller import _trains

    said = [_trains(group) for group in ("head", "block 1", "blocks 0-1", "embeddings")]
    assert said == ["trains", "trains", "train", "train"]


def json_round_trip(value: dict) -> dict:
    import json

    return json.loads(json.dumps(value))


def test_freezing_the_embeddings_of_a_tied_gpt2_freezes_the_shared_matrix_and_positions(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """GPT-2 ties its head to wte: freeze.embeddings froze nothing (the matrix counted as the head),
    and its position table wpe counted as 'other'."""
    import logging

    from transformers import GPT2Config, GPT2LMHeadModel

    from trainer.transfer.config import FreezeConfig
    from trainer.transfer.freezing import apply_freezing

    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32))
    parts = model_parts(model)
    assert parts.of("transformer.wpe.weight").kind == "embeddings"
    assert parts.of("transformer.wte.weight").tied
    with caplog.at_level(logging.WARNING):
        apply_freezing(model, parts, FreezeConfig(embeddings=True))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"transformer.wte.weight", "transformer.wpe.weight"}
    assert "tied to its input embeddings" in caplog.text


def test_a_freeze_pattern_that_matches_nothing_is_refused_with_the_names_it_could_match() -> None:
    """A typo in transfer.freeze.patterns froze nothing, silently: the run was a full fine-tune."""
    from trainer.errors import TrainerInputError
    from trainer.transfer.config import FreezeConfig
    from trainer.transfer.freezing import apply_freezing

    model = _tiny_causal_lm()
    with pytest.raises(TrainerInputError) as typo:
        apply_freezing(model, model_parts(model), FreezeConfig(patterns=[r"layers\.1\.mlp", r"layers\.2\.mpl"]))
    message = str(typo.value)
    assert message.startswith("transfer.freeze.patterns: 'layers\\.2\\.mpl' matches no parameter"), message
    assert "did you mean 'mlp' for 'mpl'?" in message and "model.layers.0.mlp.gate_proj.weight" in message
    assert all(p.requires_grad for p in model.parameters())  # refused before freezing anything
    frozen = apply_freezing(model, model_parts(model), FreezeConfig(patterns=[r"layers\.1\.mlp"]))
    assert frozen == 3 and not model.model.layers[1].mlp.up_proj.weight.requires_grad


def test_a_learning_rate_that_applies_to_no_trainable_parameter_is_refused() -> None:
    from trainer.transfer.param_groups import rates_without_effect

    lora = _tiny_causal_lm(lora=True)
    parts = model_parts(lora)
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    head_rate = rates_without_effect(parts, trainable, LearningRatesConfig(head=1e-2))
    assert head_rate is not None and head_rate.startswith("transfer.learning_rates.head: no trainable parameter")
    assert rates_without_effect(parts, trainable, LearningRatesConfig(layer_decay=0.5)) is None
    full = _tiny_causal_lm()
    parts = model_parts(full)
    assert rates_without_effect(parts, set(parts.parts), LearningRatesConfig(head=1e-2, layer_decay=0.5)) is None
    only_head = {n for n in parts.parts if parts.parts[n].kind == "head"}
    decay = rates_without_effect(parts, only_head, LearningRatesConfig(layer_decay=0.5))
    assert decay is not None and "only the head trains" in decay


def test_early_stopping_says_when_its_best_is_worse_than_the_base_model() -> None:
    from trainer.transfer.config import EarlyStoppingConfig
    from trainer.transfer.early_stopping import EarlyStopping

    stopper = EarlyStopping(EarlyStoppingConfig(enabled=True, patience=2))
    stopper.base = 13.0  # the step-0 evaluation: never the best itself
    stopper.update(3, {"validation": {"eval_loss": 17.0}})
    assert stopper.best_step == 3 and stopper.worse_than_base()
    resumed = EarlyStopping(stopper.cfg)
    resumed.load_state_dict(json_round_trip(stopper.state_dict()))
    assert resumed.base == 13.0 and resumed.worse_than_base()
    resumed.update(6, {"validation": {"eval_loss": 12.0}})
    assert not resumed.worse_than_base()
    accuracy = EarlyStopping(EarlyStoppingConfig(enabled=True, metric="accuracy"))
    accuracy.base = 0.6
    accuracy.update(2, {"validation": {"accuracy": 0.5}})
    assert accuracy.worse_than_base()


def test_a_head_rate_with_adapters_that_may_train_the_head_is_left_to_the_worker(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """modules_to_save, or a list of target_modules, may name the head (its name depends on the
    model): the config cannot tell, so the worker, which has the model, decides."""
    for lora in ({"modules_to_save": ["lm_head"]}, {"target_modules": ["q_proj", "lm_head"]}):
        path = write_config(
            tmp_path / "c.yaml",
            tiny_model_dir,
            tmp_path / "run",
            method={"type": "lora", "lora": lora},
            transfer={"learning_rates": {"head": 1e-2}},
        )
        assert load_config(path).transfer.learning_rates.head == 1e-2


def test_what_an_epoch_of_a_weighted_mixture_draws_from_each_source() -> None:
    """The trial's mixture: 47k chat rows at weight 3 and 167k completion rows at weight 0.5 among
    570k rows; an epoch repeats chat 6.6 times and leaves 69% of the completion rows unseen (nothing
    said so: the numbers shown were those of the concatenation)."""
    from trainer.data.mixture import epoch_draws, epoch_draws_line

    rows, weights = [47405, 190079, 165423, 167118], [3.0, 1.0, 1.0, 0.5]
    draws = epoch_draws(rows, weights)
    assert sum(drawn for drawn, _ in draws) == pytest.approx(sum(rows))
    assert draws[0][1] == pytest.approx(6.558, abs=1e-3) and draws[3][1] == pytest.approx(0.310, abs=1e-3)
    line = epoch_draws_line(list(zip(["chat", "alp", "txt", "comp"], rows, weights)))
    assert line.startswith(
        "mixture: an epoch (570025 rows) draws, by weight, on average: chat ~310923 of 47405 rows (6.56 passes)"
    )
    assert "comp ~51820 of 167118 rows (0.31 passes, 69% of its rows unseen)" in line
    assert "(570025 packed rows)" in epoch_draws_line(list(zip(["chat", "alp", "txt", "comp"], rows, weights)), True)


def test_a_source_an_epoch_draws_many_times_over_is_warned_of() -> None:
    """Trial 62a: 9 rows at weight 1 beside 298 were drawn 18 times an epoch, said only as a count."""
    from trainer.data.mixture import MANY_PASSES, repeated_sources_warning

    said = repeated_sources_warning([("big", 298, 1.0), ("tiny", 9, 1.0)])
    assert said == (
        "data.mixture: an epoch draws tiny (9 rows, ~17 passes) at its weight: rows repeated that often are learnt "
        "by heart rather than from; lower its weight or give it more rows"
    )
    assert "(9 packed rows, " in str(repeated_sources_warning([("big", 298, 1.0), ("tiny", 9, 1.0)], packed=True))
    # Below MANY_PASSES (the bundled mixture's 2.4 passes, 6.6 above): nothing to say.
    assert MANY_PASSES == 10.0 and repeated_sources_warning([("chat", 47405, 3.0), ("comp", 167118, 0.5)]) is None


def test_unfreezing_groups_a_short_run_never_reaches_are_named() -> None:
    """Trial 36b: a 38-step run whose schedule unfreezes block 0 at step 40 and the embeddings at
    50 said so only in its rank-0 log; the first-unfreeze-too-late case keeps its own wording."""
    groups = [("head", []), ("blocks 1-1", []), ("blocks 0-0", []), ("embeddings", [])]
    schedule = SimpleNamespace(unfreezer=SimpleNamespace(groups=groups, every_steps=20))
    never = TransferController.unfreezing_that_never_starts
    assert never(schedule, 61) is None  # the last group unfreezes at step 60, before the last step
    said = never(schedule, 38)
    assert said == (
        "transfer.gradual_unfreezing: 2 of 4 groups would unfreeze after the run's last step (38) and stay "
        "frozen (blocks 0-0 at step 40, embeddings at step 60); lower transfer.gradual_unfreezing.every or "
        "train longer (with unit: epochs, a stage is that many epochs of the data)"
    )
    assert never(schedule, 20).startswith("transfer.gradual_unfreezing: the first unfreeze would come at step 20")


def test_label_counts_quote_names_with_spaces_or_punctuation() -> None:
    import unicodedata
    from collections import Counter

    from trainer.data.label_coverage import label_count_line

    line = label_count_line(
        Counter({0: 3, 1: 2, 2: 1}), ["country", "job, work", unicodedata.normalize("NFD", "météo")]
    )
    assert line == "country 3, 'job, work' 2, météo 1"
    # Numbers as names are quoted: `1 0, 2 1` read as pairs of numbers (trial 49a).
    assert label_count_line(Counter({0: 2, 1: 0}), ["1", "n/a"]) == "'1' 2, 'n/a' 0"


def test_config_label_names_are_kept_as_data_labels_match_them() -> None:
    """`labels: ["pos ", "neg"]` put "pos " into the model's id2label and the metrics while the data's
    "pos" matched it (trial 40a): names are kept in the form data labels are matched in."""
    import unicodedata

    from trainer.transfer.config import HeadConfig

    head = HeadConfig(type="sequence_classification", labels=["pos ", unicodedata.normalize("NFD", " négatif")])
    assert head.label_names == ["pos", "négatif"]
    assert HeadConfig(type="sequence_classification", labels=[1, 2]).label_names == ["1", "2"]
    # Trial 47b: `labels: [yes, no]` was read by YAML as booleans ("got True"), and [1.0, 2] half-taken;
    # ftl's YAML reader keeps yes/no as written (49a: [Yes, No] too), true/false are refused.
    import pydantic

    from launcher.config_yaml import load_config_yaml

    head = HeadConfig.model_validate(load_config_yaml("type: sequence_classification\nlabels: [Yes, No, on]"))
    assert head.label_names == ["Yes", "No", "on"]
    with pytest.raises(pydantic.ValidationError, match=r"labels\[0\] was read as the boolean true: YAML reads true"):
        HeadConfig.model_validate(load_config_yaml("type: sequence_classification\nlabels: [true, false]"))
    with pytest.raises(pydantic.ValidationError, match=r"labels\[0\] is the number 1.0: label names are text"):
        HeadConfig(type="sequence_classification", labels=[1.0, 2, 3])


def test_train_last_n_blocks_freezes_the_blocks_below_whatever_their_count() -> None:
    """ "Train only the top N blocks" had no key: users computed first_n_blocks from the model's depth."""
    import re

    from trainer.errors import TrainerInputError
    from trainer.transfer.config import FreezeConfig
    from trainer.transfer.freezing import apply_freezing
    from trainer.transfer.setup import frozen_blocks_regex

    model = _tiny_causal_lm()  # 3 blocks
    apply_freezing(model, model_parts(model), FreezeConfig(train_last_n_blocks=1))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any(".layers.2." in name for name in trainable)
    assert not any(".layers.0." in name or ".layers.1." in name for name in trainable)
    assert "lm_head.weight" in trainable and "model.norm.weight" in trainable
    # With LoRA: no adapters on the frozen blocks.
    regex = frozen_blocks_regex(_tiny_causal_lm(), FreezeConfig(train_last_n_blocks=2))
    assert regex and re.fullmatch(regex, "model.layers.0.self_attn.q_proj")
    assert not re.fullmatch(regex, "model.layers.1.self_attn.q_proj")
    with pytest.raises(TrainerInputError, match="train_last_n_blocks=3 but the model has 3 blocks, so no block"):
        apply_freezing(_tiny_causal_lm(), model_parts(model), FreezeConfig(train_last_n_blocks=3))
    with pytest.raises(ValueError, match="both say which blocks train; keep one"):
        FreezeConfig(first_n_blocks=1, train_last_n_blocks=1)


def test_static_freezing_is_described_for_the_console() -> None:
    """Trial 42a: the console never said which blocks were frozen nor how much still trains."""
    from trainer.transfer.config import FreezeConfig
    from trainer.transfer.freezing import freeze_description

    said = freeze_description(FreezeConfig(train_last_n_blocks=2, embeddings=True), 4, 934784, 1_600_000)
    assert said == "transfer.freeze: blocks 0-1 of 4, the embeddings frozen; 935K of 1.6M parameters train (58.4%)"
    assert freeze_description(FreezeConfig(first_n_blocks=1), 4, 10, 100).startswith("transfer.freeze: block 0 of 4 ")
    with pytest.raises(ValueError, match="all_but_head freezes every block already"):
        FreezeConfig(all_but_head=True, train_last_n_blocks=1)
