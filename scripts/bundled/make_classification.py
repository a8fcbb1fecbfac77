#!/usr/bin/env python
"""Generate the bundled sequence-classification task: which kind of thing a sentence is about.

Each row is one sentence stating a fact from the fictional world (assets/data/fictional-corpus/
world.json), phrased with the same statement templates the pretraining corpus used, and labelled
with the kind of entity it describes: `country`, `person` or `creature`. The splits use disjoint
entities, so a test sentence never names an entity the classifier saw in training; labels are
balanced, so chance accuracy is 1/3.

    python scripts/bundled/make_classification.py          # rewrites assets/data/fictional-kinds/

Deterministic for a given --seed; small on purpose (hundreds of rows) so CPU tests train on it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_corpus import ATTR_BY_KEY, _fill  # noqa: E402  (same templates as the pretraining prose)

KINDS = ("country", "person", "creature")
SPLITS = {"train": 120, "valid": 30, "test": 30}  # rows per label


def sentences(rng: random.Random, entities: list[dict], count: int) -> list[str]:
    """`count` distinct fact statements about these entities (round-robin over entities)."""
    pool = [
        _fill(template, entity["name"], value)
        for entity in entities
        for key, value in entity["facts"].items()
        for template in ATTR_BY_KEY[key].statements
    ]
    rng.shuffle(pool)
    if len(pool) < count:
        raise SystemExit(f"only {len(pool)} sentences available for {count} rows")
    return pool[:count]


def build(world: dict, seed: int) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    rows: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for kind in KINDS:
        entities = sorted((e for e in world["entities"] if e["kind"] == kind), key=lambda e: e["name"])
        rng.shuffle(entities)
        # Entities split 60/20/20 so each split names its own entities.
        cut1, cut2 = int(len(entities) * 0.6), int(len(entities) * 0.8)
        groups = {"train": entities[:cut1], "valid": entities[cut1:cut2], "test": entities[cut2:]}
        for split, per_label in SPLITS.items():
            rows[split] += [{"text": text, "label": kind} for text in sentences(rng, groups[split], per_label)]
    for split_rows in rows.values():
        rng.shuffle(split_rows)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=20250101)
    ap.add_argument("--world", type=Path, default=Path("assets/data/fictional-corpus/world.json"))
    ap.add_argument("--out", type=Path, default=Path("assets/data/fictional-kinds"))
    args = ap.parse_args()
    rows = build(json.loads(args.world.read_text()), args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for split, split_rows in rows.items():
        with (args.out / f"{split}.jsonl").open("w", encoding="utf-8") as handle:
            for row in split_rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{args.out / split}.jsonl: {len(split_rows)} rows")


if __name__ == "__main__":
    main()
