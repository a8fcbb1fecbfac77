"""Image classification data (`data.format: image_classification`): read, check and batch images.

A dataset is an image folder, root/<label>/*.png|jpg|... (the folder name is the label), or a
jsonl/json/csv/parquet file of {"image": path, "label": name or id} rows, a relative path resolving
from the file's own folder. Every image is decoded once, when the data is prepared, so an
unreadable file, a missing one or an unknown label is reported (named by file) before training
starts; the decoded images stay in memory (fine for thousands of small images, not ImageNet).

Batches go through the model's own image processor (resize, rescale, normalise), exactly as
`AutoImageProcessor` prepares them. Training batches may first be augmented (data.augmentation:
random resized crop, horizontal flip), seeded by training.seed and the sample's global position,
so a resumed run and any worker count see the same augmented images. Evaluation never augments.

Each image is one "example" of a TokenizedSet (one placeholder token, one target), so sampling,
sharding, validation_split and evaluation work as for text classification.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.config import ImageAugmentationConfig, ModelConfig
from trainer.data.formats import RowProblem, class_label_id, missing_field
from trainer.data.label_ids import close_label, name_index
from trainer.data.sources import read_rows
from trainer.data.tokenized import (
    MAX_REPORTED_ERRORS,
    ScannedRow,
    TokenizedSet,
    bad_rows_message,
    no_usable_rows_message,
    skipped_rows_listing,
)
from trainer.errors import DataError, TrainerInputError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class ImageInputs:
    """The model's image processor, where a text model's tokenizer stands in the trainer: the run
    passes it to data preparation and saves it with the exported model. No token is ever padded."""

    processor: Any
    pad_token_id: int = 0
    chat_template: str | None = None

    def save_pretrained(self, path: str) -> None:
        self.processor.save_pretrained(path)


def load_image_inputs(cfg: ModelConfig) -> ImageInputs:
    from transformers import AutoImageProcessor

    source = cfg.tokenizer or cfg.path
    try:
        processor = AutoImageProcessor.from_pretrained(
            source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise TrainerInputError(
            f"model.path / model.tokenizer: cannot load an image processor (preprocessor_config.json) from "
            f"{source!r}: {exc}"
        ) from None
    return ImageInputs(processor)


@dataclass
class ImageExamples:
    """Decoded images of a TokenizedSet, and how batches of them become pixel_values."""

    images: list[Any]  # PIL images, RGB
    processor: Any
    augmentation: ImageAugmentationConfig | None = None  # training set only
    seed: int = 0

    def subset(self, indices: Iterable[int]) -> ImageExamples:
        return ImageExamples([self.images[int(i)] for i in indices], self.processor, self.augmentation, self.seed)

    def pixel_values(self, indices: list[int], positions: Iterable[int] | None = None) -> torch.Tensor:
        """The processed images; `positions` (the samples' global positions, training only) turn on augmentation."""
        images = [self.images[i] for i in indices]
        if positions is not None and self.augmentation is not None and self.augmentation.any:
            images = [
                augment(image, self.augmentation, np.random.default_rng([self.seed, int(position)]))
                for image, position in zip(images, positions)
            ]
        return torch.as_tensor(self.processor(images=images, return_tensors="pt")["pixel_values"])


def augment(image: Any, cfg: ImageAugmentationConfig, rng: np.random.Generator) -> Any:
    """Random resized crop (back to the image's own size; the processor then resizes) and horizontal flip."""
    from PIL import Image

    width, height = image.size
    if cfg.random_resized_crop:
        box = _crop_box(width, height, cfg, rng)
        image = image.resize((width, height), Image.Resampling.BILINEAR, box=box)
    if cfg.horizontal_flip and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


def _crop_box(
    width: int, height: int, cfg: ImageAugmentationConfig, rng: np.random.Generator
) -> tuple[float, float, float, float]:
    """torchvision's RandomResizedCrop box: an area share in crop_scale, an aspect ratio log-uniform in
    crop_ratio; ten tries, then the whole image."""
    area = width * height
    low, high = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*cfg.crop_scale)
        ratio = math.exp(rng.uniform(low, high))
        w, h = math.sqrt(target * ratio), math.sqrt(target / ratio)
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.uniform(0, width - w), rng.uniform(0, height - h)
            return (left, top, left + w, top + h)
    return (0.0, 0.0, float(width), float(height))


