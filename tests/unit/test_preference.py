"""Preference tuning: the DPO/ORPO losses against their published formulas, ln 2 at step 0, the
preference data format (masking, bad rows by file:line, pairs kept together) and the config rules."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from trainer.config import PreferenceConfig, TrainerConfig
from trainer.data.batches import RowDataset, make_batch
from trainer.data.formats import render_example, render_prompt
from trainer.data.prepare import held_out_split
from trainer.data.sources import Row
from trainer.data.tokenized import load_tokenized, scan_rows
from trainer.errors import DataError
from trainer.preference_loss import PreferenceObjective, dpo_losses, orpo_losses, sequence_logps

# A fixed batch of 4 pairs: policy and reference log-probs of chosen (c) and rejected (r).
PC = [-12.0, -30.5, -7.25, -50.0]
PR = [-14.0, -29.0, -9.0, -48.5]
RC = [-13.0, -30.0, -8.0, -49.0]
RR = [-13.5, -30.0, -8.5, -49.5]


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _reference_dpo(loss_type: str, beta: float, eps: float) -> list[float]:
    """The published formulas, element by element in plain floats."""
    out = []
    for pc, pr, rc, rr in zip(PC, PR, RC, RR):
        h = (pc - rc) - (pr - rr)  # log pi(yw)/pi_ref(yw) - log pi(yl)/pi_ref(yl)
        if loss_type == "sigmoid":  # DPO eq. 7, with cDPO's label smoothing
            out.append(-(1 - eps) * math.log(_sigmoid(beta * h)) - eps * math.log(_sigmoid(-beta * h)))
        elif loss_type == "ipo":  # IPO eq. 17: (h - 1/(2 tau))^2
            out.append((h - 1 / (2 * beta)) ** 2)
        else:  # hinge: max(0, 1 - beta h)
            out.append(max(0.0, 1 - beta * h))
    return out


@pytest.mark.parametrize(
    "loss_type,beta,eps", [("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.2), ("ipo", 0.1, 0.0), ("hinge", 0.3, 0.0)]
)
def test_dpo_losses_match_the_published_formulas(loss_type: str, beta: float, eps: float) -> None:
    settings = PreferenceConfig(loss_type=loss_type, beta=beta, label_smoothing=eps)
    t = [torch.tensor(v, dtype=torch.float64) for v in (PC, PR, RC, RR)]
    losses, rewards_chosen, rewards_rejected = dpo_losses(*t, settings)
    assert losses.tolist() == pytest.approx(_reference_dpo(loss_type, beta, eps), rel=1e-12, abs=1e-12)
    assert rewards_chosen.tolist() == pytest.approx([beta * (pc - rc) for pc, rc in zip(PC, RC)])
    assert rewards_rejected.tolist() == pytest.approx([beta * (pr - rr) for pr, rr in zip(PR, RR)])


def test_orpo_loss_matches_its_formula() -> None:
    chosen, rejected, lam = [-0.5, -1.25, -3.0, -0.01], [-0.75, -1.0, -4.0, -2.0], 0.25
    losses, nll, log_odds = orpo_losses(
        torch.tensor(chosen, dtype=torch.float64), torch.tensor(rejected, dtype=torch.float64), lam
    )
    expected = []
    for mc, mr in zip(chosen, rejected):
        odds = lambda m: math.exp(m) / (1 - math.exp(m))  # noqa: E731 -- odds of the mean token probability
        ratio = math.log(odds(mc) / odds(mr))
        expected.append(-mc - lam * math.log(_sigmoid(ratio)))
    assert losses.tolist() == pytest.approx(expected, rel=1e-10)
    assert nll.tolist() == pytest.approx([-c for c in chosen])


PAIRS = [
    {"prompt": "Q: capital of Fallamora?\nA:", "chosen": " Zitethra.", "rejected": " Brisilmir."},
    {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Flag of Zukesh?"}],
        "chosen": {"role": "assistant", "content": "Silver."},
        "rejected": [{"role": "assistant", "content": "Grey."}],
    },
]


def _trained_text(tokenizer: Any, ids: list[int], mask: list[int]) -> str:
    return tokenizer.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=True)


def test_preference_rows_train_only_the_responses(tokenizer: Any) -> None:
    for row, (chosen, rejected) in zip(PAIRS, [("Zitethra.", "Brisilmir."), ("Silver.", "Grey.")]):
        example = render_example(Row("t", row), "preference", tokenizer)
        assert example.rejected is not None
        assert _trained_text(tokenizer, example.input_ids, example.loss_mask).strip() == chosen
        assert _trained_text(tokenizer, example.rejected.input_ids, example.rejected.loss_mask).strip() == rejected
        # Same prompt tokens before the response in both.
        first = example.loss_mask.index(1)
        assert example.input_ids[:first] == example.rejected.input_ids[:first]
    chat = render_example(Row("t", PAIRS[1]), "preference", tokenizer)
    messages = PAIRS[1]["prompt"] + [PAIRS[1]["chosen"]]  # type: ignore[operator]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assert chat.input_ids == tokenizer(full, add_special_tokens=False)["input_ids"]
    prompt = render_prompt(Row("t", PAIRS[1]), "preference", tokenizer)
    assert prompt.reference == "Silver."


def test_pairs_with_an_implicit_prompt_are_split_where_they_differ(tokenizer: Any) -> None:
    """TRL's "implicit prompt" rows and Anthropic HH write whole conversations (or texts) as chosen
    and rejected: the shared beginning is the prompt, as if it had been given (trial 44b)."""
    from trainer.data.formats import implicit_prompt

    user = {"role": "user", "content": "Where does Zorblat live?"}
    said, other = {"role": "assistant", "content": "Zitethra."}, {"role": "assistant", "content": "Brisilmir."}
    chat = {"chosen": [user, said], "rejected": [user, other]}
    explicit = {"prompt": [user], "chosen": [said], "rejected": [other]}
    assert implicit_prompt(chat) == explicit
    as_given, split = (render_example(Row("t", r), "preference", tokenizer) for r in (explicit, chat))
    assert (split.input_ids, split.loss_mask) == (as_given.input_ids, as_given.loss_mask)
    assert render_prompt(Row("t", chat), "preference", tokenizer).reference == "Zitethra."
    # Several turns: the prompt ends with the last shared user turn, never inside the assistant's.
    turns = [user, said, {"role": "user", "content": "And Brisilmir?"}]
    long = {"chosen": [*turns, said], "rejected": [*turns, other]}
    assert implicit_prompt(long)["prompt"] == turns
    # Texts: split at a word boundary ("ca" of "cat" and "car" is no prompt), the space kept with the answers.
    text = {"chosen": "Human: Pet?\n\nAssistant: a cat", "rejected": "Human: Pet?\n\nAssistant: a car"}
    assert implicit_prompt(text) == {"prompt": "Human: Pet?\n\nAssistant: a", "chosen": " cat", "rejected": " car"}
    # Nothing shared: said as what to do, not only "missing field 'prompt'".
    with pytest.raises(DataError, match="share no beginning to take as it .TRL's implicit prompt"):
        render_example(Row("t", {"chosen": "yes", "rejected": "no"}), "preference", tokenizer)
    # Trial 45a: a rejected text that begins the chosen one keeps a word of its own (was "'rejected' is empty").
    hello = {"chosen": "Human: Hi\n\nAssistant: Hello there", "rejected": "Human: Hi\n\nAssistant: Hello"}
    assert implicit_prompt(hello) == {
        "prompt": "Human: Hi\n\nAssistant:",
        "chosen": " Hello there",
        "rejected": " Hello",
    }
    # Conversations that part before the assistant's last answer, or at a user turn: said so.
    more = {"role": "user", "content": "More?"}
    earlier = {"chosen": [user, said, more, said], "rejected": [user, other, more, said]}
    with pytest.raises(
        DataError,
        match=r"part at chosen\[1\]/rejected\[1\] \(an assistant turn\), before the assistant's last answer \(chosen\[2\] is a user",
    ):
        render_example(Row("t", earlier), "preference", tokenizer)
    system = {"role": "system", "content": "Be brief."}
    asked = {"chosen": [system, user, said], "rejected": [system, more, other]}
    with pytest.raises(DataError, match=r"part at chosen\[1\]/rejected\[1\] \(a user turn\)"):
        render_example(Row("t", asked), "preference", tokenizer)
    # A conversation beside a text, or beside one message: the styles are what differs.
    with pytest.raises(DataError, match="chosen is a message list while rejected is a string"):
        render_example(Row("t", {"chosen": [user, said], "rejected": "Zitethra."}), "preference", tokenizer)
    with pytest.raises(DataError, match="chosen is one message while rejected is a message list"):
        render_example(Row("t", {"chosen": said, "rejected": [user, other]}), "preference", tokenizer)
    # Trial 46a: a conversation that ends where the shared part does has no answer of its own.
    with pytest.raises(DataError, match=r"rejected ends at rejected\[0\], where the shared beginning does"):
        render_example(Row("t", {"chosen": [user, said], "rejected": [user]}), "preference", tokenizer)
    # A text ending with its role marker has an empty answer (it would train the marker).
    empty = {"chosen": "Human: Pet?\n\nAssistant: A cat.", "rejected": "Human: Pet?\n\nAssistant:"}
    with pytest.raises(DataError, match="rejected ends with 'Assistant:' and nothing after it: its answer is empty"):
        render_example(Row("t", empty), "preference", tokenizer)
    with pytest.raises(DataError, match="share only 'Hello', which leaves no prompt"):
        render_example(Row("t", {"chosen": "Hello", "rejected": "Hello world"}), "preference", tokenizer)
    # Trial 49a: a conversation that ends with a user turn is said as that, not as where the two part.
    ends_asking = {"chosen": [user, said, more], "rejected": [user, other]}
    with pytest.raises(DataError, match=r"chosen ends with chosen\[2\], a user turn: both conversations must end"):
        render_example(Row("t", ends_asking), "preference", tokenizer)
    # Trial 49a: a response missing is said as that, not as a missing prompt; a misspelled prompt
    # beside whole conversations is refused (taken as an implicit prompt, its text was dropped).
    with pytest.raises(DataError, match=r"missing field 'rejected' \(fields present: chosen\)"):
        render_example(Row("t", {"chosen": [user, said]}), "preference", tokenizer)
    with pytest.raises(DataError, match="unknown field 'promt'; did you mean 'prompt'"):
        render_example(
            Row("t", {"promt": "Q", "chosen": [user, said], "rejected": [user, other]}), "preference", tokenizer
        )
    # Trial 47a: problems named by their index in the row as written, and as what they are.
    blank = {"role": "assistant", "content": ""}
    with pytest.raises(DataError, match=r"chosen\[1\] is an assistant message with empty content"):
        render_example(Row("t", {"chosen": [user, blank], "rejected": [user, other]}), "preference", tokenizer)
    with pytest.raises(DataError, match="field 'chosen' must be a non-empty list"):
        render_example(Row("t", {"chosen": [], "rejected": [user, other]}), "preference", tokenizer)
    with pytest.raises(DataError, match="field 'rejected' is empty"):
        render_example(Row("t", {"chosen": "Human: Pet?", "rejected": ""}), "preference", tokenizer)
    typo = {"role": "asistant", "content": "Brisilmir."}
    with pytest.raises(DataError, match=r"rejected\[1\].role is 'asistant' \(did you mean 'assistant'\?\)"):
        render_example(Row("t", {"chosen": [user, said], "rejected": [user, typo]}), "preference", tokenizer)
    brief = {"role": "system", "content": "Be very brief."}
    with pytest.raises(
        DataError, match=r"differ at chosen\[0\]/rejected\[0\] \(a system turn\), before any user turn they share"
    ):
        render_example(
            Row("t", {"chosen": [system, user, said], "rejected": [brief, user, other]}), "preference", tokenizer
        )


def test_bad_preference_rows_are_named_by_file_and_line(tmp_path: Path, tokenizer: Any) -> None:
    rows = [
        PAIRS[0],
        {"prompt": "x", "chosen": "y"},
        {"prompt": "x", "chosen": "y", "rejectd": "z"},
        {"prompt": [{"role": "user", "content": "q"}], "chosen": "plain", "rejected": "plain"},
        {"prompt": "x", "chosen": {"role": "user", "content": "y"}, "rejected": "z"},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scanned = list(scan_rows(str(path), "preference", tokenizer, 128, "truncate"))
    assert [s.fate for s in scanned] == ["kept", "bad", "bad", "bad", "bad"]
    assert "pairs.jsonl line 2:" in scanned[1].problem and "missing field 'rejected'" in scanned[1].problem
    assert "did you mean 'rejected'" in scanned[2].problem
    assert "all be plain strings, or all chat style" in scanned[3].problem
    assert "pairs.jsonl line 5:" in scanned[4].problem
    assert "chosen[0] has role 'user'" in scanned[4].problem  # what it found (trial 52b)
    with pytest.raises(DataError, match="4 bad rows"):
        load_tokenized(str(path), "preference", tokenizer, max_seq_len=128, too_long="truncate", skip_bad_rows=False)


def test_pairs_stay_together_in_splits_batches_and_length_rules(tmp_path: Path, tokenizer: Any) -> None:
    long = {"prompt": "p", "chosen": "short", "rejected": " word" * 80}
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [PAIRS[0], long, PAIRS[1]]))
    fates = [s.fate for s in scan_rows(str(path), "preference", tokenizer, 32, "drop")]
    assert fates == ["kept", "dropped_too_long", "kept"]  # dropped as a pair, not half of it
    examples = load_tokenized(str(path), "preference", tokenizer, max_seq_len=32, too_long="drop", skip_bad_rows=False)
    assert len(examples) == 4 and examples.source_rows.tolist() == [0, 0, 2, 2]
    data = RowDataset(examples, [[0, 1], [2, 3]], packed=False, pairs=True)
    batch = make_batch(data, [1, 0], pad_id=tokenizer.pad_token_id)
    assert int(batch["pairs"]) == 2 and batch["input_ids"].shape[0] == 4
    # All chosen first (rows 1, 0), then all rejected in the same order.
    for position, example in enumerate([2, 0, 3, 1]):
        ids = examples.example(example)[0]
        assert batch["input_ids"][position, : len(ids)].tolist() == ids.tolist()
    held, rest = held_out_split(20, 0.2, seed=3, paired=True)
    assert len(held) == 4 and all(held[i] + 1 == held[i + 1] and held[i] % 2 == 0 for i in range(0, 4, 2))
    assert sorted(held.tolist() + rest.tolist()) == list(range(20))


def test_sigmoid_loss_is_ln2_at_step_0_with_adapters_disabled_reference(tiny_model_dir: Path, tokenizer: Any) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from trainer.preference_reference import _adapters_disabled

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), LoraConfig(r=4, target_modules="all-linear")
    )
    examples = [render_example(Row("t", row), "preference", tokenizer) for row in PAIRS]
    from trainer.data.tokenized import TokenizedSet

    parts = [e for ex in examples for e in (ex, ex.rejected)]
    import numpy as np

    lengths = [len(p.input_ids) for p in parts]  # type: ignore[union-attr]
    tokenized = TokenizedSet(
        np.concatenate([np.asarray(p.input_ids, np.int32) for p in parts]),  # type: ignore[union-attr]
        np.concatenate([np.asarray([0] + p.loss_mask[1:], np.uint8) for p in parts]),  # type: ignore[union-attr]
        np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        np.asarray([0, 0, 1, 1]),
    )
    batch = make_batch(
        RowDataset(tokenized, [[0, 1], [2, 3]], packed=False, pairs=True), [0, 1], tokenizer.pad_token_id
    )
    objective = PreferenceObjective("dpo", PreferenceConfig(), _adapters_disabled)
    summed, pairs, stats = objective.loss_sum(model, batch)
    assert pairs == 2
    assert float(summed.detach()) / pairs == pytest.approx(math.log(2), abs=1e-6)
    assert stats["rewards_chosen"] == pytest.approx(0.0, abs=1e-6)
    # The log-probs are those of the response tokens only: recompute one from the logits by hand.
    logps = sequence_logps(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[0].log_softmax(-1)
    labels = batch["labels"][0]
    by_hand = sum(float(logits[t - 1, labels[t]]) for t in range(1, len(labels)) if labels[t] != -100)
    assert float(logps[0]) == pytest.approx(by_hand, rel=1e-5)


def _config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "model": {"path": "m"},
        "data": {"train": "t.jsonl", "format": "preference", "packing": False},
        "training": {"objective": "dpo"},
        "output": {"dir": "runs/x"},
    }
    for section, values in overrides.items():
        config.setdefault(section, {}).update(values)
    return config


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"data": {"format": "chat"}}, "training.objective=dpo trains on preference pairs: set data.format=preference"),
        ({"training": {"objective": "sft"}}, "data.format=preference holds pairs"),
        ({"data": {"packing": True}}, "set data.packing=false"),
        (
            {
                "method": {"type": "full"},
                "parallel": {"strategy": "fsdp"},
                "training": {"preference": {"reference": "copy"}},
            },
            "reference=copy under parallel.strategy=fsdp: the frozen copy is not sharded",
        ),
        ({"training": {"objective": "dpo", "preference": {"reference": "copy"}}}, "reference=copy is for full"),
        (  # with init_from the reference is the initial model, adapter included (trial 52b)
            {"training": {"preference": {"reference": "copy"}}, "method": {"lora": {"init_from": "a"}}},
            "reference=copy is for full fine-tuning; with an adapter method the initial model, method.lora.init_from",
        ),
        ({"training": {"objective": "orpo", "preference": {"reference": "copy"}}}, "orpo is reference-free"),
        (
            {"training": {"objective": "orpo", "preference": {"beta": 0.5}}},
            "training.preference.beta is a DPO setting; training.objective=orpo does not read it",
        ),
        ({"training": {"objective": "orpo", "preference": {"loss_type": "hinge"}}}, "loss_type is a DPO setting"),
        ({"training": {"objective": "dpo", "preference": {"orpo_lambda": 0.5}}}, "orpo_lambda is an ORPO setting"),
        (
            {"training": {"objective": "dpo", "preference": {"loss_type": "ipo", "label_smoothing": 0.1}}},
            "label_smoothing applies to loss_type=sigmoid only",
        ),
    ],
)
def test_config_rules_name_the_keys(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("=", "=")):
        TrainerConfig.model_validate(_config(**overrides))


def test_valid_preference_configs() -> None:
    TrainerConfig.model_validate(_config())
    TrainerConfig.model_validate(_config(method={"type": "full"}, parallel={"strategy": "ddp"}))
    TrainerConfig.model_validate(_config(training={"objective": "orpo"}, parallel={"strategy": "deepspeed"}))
    TrainerConfig.model_validate(_config(training={"objective": "orpo", "preference": {"orpo_lambda": 0.5}}))
    TrainerConfig.model_validate(_config(training={"preference": {"reference": "precomputed"}}))  # lora too


@pytest.mark.parametrize(
    "method,strategy,kind",
    [
        ("lora", "fsdp", "adapters_disabled"),
        ("full", "ddp", "copy"),
        ("full", "fsdp", "precomputed"),  # a frozen copy would not be sharded: the pairs are scored once instead
        ("full", "deepspeed", "precomputed"),
    ],
)
def test_auto_reference_per_method_and_strategy(method: str, strategy: str, kind: str) -> None:
    cfg = TrainerConfig.model_validate(_config(method={"type": method}, parallel={"strategy": strategy}))
    assert cfg.reference_kind() == kind


def test_precomputed_reference_cache_round_trips_and_refuses_a_stale_or_damaged_one(tmp_path: Path) -> None:
    from trainer.errors import TrainerInputError
    from trainer.preference_precompute import PrecomputedReference, _load, _save

    path = tmp_path / "reference_logps.safetensors"
    tables = {"train": torch.tensor([[-1.0, -2.0], [-3.0, -4.0], [-5.0, -6.0]])}
    _save(path, tables, {"train": "tokens-v1"})
    loaded = _load(path, {"train": "tokens-v1"}, {"train": 3})
    # A batch of rows [2, 0]: the chosen log-probs, then the rejected ones, in the batch's row order.
    batch = {"pair_rows": torch.tensor([2, 0]), "labels": torch.zeros(4, 1)}
    assert PrecomputedReference(loaded)(torch.nn.Module(), batch).tolist() == [-5.0, -1.0, -6.0, -2.0]
    with pytest.raises(TrainerInputError, match="does not hold the log-probs of the train pairs"):
        _load(path, {"train": "tokens-v2"}, {"train": 3})  # the data changed since the cache was written
    damaged = path.read_bytes().replace(torch.tensor([-3.0]).numpy().tobytes(), torch.tensor([-9.0]).numpy().tobytes())
    path.write_bytes(damaged)
    with pytest.raises(TrainerInputError, match="fails its checksum"):
        _load(path, {"train": "tokens-v1"}, {"train": 3})
    with pytest.raises(TrainerInputError, match="is missing; the reference is the initial model"):
        _load(tmp_path / "absent.safetensors", {"train": "tokens-v1"}, {"train": 3})


def test_packing_is_off_by_itself_for_preference_pairs_unless_asked_for(tmp_path) -> None:
    """data.packing is on by default; a preference run refused it until set to false by hand."""
    from launcher.config_loader import load_config
    from launcher.errors import ConfigError
    from tests.conftest import REPO

    base = REPO / "configs/examples/dpo.yaml"
    text = base.read_text().replace("  packing: false          # preference pairs are scored as whole sequences\n", "")
    assert "packing" not in text.split("data:")[1].split("method:")[0]
    (tmp_path / "dpo.yaml").write_text(text.replace("assets/", f"{REPO}/assets/"))
    assert load_config(tmp_path / "dpo.yaml").data.packing is False
    with pytest.raises(ConfigError, match="set data.packing=false"):
        load_config(tmp_path / "dpo.yaml", ["data.packing=true"])


def test_the_exact_match_reference_of_several_chosen_messages_is_the_first_one(tokenizer) -> None:
    """Generation answers one turn; the messages run together ('Kraithwick.Anything else?') could never match."""
    from trainer.data.formats import render_prompt
    from trainer.data.sources import Row

    row = Row(
        "val.jsonl line 1",
        {
            "prompt": [{"role": "user", "content": "Pet?"}],
            "chosen": [
                {"role": "assistant", "content": "Kraithwick."},
                {"role": "assistant", "content": "Anything else?"},
            ],
            "rejected": [{"role": "assistant", "content": "Brojailox."}],
        },
    )
    assert render_prompt(row, "preference", tokenizer).reference == "Kraithwick."


def test_reward_accuracy_counts_a_tie_as_one_half() -> None:
    """At step 0 DPO's policy is its reference: every reward is 0, and ties counted as misses said 0%."""
    from trainer.preference_loss import PairScores

    zeros = torch.zeros(4)
    at_start = PairScores(zeros, zeros, zeros, zeros, zeros)
    assert at_start.stat_sums()["reward_accuracy"] == 2.0  # 4 ties: 0.5 each
    later = PairScores(zeros, torch.tensor([1.0, 0.0, -1.0, 0.5]), torch.tensor([0.0, 0.0, 0.0, 1.0]), zeros, zeros)
    assert later.stat_sums()["reward_accuracy"] == 1.5  # one win, one tie, two losses
