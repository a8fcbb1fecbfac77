"""`ftl validate CONFIG --data`: the report matches what training builds from the same data, lists
every bad row (not only the first 20 the training error names), exits 2 exactly when training
would refuse the data, and marks exactly the tokens whose labels training trains on."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import launcher.cli
from launcher.data_check import CLOSE_COLOR, OPEN_COLOR, OPEN_PLAIN, mark_trained
from tests.conftest import BUNDLED_MODEL, QA_DATA, REPO, write_config
from trainer.config import DataConfig
from trainer.data.batches import IGNORE_INDEX, RowDataset, make_batch
from trainer.data.prepare import empty_prompts_note, prepare_data, same_pairs_note
from trainer.data.tokenized import load_tokenized
from trainer.errors import DataError

GOOD = {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}


def _validate_data(capsys: pytest.CaptureFixture[str], config: Path, *overrides: str) -> tuple[int, str, str]:
    code = launcher.cli.main(["validate", str(config), "--data", *overrides])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def bundled_report(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The report on the bundled QA data (train, validation, test), run once for the module."""
    tmp = tmp_path_factory.mktemp("data-check")
    config = write_config(tmp / "cfg.yaml", BUNDLED_MODEL, tmp / "run", data={"test": str(QA_DATA / "test.jsonl")})
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert launcher.cli.main(["validate", str(config), "--data"]) == 0
    assert out.getvalue().endswith("\n")
    return out.getvalue()[:-1]  # print's newline, not the last example's


def test_bundled_data_report_matches_what_training_builds(bundled_report: str, tokenizer: Any) -> None:
    cfg = DataConfig(train=str(QA_DATA / "train.jsonl"), validation=str(QA_DATA / "valid.jsonl"), max_seq_len=128)
    prepared = prepare_data(cfg, tokenizer, seed=1, micro_batch_size=4, want_prompts=False, max_prompts=None)
    report = prepared.report
    # The tokenizer class transformers chose, which decides the counts below (trial 48a).
    assert bundled_report.splitlines()[0].endswith(f", tokenizer {type(tokenizer).__name__} ({len(tokenizer)} tokens)")
    train_block = bundled_report.split("\n\n")[1]
    assert "does not read" not in bundled_report  # every field of the bundled rows is read
    assert f"rows: {report['train_examples']} read, {report['train_examples']} usable, 0 bad" in train_block
    assert f"tokens: {report['train_tokens']:,} in usable examples, {report['train_loss_tokens']:,} trained" in (
        train_block
    )
    lengths = prepared.train.examples.lengths()
    assert f"min {lengths.min()} / median" in train_block and f"/ max {lengths.max()};" in train_block
    assert (
        f"training: {report['train_examples']:,} examples packed into {report['train_rows']:,} rows of 128 tokens; "
        f"packing efficiency {100 * report['token_efficiency']:.1f}%"
    ) in bundled_report
    for role, name, rows in (("validation", "valid.jsonl", 200), ("test", "test.jsonl", 200)):
        assert f"{role}: {QA_DATA / name} (format chat)\n  rows: {rows} read, {rows} usable, 0 bad" in bundled_report


def test_marked_tokens_are_exactly_the_label_bearing_ones(bundled_report: str, tokenizer: Any) -> None:
    """Each shown example against the labels make_batch gives training for that row."""
    train = load_tokenized(
        str(QA_DATA / "train.jsonl"), "chat", tokenizer, max_seq_len=128, too_long="truncate", skip_bad_rows=False
    )
    shown = re.findall(r"--- train\.jsonl line (\d+) \(.*?\) ---\n(.*?)(?=\n--- |\Z)", bundled_report, re.S)
    assert len(shown) == 3
    for line, marked in shown:
        example = list(train.source_rows).index(int(line) - 1)
        batch = make_batch(RowDataset(train, [[example]], packed=False), [0], tokenizer.pad_token_id)
        ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
        runs = _runs(ids, [label != IGNORE_INDEX for label in labels])
        trained = [tokenizer.decode(run, skip_special_tokens=False) for run, on in runs if on]
        other = [tokenizer.decode(run, skip_special_tokens=False) for run, on in runs if not on]
        assert trained and re.findall(r"\[\[(.*?)\]\]", marked, re.S) == trained
        assert [part for part in re.split(r"\[\[.*?\]\]", marked, flags=re.S) if part] == other
        assert marked.replace("[[", "").replace("]]", "") == tokenizer.decode(ids, skip_special_tokens=False)


def test_terminal_marking_uses_colour_on_the_same_tokens(tokenizer: Any) -> None:
    ids = tokenizer("Hello there, friend.", add_special_tokens=False)["input_ids"]
    mask = [0, 1, 1] + [0] * (len(ids) - 3)
    plain, coloured = mark_trained(tokenizer, ids, mask, color=False), mark_trained(tokenizer, ids, mask, color=True)
    assert coloured == plain.replace("[[", OPEN_COLOR).replace("]]", CLOSE_COLOR) and "[[" in plain


def test_every_bad_row_is_reported_and_the_exit_code_matches_training(
    tmp_path: Path, tokenizer: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """25 bad rows in train (training's error names only the first 20) and one over-long row in
    validation with too_long=error: all listed with file and line; exit 2 as training's DataError."""
    rows = [json.dumps(GOOD)] * 3
    bad_lines = []
    for index in range(25):
        kind = index % 3
        rows.append(
            "{oops"
            if kind == 0
            else json.dumps({"mesages": GOOD["messages"]})
            if kind == 1
            else json.dumps({"messages": [{"role": "user", "content": "no answer"}]})
        )
        bad_lines.append(len(rows))
    (tmp_path / "train.jsonl").write_text("\n".join(rows) + "\n")
    long_row = {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "word " * 200}]}
    (tmp_path / "valid.jsonl").write_text(json.dumps(GOOD) + "\n" + json.dumps(long_row) + "\n")
    data = {"train": str(tmp_path / "train.jsonl"), "validation": str(tmp_path / "valid.jsonl"), "too_long": "error"}
    config = write_config(tmp_path / "cfg.yaml", BUNDLED_MODEL, tmp_path / "run", data=data)

    code, out, err = _validate_data(capsys, config)
    assert code == 2
    for line in bad_lines:  # each named; a reason many rows share is written out for its first three
        assert re.search(rf"train\.jsonl line {line}\b", out), line
    assert out.count("unknown field 'mesages'; did you mean 'messages'?") == 4  # 3 rows, then the same (...)
    assert (
        "    - the same (unknown field 'mesages'; did you mean 'messages'? (format 'chat')) for 5 more rows: "
        "train.jsonl line 14, train.jsonl line 17, "
    ) in out
    assert "unknown field 'mesages'; did you mean 'messages'?" in out and "invalid JSON" in out
    assert "valid.jsonl line 2: " in out and "longer than data.max_seq_len=128" in out
    assert "rows: 28 read, 3 usable, 25 bad" in out and "bad rows (25):" in out
    # the misspelled field is the problem of its (refused) rows, not a field those rows' training ignores
    assert "does not read (ignored)" not in out
    assert "training would refuse this data" in err and f"{tmp_path / 'train.jsonl'}: 25 bad row(s)" in err
    assert f"{tmp_path / 'valid.jsonl'}: 1 row(s) longer than max_seq_len (data.too_long=error)" in err
    assert "rows: 2 read, 1 usable, 0 bad, 1 longer than max_seq_len (too_long=error)" in out
    assert "  rows longer than max_seq_len (1):\n    - valid.jsonl line 2" in out
    # Training itself refuses the same file for the same rows.
    with pytest.raises(DataError, match="25 bad rows") as refused:
        load_tokenized(
            str(tmp_path / "train.jsonl"),
            "chat",
            tokenizer,
            max_seq_len=128,
            too_long="error",
            skip_bad_rows=False,
            cache_root=tmp_path / "cache",
        )
    listed = re.findall(r"  - (train\.jsonl line \d+): (.*)", str(refused.value))
    # Three reasons, each with its first three rows, then a count (as validate --data does).
    assert len(listed) == 9 and all(where in out and reason in out for where, reason in listed)
    assert str(refused.value).count("more row(s) with the same reason") == 3

    # Training skips malformed rows with skip_bad_rows and truncates with too_long=truncate: exit 0,
    # the bad rows still listed.
    code, out, err = _validate_data(capsys, config, "data.skip_bad_rows=true", "data.too_long=truncate")
    assert code == 0, err
    assert "25 bad (skipped: data.skip_bad_rows)" in out and f"train.jsonl line {bad_lines[-1]}" in out
    assert "1 truncated to max_seq_len" in out


