"""Build the bundled preference set (assets/data/fictional-pref) from the fictional world.

Each question of the fictional-qa set becomes a pair: chosen = the true fact, rejected = a plausible
wrong one (another value the same attribute takes in the world, e.g. another country's capital).
The splits follow fictional-qa's, which splits by fact: no validation or test fact is in a training
pair. Training keeps one phrasing per fact (the first in the file) so the CPU example stays short.

    python scripts/bundled/make_preference.py            # writes assets/data/fictional-pref/{train,valid,test}.jsonl

Deterministic: the wrong value is drawn with a random.Random seeded by the world's seed and the row.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path


def _answer(value: str) -> str:
    return value[:1].upper() + value[1:] + "."  # as make_corpus.py writes answers


def _fact_index(world: dict) -> tuple[dict[tuple[str, str], str], dict[str, list[str]]]:
    """(entity, answer text) -> attribute, and attribute -> every value it takes in the world."""
    by_answer: dict[tuple[str, str], str] = {}
    values: dict[str, set[str]] = defaultdict(set)
    for entity in world["entities"]:
        for attr, value in entity["facts"].items():
            by_answer[(entity["name"], _answer(value))] = attr
            values[attr].add(value)
    return by_answer, {attr: sorted(found) for attr, found in values.items()}


def _pair(row: dict, world: dict, index: tuple, rng: random.Random) -> tuple[tuple[str, str], dict]:
    by_answer, values = index
    messages = row["messages"]
    prompt, answer = messages[:-1], messages[-1]["content"]
    question = prompt[-1]["content"]
    matches = [(name, attr) for (name, text), attr in by_answer.items() if text == answer and name in question]
    if len(matches) != 1:
        raise SystemExit(f"cannot tell which fact {question!r} -> {answer!r} asks about: {matches}")
    name, attr = matches[0]
    wrong = [v for v in values[attr] if _answer(v) != answer]
    rejected = _answer(rng.choice(wrong))
    pair = {
        "prompt": prompt,
        "chosen": {"role": "assistant", "content": answer},
        "rejected": {"role": "assistant", "content": rejected},
    }
    return (name, attr), pair


def build(qa_dir: Path, world_path: Path) -> dict[str, list[dict]]:
    world = json.loads(world_path.read_text())
    index = _fact_index(world)
    out: dict[str, list[dict]] = {}
    for split in ("train", "valid", "test"):
        rows = [json.loads(line) for line in (qa_dir / f"{split}.jsonl").read_text().splitlines() if line.strip()]
        seen: set[tuple[str, str]] = set()
        pairs = []
        for number, row in enumerate(rows):
            fact, pair = _pair(row, world, index, random.Random(f"{world['seed']}-pref-{split}-{number}"))
            if fact in seen:
                continue  # one phrasing per fact
            seen.add(fact)
            pairs.append(pair)
        out[split] = pairs
    return out


def main() -> None:
    root = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qa", type=Path, default=root / "assets/data/fictional-qa")
    parser.add_argument("--world", type=Path, default=root / "assets/data/fictional-corpus/world.json")
    parser.add_argument("--out", type=Path, default=root / "assets/data/fictional-pref")
    args = parser.parse_args()
    splits = build(args.qa, args.world)
    args.out.mkdir(parents=True, exist_ok=True)
    for split, pairs in splits.items():
        text = "".join(json.dumps(pair, ensure_ascii=False) + "\n" for pair in pairs)
        (args.out / f"{split}.jsonl").write_text(text)
        print(f"{args.out / split}.jsonl: {len(pairs)} pairs")


if __name__ == "__main__":
    main()
