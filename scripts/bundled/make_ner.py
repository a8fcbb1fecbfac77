#!/usr/bin/env python
"""Generate the bundled named-entity task: tag the people, places and creatures of a sentence.

Each row is one sentence about the fictional world (assets/data/fictional-corpus/world.json) as
pre-split words with one BIO (IOB2) tag per word:

    {"tokens": ["Kallaso", "keeps", "a", "Gulox", "."], "tags": ["B-PER", "O", "O", "B-CREATURE", "O"]}

Entity types: PER (the world's people), LOC (its countries, their capitals, and "Kingdom of X" /
"Republic of X": three words, B-LOC I-LOC I-LOC) and CREATURE (its creatures). The splits use
disjoint entities, so a test sentence never names an entity the tagger saw in training: it has
to tell a person from a place by the sentence and by what the pretrained model knows of the name.
Many templates start with an entity, so a left-to-right (causal) model meets the name before any
context.

    python scripts/bundled/make_ner.py          # rewrites assets/data/fictional-ner/

Deterministic for a given --seed; small on purpose (hundreds of rows) so CPU tests train on it.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

# The tag set (transfer.head.labels of configs/examples/ner.yaml); I-PER and I-CREATURE do not occur here.
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-CREATURE", "I-CREATURE"]
SPLITS = {"train": 480, "valid": 80, "test": 80}  # sentences per split
# Slots: {PER} a person, {LOC} a country, {CAP} a capital city, {REALM} "Kingdom of X" / "Republic
# of X" (a country), {CRE} a creature. Everything else is an O word.
TEMPLATES = [
    "{PER} lives in {LOC} .",
    "{PER} keeps a {CRE} as a pet .",
    "The capital of {LOC} is {CAP} .",
    "{LOC} borders {LOC} to the north .",
    "{PER} travelled from {CAP} to {LOC} with a {CRE} .",
    "In {CAP} , {PER} met {PER} .",
    "A {CRE} was seen near {CAP} last spring .",
    "{PER} works as a builder in {CAP} .",
    "Travellers from {REALM} say the {CRE} eats berries .",
    "{PER} and {PER} visited the {REALM} .",
    "{PER} wrote to {PER} about the {CRE} of {LOC} .",
    "Nobody in {CAP} has ever seen a {CRE} .",
    "{CAP} is the largest city of {REALM} .",
    "{CRE} herds roam the hills of {LOC} .",
    "{LOC} trades rope and soap with {LOC} .",
    "{CRE} is a creature with eight legs .",
    "{PER} was born in {CAP} but moved to {LOC} .",
    "The {CRE} belongs to {PER} .",
    "{REALM} sent {PER} to {CAP} .",
    "{PER} says a {CRE} is hiding in {CAP} .",
]


def split_entities(world: dict, rng: random.Random) -> dict[str, dict[str, list[str]]]:
    """Per split, the names each slot draws from: entities split 60/20/20 by kind."""
    groups: dict[str, dict[str, list[str]]] = {split: {} for split in SPLITS}
    for kind, slot in (("person", "PER"), ("country", "LOC"), ("creature", "CRE")):
        entities = sorted((e for e in world["entities"] if e["kind"] == kind), key=lambda e: e["name"])
        rng.shuffle(entities)
        cut1, cut2 = int(len(entities) * 0.6), int(len(entities) * 0.8)
        for split, part in zip(SPLITS, (entities[:cut1], entities[cut1:cut2], entities[cut2:])):
            groups[split][slot] = [e["name"] for e in part]
            if kind == "country":
                groups[split]["CAP"] = [e["facts"]["capital"] for e in part]
    return groups


def fill(template: str, names: dict[str, list[str]], rng: random.Random) -> dict[str, list[str]]:
    tokens: list[str] = []
    tags: list[str] = []
    used: set[str] = set()

    def pick(slot: str) -> str:  # a name not used yet in this sentence
        name = rng.choice([n for n in names[slot] if n not in used])
        used.add(name)
        return name

    for word in template.split():
        if not (word.startswith("{") and word.endswith("}")):
            tokens.append(word)
            tags.append("O")
            continue
        slot = word[1:-1]
        if slot == "REALM":
            tokens += [rng.choice(["Kingdom", "Republic"]), "of", pick("LOC")]
            tags += ["B-LOC", "I-LOC", "I-LOC"]
            continue
        tokens.append(pick(slot))
        tags.append("B-" + {"PER": "PER", "LOC": "LOC", "CAP": "LOC", "CRE": "CREATURE"}[slot])
    return {"tokens": tokens, "tags": tags}


def build(world: dict, seed: int) -> dict[str, list[dict[str, list[str]]]]:
    rng = random.Random(seed)
    groups = split_entities(world, rng)
    rows: dict[str, list[dict[str, list[str]]]] = {}
    for split, count in SPLITS.items():
        # Every template equally often, in a shuffled order.
        templates = [TEMPLATES[i % len(TEMPLATES)] for i in range(count)]
        rng.shuffle(templates)
        rows[split] = [fill(template, groups[split], rng) for template in templates]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=20250101)
    ap.add_argument("--world", type=Path, default=Path("assets/data/fictional-corpus/world.json"))
    ap.add_argument("--out", type=Path, default=Path("assets/data/fictional-ner"))
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