def read_images(spec: str, label_names: list[str], *, speaks: bool = True) -> Iterator[tuple[ScannedRow, Any]]:
    """Every image of the dataset in order, decoded (None for a bad one, whose ScannedRow says why).
    `speaks`: this process says what an image folder holds besides images (one rank of several)."""
    path = Path(spec)
    if path.is_dir():
        entries, unread = _folder_entries(path, label_names)
        if unread and speaks:
            log.warning(unread_files_note(path, unread))
    elif path.is_file():
        entries = _file_entries(path, label_names)
    else:
        raise DataError(
            f"{spec}: not found; data.format=image_classification reads an image folder (root/<label>/*.png) "
            "or a jsonl of {image, label} rows"
        )
    for index, (where, image_path, label, problem) in enumerate(entries):
        if problem:
            yield ScannedRow(index, where, "bad", problem=f"{where}: {problem}"), None
            continue
        try:
            image = _decode(image_path)
        except RowProblem as exc:
            yield ScannedRow(index, where, "bad", problem=f"{where}: {exc}"), None
            continue
        yield ScannedRow(index, where, "kept", "", 1, [0], [1], label), image


def scan_images(spec: str, label_names: list[str]) -> Iterator[ScannedRow]:
    """The rows as `ftl validate --data` reports them (kept or bad, with the reason)."""
    for row, _ in read_images(spec, label_names):
        yield row


def load_image_set(
    spec: str,
    inputs: ImageInputs,
    label_names: list[str],
    *,
    skip_bad_rows: bool,
    augmentation: ImageAugmentationConfig | None = None,
    seed: int = 0,
    speaks: bool = True,
) -> TokenizedSet:
    images: list[Any] = []
    sources: list[int] = []
    classes: list[int] = []
    bad: list[str] = []
    stats: dict[str, Any] = {"rows": 0, "skipped_bad": 0}
    for row, image in read_images(spec, label_names, speaks=speaks):
        if row.fate == "bad":
            bad.append(row.problem)
            continue
        images.append(image)
        sources.append(row.index)
        classes.append(int(row.class_label))  # type: ignore[arg-type]
        stats["rows"] += 1
    if bad and not skip_bad_rows:
        raise DataError(bad_rows_message(spec, bad))
    if bad:
        stats["skipped_bad"] = len(bad)
    if bad and speaks:  # every rank decodes the images: one of them says it (trial 38b saw it per rank)
        log.warning(
            "%s: skipped %d bad image(s) (data.skip_bad_rows); the first:\n%s",
            spec,
            len(bad),
            skipped_rows_listing(bad, len(bad)),
        )
    stats["skipped_examples"] = bad[:MAX_REPORTED_ERRORS]
    if not images:
        raise DataError(no_usable_rows_message(spec, stats))
    count = len(images)
    return TokenizedSet(
        ids=np.zeros(count, np.int32),  # one placeholder token per image: the sampler and batches count examples
        mask=np.ones(count, np.uint8),
        offsets=np.arange(count + 1, dtype=np.int64),
        source_rows=np.asarray(sources, np.int64),
        stats=stats,
        classes=np.asarray(classes, np.int64),
        images=ImageExamples(images, inputs.processor, augmentation, seed),
    )


Entry = tuple[str, Path | None, int | None, str]  # where, image path, class id, problem ("" if none)


def _folder_entries(root: Path, label_names: list[str]) -> tuple[list[Entry], list[Path]]:
    """The folder's images, and its other files (not read: said, as a .jfif or .heic folder of
    photos would train on nothing of it without a word; trial 62d)."""
    entries: list[Entry] = []
    unread: list[Path] = []
    for item in sorted(root.iterdir()):
        if item.name.startswith("."):
            continue
        if item.is_file() and item.suffix.lower() in IMAGE_SUFFIXES:
            entries.append((str(item), None, None, "an image outside a label folder; put it in root/<label>/"))
        if not item.is_dir():
            continue
        label = name_index(item.name, label_names)  # a folder name in another Unicode form is the same label
        files = sorted(f for f in item.rglob("*") if f.is_file() and not f.name.startswith("."))
        unread += [f for f in files if f.suffix.lower() not in IMAGE_SUFFIXES]
        for file in (f for f in files if f.suffix.lower() in IMAGE_SUFFIXES):
            problem = (
                ""
                if label is not None
                else f"label {item.name!r} (its folder) is not one of transfer.head.labels {label_names}"
                + close_label(item.name, label_names)
            )
            entries.append((str(file), file, label, problem))
    if not entries:
        raise DataError(
            f"{root}: no images found; an image folder holds root/<label>/*.png (or .jpg, ...), one folder per label"
            + (f" ({unread_files_note(root, unread)})" if unread else "")
        )
    return entries, unread


