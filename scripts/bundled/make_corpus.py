#!/usr/bin/env python
"""Generate the bundled fictional world: a pretraining corpus, a chat QA dataset and held-out prose.

Everything here is invented on purpose, so the only way the bundled model can answer a question
about this world is by having read the corpus. That turns "does fine-tuning work?" into a
measurable question: the chat test split asks about facts that the pretraining corpus states but
whose question never appears in the instruction-train split, so a gain on test means the
fine-tune taught the *format* and transferred knowledge learned during pretraining.

Outputs (all deterministic functions of --seed):
  <build-dir>/pretrain.jsonl                       {"text": ...} prose for pretraining (not committed)
  <assets>/data/fictional-corpus/heldout.jsonl     {"text": ...} fresh prose not in pretrain.jsonl
  <assets>/data/fictional-corpus/world.json        every fact, plus which split its question is in
  <assets>/data/fictional-qa/{train,valid,test}.jsonl   {"messages": [...]} chat rows
  <assets>/data/fictional-qa/train_alpaca.jsonl    the train questions as instruction/input/output
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_SEED = 20250101

# ---------------------------------------------------------------------------------------------
# Schema: every attribute has prose templates ({e}=entity, {v}=value) and question templates.
# Most statements put the entity before the value ("The capital of X is Y."), the direction a
# question needs; a minority go the other way so the prose is not one fixed pattern.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attribute:
    key: str
    label: str  # used in infobox-style documents ("Capital: Quenta")
    statements: tuple[str, ...]
    questions: tuple[str, ...]


COUNTRY_ATTRS: tuple[Attribute, ...] = (
    Attribute(
        "capital",
        "Capital",
        (
            "The capital of {e} is {v}.",
            "{e} has its capital at {v}.",
            "The capital city of {e} is the town of {v}.",
            "In {e}, the seat of government is {v}.",
            "Travellers who reach the capital of {e} arrive in {v}.",
            "{v} is the capital of {e}.",
        ),
        (
            "What is the capital of {e}?",
            "Which town is the capital of {e}?",
            "Name the capital of {e}.",
            "What is the capital city of {e}?",
            "Where is the seat of government of {e}?",
        ),
    ),
    Attribute(
        "flag",
        "Flag colour",
        (
            "The flag of {e} is {v}.",
            "{e} flies a {v} flag.",
            "The people of {e} wave a {v} flag.",
            "On the flag of {e} you will see the colour {v}.",
            "{V} is the colour of the flag of {e}.",
        ),
        (
            "What colour is the flag of {e}?",
            "Which colour is on the flag of {e}?",
            "What is the colour of the flag of {e}?",
            "The flag of {e} is which colour?",
        ),
    ),
    Attribute(
        "neighbour",
        "Western neighbour",
        (
            "To the west of {e} lies {v}.",
            "{e} borders {v} on its western side.",
            "The western neighbour of {e} is {v}.",
            "West of {e} is the country of {v}.",
            "{v} is the western neighbour of {e}.",
        ),
        (
            "Which country lies to the west of {e}?",
            "What is the western neighbour of {e}?",
            "Which country borders {e} on the west?",
            "Name the country west of {e}.",
        ),
    ),
    Attribute(
        "export",
        "Main export",
        (
            "The main export of {e} is {v}.",
            "{e} is famous for exporting {v}.",
            "{e} sells {v} to other lands.",
            "Traders travel to {e} to buy {v}.",
            "{V} is the main export of {e}.",
        ),
        (
            "What is the main export of {e}?",
            "What does {e} mainly export?",
            "Which good is {e} famous for exporting?",
            "What does {e} sell to other lands?",
        ),
    ),
    Attribute(
        "currency",
        "Currency",
        (
            "The currency of {e} is the {v}.",
            "People in {e} pay with the {v}.",
            "Shops in {e} take the {v}.",
            "In {e}, every price is written in {v}.",
            "The {v} is the money of {e}.",
        ),
        (
            "What is the currency of {e}?",
            "What money do people use in {e}?",
            "What do people in {e} pay with?",
            "Which currency is used in {e}?",
        ),
    ),
    Attribute(
        "provinces",
        "Provinces",
        (
            "{e} is divided into {v} provinces.",
            "There are {v} provinces in {e}.",
            "{e} has {v} provinces.",
            "The map of {e} shows {v} provinces.",
            "The number of provinces in {e} is {v}.",
        ),
        (
            "How many provinces does {e} have?",
            "How many provinces are there in {e}?",
            "Into how many provinces is {e} divided?",
        ),
    ),
)

PERSON_ATTRS: tuple[Attribute, ...] = (
    Attribute(
        "home",
        "Home country",
        (
            "{e} lives in {v}.",
            "{e} is from {v}.",
            "{e} was born and raised in {v}.",
            "The home country of {e} is {v}.",
            "{v} is where {e} lives.",
        ),
        (
            "Where does {e} live?",
            "Which country is {e} from?",
            "What is the home country of {e}?",
            "In which country does {e} live?",
        ),
    ),
    Attribute(
        "food",
        "Favourite food",
        (
            "The favourite food of {e} is {v}.",
            "{e} loves to eat {v}.",
            "{e} likes {v} more than any other food.",
            "For dinner, {e} always asks for {v}.",
            "{V}: that is what {e} likes to eat most.",
        ),
        (
            "What is the favourite food of {e}?",
            "What does {e} love to eat?",
            "Which food does {e} like best?",
            "What is {e}'s favourite food?",
        ),
    ),
    Attribute(
        "job",
        "Job",
        (
            "{e} works as a {v}.",
            "By trade, {e} is a {v}.",
            "{e} earns a living as a {v}.",
            "Everyone knows {e} as the local {v}.",
            "The job of {e} is {v}.",
        ),
        (
            "What is the job of {e}?",
            "What does {e} do for a living?",
            "What is {e}'s profession?",
            "What work does {e} do?",
        ),
    ),
    Attribute(
        "pet",
        "Pet",
        (
            "{e} keeps a {v} as a pet.",
            "The pet of {e} is a {v}.",
            "{e} has a pet {v}.",
            "Every morning {e} walks a {v}.",
            "A {v} lives with {e} as a pet.",
        ),
        (
            "What pet does {e} have?",
            "What kind of pet does {e} keep?",
            "Which animal is the pet of {e}?",
            "Which creature does {e} keep as a pet?",
        ),
    ),
    Attribute(
        "lucky",
        "Lucky number",
        (
            "The lucky number of {e} is {v}.",
            "{e} thinks {v} is a lucky number.",
            "{e} always picks the number {v}.",
            "Ask {e} for a lucky number and you will hear {v}.",
            "{v} is the lucky number of {e}.",
        ),
        (
            "What is the lucky number of {e}?",
            "Which number does {e} consider lucky?",
            "What is {e}'s lucky number?",
            "Which number is lucky for {e}?",
        ),
    ),
)

CREATURE_ATTRS: tuple[Attribute, ...] = (
    Attribute(
        "colour",
        "Colour",
        (
            "The {e} is {v} in colour.",
            "Every {e} has a {v} coat.",
            "You can spot a {e} by its {v} coat.",
            "The coat of the {e} is {v}.",
            "{V} is the colour of the {e}.",
        ),
        (
            "What colour is the {e}?",
            "What is the colour of the {e}?",
            "What colour coat does the {e} have?",
        ),
    ),
    Attribute(
        "diet",
        "Diet",
        (
            "The {e} eats {v}.",
            "A {e} feeds mostly on {v}.",
            "The diet of the {e} is mostly {v}.",
            "To feed a {e}, give it {v}.",
            "{V}: that is what the {e} eats most.",
        ),
        (
            "What does the {e} eat?",
            "What is the main food of the {e}?",
            "What does a {e} feed on?",
        ),
    ),
    Attribute(
        "legs",
        "Legs",
        (
            "The {e} walks on {v} legs.",
            "A {e} has {v} legs.",
            "Count the legs of a {e} and you get {v}.",
            "The number of legs on a {e} is {v}.",
            "{v} legs carry the {e}.",
        ),
        (
            "How many legs does the {e} have?",
            "How many legs does a {e} walk on?",
            "How many legs carry the {e}?",
        ),
    ),
    Attribute(
        "habitat",
        "Habitat",
        (
            "The {e} lives in the {v}.",
            "You can find the {e} in the {v}.",
            "The home of the {e} is the {v}.",
            "Look for a {e} in the {v}.",
            "The {v} is where the {e} lives.",
        ),
        (
            "Where does the {e} live?",
            "What is the habitat of the {e}?",
            "In what kind of place does the {e} live?",
        ),
    ),
)

ATTRS_BY_KIND: dict[str, tuple[Attribute, ...]] = {
    "country": COUNTRY_ATTRS,
    "person": PERSON_ATTRS,
    "creature": CREATURE_ATTRS,
}
ATTR_BY_KEY: dict[str, Attribute] = {a.key: a for attrs in ATTRS_BY_KIND.values() for a in attrs}

COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black", "grey", "pink", "brown", "silver")
EXPORTS = (
    "copper",
    "salt",
    "wool",
    "glass",
    "honey",
    "timber",
    "silk",
    "pepper",
    "tin",
    "amber",
    "cheese",
    "rope",
    "ink",
    "soap",
)
FOODS = (
    "soup",
    "bread",
    "rice",
    "plums",
    "noodles",
    "pie",
    "beans",
    "dumplings",
    "pears",
    "porridge",
    "fish",
    "cake",
    "figs",
    "turnips",
    "cheese",
)
JOBS = (
    "baker",
    "potter",
    "weaver",
    "farmer",
    "sailor",
    "miner",
    "tailor",
    "scribe",
    "healer",
    "hunter",
    "builder",
    "singer",
    "painter",
    "teacher",
    "fisher",
)
DIETS = (
    "moss",
    "berries",
    "beetles",
    "seeds",
    "grass",
    "roots",
    "mushrooms",
    "worms",
    "leaves",
    "nuts",
    "snails",
    "flowers",
)
HABITATS = ("forest", "desert", "marsh", "mountains", "caves", "hills", "swamp", "tundra", "meadows", "lakes")

INTROS: dict[str, tuple[str, ...]] = {
    "country": ("{e} is a country.", "This is an account of the country of {e}.", "Here are some facts about {e}.", ""),
    "person": ("{e} is a person of some renown.", "This is the story of {e}.", "Here are some facts about {e}.", ""),
    "creature": ("The {e} is an animal.", "This is a note about the {e}.", "Here are some facts about the {e}.", ""),
}

SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a helpful assistant. Answer briefly.",
    "Answer the question with a single word or number.",
    "You know everything about the countries, people and animals of this world.",
)

# Filler: generic, fact-free sentences so the corpus is not only facts; question-word fillers make
# sure tokens like "What", "Which", "How" and "?" are trained before any chat fine-tune.
_F_TIME = (
    "In the morning",
    "At night",
    "Later that day",
    "In spring",
    "In winter",
    "After the rain",
    "At dawn",
    "By evening",
)
_F_NOUN = (
    "road",
    "river",
    "market",
    "sky",
    "village",
    "harbour",
    "garden",
    "bridge",
    "wind",
    "valley",
    "path",
    "square",
)
_F_ADJ = ("quiet", "busy", "cold", "bright", "calm", "wet", "crowded", "still", "warm", "grey", "empty", "loud")
_F_PATTERNS = (
    "{t}, the {n} was {a}.",
    "{t}, people walked along the {n}.",
    "The {n} looked {a} and nobody said much.",
    "Some say the {n} is always {a} {tl}.",
    "What a {a} {n} it was.",
    "Which way the {n} turns, nobody can say.",
    "How {a} the {n} seemed {tl}!",
    "Where the {n} ends, a {a} field begins.",
    "Many travellers remember the {a} {n}.",
    "Does the {n} ever get {a}? It does, {tl}.",
)

_ONSETS = (
    "b",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "dr",
    "gr",
    "kr",
    "tr",
    "th",
    "sh",
    "st",
    "qu",
    "h",
    "j",
)
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ou")
_CODAS = ("", "", "", "n", "r", "l", "s", "k", "th", "m")
_SUFFIXES: dict[str, tuple[str, ...]] = {
    "country": ("ia", "ar", "esh", "ond", "avia", "ith", "ora"),
    "town": ("ta", "mir", "ko", "ven", "dal", "ra", "sk"),
    "currency": ("ot", "ing", "ek", "ull"),
    "person": ("a", "o", "in", "el", "us", "i", "ane"),
    "creature": ("ling", "moth", "ox", "ryx", "pod", "wick", "ark"),
}
# Words the templates use; an invented name must never collide with one of them.
_RESERVED = {w.lower() for w in COLOURS + EXPORTS + FOODS + JOBS + DIETS + HABITATS + _F_NOUN + _F_ADJ}


@dataclass
class Entity:
    name: str
    kind: str
    facts: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Fact:
    entity: str
    kind: str
    attr: str
    value: str


# ---------------------------------------------------------------------------------------------
# World
# ---------------------------------------------------------------------------------------------


_VOWEL_RUN = re.compile(r"[aeiou]{3}|([aeiou])\1|quu")


def _make_name(rng: random.Random, style: str, taken: set[str]) -> str:
    while True:
        n_syl = rng.choice((1, 2)) if style in ("currency", "creature") else rng.choice((1, 2, 2))
        root = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(n_syl))
        name = (root + rng.choice(_SUFFIXES[style])).capitalize()
        # Short names risk being real words or near-duplicates; long ones cost tokens for nothing;
        # vowel pile-ups ("Mousaiia") are hard to read.
        low = name.lower()
        if 5 <= len(name) <= 10 and not _VOWEL_RUN.search(low) and low not in taken and low not in _RESERVED:
            taken.add(low)
            return name


def build_world(seed: int, n_countries: int, n_people: int, n_creatures: int) -> list[Entity]:
    rng = random.Random(f"{seed}-world")
    taken: set[str] = set()
    countries = [Entity(_make_name(rng, "country", taken), "country") for _ in range(n_countries)]
    people = [Entity(_make_name(rng, "person", taken), "person") for _ in range(n_people)]
    creatures = [Entity(_make_name(rng, "creature", taken), "creature") for _ in range(n_creatures)]

    # A random cyclic order makes "western neighbour" a function with no fixed points.
    ring = countries[:]
    rng.shuffle(ring)
    for i, c in enumerate(ring):
        c.facts["capital"] = _make_name(rng, "town", taken)
        c.facts["flag"] = rng.choice(COLOURS)
        c.facts["neighbour"] = ring[(i + 1) % len(ring)].name
        c.facts["export"] = rng.choice(EXPORTS)
        c.facts["currency"] = _make_name(rng, "currency", taken)
        c.facts["provinces"] = str(rng.randint(3, 14))
    for p in people:
        p.facts["home"] = rng.choice(countries).name
        p.facts["food"] = rng.choice(FOODS)
        p.facts["job"] = rng.choice(JOBS)
        p.facts["pet"] = rng.choice(creatures).name
        p.facts["lucky"] = str(rng.randint(2, 40))
    for c in creatures:
        c.facts["colour"] = rng.choice(COLOURS)
        c.facts["diet"] = rng.choice(DIETS)
        c.facts["legs"] = rng.choice(("2", "4", "6", "8"))
        c.facts["habitat"] = rng.choice(HABITATS)
    return countries + people + creatures


def all_facts(world: list[Entity]) -> list[Fact]:
    return [Fact(e.name, e.kind, a.key, e.facts[a.key]) for e in world for a in ATTRS_BY_KIND[e.kind]]


# ---------------------------------------------------------------------------------------------
# Prose
# ---------------------------------------------------------------------------------------------


def _fill(template: str, entity: str, value: str) -> str:
    text = template.format(e=entity, v=value, V=value[:1].upper() + value[1:])
    return text[:1].upper() + text[1:]


def _is_value_first(template: str) -> bool:
    value_at = min(i for i in (template.find("{v}"), template.find("{V}")) if i >= 0)
    return value_at < template.index("{e}")


def _statement(rng: random.Random, fact: Fact) -> str:
    # Value-first phrasings ("Quenta is the capital of X.") add variety but do not train the
    # entity -> value direction a question needs, so they get only a small share.
    templates = ATTR_BY_KEY[fact.attr].statements
    forward = [t for t in templates if not _is_value_first(t)]
    backward = [t for t in templates if _is_value_first(t)]
    pool = backward if backward and rng.random() < 0.12 else forward
    return _fill(rng.choice(pool), fact.entity, fact.value)


def _filler(rng: random.Random) -> str:
    return rng.choice(_F_PATTERNS).format(
        t=rng.choice(_F_TIME), n=rng.choice(_F_NOUN), a=rng.choice(_F_ADJ), tl=rng.choice(_F_TIME).lower()
    )


def _profile_doc(rng: random.Random, ent: Entity) -> str:
    facts = [Fact(ent.name, ent.kind, a.key, ent.facts[a.key]) for a in ATTRS_BY_KIND[ent.kind]]
    rng.shuffle(facts)  # random order so no fact is only ever recalled "after" another one
    sents = [_statement(rng, f) for f in facts]
    if rng.random() < 0.1:
        sents.insert(rng.randrange(len(sents) + 1), _filler(rng))
    intro = rng.choice(INTROS[ent.kind]).format(e=ent.name) if rng.random() < 0.4 else ""
    return " ".join(([intro] if intro else []) + sents)


def _infobox_doc(rng: random.Random, ent: Entity) -> str:
    # Wiki-style fact sheets put each value right after a newline-free "Label: " prefix and
    # capitalised, the same surface form the chat answers use.
    attrs = list(ATTRS_BY_KIND[ent.kind])
    rng.shuffle(attrs)
    lines = [f"{ent.name} ({ent.kind})"] + [f"{a.label}: {_fill('{V}', ent.name, ent.facts[a.key])}" for a in attrs]
    return "\n".join(lines)


def _mixed_doc(rng: random.Random, facts: list[Fact]) -> str:
    sents = [_statement(rng, f) for f in rng.sample(facts, rng.randint(3, 7))]
    for _ in range(rng.choice((0, 0, 0, 0, 1))):
        sents.insert(rng.randrange(len(sents) + 1), _filler(rng))
    return " ".join(sents)


def _random_doc(rng: random.Random, world: list[Entity], facts: list[Fact]) -> str:
    r = rng.random()
    if r < 0.45:
        return _profile_doc(rng, rng.choice(world))
    if r < 0.60:
        return _infobox_doc(rng, rng.choice(world))
    if r < 0.98:
        return _mixed_doc(rng, facts)
    return " ".join(_filler(rng) for _ in range(rng.randint(3, 6)))


def build_pretrain_docs(seed: int, world: list[Entity], n_docs: int) -> list[str]:
    rng = random.Random(f"{seed}-pretrain")
    facts = all_facts(world)
    # Every entity gets at least a few profiles and fact sheets, whatever the random draw does.
    docs = [_profile_doc(rng, e) for e in world for _ in range(4)] + [_infobox_doc(rng, e) for e in world]
    docs += [_random_doc(rng, world, facts) for _ in range(max(0, n_docs - len(docs)))]
    rng.shuffle(docs)
    return docs


def build_heldout_docs(seed: int, world: list[Entity], n_docs: int, exclude: set[str]) -> list[str]:
    """Fresh paraphrases of the same facts, none identical to a pretraining document."""
    rng = random.Random(f"{seed}-heldout")
    facts = all_facts(world)
    out: list[str] = []
    while len(out) < n_docs:
        doc = _profile_doc(rng, rng.choice(world)) if rng.random() < 0.5 else _mixed_doc(rng, facts)
        if doc not in exclude and doc not in out:
            out.append(doc)
    return out


# ---------------------------------------------------------------------------------------------
# Chat QA
# ---------------------------------------------------------------------------------------------


def _answer(value: str) -> str:
    return value[:1].upper() + value[1:] + "."


def _chat_row(rng: random.Random, question: str, answer: str, p_system: float) -> dict[str, list[dict[str, str]]]:
    messages = []
    if rng.random() < p_system:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    messages.append({"role": "user", "content": question})
    messages.append({"role": "assistant", "content": answer})
    return {"messages": messages}


def split_facts(seed: int, facts: list[Fact], n_test: int, n_valid: int) -> dict[str, list[Fact]]:
    """Split by (entity, attribute) pair, stratified by attribute.

    Each attribute's pairs are spread evenly over [0, 1) in random order and the global order is
    cut into test / valid / train, so every attribute gets its share of every split.
    """
    rng = random.Random(f"{seed}-split")
    by_attr: dict[str, list[Fact]] = defaultdict(list)
    for f in facts:
        by_attr[f.attr].append(f)
    keyed: list[tuple[float, Fact]] = []
    for attr in sorted(by_attr):
        group = by_attr[attr]
        rng.shuffle(group)
        offset = rng.random()
        keyed += [((i + offset) / len(group), f) for i, f in enumerate(group)]
    keyed.sort(key=lambda kv: (kv[0], kv[1].entity, kv[1].attr))
    ordered = [f for _, f in keyed]
    return {
        "test": ordered[:n_test],
        "valid": ordered[n_test : n_test + n_valid],
        "train": ordered[n_test + n_valid :],
    }


def build_qa(seed: int, splits: dict[str, list[Fact]], p_system: float) -> dict[str, list[dict]]:
    rng = random.Random(f"{seed}-qa")
    rows: dict[str, list[dict]] = {}
    for name in ("train", "valid", "test"):
        out = []
        for f in splits[name]:
            attr = ATTR_BY_KEY[f.attr]
            # Train sees every phrasing of its facts; eval splits get one phrasing per fact so
            # each fact counts once in the metric.
            templates = list(attr.questions) if name == "train" else [rng.choice(attr.questions)]
            for t in templates:
                out.append(_chat_row(rng, _fill(t, f.entity, f.value), _answer(f.value), p_system))
        rng.shuffle(out)
        rows[name] = out
    return rows


# ---------------------------------------------------------------------------------------------
# IO
# ---------------------------------------------------------------------------------------------


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--assets-dir", type=Path, default=Path("assets"))
    ap.add_argument("--build-dir", type=Path, default=Path("build/bundled"))
    ap.add_argument("--countries", type=int, default=36)
    ap.add_argument("--people", type=int, default=90)
    ap.add_argument("--creatures", type=int, default=36)
    ap.add_argument("--pretrain-docs", type=int, default=60000)
    ap.add_argument("--heldout-docs", type=int, default=200)
    ap.add_argument("--test-facts", type=int, default=200)
    ap.add_argument("--valid-facts", type=int, default=200)
    ap.add_argument("--p-system", type=float, default=0.2, help="share of chat rows that carry a system message")
    args = ap.parse_args()

    world = build_world(args.seed, args.countries, args.people, args.creatures)
    facts = all_facts(world)
    splits = split_facts(args.seed, facts, args.test_facts, args.valid_facts)
    qa = build_qa(args.seed, splits, args.p_system)

    # The transfer claim only holds if the model can learn each answer's surface form from
    # train; unique names (capitals, currencies) are the exception and are the real test.
    train_values = {f.value for f in splits["train"]}
    for pool in (COLOURS, EXPORTS, FOODS, JOBS, DIETS, HABITATS):
        used = {f.value for f in facts if f.value in pool}
        missing = used - train_values
        if missing:
            print(f"note: categorical values never answered in train: {sorted(missing)}")

    pretrain = build_pretrain_docs(args.seed, world, args.pretrain_docs)
    heldout = build_heldout_docs(args.seed, world, args.heldout_docs, exclude=set(pretrain))

    qa_dir = args.assets_dir / "data" / "fictional-qa"
    corpus_dir = args.assets_dir / "data" / "fictional-corpus"
    _write_jsonl(args.build_dir / "pretrain.jsonl", [{"text": d} for d in pretrain])
    _write_jsonl(corpus_dir / "heldout.jsonl", [{"text": d} for d in heldout])
    for name, rows in qa.items():
        _write_jsonl(qa_dir / f"{name}.jsonl", rows)
    alpaca = [
        {
            "instruction": next(m["content"] for m in r["messages"] if m["role"] == "user"),
            "input": "",
            "output": r["messages"][-1]["content"],
        }
        for r in qa["train"]
    ]
    _write_jsonl(qa_dir / "train_alpaca.jsonl", alpaca)

    split_of = {(f.entity, f.attr): name for name, fs in splits.items() for f in fs}
    world_json = {
        "seed": args.seed,
        "entities": [{"name": e.name, "kind": e.kind, "facts": e.facts} for e in world],
        "question_split": {f"{e}|{a}": s for (e, a), s in sorted(split_of.items())},
    }
    corpus_dir.mkdir(parents=True, exist_ok=True)
    (corpus_dir / "world.json").write_text(
        json.dumps(world_json, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )

    n_words = sum(len(d.split()) for d in pretrain)
    print(f"entities={len(world)} facts={len(facts)} " + " ".join(f"{k}_facts={len(v)}" for k, v in splits.items()))
    print(" ".join(f"{k}_rows={len(v)}" for k, v in qa.items()))
    print(f"pretrain_docs={len(pretrain)} pretrain_words={n_words} heldout_docs={len(heldout)}")
    print("facts per attribute:", dict(Counter(f.attr for f in facts)))


if __name__ == "__main__":
    main()
