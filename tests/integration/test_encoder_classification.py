"""Sequence classification on the bundled tiny BERT (configs/examples/encoder_classification.yaml,
the textbook recipe): accuracy rises well over the new head's start; the frozen embeddings and
first encoder layer stay bit-identical to the checkpoint; the export loads with the stock
AutoModelForSequenceClassification and `pipeline("text-classification")` and gives the trainer's
logits; LoRA on the encoder with two DDP workers matches one process, and its adapter loads with peft.

One recipe run (module-scoped) serves the first three tests; the parity pair is 6 steps each.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from launcher.commands import train
from tests.conftest import FTL, REPO, write_config
from trainer.metrics import read_metrics

pytestmark = pytest.mark.integration

ENCODER = REPO / "assets" / "models" / "ftl-tiny-bert"
KINDS = REPO / "assets" / "data" / "fictional-kinds"
LABELS = ["country", "person", "creature"]


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("encoder-recipe") / "run"
    overrides = [
        f"model.path={ENCODER}",
        f"data.train={KINDS / 'train.jsonl'}",
        f"data.validation={KINDS / 'valid.jsonl'}",
        f"data.test={KINDS / 'test.jsonl'}",
        f"output.dir={run}",
        "output.report=false",
        "training.progress_bar=false",
        "cluster.backend=local",
        "training.epochs=2",  # half the example: it is at its best (100%) by step 40
    ]
    # train() runs the launcher's fit check first: `ftl plan`'s meta-device build of the encoder.
    assert train(str(REPO / "configs/examples/encoder_classification.yaml"), overrides) == 0
    return run


def test_recipe_beats_the_new_heads_start(recipe_run: Path) -> None:
    summary = json.loads((recipe_run / "summary.json").read_text())
    for split in ("validation", "test"):
        base, final = summary["scores"][split]["base"], summary["scores"][split]["final"]
        assert base["accuracy"] < 0.6  # a new, untrained head (chance is 1/3)
        assert final["accuracy"] >= max(0.9, base["accuracy"] + 0.3), (split, base, final)
        assert final["macro_f1"] >= 0.9, (split, final)


def test_frozen_embeddings_and_first_layer_are_bit_identical(recipe_run: Path) -> None:
    pretrained = load_file(str(ENCODER / "model.safetensors"))
    tuned = load_file(str(recipe_run / "final" / "merged" / "model.safetensors"))
    frozen = [k for k in tuned if k.startswith(("bert.embeddings.", "bert.encoder.layer.0."))]
    assert len(frozen) == 5 + 16  # the embeddings module (3 tables + LayerNorm) and every tensor of layer 0
    for key in frozen:
        assert torch.equal(tuned[key], pretrained[key]), key
    trained = [k for k in tuned if k.startswith("bert.encoder.layer.3.")]
    assert trained and not all(torch.equal(tuned[k], pretrained[k]) for k in trained)
    assert "classifier.weight" in tuned and "bert.pooler.dense.weight" in tuned  # the new head is exported


def test_export_loads_with_stock_classes_and_gives_the_trainers_logits(recipe_run: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from trainer.data.batches import RowDataset, make_batch
    from trainer.data.tokenized import load_tokenized
    from trainer.loss import forward_logits

    merged = recipe_run / "final" / "merged"
    model = AutoModelForSequenceClassification.from_pretrained(str(merged)).eval()
    assert model.config.id2label == dict(enumerate(LABELS))
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    rows = [json.loads(line) for line in (KINDS / "test.jsonl").read_text().splitlines()]

    # The trainer's path: its tokenized set ([CLS] text [SEP]) in right-padded batches.
    examples = load_tokenized(
        str(KINDS / "test.jsonl"),
        "classification",
        tokenizer,
        max_seq_len=64,
        too_long="error",
        skip_bad_rows=False,
        cache_root=recipe_run.parent / "cache",
        label_names=LABELS,
    )
    first = examples.example(0)[0]
    assert first[0] == tokenizer.cls_token_id and first[-1] == tokenizer.sep_token_id
    dataset = RowDataset(examples, [[i] for i in range(len(examples))], packed=False)
    with torch.no_grad():
        trainer_logits = torch.cat(
            [
                forward_logits(
                    model, make_batch(dataset, list(range(i, min(i + 16, len(rows)))), tokenizer.pad_token_id)
                )
                for i in range(0, len(rows), 16)
            ]
        )

    # The stock path: pipeline() with its own tokenization, one text at a time, raw logits.
    classify = pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")
    outputs = classify([r["text"] for r in rows], top_k=None, function_to_apply="none")
    pipeline_logits = torch.tensor(
        [[{o["label"]: o["score"] for o in out}[name] for name in LABELS] for out in outputs]
    )
    torch.testing.assert_close(pipeline_logits, trainer_logits, atol=1e-4, rtol=1e-4)

    accuracy = sum(LABELS[int(i)] == r["label"] for i, r in zip(trainer_logits.argmax(-1), rows)) / len(rows)
    summary = json.loads((recipe_run / "summary.json").read_text())
    assert accuracy == pytest.approx(summary["scores"]["test"]["final"]["accuracy"], abs=1e-9)


@pytest.fixture(scope="module")
def encoder_without_dropout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled encoder with dropout off: each rank draws its own dropout masks, so two workers can
    only match one process step for step when training is deterministic."""
    import shutil

    out = tmp_path_factory.mktemp("bert-no-dropout")
    for item in ENCODER.iterdir():
        shutil.copy(item, out / item.name)
    config = json.loads((out / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (out / "config.json").write_text(json.dumps(config))
    return out


def _lora_sections(micro: int, workers: int) -> dict:
    return dict(
        data={
            "train": str(KINDS / "train.jsonl"),
            "validation": str(KINDS / "valid.jsonl"),
            "format": "classification",
            "max_seq_len": 64,
            "packing": False,
        },
        method={"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        transfer={"head": {"type": "sequence_classification", "labels": LABELS}},
        training={"max_steps": 6, "micro_batch_size": micro, "gradient_accumulation_steps": 2, "learning_rate": 5e-3},
        eval={"max_samples": 8},
        cluster={"workers": workers},
        parallel={"strategy": "ddp" if workers > 1 else "none"},
    )


def test_lora_on_the_encoder_two_ddp_workers_match_one_process_and_load_with_peft(
    encoder_without_dropout: Path, tmp_path: Path
) -> None:
    one = write_config(tmp_path / "one.yaml", encoder_without_dropout, tmp_path / "one", **_lora_sections(4, 1))
    assert train(str(one), []) == 0
    two = write_config(tmp_path / "two.yaml", encoder_without_dropout, tmp_path / "two", **_lora_sections(2, 2))
    result = subprocess.run([*FTL, "train", str(two)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    reference, run = read_metrics(tmp_path / "one", "train"), read_metrics(tmp_path / "two", "train")
    assert len(run) == 6
    assert [r["loss"] for r in run] == pytest.approx([r["loss"] for r in reference], rel=1e-5)
    assert [r["grad_norm"] for r in run] == pytest.approx([r["grad_norm"] for r in reference], rel=1e-4)
    want = load_file(str(tmp_path / "one" / "final" / "adapter" / "adapter_model.safetensors"))
    have = load_file(str(tmp_path / "two" / "final" / "adapter" / "adapter_model.safetensors"))
    assert want.keys() == have.keys() and any("pooler" in k for k in have) and any("classifier" in k for k in have)
    for key in want:
        torch.testing.assert_close(have[key], want[key], atol=1e-4, rtol=0, msg=key)

    # The adapter (LoRA on query/key/value/dense, pooler and classifier saved in full) on the stock
    # base gives the merged export's logits.
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    final = tmp_path / "two" / "final"
    merged = AutoModelForSequenceClassification.from_pretrained(str(final / "merged")).eval()
    base = AutoModelForSequenceClassification.from_pretrained(str(encoder_without_dropout), num_labels=3)
    adapted = PeftModel.from_pretrained(base, str(final / "adapter")).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(final / "merged"))
    texts = [json.loads(line)["text"] for line in (KINDS / "test.jsonl").read_text().splitlines()[:16]]
    inputs = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(adapted(**inputs).logits, merged(**inputs).logits, atol=1e-4, rtol=1e-4)