def unread_files_note(root: Path, unread: list[Path]) -> str:
    """The files of an image folder's label folders that are not read, counted by suffix."""
    by_suffix: dict[str, int] = {}
    for file in unread:
        by_suffix[file.suffix.lower() or "(none)"] = by_suffix.get(file.suffix.lower() or "(none)", 0) + 1
    counts = ", ".join(f"{suffix}: {count}" for suffix, count in sorted(by_suffix.items()))
    return (
        f"{root}: {len(unread)} file(s) not read, as they are not images by their suffix ({counts}; e.g. "
        f"{unread[0]}); images end in {', '.join(IMAGE_SUFFIXES)}: convert or rename any that are images"
    )


def _file_entries(path: Path, label_names: list[str]) -> list[Entry]:
    entries: list[Entry] = []
    for row in read_rows(str(path)):
        values = row.values
        reason = getattr(values, "reason", None)
        if reason or not isinstance(values, dict):
            entries.append((row.where, None, None, reason or "expected an object with fields image and label"))
            continue
        try:
            image = values.get("image")
            if image is None:
                raise missing_field(values, "image")
            if not isinstance(image, str) or not image.strip():
                raise RowProblem("field 'image' must be a path (relative to the data file's folder)")
            label = class_label_id(values, label_names)
        except RowProblem as exc:
            entries.append((row.where, None, None, str(exc)))
            continue
        file = Path(image) if Path(image).is_absolute() else path.parent / image
        entries.append((f"{row.where} ({file})", file, label, ""))
    return entries


def _decode(path: Path | None) -> Any:
    from PIL import Image, UnidentifiedImageError

    assert path is not None  # entries without a path carry a problem
    if path.is_dir():  # trial 62d: said as "not found", though it is there
        raise RowProblem(
            f"{path} is a folder, not an image file; a row names one image (a whole image folder, "
            "root/<label>/*.png, is given as the data path itself)"
        )
    if not path.is_file():
        raise RowProblem(f"image file {path} not found")
    try:
        with Image.open(path) as opened:
            opened.load()
            return _eight_bit(opened).convert("RGB")
    except Image.DecompressionBombError as exc:  # not an OSError: a raw traceback killed the workers (trial 38b)
        raise RowProblem(f"image {path.name} is too large to decode safely ({exc}); downscale it") from None
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        said = str(exc).replace(f" '{path}'", "").replace(str(path), "the file")  # the path is said once
        raise RowProblem(f"cannot read image {path}: {said}") from None


# PIL modes of more than 8 bits a channel: convert("RGB") clips them at 255, so a 16-bit grayscale
# scan (values up to 65535, common in medical and scientific images) became a near-white image.
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _eight_bit(image: Any) -> Any:
    """`image` with a wide grayscale mode scaled to 8 bits, as an "L" image; other modes as they are.
    16-bit modes: value / 257. 32-bit integers ("I", from TIFFs of OpenCV or NumPy pipelines): as they
    are when every value fits 0..255 (8-bit data in a wide container: / 257 made it black, trial 62d),
    else / 257 within 0..65535. Floating point ("F"): x 255 within 0..1. Anything else: the image's
    own min..max."""
    if image.mode not in WIDE_MODES:
        return image
    import numpy as np
    from PIL import Image

    values = np.asarray(image, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if image.mode == "I" and low >= 0 and high <= 255:
        scaled = values
    elif image.mode != "F" and low >= 0 and high <= 65535:
        scaled = values / 257.0
    elif image.mode == "F" and low >= 0 and high <= 1.0:
        scaled = values * 255.0
    else:
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))  # 2-D uint8: mode L
