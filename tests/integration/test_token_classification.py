"""Token classification end to end: the example recipe (configs/examples/ner.yaml) on the bundled
model raises entity F1 on the bundled fictional-ner test set from about nothing; the export loads
with stock AutoModelForTokenClassification (merged, and the adapter over a fresh base) and with
`transformers.pipeline("token-classification")`, giving the logits and scores ftl measured; two
DDP workers train exactly like one process with the same global batch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from launcher.commands import train
from tests.conftest import REPO, write_config
from trainer.metrics import read_metrics
from trainer.transfer.entity_metrics import EntityCounts

pytestmark = pytest.mark.integration

NER = REPO / "assets" / "data" / "fictional-ner"
EXAMPLE_MODEL = REPO / "assets" / "models" / "ftl-tiny-bert"  # the model configs/examples/ner.yaml tunes
LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-CREATURE", "I-CREATURE"]


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example recipe for one epoch (30 steps), scored before and after on validation and test."""
    run = tmp_path_factory.mktemp("ner") / "run"
    overrides = [
        f"output.dir={run}",
        "training.epochs=1",
        "eval.every_steps=0",
        "training.progress_bar=false",
        "output.report=false",
        "cluster.backend=local",
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        assert train("configs/examples/ner.yaml", overrides) == 0
    return run


def test_entity_f1_rises_from_the_new_head(ner_run: Path) -> None:
    scores = json.loads((ner_run / "summary.json").read_text())["scores"]
    for split in ("validation", "test"):
        base, final = scores[split]["base"], scores[split]["final"]
        assert base["entity_f1"] < 0.3, base  # a random head
        assert final["entity_f1"] >= 0.75 and final["token_accuracy"] >= 0.9, final  # measured 0.90-0.91, 0.97
        assert final["eval_loss"] < base["eval_loss"] / 4


def _test_rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in (NER / "test.jsonl").read_text().splitlines()]


def test_export_loads_with_stock_transformers_and_scores_as_measured(ner_run: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    merged_dir = ner_run / "final" / "merged"
    merged = AutoModelForTokenClassification.from_pretrained(str(merged_dir)).eval()
    assert merged.config.id2label == dict(enumerate(LABELS))
    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    base = AutoModelForTokenClassification.from_pretrained(str(EXAMPLE_MODEL), num_labels=len(LABELS))
    adapted = PeftModel.from_pretrained(base, str(ner_run / "final" / "adapter")).eval()

    # The test set scored with the stock model, words tagged at their first sub-token, as ftl does.
    counts = EntityCounts()
    with torch.no_grad():
        for row in _test_rows():
            inputs = tokenizer(row["tokens"], is_split_into_words=True, return_tensors="pt")
            logits = merged(**inputs).logits[0]
            torch.testing.assert_close(adapted(**inputs).logits[0], logits, atol=1e-4, rtol=1e-4)
            firsts = [i for i, w in enumerate(inputs.word_ids()) if w is not None and w != inputs.word_ids()[i - 1]]
            counts.add(row["tags"], [LABELS[int(logits[i].argmax())] for i in firsts])
    final = json.loads((ner_run / "summary.json").read_text())["scores"]["test"]["final"]
    assert counts.entity_scores()["entity_f1"] == pytest.approx(final["entity_f1"], abs=1e-6)
    assert counts.token_accuracy() == pytest.approx(final["token_accuracy"], abs=1e-6)

    # The pipeline on plain text: its labels and scores are the merged model's softmax over the same tokens.
    tagger = pipeline("token-classification", model=merged, tokenizer=tokenizer, device="cpu")
    text = " ".join(_test_rows()[0]["tokens"])
    found = tagger(text, ignore_labels=[])
    with torch.no_grad():
        probs = merged(**tokenizer(text, return_tensors="pt")).logits[0].softmax(-1)
    assert len(found) >= len(_test_rows()[0]["tokens"])
    for item in found:
        assert item["entity"] == LABELS[int(probs[item["index"]].argmax())]
        assert item["score"] == pytest.approx(float(probs[item["index"]].max()), abs=1e-5)


def _parity_sections(micro: int, workers: int) -> dict[str, Any]:
    return dict(
        data={
            "train": str(NER / "train.jsonl"),
            "validation": str(NER / "valid.jsonl"),
            "format": "token_classification",
            "packing": False,
            "max_seq_len": 64,
        },
        # Dropout draws other masks on each rank than in one process; without it the maths is the same.
        transfer={"head": {"type": "token_classification", "labels": LABELS, "dropout": 0.0}},
        training={"max_steps": 4, "micro_batch_size": micro, "gradient_accumulation_steps": 2, "learning_rate": 1e-2},
        eval={"max_samples": 16},
        cluster={"workers": workers},
        parallel={"strategy": "ddp" if workers > 1 else "none"},
    )


def test_two_ddp_workers_match_one_process(tmp_path: Path, tiny_model_dir: Path) -> None:
    runs = {}
    for workers, micro in ((1, 4), (2, 2)):
        root = tmp_path / f"w{workers}"
        root.mkdir()
        config = write_config(root / "c.yaml", tiny_model_dir, root / "run", **_parity_sections(micro, workers))
        assert train(str(config), []) == 0
        runs[workers] = root / "run"
    one, two = read_metrics(runs[1], "train"), read_metrics(runs[2], "train")
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-5)
    assert [r["grad_norm"] for r in two] == pytest.approx([r["grad_norm"] for r in one], rel=1e-4)
    want = load_file(str(runs[1] / "final" / "adapter" / "adapter_model.safetensors"))
    have = load_file(str(runs[2] / "final" / "adapter" / "adapter_model.safetensors"))
    assert want.keys() == have.keys() and any("score" in key for key in want)  # the head is saved with it
    config = json.loads((runs[2] / "final" / "merged" / "config.json").read_text())
    assert config["classifier_dropout"] == 0.0 and config["id2label"]["1"] == "B-PER"
    for key in want:
        torch.testing.assert_close(have[key], want[key], atol=1e-4, rtol=0, msg=key)
    # The evaluation's counts are summed over both ranks' shares: the same scores as one process.
    finals = [[r for r in read_metrics(run, "eval") if r["label"] == "final"][0] for run in (runs[1], runs[2])]
    for key in ("eval_loss", "token_accuracy", "entity_f1"):
        assert finals[1][key] == pytest.approx(finals[0][key], abs=1e-4), key
