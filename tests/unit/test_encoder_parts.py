"""An encoder (BERT) split into the parts the transfer strategies act on: the whole embeddings
module, the encoder layers, and the head = classifier + pooler (new for the task); LoRA on it
targets BERT's own layer names and trains the pooler in full; the log line naming the new head."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from trainer.config import LoraConfig, MethodConfig
from trainer.data.formats import closing_specials, truncated
from trainer.transfer.heads import new_head_message
from trainer.transfer.model_parts import model_parts
from trainer.transfer.unfreezing import unfreezing_groups


def _tiny_bert_classifier() -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32)
    config.num_labels = 3
    return BertForSequenceClassification(config)


def test_encoder_parts_embeddings_layers_and_head_with_pooler() -> None:
    parts = model_parts(_tiny_bert_classifier())
    assert parts.num_blocks == 3
    kinds = {name: (part.kind, part.block) for name, part in parts.parts.items()}
    for name in (
        "bert.embeddings.word_embeddings.weight",
        "bert.embeddings.position_embeddings.weight",
        "bert.embeddings.token_type_embeddings.weight",
        "bert.embeddings.LayerNorm.weight",
    ):
        assert kinds[name] == ("embeddings", None), name
    assert kinds["bert.encoder.layer.0.attention.self.query.weight"] == ("block", 0)
    assert kinds["bert.encoder.layer.2.output.LayerNorm.bias"] == ("block", 2)
    for name in ("classifier.weight", "classifier.bias", "bert.pooler.dense.weight", "bert.pooler.dense.bias"):
        assert kinds[name] == ("head", None), name
    assert {kind for kind, _ in kinds.values()} == {"embeddings", "block", "head"}  # nothing left over
    groups = unfreezing_groups(parts, set(parts.parts), blocks_per_stage=1)
    assert [label for label, _ in groups] == ["head", "block 2", "block 1", "block 0", "embeddings"]


def test_lora_on_an_encoder_adapts_bert_layers_and_trains_the_pooler_in_full() -> None:
    from trainer.methods import apply_method

    model = apply_method(
        _tiny_bert_classifier(),
        MethodConfig(type="lora", lora=LoraConfig(r=2)),
        False,
        task_type="SEQ_CLS",
        new_modules=["pooler"],
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    adapted = {n.split(".lora_A")[0].split("layer.0.")[1] for n in trainable if "layer.0." in n and "lora_A" in n}
    assert adapted == {
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    }
    full = {n for n in trainable if "lora_" not in n}
    assert full == {
        "base_model.model.bert.pooler.modules_to_save.default.dense.weight",
        "base_model.model.bert.pooler.modules_to_save.default.dense.bias",
        "base_model.model.classifier.modules_to_save.default.weight",
        "base_model.model.classifier.modules_to_save.default.bias",
    }
    parts = model_parts(model)
    assert all(parts.of(n).kind == "head" for n in full)


def test_new_head_message_names_new_and_replaced_weights() -> None:
    assert new_head_message(["bert.pooler.dense.weight", "classifier.weight"], []) == (
        "task head: new (not in the checkpoint): bert.pooler.dense.weight, classifier.weight"
    )
    replaced = [("classifier.weight", torch.Size([2, 16]), torch.Size([3, 16]))]
    assert new_head_message([], replaced) == (
        "task head: replaced (pretrained head of another size): classifier.weight 2x16 -> 3x16"
    )
    assert new_head_message(["score.weight"], replaced).count(";") == 1
    assert new_head_message([], []) == "task head: every weight loaded from the checkpoint"


def test_truncation_keeps_the_tokenizers_closing_special_tokens() -> None:
    cls, sep = 2, 3
    assert closing_specials([cls, 10, 11, 12, sep], [10, 11, 12]) == 1  # BERT: [CLS] text [SEP]
    assert closing_specials([1, 10, 11, 12], [10, 11, 12]) == 0  # Llama: <s> text
    assert closing_specials([10, 11], [10, 11]) == 0
    assert truncated([cls, 10, 11, 12, sep], 4, keep_tail=1) == [cls, 10, 11, sep]
    assert truncated([cls, 10, 11, 12, sep], 5, keep_tail=1) == [cls, 10, 11, 12, sep]  # fits: unchanged
    assert truncated([1, 10, 11, 12], 3) == [1, 10, 11]


def test_other_encoders_deberta_and_modernbert_have_their_task_layers_in_the_head() -> None:
    from transformers import (
        DebertaV2Config,
        DebertaV2ForSequenceClassification,
        ModernBertConfig,
        ModernBertForSequenceClassification,
    )

    small = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    specials = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
    # DeBERTa-v2 names no _no_split_modules: its layers are found as the one-class list of num_hidden_layers.
    deberta = model_parts(DebertaV2ForSequenceClassification(DebertaV2Config(**small, num_labels=3)))
    modernbert = model_parts(ModernBertForSequenceClassification(ModernBertConfig(**small, **specials, num_labels=3)))
    for parts, head, embeddings, block in (
        (deberta, "pooler.dense.weight", "deberta.embeddings.LayerNorm.weight", "deberta.encoder.layer.1."),
        (modernbert, "head.dense.weight", "model.embeddings.norm.weight", "model.layers.1."),
    ):
        assert parts.num_blocks == 2
        assert parts.of(head).kind == parts.of("classifier.weight").kind == "head"
        assert parts.of(embeddings).kind == "embeddings"
        assert {p.block for n, p in parts.parts.items() if n.startswith(block)} == {1}
    # DeBERTa-v3's relative-position table, shared by every layer, is part of the embeddings: frozen
    # with them, at the deepest layer_decay rate, unfrozen last (it trained at the top block's rate).
    relative = DebertaV2Config(**small, relative_attention=True, position_buckets=8, num_labels=3)
    parts = model_parts(DebertaV2ForSequenceClassification(relative))
    assert parts.of("deberta.encoder.rel_embeddings.weight").kind == "embeddings"


def test_a_pretrained_head_of_another_size_is_replaced_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from launcher.config_loader import load_config
    from tests.conftest import REPO, write_config
    from trainer.transfer.setup import build_model

    two_labels = _tiny_bert_classifier()
    two_labels.config.num_labels = 2
    two_labels.classifier = torch.nn.Linear(16, 2)
    two_labels.save_pretrained(tmp_path / "bert-2")
    kinds = REPO / "assets" / "data" / "fictional-kinds"
    config = write_config(
        tmp_path / "c.yaml",
        tmp_path / "bert-2",
        tmp_path / "run",
        data={"train": str(kinds / "train.jsonl"), "format": "classification", "packing": False},
        method={"type": "full"},
        transfer={"head": {"type": "sequence_classification", "labels": ["country", "person", "creature"]}},
    )
    with caplog.at_level(logging.INFO, logger="trainer.transfer.heads"):
        model = build_model(load_config(str(config)), "cpu", 0, False)
    assert model.classifier.out_features == 3 and model.config.id2label == {0: "country", 1: "person", 2: "creature"}
    pretrained = load_file(str(tmp_path / "bert-2" / "model.safetensors"))
    assert torch.equal(model.bert.pooler.dense.weight, pretrained["bert.pooler.dense.weight"])  # kept: same size
    assert "replaced (pretrained head of another size): classifier.bias 2 -> 3, classifier.weight 2x16 -> 3x16" in (
        caplog.text
    )


@pytest.mark.parametrize("method", ["full", "lora"])
def test_plan_builds_an_encoder_without_a_causal_lm_class(method: str) -> None:
    """DeBERTa-v2 (like ModernBERT, DistilBERT) has no AutoModelForCausalLM mapping: `ftl plan`
    crashed with transformers' list of hundreds of config classes, and train's fit check printed it."""
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    from launcher.plan.inventory_build import build_inventory
    from trainer.config import MethodConfig

    small = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    fields = DebertaV2Config(**small).to_dict()
    inventory = build_inventory("deberta", fields, MethodConfig(type=method), "float32")
    built = DebertaV2ForSequenceClassification(DebertaV2Config(**small))
    if method == "full":  # the encoder and its (2-label default) classifier, as the workers build it
        assert inventory.total() == sum(p.numel() for p in built.parameters())
    else:  # the adapters and the classifier train (PEFT's SEQ_CLS); the encoder stays frozen
        trained = {p.name for p in inventory.params if p.trainable}
        assert any("lora_" in name for name in trained) and any("classifier" in name for name in trained)


@pytest.mark.parametrize(("method", "pattern"), [("full", "pooler"), ("lora", "pooler"), ("full", "classifier")])
def test_freezing_weights_the_checkpoint_lacks_is_refused_and_a_pretrained_pooler_may_be_frozen(
    tmp_path: Path, method: str, pattern: str
) -> None:
    """Trial 61d: a frozen new pooler or head stayed random; no checkpoint kept it, so two exports of
    one checkpoint differed, and the classifier scored at chance."""
    from launcher.config_loader import load_config
    from tests.conftest import REPO, write_config
    from trainer.errors import TrainerInputError
    from trainer.transfer.setup import build_model

    kinds = REPO / "assets" / "data" / "fictional-kinds"
    settings = {
        "data": {"train": str(kinds / "train.jsonl"), "format": "classification", "packing": False},
        "method": {"type": method},
        "transfer": {
            "head": {"type": "sequence_classification", "labels": ["country", "person", "creature"]},
            "freeze": {"patterns": [pattern]},
        },
    }
    bundled = REPO / "assets" / "models" / "ftl-tiny-bert"  # holds neither a pooler nor a classifier
    config = write_config(tmp_path / "c.yaml", bundled, tmp_path / "run", **settings)
    with pytest.raises(TrainerInputError, match=f"transfer.freeze freezes .*{pattern}.*which model.path's checkpoint"):
        build_model(load_config(str(config)), "cpu", 0, False)
    if pattern != "pooler":
        return
    with_pooler = _tiny_bert_classifier()  # a checkpoint with a pretrained pooler: freezing it is a choice
    with_pooler.save_pretrained(tmp_path / "bert-pooled")
    config = write_config(tmp_path / "c2.yaml", tmp_path / "bert-pooled", tmp_path / "run2", **settings)
    model = build_model(load_config(str(config)), "cpu", 0, False)
    assert not any(p.requires_grad for name, p in model.named_parameters() if "pooler" in name)
    # Before a start too (validate, plan and train's checks), judged from the checkpoint's weights headers.
    from launcher.preflight import freeze_problem

    assert freeze_problem(load_config(str(config))) is None
    bundled_config = write_config(tmp_path / "c3.yaml", bundled, tmp_path / "run3", **settings)
    said = freeze_problem(load_config(str(bundled_config)))
    assert said is not None and said.startswith("transfer.freeze freezes bert.pooler.dense.bias"), said


def test_the_freeze_check_leaves_the_shared_meta_model_as_it_found_it(tmp_path: Path) -> None:
    """freeze_problem freezes the meta model every check of a command shares (full fine-tuning: the
    freeze training will apply); a later check must see it unfrozen, not this run's freeze."""
    from launcher.config_loader import load_config
    from launcher.preflight import _meta_model, freeze_problem
    from tests.conftest import REPO, write_config

    bundled = REPO / "assets" / "models" / "ftl-tiny-llama"
    settings: dict[str, Any] = {"method": {"type": "full"}, "transfer": {"freeze": {"first_n_blocks": 1}}}
    cfg = load_config(str(write_config(tmp_path / "c.yaml", bundled, tmp_path / "run", **settings)))
    assert freeze_problem(cfg) is None
    model = _meta_model(cfg, task=True)
    assert all(parameter.requires_grad for parameter in model.parameters())
    everything = {"method": {"type": "full"}, "transfer": {"freeze": {"patterns": [".*"]}}}
    cfg = load_config(str(write_config(tmp_path / "c2.yaml", bundled, tmp_path / "run2", **everything)))
    assert freeze_problem(cfg) is not None  # nothing left to train: refused, and still put back
    assert _meta_model(cfg, task=True) is model
    assert all(parameter.requires_grad for parameter in model.parameters())