def _runs(ids: list[int], on: list[bool]) -> list[tuple[list[int], bool]]:
    runs: list[tuple[list[int], bool]] = []
    for token, flag in zip(ids, on):
        if runs and runs[-1][1] == flag:
            runs[-1][0].append(token)
        else:
            runs.append(([token], flag))
    return runs


def test_a_classification_sample_shows_its_text_and_label(capsys: pytest.CaptureFixture[str]) -> None:
    """The head scores the whole text: the sample gives the label, not token marks (every token
    was shown as trained, the label nowhere)."""
    code, out, err = _validate_data(capsys, REPO / "configs" / "examples" / "classification.yaml", "--examples", "1")
    assert code == 0, err
    assert "examples as training sees them (each text with its label):" in out
    assert re.search(r"--- train\.jsonl line 1 \(\d+ tokens, label (country|person|creature)\) ---\n<s>\S", out), out
    assert OPEN_PLAIN not in out.split("examples as training sees them")[1]


def test_label_counts_and_a_one_class_training_set_are_said_by_validate_and_training(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tokenizer: Any
) -> None:
    """Training rows all `person` (3 labels configured, validation has all 3): the loss went to
    0.007 with no word from validate or train."""
    rows = [json.loads(line) for line in (REPO / "assets/data/fictional-kinds/train.jsonl").read_text().splitlines()]
    one_class = tmp_path / "person.jsonl"
    one_class.write_text("".join(json.dumps(r) + "\n" for r in rows if r["label"] == "person"))
    example = REPO / "configs" / "examples" / "classification.yaml"
    code, out, err = _validate_data(capsys, example, f"data.train={one_class}", "data.test=null")
    assert code == 0, err  # a warning: the data is trained on as it is
    persons = sum(r["label"] == "person" for r in rows)
    assert f"  labels (usable rows): country 0, person {persons}, creature 0" in out
    assert re.search(r"labels \(usable rows\): country 30, person 30, creature 30", out), out  # validation
    assert (
        "warning: the training data holds one class only ('person' of transfer.head.labels "
        "['country', 'person', 'creature']): the head learns to answer it for every input"
    ) in out
    assert "warning: validation rows with labels the training data never has: 'country' (30), 'creature' (30)" in out

    cfg = DataConfig(train=str(one_class), validation=str(REPO / "assets/data/fictional-kinds/valid.jsonl"))
    cfg = cfg.model_copy(update={"format": "classification", "packing": False})
    names = ["country", "person", "creature"]
    data = prepare_data(
        cfg, tokenizer, seed=0, micro_batch_size=8, want_prompts=False, max_prompts=None, label_names=names
    )
    assert [w.split(":")[0] for w in data.report["label_warnings"]] == [
        "the training data holds one class only ('person' of transfer.head.labels ['country', 'person', 'creature'])",
        "validation rows with labels the training data never has",
    ]
    full = DataConfig(
        train=str(REPO / "assets/data/fictional-kinds/train.jsonl"), format="classification", packing=False
    )
    assert (
        prepare_data(
            full, tokenizer, seed=0, micro_batch_size=8, want_prompts=False, max_prompts=None, label_names=names
        ).report["label_warnings"]
        == []
    )


def test_many_dropped_rows_of_one_reason_are_said_in_a_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """130 rows dropped for length were listed one by one, grouped only by equal token counts (trial 43b)."""
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps({"text": " ".join(["word"] * (60 + i))}) + "\n" for i in range(12)))
    config = write_config(
        tmp_path / "c.yaml", BUNDLED_MODEL, tmp_path / "run", data={"train": str(data), "format": "text"}
    )
    code, out, err = _validate_data(capsys, config, "data.max_seq_len=32", "data.too_long=drop", "data.validation=null")
    lines = out.split("  dropped rows (12):\n")[1].splitlines()
    assert [line.endswith("longer than data.max_seq_len=32 (data.too_long=drop)") for line in lines[:3]] == [True] * 3
    assert lines[3].startswith(
        "    - the same (N tokens, longer than data.max_seq_len=32 (data.too_long=drop)) for 9 more rows: long.jsonl line 4"
    ), lines
    assert f"warning: data.too_long=drop leaves out 12 of 12 rows of {data} (100%)" in out  # trial 44a
    # An evaluation set's too (trial 45a: 13 of 15 validation rows dropped, its scores on the 2 left).
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"text": "a few words"}) + "\n")
    code, out, err = _validate_data(
        capsys, config, "data.max_seq_len=32", "data.too_long=drop", f"data.train={short}", f"data.validation={data}"
    )
    said = f"warning: data.too_long=drop leaves out 12 of 12 rows of {data} (100%) as longer than data.max_seq_len=32"
    assert f"{said}, and its scores are those of the 0 left" in out, out


