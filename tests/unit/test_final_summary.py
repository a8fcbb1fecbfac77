"""The table `ftl train` prints at the end says which step's model final/ holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from launcher.commands import format_summary


def _summary(tmp_path: Path, **stopping: Any) -> dict[str, Any]:
    best = {"best_step": 40, "split": "validation", "metric": "accuracy", "best": 0.9889, **stopping}
    return {
        "steps": 45,
        "first_loss": 1.0814,
        "last_loss": 0.0908,
        "final_dir": str(tmp_path / "final"),
        "transfer": {"early_stopping": best},
    }


def test_final_holds_the_best_step_whether_or_not_training_stopped_early(tmp_path: Path) -> None:
    stopped = format_summary(_summary(tmp_path, stopped_at=45, best_step=35))
    assert "early stopping: stopped at step 45; final/ holds the best step 35 (validation accuracy 0.9889)" in stopped
    # Why, in the rule's terms (trial 43b), where the summary records them.
    said = format_summary(_summary(tmp_path, stopped_at=45, best_step=35, patience=2, min_delta=0.01))
    assert (
        "early stopping: stopped at step 45 after 2 evaluations in a row without beating the best by more than "
        "min_delta 0.01; final/ holds the best step 35"
    ) in said
    kept_elsewhere = format_summary(
        _summary(tmp_path, stopped_at=45, best_step=35, best_dir="/runs/a/checkpoints/step-35")
    )
    assert (
        "(validation accuracy 0.9889, a checkpoint of the run continued from: /runs/a/checkpoints/step-35)"
        in kept_elsewhere
    )
    # The chain's earlier best was gone when this run continued it (trial 45a: only a console note said so).
    lost = {"step": 24, "value": 1.3528, "path": "/runs/a/checkpoints/step-24"}
    said = format_summary(_summary(tmp_path, stopped_at=45, best_step=35, lost_best=lost))
    assert (
        "early stopping: the best of the run continued from, step 24 (validation accuracy 1.3528), was not kept "
        "(/runs/a/checkpoints/step-24), so final/ holds this run's own best"
    ) in said
    # Patience used up at the last planned step stopped nothing (trial 61b: "stopped at step 38" of 38).
    at_the_end = {**_summary(tmp_path, stopped_at=45, best_step=35, patience=2, min_delta=0), "total_steps": 45}
    assert (
        "early stopping: ran all 45 steps (patience ran out at the last evaluation after 2 evaluations in a row "
        "without beating the best by more than min_delta 0); final/ holds the best step 35"
    ) in format_summary(at_the_end)
    assert "stopped at step" not in format_summary(at_the_end)
    early = {**_summary(tmp_path, stopped_at=45, best_step=35), "total_steps": 60}
    assert "early stopping: stopped at step 45; final/ holds the best step 35" in format_summary(early)
    ran_out = format_summary(_summary(tmp_path, stopped_at=None))
    assert "early stopping: ran all 45 steps; final/ holds the best step 40 (validation accuracy 0.9889)" in ran_out
    # The last step was the best: final/ is the last step's model, nothing to say.
    assert "early stopping" not in format_summary(_summary(tmp_path, stopped_at=None, best_step=45))
    # A best worse than the base model's is said beside it (trial 53b: once, among the worker lines).
    worse = format_summary(_summary(tmp_path, stopped_at=45, best_step=35, base=0.995))
    assert "final/ holds the best step 35 (validation accuracy 0.9889; worse than the base model's 0.9950)" in worse
    assert "worse than the base" not in format_summary(_summary(tmp_path, stopped_at=45, best_step=35, base=0.5))
    last = format_summary(_summary(tmp_path, stopped_at=None, best_step=45, base=0.995))
    assert (
        "early stopping: the best evaluation, step 45 (validation accuracy 0.9889), is worse than the base model's "
        "0.9950"
    ) in last
    loss = format_summary(_summary(tmp_path, stopped_at=45, best_step=35, metric="eval_loss", best=1.51, base=1.13))
    assert "(validation eval_loss 1.5100; worse than the base model's 1.1300)" in loss


def test_the_data_line_counts_images_not_token_slots(tmp_path: Path) -> None:
    data = {"train_examples": 120, "train_rows": 120, "token_efficiency": 1.0, "packing": False}
    images = format_summary({**_summary(tmp_path), "data": {**data, "format": "image_classification"}})
    assert "data: 120 images\n" in images and "token slots" not in images
    texts = format_summary({**_summary(tmp_path), "data": {**data, "format": "classification"}})
    assert "data: 120 examples padded in batches, 120 rows; 100.0% of token slots hold real tokens" in texts
    # A preference row is a pair of sequences (trial 45a: "16 examples padded in batches, 8 rows").
    pairs = format_summary({**_summary(tmp_path), "data": {**data, "train_rows": 60, "format": "preference"}})
    assert "data: 60 pairs (120 sequences) padded in batches; 100.0% of token slots hold real tokens" in pairs
    # Shuffled rows in padded batches: the figure is the mean over shuffles, not this run's draw (trial 60a).
    shuffled = {**data, "format": "classification", "token_efficiency": 0.714, "token_efficiency_expected": True}
    said = format_summary({**_summary(tmp_path), "data": shuffled})
    assert "rows; about 71.4% of token slots hold real tokens (the mean over shuffles of the batches)" in said


def test_a_set_scored_in_part_is_marked(tmp_path: Path) -> None:
    """eval.max_samples: 64 of 200 rows scored, and the table looked like a whole-set score (trial 31b)."""
    data = {"train_examples": 120, "train_rows": 120, "token_efficiency": 1.0, "packing": False}
    scores = {"validation": {"base": {"eval_loss": 15.7}, "final": {"eval_loss": 3.89}}, "test": {"final": {}}}
    summary = {**_summary(tmp_path), "data": {**data, "validation_examples": 200, "test_examples": 50}}
    table = format_summary({**summary, "scores": scores, "eval_max_samples": 64})
    assert "\nvalidation*   15.7000 -> 3.8900" in table
    assert "* validation: scored on the first 64 of 200 examples" in table and "* test" not in table
    assert "(not comparable with scores of whole sets)" in table
    assert "*" not in format_summary({**summary, "scores": scores, "eval_max_samples": None})


def test_a_set_training_also_trains_on_is_marked_beside_its_scores(tmp_path: Path) -> None:
    """Trial 47a: 20 of 50 validation rows were training rows; the warning came before training, and
    the table showed the set's scores as a held-out set's."""
    data = {"train_examples": 120, "train_rows": 120, "token_efficiency": 1.0, "packing": False}
    scores = {"validation": {"base": {"eval_loss": 15.7}, "final": {"eval_loss": 3.89}}, "test": {"final": {}}}
    summary = {**_summary(tmp_path), "scores": scores, "data": {**data, "overlap": {"validation": [20, 50]}}}
    table = format_summary(summary)
    assert "\nvalidation!   15.7000 -> 3.8900" in table and "\ntest " in table
    assert "! validation: 20 of 50 rows are also in the training data" in table and "! test" not in table
    assert "(their scores measure recall of trained rows, not generalization)" in table
    assert "!" not in format_summary({**summary, "data": data})
    # eval.max_samples scored the first 64: how many of those are trained ones (trial 48b).
    scored = format_summary({**summary, "data": {**data, "overlap": {"validation": [20, 50, 3, 16]}}})
    assert "! validation: 20 of 50 rows are also in the training data (3 of the first 16 examples, which" in scored


def test_a_test_set_sharing_rows_with_validation_is_marked_beside_its_scores(tmp_path: Path) -> None:
    """Session 42: a test set with the validation set's rows was warned of before training only; the
    table showed its score as an independent one."""
    data = {"train_examples": 120, "train_rows": 120, "token_efficiency": 1.0, "packing": False}
    scores = {"validation": {"final": {"eval_loss": 3.89}}, "test": {"final": {"eval_loss": 3.91}}}
    summary = {**_summary(tmp_path), "scores": scores, "data": {**data, "test_in_validation": [30, 30]}}
    table = format_summary(summary)
    assert "\ntest=" in table and "\nvalidation " in table, table
    assert "= test: 30 of 30 rows are also in the validation data" in table
    assert "(on them the test score repeats the validation score: not an independent measure)" in table
    clean = format_summary({**summary, "data": data})
    assert "\ntest " in clean and "= test" not in clean and "repeats the validation score" not in clean
    part = format_summary({**summary, "data": {**data, "test_in_validation": [5, 30, 2, 10]}})
    assert "= test: 5 of 30 rows are also in the validation data (2 of the first 10 examples, which" in part


def test_classification_shows_macro_f1_beside_accuracy_whatever_early_stopping_watched(tmp_path: Path) -> None:
    """Accuracy alone hides a classifier that always says the majority class (trials 33a, 36b:
    "0.0% -> 40.0%" on imbalanced data, macro F1 14.3%): macro F1 has a column of its own."""
    scores = {
        "validation": {
            "base": {"eval_loss": 1.1, "accuracy": 0.3, "macro_f1": 0.1},
            "final": {"eval_loss": 0.9, "accuracy": 0.5, "macro_f1": 0.2222},
        }
    }
    watched = _summary(tmp_path, metric="macro_f1", best=0.2222, best_step=5)
    table = format_summary({**watched, "scores": scores}).splitlines()
    header = next(line for line in table if line.startswith("held-out set"))
    assert "accuracy (base -> tuned)" in header and header.endswith("macro F1 (base -> tuned)")
    row = next(line for line in table if line.startswith("validation"))
    assert row.endswith("30.0% -> 50.0%                10.0% -> 22.2%")
    # Watching accuracy or the loss, or no early stopping: the same two columns, not three.
    for metric in ("accuracy", "eval_loss", None):
        summary = _summary(tmp_path, metric=metric) if metric else {**_summary(tmp_path), "transfer": {}}
        same = format_summary({**summary, "scores": scores}).splitlines()
        assert next(line for line in same if line.startswith("held-out set")) == header
        assert next(line for line in same if line.startswith("validation")) == row
    # A run whose evaluations scored no macro F1 (token classification, generation) gets no such column.
    generation = {"validation": {"base": {"eval_loss": 1.1, "exact_match": 0.0}, "final": {"eval_loss": 0.9}}}
    assert "macro F1" not in format_summary({**_summary(tmp_path), "scores": generation})


def test_a_run_started_from_an_adapter_says_start_not_base(tmp_path: Path) -> None:
    """method.lora.init_from: step 0 scored the adapter the run started from, not the base model."""
    scores = {"validation": {"base": {"eval_loss": 0.52}, "final": {"eval_loss": 0.41}}}
    plain = format_summary({**_summary(tmp_path), "scores": scores})
    assert "eval loss (base -> tuned)" in plain and "started from" not in plain
    adapter = str(tmp_path / "sft" / "final" / "adapter")
    table = format_summary({**_summary(tmp_path), "scores": scores, "started_from": adapter})
    assert "eval loss (start -> tuned)" in table and "base" not in table
    assert f"start = the adapter the run started from ({adapter})" in table


def test_preference_runs_with_generation_show_its_exact_match_too(tmp_path: Path) -> None:
    """eval.generation scored the chosen answers; only pref. accuracy reached the table (trial 37a)."""
    scores = {
        "validation": {
            "base": {"eval_loss": 0.69, "preference_accuracy": 0.5, "exact_match": 0.0},
            "final": {"eval_loss": 0.41, "preference_accuracy": 1.0, "exact_match": 0.25},
        }
    }
    table = format_summary({**_summary(tmp_path), "transfer": {}, "scores": scores}).splitlines()
    header = next(line for line in table if line.startswith("held-out set"))
    # The 30-character title and the next one apart (they ran together: trial 38c).
    assert header.endswith("pref. accuracy (base -> tuned)  exact match (base -> tuned)")
    row = next(line for line in table if line.startswith("validation"))
    assert row.endswith(f"{'50.0% -> 100.0%':<32}0.0% -> 25.0%")
    assert row.index("0.0% -> 25.0%") == header.index("exact match")  # under its title
    del scores["validation"]["base"]["exact_match"], scores["validation"]["final"]["exact_match"]
    assert "exact match" not in format_summary({**_summary(tmp_path), "transfer": {}, "scores": scores})


def test_exact_match_on_part_of_a_set_is_marked(tmp_path: Path) -> None:
    """eval.generation.max_samples=4 scored exact match on 4 of 10 pairs, unmarked (trial 38c)."""
    scores = {
        "validation": {
            "base": {"eval_loss": 0.69, "preference_accuracy": 0.5, "exact_match": 0.0},
            "final": {"eval_loss": 0.41, "preference_accuracy": 1.0, "exact_match": 0.25},
        }
    }
    data = {"format": "preference", "train_examples": 40, "train_rows": 20, "token_efficiency": 1.0}
    part = {**data, "validation_exact_match_scored": 3, "validation_exact_match_of": 10}
    table = format_summary(
        {**_summary(tmp_path), "transfer": {}, "scores": scores, "data": {**part, "validation_exact_match_left_out": 1}}
    )
    assert "\nvalidation+   0.6900 -> 0.4100" in table
    assert (
        "+ validation: exact match on 3 of 10 pairs (the first 4, eval.generation.max_samples; 1 longer than "
        "data.max_seq_len left out)" in table
    )
    whole = {**data, "validation_exact_match_scored": 10, "validation_exact_match_of": 10}
    assert "+" not in format_summary({**_summary(tmp_path), "transfer": {}, "scores": scores, "data": whole})
    # eval.max_samples scored the loss on 4 pairs, generation all 10 (trial 52b: "3.5%" under "first 40").
    limited = {**_summary(tmp_path), "transfer": {}, "scores": scores, "eval_max_samples": 4}
    table = format_summary({**limited, "data": {**whole, "validation_examples": 20}})
    assert (
        "* validation: scored on the first 4 of 10 pairs (exact match on all 10, eval.generation.max_samples)" in table
    )
    # No exact match column (generation off): no mark, whatever the data says.
    del scores["validation"]["base"]["exact_match"], scores["validation"]["final"]["exact_match"]
    assert "+ validation" not in format_summary({**_summary(tmp_path), "transfer": {}, "scores": scores, "data": part})


def test_the_train_loss_is_also_said_as_means_of_the_first_and_last_steps(tmp_path: Path) -> None:
    """One step's loss is noisy: an IPO run's last step said 28.6 while every evaluation improved (trial 44b)."""
    from trainer.run import _loss_means

    losses = [25.0, 20.0, 30.0] + [22.0] * 24 + [10.0, 38.0, 28.6]
    means = _loss_means(losses)
    assert means == {"loss_mean_steps": 3, "first_loss_mean": 25.0, "last_loss_mean": (10.0 + 38.0 + 28.6) / 3}
    said = format_summary({**_summary(tmp_path), "first_loss": 25.0, "last_loss": 28.6, **means})
    assert (
        "train loss 25.0000 -> 28.6000 (single steps; the means of the first and last 3 logged steps: 25.0000 -> 25.5333)"
        in said
    )
    assert _loss_means(losses[:19]) == {}  # a tenth of 19 is one step: nothing to add


def test_a_continuation_says_how_many_steps_it_trained_itself(tmp_path: Path) -> None:
    """Trial 47a: "Fine-tune finished: 55 steps" for a run that continued another's step 30."""
    continued = {"path": "/runs/es1/checkpoints/step-30", "step": 30}
    said = format_summary({**_summary(tmp_path), "steps": 55, "continued_from": continued})
    assert "Fine-tune finished: 55 steps (25 in this run), train loss" in said
    assert "in this run" not in format_summary({**_summary(tmp_path), "steps": 55})


