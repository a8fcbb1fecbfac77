#!/usr/bin/env python
"""Pretrain the bundled tiny ViT (ftl-tiny-vit) on the generated SOURCE image task (make_images.py).

The result is a small image classifier for the source shapes; ftl's vision examples replace its
head with one for the TARGET task's new classes and fine-tune it (transfer learning). Saved with
its image processor, so AutoModelForImageClassification / AutoImageProcessor.from_pretrained load it
offline. The processor is the PIL-backed ViTImageProcessorPil: it needs no torchvision.

Run via scripts/bundled/build_all.sh, or directly:
  python scripts/bundled/build_vision.py --source build/bundled/source-shapes --out assets/models/ftl-tiny-vit
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is built locally; never touch a hub

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

IMAGE_SIZE = 32


def load_folder(root: Path, processor: ViTImageProcessorPil) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    labels = sorted(p.name for p in root.iterdir() if p.is_dir())
    images, targets = [], []
    for index, label in enumerate(labels):
        for path in sorted((root / label).glob("*.png")):
            images.append(Image.open(path).convert("RGB"))
            targets.append(index)
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    return pixels, torch.tensor(targets), labels


def accuracy(model: ViTForImageClassification, pixels: torch.Tensor, targets: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(pixel_values=chunk).logits.argmax(-1) for chunk in pixels.split(256)])
    model.train()
    return float((predicted == targets).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=20250101)
    parser.add_argument("--source", type=Path, default=Path("build/bundled/source-shapes"))
    parser.add_argument("--out", type=Path, default=Path("assets/models/ftl-tiny-vit"))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # deterministic for a seed, and quick on a busy machine
    processor = ViTImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    train_x, train_y, labels = load_folder(args.source / "train", processor)
    valid_x, valid_y, _ = load_folder(args.source / "valid", processor)
    config = ViTConfig(
        image_size=IMAGE_SIZE,
        patch_size=8,  # 16 patches + the class token: quick on a CPU
        num_channels=3,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    model = ViTForImageClassification(config)
    steps_per_epoch = len(train_x) // args.batch_size
    total = steps_per_epoch * args.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=total, pct_start=0.1)
    generator = torch.Generator().manual_seed(args.seed)
    started = time.time()
    model.train()
    for epoch in range(args.epochs):
        order = torch.randperm(len(train_x), generator=generator)
        for step in range(steps_per_epoch):
            index = order[step * args.batch_size : (step + 1) * args.batch_size]
            batch = train_x[index]
            flip = torch.rand(len(index), generator=generator) < 0.5  # horizontal flips: the shapes allow them
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
            loss = F.cross_entropy(model(pixel_values=batch).logits, train_y[index])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
        if epoch % 5 == 4 or epoch == args.epochs - 1:
            print(
                f"epoch {epoch + 1}: loss {loss.item():.3f} valid accuracy {accuracy(model, valid_x, valid_y):.3f} "
                f"({time.time() - started:.0f}s)",
                flush=True,
            )
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(args.out))
    processor.save_pretrained(str(args.out))
    report = {
        "source_task": labels,
        "source_valid_accuracy": round(accuracy(model, valid_x, valid_y), 4),
        "epochs": args.epochs,
        "seed": args.seed,
    }
    (args.out / "README.md").write_text(
        "# ftl-tiny-vit\n\nA tiny ViT (image 32, patch 8, hidden 64, 4 layers) pretrained by "
        "scripts/bundled/build_vision.py on the generated source shapes task "
        f"({', '.join(labels)}); built for ftl's tests and vision examples, not for real use.\n\n"
        f"```json\n{json.dumps(report, indent=1)}\n```\n"
    )
    print(f"saved {args.out}: {report}")


if __name__ == "__main__":
    main()