def test_truncated_rows_that_lose_trained_tokens_are_counted(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A cut into the answer (or its end-of-turn token) was reported only as "truncated" (trial 43b)."""
    example = REPO / "configs" / "examples" / "lora.yaml"
    code, out, err = _validate_data(capsys, example, "data.max_seq_len=40")
    assert code == 0, err
    said = re.search(r"\n    (\d+) of them lose trained tokens \((\d+) in all\): an answer cut short", out)
    assert said and 0 < int(said.group(1)) and int(said.group(1)) <= int(said.group(2)), out[-3000:]
    # A classifier's long text is cut, its label never: nothing trained is lost.
    classifier = REPO / "configs" / "examples" / "classification.yaml"
    code, out, err = _validate_data(capsys, classifier, "data.max_seq_len=12")
    assert code == 0 and "truncated rows (" in out, err
    assert "lose trained tokens" not in out and "loses trained tokens" not in out


def test_truncated_rows_are_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Training's note says `N truncated to data.max_seq_len (ftl validate --data shows them)`:
    validate counted them only."""
    data = tmp_path / "long.jsonl"
    long_row = json.dumps({"text": " ".join(["word"] * 300)}) + "\n"
    data.write_text("".join(long_row if i % 2 == 0 else '{"text": "short"}\n' for i in range(12)))
    config = write_config(
        tmp_path / "c.yaml", BUNDLED_MODEL, tmp_path / "run", data={"train": str(data), "format": "text"}
    )
    code, out, err = _validate_data(capsys, config, "data.validation=null", "--examples", "0")
    assert code == 0, err
    lines = out.split("  truncated rows (6):\n", 1)[1].splitlines()[:4]
    assert lines[:3] == [f"    - long.jsonl line {n}: 901 tokens, cut to 128" for n in (1, 3, 5)], lines
    assert lines[3] == "    - and 3 more: long.jsonl line 7, long.jsonl line 9, long.jsonl line 11"


def test_fields_the_format_does_not_read_are_named_for_usable_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A usable row's extra field (a "history" column meant to train, say) is named with its count."""
    rows = [GOOD, {**GOOD, "history": []}, {**GOOD, "history": [], "source": "web"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = write_config(
        tmp_path / "cfg.yaml",
        BUNDLED_MODEL,
        tmp_path / "run",
        data={"train": str(tmp_path / "train.jsonl"), "validation": None},
    )
    code, out, err = _validate_data(capsys, config)
    assert code == 0, err
    assert "  fields format chat does not read (ignored): history (in 2 of 3 rows), source (in 1 of 3 rows)\n" in out
    # A field a letter off one the format reads gets a did-you-mean (trial 43b: alpaca's `inptu`).
    alpaca = {"instruction": "Say hi.", "output": "hi"}
    (tmp_path / "a.jsonl").write_text(json.dumps(alpaca) + "\n" + json.dumps({**alpaca, "inptu": "x"}) + "\n")
    code, out, err = _validate_data(capsys, config, f"data.train={tmp_path / 'a.jsonl'}", "data.format=alpaca")
    assert code == 0, err
    assert "does not read (ignored): inptu (in 1 of 2 rows); did you mean 'input' for 'inptu'?\n" in out, out


def _pair(prompt: str, chosen: str, rejected: str) -> dict[str, str]:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def test_a_preference_pair_shows_both_sequences_each_with_its_own_cut(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only the rejected sequence is cut: the chosen was shown alone under the rejected's
    "truncated from"; both are shown now, and both count lengths and tokens per sequence."""
    row = _pair("Q: " + "word " * 25 + "\nA:", " yes", " no" * 32)  # 82-token prompt; 86 and 179 tokens
    (tmp_path / "trunc.jsonl").write_text(json.dumps(row) + "\n")
    code, out, err = _validate_data(
        capsys,
        REPO / "configs" / "examples" / "dpo.yaml",
        f"data.train={tmp_path / 'trunc.jsonl'}",
        "data.validation=null",
        "data.max_seq_len=110",
        f"output.dir={tmp_path / 'run'}",
        "--examples",
        "1",
    )
    assert code == 0, err
    assert (
        "  rows: 1 read, 1 usable, 0 bad, 1 truncated to max_seq_len\n"
        "  tokens: 196 in the 2 sequences of 1 usable pair (after truncation), 32 trained (16.3%)\n"
        "  length in tokens of each sequence (chosen and rejected) before truncation: "
        "min 86 / median 86 / p95 179 / max 179; 1 longer than max_seq_len 110\n"
        "  truncated rows (1):\n"
        "    - trunc.jsonl line 1: prompt + rejected 179 tokens (prompt + chosen 86), cut to 110\n"
        "    1 of them loses trained tokens (69 in all): an answer cut short, or its end-of-turn token, which "
        "teaches the model where to stop; raise data.max_seq_len, or set data.too_long=drop to leave them out\n"
        "\n"
        "training: 1 pair (2 sequences), one pair per row, padded in micro-batches of 8; padding efficiency"
    ) in out
    chosen, rejected = re.findall(r"--- (trunc\.jsonl line 1, \w+ \(.*?\)) ---\n(.*?)(?=\n--- |\Z)", out, re.S)
    assert chosen[0] == "trunc.jsonl line 1, chosen (86 tokens, 4 trained)" and chosen[1].endswith("A:[[ yes</s>]]")
    assert rejected[0] == "trunc.jsonl line 1, rejected (110 tokens, truncated from 179, 28 trained)"
    assert rejected[1].endswith(" no no ]]\n") and "</s>" not in rejected[1]  # its end and EOS are cut


def test_dropped_rows_are_named_and_identical_pairs_warned(
    tmp_path: Path, tokenizer: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Training counts rows dropped with no trained token and sends the user to validate, which
    named none; a pair whose two sequences training sees as the same (DPO loss ln 2, no gradient)
    is trained on, so it is warned of (with its line), not refused."""
    long_prompt = "Q: " + "word " * 60 + "\nA:"
    rows = [
        _pair("Q: b\nA:", " good", " bad"),
        _pair(long_prompt, " yes", " no"),
        _pair("Q: a\nA:", " same", " same"),
        _pair("Q: c\nA:", " x" * 60 + " a", " x" * 60 + " b"),  # differ past max_seq_len only
    ]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    data = {"train": str(tmp_path / "pairs.jsonl"), "validation": None, "format": "preference", "packing": False}
    config = write_config(
        tmp_path / "cfg.yaml", BUNDLED_MODEL, tmp_path / "run", data=data, training={"objective": "dpo"}
    )
    code, out, err = _validate_data(capsys, config)
    assert code == 0, err
    assert (
        "  dropped rows (1):\n"
        "    - pairs.jsonl line 2: chosen and rejected have no trained token in the first 128 tokens "
        "(data.max_seq_len), all prompt\n"
        "    a prompt that fills data.max_seq_len leaves no room for the answer: raise data.max_seq_len, or shorten "
        "the prompt (data.too_long=error refuses such rows instead of dropping them)\n"
        "  truncated rows (1):\n"
        "    - pairs.jsonl line 4: prompt + chosen 131 tokens and prompt + rejected 131 tokens, cut to 128\n"
        "    1 of them loses trained tokens (6 in all): an answer cut short, or its end-of-turn token, which "
        "teaches the model where to stop; raise data.max_seq_len, or set data.too_long=drop to leave them out\n"
        "  warning: 2 pairs with chosen and rejected the same as training sees them, no preference to learn from "
        "them (DPO: loss ln 2, no gradient; ORPO: only its SFT term on the chosen response trains):\n"
        "    - pairs.jsonl line 3: chosen and rejected are the same\n"
        "    - pairs.jsonl line 4: chosen and rejected are the same in the first 128 tokens (data.max_seq_len), "
        "all training keeps\n"
    ) in out
    # Training counts them alike, and says so before it starts.
    cfg = DataConfig(**data, max_seq_len=128, cache_dir=str(tmp_path / "cache"))
    report = prepare_data(cfg, tokenizer, seed=1, micro_batch_size=4, want_prompts=False, max_prompts=None).report
    assert report["train_dropped_no_loss"] == 1 and report["train_identical_pairs"] == 2
    assert report["train_pairs"] == 3 and report["train_examples"] == 6  # each pair two sequences (trial 63d)
    assert same_pairs_note(report) == (
        "training data: 2 preference pair(s) with chosen and rejected the same as training sees them, "
        "no preference to learn from them (DPO: their loss is ln 2 with no gradient; ORPO: only its SFT term on "
        "the chosen response trains)"
    )

    # A pair with an empty prompt string: trained on, warned of with its line (trial 61c: taken
    # without a word, while an empty response and an empty chat prompt are refused).
    rows[0] = _pair("", " good", " bad")
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    code, out, err = _validate_data(capsys, config)
    assert code == 0, err
    assert (
        "  warning: 1 pair with an empty prompt: the preference is learnt with nothing to answer (an empty chat "
        "prompt, [], is refused as a bad row):\n"
        "    - pairs.jsonl line 1: the prompt is empty\n"
    ) in out, out
    cfg = DataConfig(**data, max_seq_len=128, cache_dir=str(tmp_path / "cache"))
    report = prepare_data(cfg, tokenizer, seed=1, micro_batch_size=4, want_prompts=False, max_prompts=None).report
    assert report["train_empty_prompt_pairs"] == 1
    assert empty_prompts_note(report) == (
        "training data: 1 preference pair(s) with an empty prompt: the preference is learnt with nothing to answer "
        "(an empty chat prompt, [], is refused as a bad row)"
    )

    # Any format: a completion row whose prompt fills max_seq_len is named the same way.
    (tmp_path / "sft.jsonl").write_text(
        json.dumps({"prompt": long_prompt, "completion": " yes"})
        + "\n"
        + json.dumps({"prompt": "Q?", "completion": " A."})
    )
    sft = {"train": str(tmp_path / "sft.jsonl"), "validation": None, "format": "completion"}
    config = write_config(tmp_path / "sft.yaml", BUNDLED_MODEL, tmp_path / "run", data=sft)
    code, out, err = _validate_data(capsys, config)
    assert code == 0, err
    assert (
        "  rows: 2 read, 1 usable, 0 bad, 1 dropped: no trained token left\n"
        "  tokens: 7 in usable examples, 4 trained (57.1%)\n"
    ) in out
    assert (
        "  dropped rows (1):\n"
        "    - sft.jsonl line 1: no trained token in the first 128 tokens (data.max_seq_len), all prompt\n"
        "    a prompt that fills data.max_seq_len leaves no room for the answer: raise data.max_seq_len, or shorten "
        "the prompt (data.too_long=error refuses such rows instead of dropping them)\n"
    ) in out
    assert "chosen and rejected" not in out  # no pair warning for SFT data (one row: the global batch is warned of)
    # ... and so is a row dropped as too long (data.too_long=drop), which training counts alike.
    code, out, err = _validate_data(capsys, config, "data.too_long=drop")
    assert code == 0, err
    assert (
        "  dropped rows (1):\n    - sft.jsonl line 1: 191 tokens, longer than data.max_seq_len=128 (data.too_long=drop)\n"
    ) in out


def test_a_huge_row_is_cut_before_tokenizing_and_trains_the_same_tokens(tokenizer: Any) -> None:
    """A 50 MB row was tokenized whole (14 GiB of RAM, 3 minutes) to keep 128 tokens: strings past
    max_seq_len x MAX_CHARS_PER_TOKEN characters are cut first, and what training keeps is the same."""
    from trainer.data.sources import Row
    from trainer.data.tokenized import MAX_CHARS_PER_TOKEN, _scan_rendered, scan_row

    answer = "omega " * (128 * MAX_CHARS_PER_TOKEN // 3)  # twice the limit
    row = Row(
        "f.jsonl line 1", {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": answer}]}
    )
    cut = scan_row(0, row, "chat", tokenizer, 128, "truncate", None)
    whole = _scan_rendered(0, row, "chat", tokenizer, 128, "truncate", None)
    assert cut.cut_before_tokenizing and not whole.cut_before_tokenizing
    assert (cut.ids, cut.mask, cut.fate) == (whole.ids, whole.mask, "truncated")
    assert 128 < cut.rendered_len < whole.rendered_len  # counted up to the cut: a lower bound
    # ... and said as one where a count is shown (it read "2498 tokens" for a 3,125-token row).
    refused = scan_row(0, row, "chat", tokenizer, 128, "error", None)
    assert (
        f"f.jsonl line 1: at least {refused.rendered_len} tokens, longer than data.max_seq_len=128" in refused.problem
    )
    from launcher.data_check import _cut

    assert _cut(128, cut.rendered_len, lower_bound=True) == f", truncated from at least {cut.rendered_len}"


def test_validate_says_a_max_length_counted_up_to_a_cut_is_a_lower_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An 800,000-character row read `max 12816` in the length statistics, as if exact."""
    from trainer.data.tokenized import MAX_CHARS_PER_TOKEN

    huge = "omega " * (128 * MAX_CHARS_PER_TOKEN // 3)
    rows = [{"prompt": "Q?", "completion": huge}, {"prompt": "Q?", "completion": " A."}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = {"train": str(tmp_path / "d.jsonl"), "validation": None, "format": "completion"}
    config = write_config(tmp_path / "c.yaml", BUNDLED_MODEL, tmp_path / "run", data=data)
    code, out, err = _validate_data(capsys, config)
    assert code == 0, err
    [stats] = [line for line in out.splitlines() if line.startswith("  length in tokens: ")]
    assert stats.endswith(
        "1 longer than max_seq_len 128 (1 row counted only up to a cut of the text: the max is at least that, not exact)"
    )
    # So is what truncation costs it (trial 62a: "1,361 in all" for a row of ~6M tokens).
    assert "    1 of them loses trained tokens (at least " in out, out
    # Rows read whole say nothing of the kind.
    (tmp_path / "d.jsonl").write_text(json.dumps(rows[1]) + "\n")
    code, out, err = _validate_data(capsys, config)
    assert code == 0 and "counted only up to a cut" not in out


def test_a_tokenized_cache_entry_is_shared_as_any_new_folder(tmp_path: Path, tokenizer: Any) -> None:
    """mkdtemp made entries 0700: other users of a shared FTL_CACHE_DIR could not read them."""
    from trainer.file_modes import current_umask

    root = tmp_path / "cache"
    load_tokenized(
        str(QA_DATA / "valid.jsonl"),
        "chat",
        tokenizer,
        max_seq_len=128,
        too_long="truncate",
        skip_bad_rows=False,
        cache_root=root,
    )
    (entry,) = [p for p in root.rglob("meta.json")]
    assert entry.parent.stat().st_mode & 0o777 == 0o777 & ~current_umask()


def test_a_too_long_pair_says_which_sequence_is_too_long(tokenizer: Any) -> None:
    """ "line 15: 12803 tokens, longer than data.max_seq_len" left the user to find out whether the
    chosen or the rejected answer was the long one."""
    from trainer.data.sources import Row
    from trainer.data.tokenized import scan_row

    row = Row("p.jsonl line 3", _pair("Q: a\nA:", " yes", " no" * 40))
    refused = scan_row(0, row, "preference", tokenizer, 32, "error", None)
    rejected = refused.rejected_rendered_len
    assert refused.fate == "too_long" and rejected > 32 >= refused.rendered_len
    assert refused.problem.startswith(
        f"p.jsonl line 3: prompt + rejected {rejected} tokens (prompt + chosen {refused.rendered_len}), "
        "longer than data.max_seq_len=32;"
    )
    both = scan_row(
        0, Row("p.jsonl line 4", _pair("Q: a\nA:", " yes" * 40, " no" * 40)), "preference", tokenizer, 32, "drop", None
    )
    assert both.problem.startswith("p.jsonl line 4: prompt + chosen ") and " and prompt + rejected " in both.problem
    assert both.problem.endswith("longer than data.max_seq_len=32 (data.too_long=drop)")


def test_held_out_rows_that_training_also_has_are_counted(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Trial 36b: 22 of 30 test rows were copies of training rows and nothing said so (the test
    score then measures recall). Counted by tokens, per held-out set; the bundled sets share none."""
    rows = [json.loads(line) for line in (REPO / "assets/data/fictional-kinds/train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (REPO / "assets/data/fictional-kinds/test.jsonl").read_text().splitlines()]
    leaky = tmp_path / "test.jsonl"
    leaky.write_text("".join(json.dumps(r) + "\n" for r in rows[:3] + test[:5]))
    example = REPO / "configs" / "examples" / "classification.yaml"
    code, out, err = _validate_data(capsys, example)
    assert code == 0, err
    assert "also in the training data" not in out
    code, out, err = _validate_data(capsys, example, f"data.test={leaky}")
    assert code == 0, err  # a warning: the data is used as it is
    assert (
        f"warning: 3 of 8 test rows ({leaky}) are also in the training data (the same tokens): their test "
        "scores measure recall of trained rows, not generalization; remove them from one of the two"
    ) in out
    assert "validation rows (" not in out  # the bundled validation set shares no row with training
    # data.validation_split on a file of duplicates: the held-out part and the rest share rows (trial 43b).
    doubled = tmp_path / "doubled.jsonl"
    doubled.write_text("".join(json.dumps(r) + "\n" for r in rows[:40] * 2))
    split = (f"data.train={doubled}", "data.validation=null", "data.validation_split=0.25", "data.test=null")
    code, out, err = _validate_data(capsys, example, *split)
    assert code == 0, err
    said = re.search(r"warning: (\d+) of 20 rows held out by data.validation_split are also in the training part", out)
    assert said and int(said.group(1)) > 0, out[-3000:]
    assert "  40 usable rows repeat an earlier row of this file (the same tokens)" in out
    distinct = f"data.train={REPO / 'assets/data/fictional-kinds/train.jsonl'}"
    code, out, err = _validate_data(capsys, example, *split[1:], distinct)
    assert code == 0 and "held out by data.validation_split are also" not in out, out[-3000:]
    assert "repeat an earlier row" not in out


def test_a_misspelled_csv_header_is_said_once_as_the_header(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Every row of a CSV whose header says 'txt' missed 'text': one cell to fix, not 30 rows (trial 36b)."""
    data = tmp_path / "d.csv"
    data.write_text("txt\n" + "".join(f"row {n}\n" for n in range(30)))
    config = write_config(
        tmp_path / "c.yaml", BUNDLED_MODEL, tmp_path / "run", data={"train": str(data), "format": "text"}
    )
    code, out, _ = _validate_data(capsys, config, "data.validation=null", "--examples", "0")
    assert code != 0
    assert "d.csv line 2: unknown field 'txt'; did you mean 'text'?" in out
    assert "the field names come from the CSV's header (line 1); fix the name there" in out
    data.write_text("text\n" + "".join(f"row {n}\n" for n in range(30)) + "\n".join(["", "a,b"]) + "\n")
    code, out, _ = _validate_data(capsys, config, "data.validation=null", "--examples", "0")
    assert code != 0 and "d.csv line 33: 2 cells" in out  # one bad row among good ones: no header hint
    assert "CSV's header" not in out


def test_a_global_batch_larger_than_the_data_is_said_before_training(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The workers warned; validate --data printed the row count and said nothing (trial 37b F17)."""
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": f"row {n} of words"}) + "\n" for n in range(20)))
    config = write_config(
        tmp_path / "c.yaml",
        BUNDLED_MODEL,
        tmp_path / "run",
        data={"train": str(data), "format": "text", "packing": False},
        training={"max_steps": None, "epochs": 1, "micro_batch_size": 8, "gradient_accumulation_steps": 2},
        cluster={"workers": 2},
    )
    code, out, err = _validate_data(capsys, config, "data.validation=null", "--examples", "0")
    assert code == 0, err
    assert (
        "warning: one step takes 32 rows (the global batch) but training.epochs=1 of the data is 20 rows: "
        "the run trains 1.6 epochs, not 1"
    ) in out
    code, out, err = _validate_data(
        capsys, config, "data.validation=null", "--examples", "0", "training.gradient_accumulation_steps=1"
    )
    assert code == 0, err
    assert "the global batch" not in out  # 16 rows a step: within the data
    # A mixture's epoch is its sources' rows, as the workers count it (trial 50b: said by no one before).
    other = tmp_path / "e.jsonl"
    other.write_text("".join(json.dumps({"text": f"other {n} words"}) + "\n" for n in range(4)))
    mixture = f"data.mixture=[{{name: a, train: {data}, weight: 5}}, {{name: b, train: {other}, weight: 2}}]"
    code, out, err = _validate_data(
        capsys, config, "data.validation=null", "~data.train", mixture, "--examples", "0", "training.max_steps=3"
    )
    assert code == 0, err
    assert "one step takes 32 rows (the global batch) but the training data is 24 rows: every step repeats" in out


def test_text_the_tokenizer_cannot_represent_is_warned_of(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A WordPiece vocabulary without the data's script turns it into [UNK]s: trained on silently (trial 36b)."""
    bert = REPO / "assets" / "models" / "ftl-tiny-bert"
    data = tmp_path / "d.jsonl"
    rows = [{"text": "hello world, a plain row", "label": "a"}] * 6
    rows += [{"text": "请退款 💳", "label": "b"}, {"text": "退款", "label": "a"}]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = write_config(
        tmp_path / "c.yaml",
        bert,
        tmp_path / "run",
        data={"train": str(data), "format": "classification", "packing": False},
        transfer={"head": {"type": "sequence_classification", "labels": ["a", "b"]}},
        method={"type": "full"},
    )
    code, out, err = _validate_data(capsys, config, "data.validation=null", "--examples", "0")
    assert code == 0, err
    warning = next(line for line in out.splitlines() if "unknown token" in line)
    assert re.search(r"warning: 6 tokens \(\d+\.\d%\) are the tokenizer's unknown token", warning), warning
    assert "2 rows at least half unknown: d.jsonl line 7, d.jsonl line 8; check model.tokenizer" in warning
    data.write_text("".join(json.dumps(row) + "\n" for row in rows[:6]))
    code, out, err = _validate_data(capsys, config, "data.validation=null", "--examples", "0")
    assert code == 0, err
    assert "unknown token" not in out


def test_held_out_pairs_in_a_style_training_lacks_are_warned_of(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tokenizer: Any
) -> None:
    """Chat-style training pairs with plain-string validation pairs: the evaluation scored a prompt
    format training never used, and nothing said so (trial 44b F4). Said by validate --data and by
    training (the data report the console prints from)."""
    pref = REPO / "assets" / "data" / "fictional-pref"
    plain = tmp_path / "plain.jsonl"
    rows = [json.loads(line) for line in (pref / "valid.jsonl").read_text().splitlines()[:6]]
    as_text = [
        {"prompt": f"Q: {r['prompt'][-1]['content']}\nA:", "chosen": r["chosen"]["content"], "rejected": "No."}
        for r in rows
    ]
    plain.write_text("".join(json.dumps(r) + "\n" for r in as_text[:4] + rows[4:]))  # 4 plain, 2 chat
    sections = dict(
        data={"train": str(pref / "train.jsonl"), "validation": str(plain), "format": "preference"},
        training={"objective": "dpo"},
    )
    config = write_config(tmp_path / "c.yaml", BUNDLED_MODEL, tmp_path / "run", **sections)
    code, out, err = _validate_data(capsys, config, "--examples", "0")
    said = (
        "warning: 4 of 6 validation pairs are plain strings (no chat template), every training pair is chat style "
        "(messages rendered with the chat template): validation scores a prompt format training does not use"
    )
    assert code == 0 and said in out, out + err
    cfg = DataConfig(train=str(pref / "train.jsonl"), validation=str(plain), format="preference", max_seq_len=128)
    prepared = prepare_data(cfg, tokenizer, seed=1, micro_batch_size=4, want_prompts=False, max_prompts=None)
    assert [w.split(":")[0] for w in prepared.report["pair_style_warnings"]] == [said.split(":")[1].strip()]
    # One style in both: nothing said.
    code, out, err = _validate_data(capsys, config, f"data.validation={pref / 'valid.jsonl'}", "--examples", "0")
    assert code == 0 and "pairs are" not in out, out + err
    cfg = DataConfig(
        train=str(pref / "train.jsonl"), validation=str(pref / "valid.jsonl"), format="preference", max_seq_len=128
    )
    prepared = prepare_data(cfg, tokenizer, seed=1, micro_batch_size=4, want_prompts=False, max_prompts=None)
    assert prepared.report["pair_style_warnings"] == []
    styles = prepared.report["train_pair_styles"]  # read by `ftl generate` (a plain-pair run's prompts as written)
    assert styles["chat"] + styles["plain"] > 0 and min(styles.values()) == 0, styles
    from trainer.data.pair_styles import pair_style_warnings

    assert pair_style_warnings((5, 3), {"test": (0, 4)}) == []  # training has both styles
    assert pair_style_warnings((0, 8), {"test": (3, 0)})[0].startswith("all 3 test pairs are chat style")


def test_training_warns_of_held_out_rows_it_trains_on(tmp_path: Path, tokenizer: Any) -> None:
    """validate --data said it; training said nothing, and most users never run validate (trial 45a).
    The data report (which the console prints from) holds the same warning."""
    rows = (QA_DATA / "train.jsonl").read_text().splitlines()
    leaky = tmp_path / "leaky.jsonl"
    leaky.write_text("\n".join(rows[:3] + (QA_DATA / "valid.jsonl").read_text().splitlines()[:5]) + "\n")
    cfg = DataConfig(train=str(QA_DATA / "train.jsonl"), validation=str(leaky), max_seq_len=128)
    report = prepare_data(cfg, tokenizer, seed=1, micro_batch_size=4, want_prompts=False, max_prompts=None).report
    assert report["overlap_warnings"] == [
        f"3 of 8 validation rows ({leaky}) are also in the training data (the same tokens): their validation scores "
        "measure recall of trained rows, not generalization; remove them from one of the two"
    ]
    assert report["overlap"] == {"validation": [3, 8]}  # the final table marks the set with it
    # eval.max_samples scores the first examples alone: how many of those are trained is said (trial 48b).
    report = prepare_data(
        cfg, tokenizer, seed=1, micro_batch_size=4, want_prompts=False, max_prompts=None, eval_max_samples=4
    ).report
    assert report["overlap"] == {"validation": [3, 8, 3, 4]}
    assert "(the same tokens; 3 of the first 4 examples eval.max_samples scores)" in report["overlap_warnings"][0]
    later = tmp_path / "later.jsonl"  # the trained rows past the scored part
    later.write_text("\n".join((QA_DATA / "valid.jsonl").read_text().splitlines()[:5] + rows[:3]) + "\n")
    cfg_later = DataConfig(train=str(QA_DATA / "train.jsonl"), validation=str(later), max_seq_len=128)
    report = prepare_data(
        cfg_later, tokenizer, seed=1, micro_batch_size=4, want_prompts=False, max_prompts=None, eval_max_samples=4
    ).report
    assert "overlap" not in report and report["overlap_warnings"] == []  # none scored: the scores are clean (51a)
    report = prepare_data(
        cfg_later, tokenizer, seed=1, micro_batch_size=4, want_prompts=False, max_prompts=None, eval_max_samples=8
    ).report
    assert report["overlap"] == {"validation": [3, 8]}  # all of it scored: nothing more to say
    clean = DataConfig(train=str(QA_DATA / "train.jsonl"), validation=str(QA_DATA / "valid.jsonl"), max_seq_len=128)
    report = prepare_data(clean, tokenizer, seed=1, micro_batch_size=4, want_prompts=False, max_prompts=None).report
    assert report["overlap_warnings"] == []
    # Held out of the training file by data.validation_split: duplicated rows land on both sides.
    doubled = tmp_path / "doubled.jsonl"
    doubled.write_text("\n".join(rows[:40] * 2) + "\n")
    split = DataConfig(train=str(doubled), validation_split=0.25, max_seq_len=128)
    report = prepare_data(split, tokenizer, seed=1, micro_batch_size=4, want_prompts=False, max_prompts=None).report
    [said] = report["overlap_warnings"]
    assert "of 20 rows held out by data.validation_split" in said and "also in the training part" in said


def test_validate_data_says_the_overlap_eval_max_samples_scores_as_training_does(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Trial 51a: the workers counted the scored part, validate --data the whole set, and a set whose
    trained rows were all past the scored part was flagged by both."""
    rows = (QA_DATA / "train.jsonl").read_text().splitlines()
    held = (QA_DATA / "valid.jsonl").read_text().splitlines()[:5]
    first, last = tmp_path / "first.jsonl", tmp_path / "last.jsonl"
    first.write_text("\n".join(rows[:3] + held) + "\n")
    last.write_text("\n".join(held + rows[:3]) + "\n")
    config = write_config(tmp_path / "c.yaml", BUNDLED_MODEL, tmp_path / "run")
    code, out, err = _validate_data(capsys, config, f"data.validation={first}", "eval.max_samples=4", "--examples", "0")
    assert code == 0, err
    assert (
        "3 of 8 validation rows" in out
        and "(the same tokens; 3 of the first 4 examples eval.max_samples scores)" in out
    )
    code, out, err = _validate_data(capsys, config, f"data.validation={last}", "eval.max_samples=4", "--examples", "0")
    assert code == 0 and "also in the training data" not in out, out  # none of them scored
    code, out, err = _validate_data(capsys, config, f"data.validation={last}", "--examples", "0")
    assert "3 of 8 validation rows" in out, out  # all of it scored


def test_test_rows_in_the_validation_set_are_warned_of_by_validate_and_training(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tokenizer: Any
) -> None:
    """Session 41: validate --data and training compared held-out sets with the training data only; a
    test set sharing rows with the validation set (which chose the checkpoint) passed unsaid. A test
    file that is the validation file (or a copy) is said once, by the config check."""
    valid = (QA_DATA / "valid.jsonl").read_text().splitlines()
    test = tmp_path / "test.jsonl"
    test.write_text("\n".join(valid[:2] + (QA_DATA / "test.jsonl").read_text().splitlines()[:6]) + "\n")
    expected = f"2 of 8 test rows ({test}) are also in the validation data (the same tokens): on them the test score"
    config = write_config(tmp_path / "c.yaml", BUNDLED_MODEL, tmp_path / "run")
    code, out, err = _validate_data(capsys, config, f"data.test={test}", "--examples", "0")
    assert code == 0 and expected in out, out + err
    code, out, err = _validate_data(capsys, config, f"data.test={test}", "eval.max_samples=2", "--examples", "0")
    assert "(the same tokens; 2 of the first 2 examples eval.max_samples scores)" in out, out
    # Exact match reads its own share, eval.generation.max_samples rows: past eval.max_samples, the
    # shared rows are scored again (trial 54a: said nothing of test rows 51-53, which exact match scored).
    last = tmp_path / "last.jsonl"
    last.write_text("\n".join((QA_DATA / "test.jsonl").read_text().splitlines()[:6] + valid[:2]) + "\n")
    generated = ("eval.max_samples=2", "eval.generation.enabled=true", "eval.generation.max_samples=4")
    code, out, err = _validate_data(capsys, config, f"data.test={last}", *generated, "--examples", "0")
    assert "2 of 8 test rows" not in out, out  # the loss reads 2, exact match 4: rows 7-8 unscored
    code, out, err = _validate_data(
        capsys, config, f"data.test={last}", *generated[:2], "eval.generation.max_samples=8", "--examples", "0"
    )
    assert f"2 of 8 test rows ({last}) are also in the validation data (the same tokens): on them" in out, out
    code, out, err = _validate_data(capsys, config, f"data.test={QA_DATA / 'test.jsonl'}", "--examples", "0")
    assert "also in the validation data" not in out, out  # the bundled sets share no row
    code, out, err = _validate_data(capsys, config, f"data.test={QA_DATA / 'valid.jsonl'}", "--examples", "0")
    assert "also in the validation data" not in out and "are the same data" in err, out + err  # said once
    cfg = DataConfig(
        train=str(QA_DATA / "train.jsonl"), validation=str(QA_DATA / "valid.jsonl"), test=str(test), max_seq_len=128
    )
    report = prepare_data(cfg, tokenizer, seed=1, micro_batch_size=4, want_prompts=False, max_prompts=None).report
    [said] = report["overlap_warnings"]
    assert said.startswith(expected), said
    assert report["test_in_validation"] == [2, 8]  # the final table marks the test score with it
    report = prepare_data(
        cfg, tokenizer, seed=1, micro_batch_size=4, want_prompts=False, max_prompts=None, eval_max_samples=2
    ).report
    assert "(the same tokens; 2 of the first 2 examples eval.max_samples scores)" in report["overlap_warnings"][0]
    assert report["test_in_validation"] == [2, 8, 2, 2]
    # The validation file itself as data.test: said once before (by the config check), marked in the table.
    same = DataConfig(
        train=str(QA_DATA / "train.jsonl"), validation=str(QA_DATA / "valid.jsonl"), test=str(QA_DATA / "valid.jsonl")
    )
    report = prepare_data(same, tokenizer, seed=1, micro_batch_size=4, want_prompts=False, max_prompts=None).report
    rows = len(valid)
    assert report["overlap_warnings"] == [] and report["test_in_validation"] == [rows, rows]
    later = tmp_path / "later.jsonl"  # the shared rows past eval.max_samples, within exact match's share
    later.write_text("\n".join((QA_DATA / "test.jsonl").read_text().splitlines()[:6] + valid[:2]) + "\n")
    cfg_later = DataConfig(
        train=str(QA_DATA / "train.jsonl"), validation=str(QA_DATA / "valid.jsonl"), test=str(later), max_seq_len=128
    )
    report = prepare_data(
        cfg_later, tokenizer, seed=1, micro_batch_size=4, want_prompts=True, max_prompts=8, eval_max_samples=2
    ).report
    [said] = report["overlap_warnings"]
    assert said.startswith(f"2 of 8 test rows ({later}) are also in the validation data (the same tokens): "), said
    report = prepare_data(
        cfg_later, tokenizer, seed=1, micro_batch_size=4, want_prompts=True, max_prompts=6, eval_max_samples=2
    ).report
    assert report["overlap_warnings"] == []  # exact match reads rows 1-6, the loss 1-2: none of them shared
    clean = DataConfig(
        train=str(QA_DATA / "train.jsonl"),
        validation=str(QA_DATA / "valid.jsonl"),
        test=str(QA_DATA / "test.jsonl"),
        max_seq_len=128,
    )
    report = prepare_data(clean, tokenizer, seed=1, micro_batch_size=4, want_prompts=False, max_prompts=None).report
    assert report["overlap_warnings"] == [] and "test_in_validation" not in report


def test_held_out_overlap_counts_whole_rows_under_too_long_split(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tokenizer: Any
) -> None:
    """Trial 45a: under data.too_long=split a row's first piece stood for it (validate) and each
    piece was counted as a row (training). A held-out row counts when all of it is trained; a row
    that only begins as a training row does is not."""
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()

    def document(seed: int) -> str:
        return " ".join(words[(seed * 7 + i * (seed % 5 + 1)) % len(words)] for i in range(60))

    train_rows = [document(seed) for seed in range(12)]
    same_start = train_rows[0][:120] + " " + " ".join(reversed(words * 4))  # its first piece is trained, not all
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": t}) + "\n" for t in train_rows))
    valid = tmp_path / "valid.jsonl"
    valid.write_text("".join(json.dumps({"text": t}) + "\n" for t in [train_rows[3], train_rows[5], same_start, "x"]))
    data = {"train": str(train), "validation": str(valid), "format": "text", "max_seq_len": 32, "too_long": "split"}
    config = write_config(tmp_path / "cfg.yaml", BUNDLED_MODEL, tmp_path / "run", data=data)
    code, out, err = _validate_data(capsys, config)
    assert code == 0, err
    expected = f"2 of 4 validation rows ({valid}) are also in the training data (the same tokens)"
    assert f"warning: {expected}" in out, out[-3000:]
    cfg = DataConfig(**data)
    report = prepare_data(cfg, tokenizer, seed=1, micro_batch_size=4, want_prompts=False, max_prompts=None).report
    assert [w.split(":")[0] for w in report["overlap_warnings"]] == [expected]


def test_chat_rows_with_user_and_assistant_swapped_are_warned_of(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Trial 56a: every row opened with the assistant and ended on a user message nothing answered;
    validate --data showed it without a word, and training would teach the model to ask."""
    swap = {"user": "assistant", "assistant": "user"}
    rows = [json.loads(line) for line in (QA_DATA / "train.jsonl").read_text().splitlines()[:40]]
    swapped = tmp_path / "swapped.jsonl"
    swapped.write_text(
        "".join(
            json.dumps({"messages": [{**m, "role": swap.get(m["role"], m["role"])} for m in row["messages"]]}) + "\n"
            for row in rows
        )
    )
    config = write_config(tmp_path / "c.yaml", BUNDLED_MODEL, tmp_path / "run")
    code, out, _ = _validate_data(capsys, config, f"data.train={swapped}", "data.validation=null", "--examples", "0")
    said = "warning: all 40 usable rows open with an assistant message and end on a user message nothing answers"
    assert (
        code == 0 and said in out and "swapped.jsonl line 1, swapped.jsonl line 2, swapped.jsonl line 3 and 37" in out
    )
    code, out, _ = _validate_data(capsys, config, "--examples", "0")
    assert "open with an assistant message" not in out, out  # the bundled data


def test_an_epoch_runs_settings_past_its_end_are_warned_of_from_the_rows_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trial 57a: validate warned of a warmup, eval or checkpoint interval past the run's end only
    with max_steps; every bundled recipe counts epochs, and only the workers said it."""
    config = write_config(
        tmp_path / "c.yaml",
        BUNDLED_MODEL,
        tmp_path / "run",
        training={"max_steps": None, "epochs": 1, "micro_batch_size": 16, "warmup_steps": 200},
        eval={"every_steps": 150},
        checkpoint={"every_steps": 120},
    )
    code, out, _ = _validate_data(capsys, config)
    assert code == 0
    steps = -(-399 // 16)  # the bundled rows, packed, in batches of 16: as the workers count
    for said in (
        f"warning: training.warmup_steps=200 is not shorter than the run ({steps} steps)",
        f"warning: eval.every_steps=150 is not shorter than the run ({steps} steps)",
        f"warning: checkpoint.every_steps=120 is not shorter than the run ({steps} steps)",
    ):
        assert said in out, out[-3000:]
    code, out, _ = _validate_data(
        capsys, config, "training.warmup_steps=5", "eval.every_steps=10", "checkpoint.every_steps=10"
    )
    assert code == 0 and "is not shorter than the run" not in out, out[-3000:]


def test_a_cache_folder_that_cannot_be_written_costs_the_cache_not_the_run(
    tmp_path: Path, tokenizer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Trial 60b: a read-only FTL_CACHE_DIR failed a Ray run 35 s in with a PermissionError. (A
    file where the cache's folder would go stands in for a read-only folder: root writes those.)"""
    (tmp_path / "a-file").write_text("x")
    args = (str(QA_DATA / "valid.jsonl"), "chat", tokenizer)
    kwargs = {"max_seq_len": 128, "too_long": "truncate", "skip_bad_rows": False}
    with caplog.at_level("WARNING", logger="trainer.data.tokenized"):
        blocked = load_tokenized(*args, **kwargs, cache_root=tmp_path / "a-file" / "tokenized")
    assert "could not cache the tokenized data in" in caplog.text and "training goes on" in caplog.text
    caplog.clear()
    load_tokenized(
        str(QA_DATA / "test.jsonl"), "chat", tokenizer, **kwargs, cache_root=tmp_path / "a-file" / "tokenized"
    )
    assert "could not cache" not in caplog.text  # said once per folder (trial 60c: once per dataset)
    cached = load_tokenized(*args, **kwargs, cache_root=tmp_path / "cache")
    assert np.array_equal(blocked.ids, cached.ids) and np.array_equal(blocked.mask, cached.mask)
    # The start's data line says the cache only where one can be written (trial 61d).
    from trainer.run import _tokenized_where

    said = f"tokenized at each start: the cache folder {tmp_path / 'a-file' / 'tokenized'} cannot be written"
    assert _tokenized_where(str(tmp_path / "a-file")) == said
    assert _tokenized_where(str(tmp_path / "not-yet" / "made")) == "tokenized once, then from the cache"


def test_validate_warns_of_a_mixture_source_an_epoch_draws_many_times_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trial 62a: 9 rows beside a few hundred at the same weight were drawn 18 times an epoch,
    said only as a count in the mixture's line."""
    lines = (QA_DATA / "train.jsonl").read_text().splitlines()
    (tmp_path / "tiny.jsonl").write_text("\n".join(lines[:9]) + "\n")
    mixture = [
        {"name": "qa", "train": str(QA_DATA / "train.jsonl"), "weight": 1.0},
        {"name": "tiny", "train": str(tmp_path / "tiny.jsonl"), "weight": 1.0},
    ]
    data = {"train": None, "validation": None, "mixture": mixture}
    config = write_config(tmp_path / "c.yaml", BUNDLED_MODEL, tmp_path / "run", data=data)
    code, out, err = _validate_data(capsys, config)
    assert code == 0, err
    assert "warning: data.mixture: an epoch draws tiny (" in out and "lower its weight or give it more rows" in out, out
    code, out, err = _validate_data(capsys, config, "data.mixture.1.weight=0.01")
    assert code == 0 and "learnt by heart" not in out, out


def test_answers_exact_match_cannot_reach_are_warned_of(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Trial 64c: the warning of answers longer than eval.generation.max_new_tokens came from the
    workers only, after Ray's start-up; validate --data reads the same rows."""
    config = write_config(tmp_path / "cfg.yaml", BUNDLED_MODEL, tmp_path / "run")
    on = "eval.generation.enabled=true"
    code, out, err = _validate_data(
        capsys, config, on, "eval.generation.max_new_tokens=1", "eval.generation.max_samples=20"
    )
    assert code == 0, err
    assert (
        "warning: reference answers longer than eval.generation.max_new_tokens=1 tokens can never be an exact "
        "match: validation: 20 of 20 (up to 2 tokens); raise eval.generation.max_new_tokens"
    ) in out, out[-2000:]
    code, out, err = _validate_data(capsys, config, on, "eval.generation.max_new_tokens=2")
    assert code == 0 and "can never be an exact match" not in out, err