def test_a_resume_under_another_config_is_said_beside_the_loss(tmp_path: Path) -> None:
    """Trial 59d: resumed under another preference beta, "train loss 0.6931 -> 0.8645" spanned
    two losses of different scale without a word."""
    change = {"step": 5, "config_change": "training.preference.beta: 0.1 -> 0.5"}
    said = format_summary({**_summary(tmp_path), "resumed_with_config_changes": [change]})
    assert (
        "resumed at step 5 under another config (training.preference.beta: 0.1 -> 0.5): the loss and the scores "
        "span both configs"
    ) in said
    assert "under another config" not in format_summary(_summary(tmp_path))


def test_a_report_of_a_run_still_training_says_so(tmp_path: Path) -> None:
    """Trial 60b: `ftl report` of a live run said "report written" as for a whole run."""
    from cluster.run_lock import RunLock
    from launcher.commands import _still_training

    run = tmp_path / "run"
    run.mkdir()
    assert _still_training(run) == ""
    with RunLock.acquire(run, "ftl train"):
        assert _still_training(run) == " (it is training now)"
    assert _still_training(run) == ""


def test_exact_match_normalized_ignores_case_punctuation_and_articles_and_the_table_says_so(tmp_path: Path) -> None:
    """Trial 64b: "15." against "15" was a miss, and nothing said exact match ignores only whitespace."""
    from trainer.evaluate import normalize_answer

    assert normalize_answer("  15. ") != normalize_answer("15")  # exact: as written
    assert normalize_answer("The  Rainling.", normalized=True) == normalize_answer("rainling", normalized=True)
    assert normalize_answer("15.", normalized=True) == normalize_answer(" 15", normalized=True) == "15"
    assert normalize_answer("Mt. Oro", normalized=True) == "mt oro"
    # Punctuation deleted, as SQuAD does (trial 64c: spaced, "1,000" was not "1000", "A-ha" was "ha").
    for said, reference in (("1,000", "1000"), ("U.S.", "US"), ("e-mail", "email"), ("$5", "5"), ("don't", "dont")):
        assert normalize_answer(said, normalized=True) == normalize_answer(reference, normalized=True), said
    assert normalize_answer("A-ha", normalized=True) != normalize_answer("ha", normalized=True)
    assert normalize_answer("theory", normalized=True) == "theory"  # whole words only
    data = {"train_examples": 12, "train_rows": 12, "token_efficiency": 1.0, "packing": False}
    scores = {
        "validation": {"base": {"eval_loss": 3.0, "exact_match": 0.0}, "final": {"eval_loss": 1.0, "exact_match": 0.5}}
    }
    summary = {**_summary(tmp_path), "data": data, "scores": scores}
    assert "exact match (base -> tuned)" in format_summary(summary)
    said = format_summary({**summary, "exact_match_rule": "normalized"})
    assert "exact match (normalized) (base -> tuned)" in said, said


def test_answers_longer_than_max_new_tokens_are_warned_of(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """Trial 64b: max_new_tokens 1 against 2-token answers scored 0.0% -> 0.0% with no word."""
    from types import SimpleNamespace

    from trainer.data.formats import Prompt
    from trainer.evaluate import answers_past_new_tokens

    short, long = "Rainling", "the " * 10 + "end"
    tokens = len(tokenizer.encode(long, add_special_tokens=False))
    evals = [
        SimpleNamespace(name="validation", prompts=[Prompt([1], short), Prompt([1], long), Prompt([1], short)]),
        SimpleNamespace(name="retain", prompts=None),  # text sets have no prompts
    ]
    said = answers_past_new_tokens(evals, tokenizer, max_new_tokens=tokens - 1)
    assert said == (
        f"reference answers longer than eval.generation.max_new_tokens={tokens - 1} tokens can never be an exact "
        f"match: validation: 1 of 3 (up to {tokens} tokens); raise eval.generation.max_new_tokens"
    )
    assert answers_past_new_tokens(evals, tokenizer, max_new_tokens=tokens) is None
