"""Image classification with the bundled tiny ViT (transfer.head.type=image_classification): the
model's own image processor prepares the batches, augmentation is seeded and training-only, the
textbook recipe (configs/examples/vision_transfer.yaml) learns the new classes with its frozen
blocks untouched, the export works with stock transformers, 2 DDP workers match one process, and
bad images are named by file. One training run (module-scoped) serves most assertions."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from launcher.commands import train
from launcher.config_loader import load_config
from tests.conftest import FTL, REPO
from trainer.data.batches import RowDataset, make_batch
from trainer.data.images import ImageInputs, load_image_inputs, load_image_set
from trainer.errors import DataError
from trainer.metrics import read_metrics

pytestmark = pytest.mark.integration

EXAMPLE = REPO / "configs/examples/vision_transfer.yaml"
VIT = REPO / "assets/models/ftl-tiny-vit"
SHAPES = REPO / "assets/data/fictional-shapes"
LABELS = ["diamond", "ellipse", "half_disc", "hollow_square", "x_cross"]
STEPS = 45
PARITY_STEPS = 4


def _overrides(run: Path, *extra: str) -> list[str]:
    """The example with absolute paths (tests do not run from the repository root) and no extras."""
    return [
        f"model.path={VIT}",
        f"data.train={SHAPES / 'train'}",
        f"data.validation={SHAPES / 'valid'}",
        f"data.test={SHAPES / 'test'}",
        f"output.dir={run}",
        "cluster.backend=local",
        "output.report=false",
        "training.progress_bar=false",
        *extra,
    ]


@pytest.fixture(scope="module")
def textbook(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("vision") / "run"
    assert train(str(EXAMPLE), _overrides(run, f"training.max_steps={STEPS}")) == 0
    return run


def _images(split: str, augmentation: object = None) -> tuple[object, ImageInputs]:
    from trainer.config import ModelConfig

    inputs = load_image_inputs(ModelConfig(path=str(VIT)))
    return load_image_set(str(SHAPES / split), inputs, LABELS, skip_bad_rows=False, augmentation=augmentation), inputs


def test_preprocessing_equals_the_models_image_processor() -> None:
    from PIL import Image
    from transformers import AutoImageProcessor

    examples, _ = _images("valid")
    files = sorted((SHAPES / "valid").rglob("*.png"))
    picked = [0, 17, 40, len(files) - 1]
    batch = make_batch(RowDataset(examples, [[i] for i in range(len(files))], packed=False), picked, 0)
    processor = AutoImageProcessor.from_pretrained(str(VIT))
    expected = processor(images=[Image.open(files[i]).convert("RGB") for i in picked], return_tensors="pt")
    assert torch.equal(batch["pixel_values"], expected["pixel_values"])
    assert batch["class_labels"].tolist() == [LABELS.index(files[i].parent.name) for i in picked]


def test_augmentation_is_seeded_by_position_and_training_only() -> None:
    from trainer.config import ImageAugmentationConfig
    from trainer.data.prepare import prepare_data

    augmentation = ImageAugmentationConfig(random_resized_crop=True, horizontal_flip=True)
    examples, inputs = _images("train", augmentation)
    images = examples.images
    plain = images.pixel_values([0, 1, 2, 3])
    first = images.pixel_values([0, 1, 2, 3], positions=[10, 11, 12, 13])
    assert torch.equal(first, images.pixel_values([0, 1, 2, 3], positions=[10, 11, 12, 13]))  # a resume sees the same
    assert not torch.equal(first, plain)
    assert not torch.equal(
        first, images.pixel_values([0, 1, 2, 3], positions=[20, 21, 22, 23])
    )  # the next epoch differs

    cfg = load_config(EXAMPLE, _overrides(Path("unused")))
    assert cfg.data.augmentation.any
    data = prepare_data(
        cfg.data, inputs, seed=1, micro_batch_size=4, want_prompts=False, max_prompts=None, label_names=LABELS
    )
    assert data.train.examples.images.augmentation is not None
    for eval_set in data.evals:  # validation and test are never augmented, whatever the batch says
        eval_rows = RowDataset(eval_set.examples, [[0], [1]], packed=False)
        assert eval_set.examples.images.augmentation is None
        assert torch.equal(
            make_batch(eval_rows, [0, 1], 0, sample_positions=[5, 6])["pixel_values"],
            make_batch(eval_rows, [0, 1], 0)["pixel_values"],
        )


def test_textbook_recipe_learns_the_new_classes_with_frozen_blocks_unchanged(textbook: Path) -> None:
    scores = json.loads((textbook / "summary.json").read_text())["scores"]["test"]
    assert scores["base"]["accuracy"] < 0.4  # the new head starts near chance (1/5)
    assert scores["final"]["accuracy"] >= scores["base"]["accuracy"] + 0.3
    base = load_file(str(VIT / "model.safetensors"))
    tuned = load_file(str(textbook / "final" / "merged" / "model.safetensors"))
    frozen = [
        k
        for k in base
        if k.startswith("vit.embeddings.") or k.startswith(("vit.encoder.layer.0.", "vit.encoder.layer.1."))
    ]
    trained = [k for k in base if k.startswith(("vit.encoder.layer.2.", "vit.encoder.layer.3."))]
    assert frozen and trained
    for key in frozen:
        assert torch.equal(tuned[key], base[key]), key  # bit-identical
    assert all(not torch.equal(tuned[key], base[key]) for key in trained)
    assert tuned["classifier.weight"].shape == (len(LABELS), base["classifier.weight"].shape[1])


def test_export_loads_with_stock_transformers_and_pipeline(textbook: Path) -> None:
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    merged_dir = textbook / "final" / "merged"
    model = AutoModelForImageClassification.from_pretrained(str(merged_dir)).eval()
    assert model.config.id2label == dict(enumerate(LABELS))
    processor = AutoImageProcessor.from_pretrained(str(merged_dir))
    examples = load_image_set(str(SHAPES / "test"), ImageInputs(processor), LABELS, skip_bad_rows=False)
    count = len(examples)
    with torch.no_grad():
        logits = model(pixel_values=examples.images.pixel_values(list(range(count)))).logits
    accuracy = float((logits.argmax(-1) == torch.as_tensor(examples.classes)).float().mean())
    summary = json.loads((textbook / "summary.json").read_text())["scores"]["test"]["final"]
    assert accuracy == pytest.approx(summary["accuracy"], abs=1e-6)

    classify = pipeline("image-classification", model=str(merged_dir), device="cpu")
    files = sorted((SHAPES / "test").rglob("*.png"))
    for index in (0, 50, count - 1):
        answer = classify(str(files[index]), top_k=len(LABELS))
        probabilities = logits[index].softmax(-1)
        for entry in answer:
            assert entry["score"] == pytest.approx(float(probabilities[LABELS.index(entry["label"])]), abs=1e-5)


def test_two_ddp_workers_match_one_process(textbook: Path, tmp_path: Path) -> None:
    """The first steps of the module's run (micro-batch 16, augmentation on) on 2 workers x 8."""
    run = tmp_path / "run"
    extra = [
        f"training.max_steps={PARITY_STEPS}",
        "training.micro_batch_size=8",
        "cluster.workers=2",
        "parallel.strategy=ddp",
        "eval.at_start=false",
        "eval.every_steps=0",
        "transfer.early_stopping.enabled=false",
    ]
    result = subprocess.run(
        [*FTL, "train", str(EXAMPLE), *_overrides(run, *extra)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reference = read_metrics(textbook, "train")[:PARITY_STEPS]
    have = read_metrics(run, "train")
    assert [r["step"] for r in have] == [r["step"] for r in reference]
    assert [r["loss"] for r in have] == pytest.approx([r["loss"] for r in reference], rel=1e-5)
    assert [r["grad_norm"] for r in have] == pytest.approx([r["grad_norm"] for r in reference], rel=1e-4)


def test_lora_adapts_the_unfrozen_blocks_and_saves_the_new_head(tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForImageClassification

    run = tmp_path / "run"
    extra = ["method.type=lora", "training.max_steps=3", "eval.at_start=false", "eval.every_steps=0"]
    extra += ["transfer.early_stopping.enabled=false", "training.learning_rate=5e-3"]
    assert train(str(EXAMPLE), _overrides(run, *extra)) == 0
    keys = list(load_file(str(run / "final" / "adapter" / "adapter_model.safetensors")))
    adapted = {key.split(".lora_A")[0].rsplit(".", 1)[-1] for key in keys if ".lora_A" in key}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"}  # all-linear: attention and MLP
    assert not any(".layers.0." in key or ".layers.1." in key for key in keys)  # frozen blocks: no adapters
    assert any("classifier" in key for key in keys)  # the new head, trained in full, saved with the adapter

    merged = AutoModelForImageClassification.from_pretrained(str(run / "final" / "merged")).eval()
    # The recipe of docs/transfer-learning.md: the label names from export.json (the adapter folder
    # has no config.json; the base alone says LABEL_0.., trial 33a).
    labels = json.loads((run / "final" / "export.json").read_text())["labels"]
    assert labels == LABELS
    base = AutoModelForImageClassification.from_pretrained(
        str(VIT),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        ignore_mismatched_sizes=True,
    )
    adapter = PeftModel.from_pretrained(base, str(run / "final" / "adapter")).eval()
    assert adapter.config.id2label == merged.config.id2label
    pixels = _images("test")[0].images.pixel_values([0, 30, 60])
    with torch.no_grad():
        torch.testing.assert_close(adapter(pixel_values=pixels).logits, merged(pixel_values=pixels).logits)


def test_bad_images_and_unknown_labels_are_named_by_file(tmp_path: Path) -> None:
    good = SHAPES / "train" / "diamond" / "0000.png"
    (tmp_path / "broken.png").write_bytes(b"this is not a png")
    rows = [
        {"image": str(good), "label": "diamond"},
        {"image": "missing.png", "label": "ellipse"},
        {"image": "broken.png", "label": "x_cross"},
        {"image": str(good), "label": "hexagon"},
        {"image": str(good.parent), "label": "diamond"},
    ]
    data = tmp_path / "images.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = yaml.safe_load(EXAMPLE.read_text())
    config["model"]["path"] = str(VIT)
    config["data"].update(train=str(data), validation=None, test=None)
    config["transfer"]["early_stopping"]["enabled"] = False
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([*FTL, "validate", str(path), "--data"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "images.jsonl line 2" in output and "missing.png not found" in output
    assert "images.jsonl line 3" in output and "cannot read image" in output and "broken.png" in output
    assert "images.jsonl line 4" in output and "'hexagon'" in output
    # A folder is there: not "not found" (trial 62d).
    assert f"images.jsonl line 5 ({good.parent}): {good.parent} is a folder, not an image file" in output, output
    # Images have no tokens: no max_seq_len, packing or token-slot wording (trial 33a).
    assert "max_seq_len" not in output and "token slots" not in output and "packing" not in output, output

    folder = tmp_path / "folder"
    for label in ("diamond", "hexagon"):
        (folder / label).mkdir(parents=True)
        (folder / label / "a.png").write_bytes(good.read_bytes())
    with pytest.raises(DataError, match=r"hexagon/a\.png: label 'hexagon' \(its folder\) is not one of"):
        _, inputs = _images("valid")
        load_image_set(str(folder), inputs, LABELS, skip_bad_rows=False)
    slipped = tmp_path / "slipped" / "Diamond"  # a case slip of a label's folder gets a did-you-mean
    slipped.mkdir(parents=True)
    (slipped / "a.png").write_bytes(good.read_bytes())
    with pytest.raises(DataError, match=r"label 'Diamond' \(its folder\) is not one of .*; did you mean 'diamond'\?"):
        load_image_set(str(slipped.parent), inputs, LABELS, skip_bad_rows=False)


def test_skipped_bad_images_are_said_by_one_rank(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Every rank decodes the images; the skip warning was printed once per rank (trial 38b)."""
    good = SHAPES / "train" / "diamond" / "0000.png"
    (tmp_path / "diamond").mkdir()
    (tmp_path / "diamond" / "a.png").write_bytes(good.read_bytes())
    (tmp_path / "diamond" / "b.png").write_bytes(b"this is not a png")
    # Files that are not images by their suffix are not read, and said so (trial 62d: silently).
    for name in ("notes.txt", "c.jfif", "d.jfif"):
        (tmp_path / "diamond" / name).write_bytes(good.read_bytes())
    (tmp_path / "diamond" / ".DS_Store").write_bytes(b"")  # a hidden file is no one's image
    _, inputs = _images("valid")
    for speaks, said in ((False, 0), (True, 1)):
        caplog.clear()
        loaded = load_image_set(str(tmp_path), inputs, LABELS, skip_bad_rows=True, speaks=speaks)
        assert len(loaded) == 1 and loaded.stats["skipped_bad"] == 1
        assert sum("skipped 1 bad image(s)" in r.getMessage() for r in caplog.records) == said
        unread = [r.getMessage() for r in caplog.records if "not read, as they are not images" in r.getMessage()]
        assert len(unread) == said, unread
    assert "3 file(s) not read, as they are not images by their suffix (.jfif: 2, .txt: 1; e.g." in unread[0], unread


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["data.format=classification"], "transfer.head.type=image_classification trains on images"),
        (["transfer.head.type=sequence_classification"], "transfer.head.type=image_classification trains on images"),
        (["data.packing=true"], "cannot be packed: set data.packing=false"),
    ],
)
def test_inconsistent_image_settings_are_refused(overrides: list[str], message: str) -> None:
    from launcher.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(EXAMPLE, _overrides(Path("unused"), *overrides))
