#!/usr/bin/env python
"""Generate the two bundled image tasks: a SOURCE task to pretrain the tiny ViT on, and a TARGET task
with new classes to transfer to.

Every image is a 32x32 RGB PNG of one procedurally drawn shape (random colour, size, position and
rotation) on a noisy, textured background. Both tasks share the low-level structure a vision
backbone learns first (edges at all orientations, filled vs outlined regions, corners, curves), but
the target's classes are new shapes, so a backbone pretrained on the source transfers, while a model
trained from scratch on the small target set has little to go on.

Written as image folders, root/<split>/<label>/<index>.png:
  target (committed):  assets/data/fictional-shapes/{train,valid,test}/<label>/*.png
  source (git-ignored, only needed to pretrain): build/bundled/source-shapes/{train,valid}/<label>/*.png

  python scripts/bundled/make_images.py --seed 20250101 --target assets/data/fictional-shapes \
      --source build/bundled/source-shapes
"""

from __future__ import annotations

import argparse
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 32
SCALE = 4  # shapes are drawn at 4x and downsampled, for anti-aliased edges

Draw = Callable[[ImageDraw.ImageDraw, float, float, float, float, tuple[int, int, int], int], None]


def _polygon(points: list[tuple[float, float]], cx: float, cy: float, r: float, angle: float) -> list[tuple]:
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * cos - y * sin), cy + r * (x * sin + y * cos)) for x, y in points]


def _disc(d, cx, cy, r, a, colour, w):
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)


def _square(d, cx, cy, r, a, colour, w):
    d.polygon(_polygon([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)], cx, cy, r, a * 0.3), fill=colour)


def _triangle(d, cx, cy, r, a, colour, w):
    d.polygon(_polygon([(0, -1), (0.87, 0.5), (-0.87, 0.5)], cx, cy, r, a), fill=colour)


def _plus(d, cx, cy, r, a, colour, w):
    t = 0.28
    d.polygon(_polygon([(-t, -1), (t, -1), (t, 1), (-t, 1)], cx, cy, r, a * 0.2), fill=colour)
    d.polygon(_polygon([(-1, -t), (1, -t), (1, t), (-1, t)], cx, cy, r, a * 0.2), fill=colour)


def _ring(d, cx, cy, r, a, colour, w):
    d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=w)


def _stripes(d, cx, cy, r, a, colour, w):
    for k in (-1, 0, 1):
        y = cy + k * r * 0.6
        d.rectangle([cx - r, y - w / 2, cx + r, y + w / 2], fill=colour)


def _diamond(d, cx, cy, r, a, colour, w):
    d.polygon(_polygon([(0, -1), (0.6, 0), (0, 1), (-0.6, 0)], cx, cy, r, a * 0.2), fill=colour)


def _ellipse(d, cx, cy, r, a, colour, w):
    d.ellipse([cx - r, cy - r * 0.45, cx + r, cy + r * 0.45], fill=colour)


def _hollow_square(d, cx, cy, r, a, colour, w):
    d.polygon(
        _polygon([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)], cx, cy, r, a * 0.3), outline=colour, width=w
    )


def _x_cross(d, cx, cy, r, a, colour, w):
    _plus(d, cx, cy, r, a * 0.2 + math.pi / 4 / 0.2, colour, w)


def _half_disc(d, cx, cy, r, a, colour, w):
    start = math.degrees(a) % 360
    d.pieslice([cx - r, cy - r, cx + r, cy + r], start, start + 180, fill=colour)


SOURCE: dict[str, Draw] = {
    "disc": _disc,
    "square": _square,
    "triangle": _triangle,
    "plus": _plus,
    "ring": _ring,
    "stripes": _stripes,
}
TARGET: dict[str, Draw] = {
    "diamond": _diamond,
    "ellipse": _ellipse,
    "hollow_square": _hollow_square,
    "x_cross": _x_cross,
    "half_disc": _half_disc,
}


def draw_image(shape: Draw, rng: np.random.Generator) -> Image.Image:
    big = SIZE * SCALE
    background = rng.integers(0, 256, 3)
    # A low-frequency texture: a random smooth gradient of a second colour.
    other = rng.integers(0, 256, 3)
    ramp = np.linspace(0, 1, big)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, big)[:, None, None]
    base = background * (1 - 0.5 * ramp) + other * 0.5 * ramp
    canvas = Image.fromarray(np.broadcast_to(base, (big, big, 3)).astype(np.uint8))
    d = ImageDraw.Draw(canvas)
    # The shape's colour stays well away from the background's, so it is always visible.
    colour = tuple(int(c) for c in (background + rng.integers(90, 166, 3)) % 256)
    r = rng.uniform(0.26, 0.38) * big
    # Near the centre (a few pixels of jitter): a tiny ViT has no translation invariance to lean on.
    cx, cy = big / 2 + rng.uniform(-0.1, 0.1, 2) * big
    width = int(rng.uniform(0.08, 0.14) * big)
    shape(d, float(cx), float(cy), float(r), float(rng.uniform(0, 2 * math.pi)), colour, width)
    small = canvas.filter(ImageFilter.GaussianBlur(SCALE / 2)).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    pixels = np.asarray(small).astype(np.float64) + rng.normal(0, 8, (SIZE, SIZE, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_task(root: Path, classes: dict[str, Draw], splits: dict[str, int], rng: np.random.Generator) -> int:
    """`splits`: images per class in each split. Returns the number of images written."""
    if root.exists():
        shutil.rmtree(root)  # a rerun never leaves images of an older layout behind
    written = 0
    for split, per_class in splits.items():
        for label, shape in classes.items():
            folder = root / split / label
            folder.mkdir(parents=True)
            for index in range(per_class):
                draw_image(shape, rng).save(folder / f"{index:04d}.png", optimize=True)
                written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=20250101)
    parser.add_argument("--target", type=Path, default=Path("assets/data/fictional-shapes"))
    parser.add_argument("--source", type=Path, default=Path("build/bundled/source-shapes"))
    args = parser.parse_args()
    target = write_task(
        args.target, TARGET, {"train": 24, "valid": 16, "test": 24}, np.random.default_rng([args.seed, 1])
    )
    source = write_task(args.source, SOURCE, {"train": 600, "valid": 50}, np.random.default_rng([args.seed, 2]))
    print(f"target task: {target} images in {args.target}; source task: {source} images in {args.source}")


if __name__ == "__main__":
    main()
