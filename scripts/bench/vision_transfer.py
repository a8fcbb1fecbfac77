#!/usr/bin/env python
"""Transfer learning for images, measured: the bundled target shapes task (5 new classes, 120
training images) at the same step budget, four ways:

  from scratch         the same ViT architecture, randomly initialised, everything trained
  feature extraction   the pretrained ftl-tiny-vit, backbone frozen, only the new head trained
  partial fine-tuning  the textbook recipe (configs/examples/vision_transfer.yaml): embeddings and
                       the first 2 of 4 blocks frozen, head 1e-3, the rest of the body 1e-4
  full fine-tuning     everything trained, head 1e-3, body 1e-4

Each run is configs/examples/vision_transfer.yaml with overrides (no early stopping, so every run
trains the same number of steps), on the local backend; the table shows the test accuracy and
macro-F1 before (base) and after training. Transfer must beat training from scratch.

  python scripts/bench/vision_transfer.py [--steps 150] [--out build/bench/vision]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from launcher.commands import train  # noqa: E402

EXAMPLE = REPO / "configs/examples/vision_transfer.yaml"
BUNDLED = REPO / "assets/models/ftl-tiny-vit"

# Each setting: overrides of the example config.
COMMON = ["transfer.early_stopping.enabled=false", "cluster.backend=local", "output.report=false"]
SETTINGS: dict[str, list[str]] = {
    "from scratch": [
        "transfer.freeze.embeddings=false",
        "transfer.freeze.first_n_blocks=0",
        "training.learning_rate=1.0e-3",  # a random body needs the head's rate, not a fine-tuning one
    ],
    "feature extraction": [
        "transfer.freeze.embeddings=false",
        "transfer.freeze.first_n_blocks=0",
        "transfer.freeze.all_but_head=true",
    ],
    "partial fine-tuning": [],
    "full fine-tuning": ["transfer.freeze.embeddings=false", "transfer.freeze.first_n_blocks=0"],
}


def random_init_copy(out: Path, seed: int) -> Path:
    """The bundled model's architecture and image processor with freshly initialised weights."""
    import torch
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    torch.manual_seed(seed)
    model = AutoModelForImageClassification.from_config(AutoConfig.from_pretrained(str(BUNDLED)))
    model.save_pretrained(str(out))
    AutoImageProcessor.from_pretrained(str(BUNDLED)).save_pretrained(str(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "build/bench/vision")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    scratch_model = random_init_copy(args.out / "scratch-model", args.seed)
    results = {}
    for name, overrides in SETTINGS.items():
        run = args.out / name.replace(" ", "-")
        model = scratch_model if name == "from scratch" else BUNDLED
        started = time.time()
        code = train(
            str(EXAMPLE),
            [
                *COMMON,
                *overrides,
                f"model.path={model}",
                f"output.dir={run}",
                f"training.max_steps={args.steps}",
                f"training.seed={args.seed}",
                "training.progress_bar=false",
            ],
        )
        if code != 0:
            raise SystemExit(f"{name}: ftl train exited {code}")
        test = json.loads((run / "summary.json").read_text())["scores"]["test"]
        results[name] = {"base": test["base"], "final": test["final"], "seconds": round(time.time() - started)}
    print(
        f"\n{args.steps} steps of 16 images, seed {args.seed}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs"
    )
    print("| setting | test accuracy (base -> trained) | test macro-F1 (trained) | wall time |")
    print("|---|---|---|---|")
    for name, result in results.items():
        base, final = result["base"], result["final"]
        print(
            f"| {name} | {100 * base['accuracy']:.1f}% -> {100 * final['accuracy']:.1f}% | "
            f"{final['macro_f1']:.3f} | {result['seconds']} s |"
        )
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    scratch = results["from scratch"]["final"]["accuracy"]
    beaten = all(results[n]["final"]["accuracy"] > scratch for n in SETTINGS if n != "from scratch")
    print(f"\ntransfer beats from-scratch: {'yes' if beaten else 'NO'}")


if __name__ == "__main__":
    main()
