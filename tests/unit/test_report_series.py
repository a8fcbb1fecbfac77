"""The report's series: a preference run's training reward curves get charts of their own (only
its evaluations were plotted); an SFT run gets none of them."""

from __future__ import annotations

import json
from pathlib import Path

from launcher.report.series import chart_title, run_series


def _run(tmp_path: Path, records: list[dict]) -> Path:
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return tmp_path


def test_preference_training_steps_plot_reward_margin_and_accuracy(tmp_path: Path) -> None:
    steps = [
        {"kind": "train", "step": s, "loss": 0.69 - s / 100, "reward_margin": s / 10, "reward_accuracy": s / 4}
        for s in (1, 2)
    ]
    (tmp_path / "dpo").mkdir()
    charts = run_series(_run(tmp_path / "dpo", steps))["charts"]
    assert charts["reward_margin"] == {"reward_margin": [(1, 0.1), (2, 0.2)]}
    assert charts["reward_accuracy"] == {"reward_accuracy": [(1, 0.25), (2, 0.5)]}
    assert chart_title("reward_margin") == "training reward margin (chosen - rejected)"
    (tmp_path / "sft").mkdir()
    sft = run_series(_run(tmp_path / "sft", [{"kind": "train", "step": 1, "loss": 2.0}]))["charts"]
    assert "reward_margin" not in sft and "loss" in sft


def test_an_image_runs_speed_chart_is_images_per_second(tmp_path: Path) -> None:
    """Its batches count images: the chart said tokens/s (trial 33a)."""
    step = {"kind": "train", "step": 1, "loss": 1.0, "tokens_per_s": 30.0}
    (tmp_path / "shapes").mkdir()
    (tmp_path / "shapes" / "config.yaml").write_text("data: {format: image_classification}\n")
    charts = run_series(_run(tmp_path / "shapes", [step]))["charts"]
    assert charts["images_per_s"] == {"images_per_s": [(1, 30.0)]} and "tokens_per_s" not in charts
    assert chart_title("images_per_s") == "images/s"
    (tmp_path / "text").mkdir()
    assert "tokens_per_s" in run_series(_run(tmp_path / "text", [step]))["charts"]


def test_compared_runs_show_the_settings_that_tell_them_apart(tmp_path: Path) -> None:
    """A sweep compared in one report: which run had which learning rate and rank (trial 34a: only
    the directory names told them apart). Where a run writes is not a setting."""
    from launcher.report.settings import differing_settings
    from launcher.report.write import write_report

    configs = {
        "lr2e-3": "training: {learning_rate: 0.002, seed: 1}\nmethod: {lora: {r: 8}}\n",
        "lr5e-3": "training: {learning_rate: 0.005, seed: 1}\nmethod: {lora: {r: 8}}\n",
        "r32": "training: {learning_rate: 0.002, seed: 1}\nmethod: {lora: {r: 32}, type: dora}\n",
    }
    # Where the metrics were copied is not a setting either (trial 61a: three tracking keys first).
    configs["r32"] += "tracking: {wandb: {enabled: true}, mlflow: {experiment: sweep, tracking_uri: 'http://h:5000'}}\n"
    runs = []
    for name, text in configs.items():
        (tmp_path / name).mkdir()
        run = _run(tmp_path / name, [])
        (run / "config.yaml").write_text(text + f"output: {{dir: {run}}}\n")
        (run / ".ftl-run").write_text('{"ftl_run_directory": 1}')
        (run / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 1, "loss": 2.0}) + "\n")
        runs.append(run)
    assert differing_settings(runs) == [
        {"method.lora.r": "8", "method.type": "(unset)", "training.learning_rate": "0.002"},
        {"method.lora.r": "8", "method.type": "(unset)", "training.learning_rate": "0.005"},
        {"method.lora.r": "32", "method.type": "dora", "training.learning_rate": "0.002"},
    ]
    page = write_report(runs, tmp_path / "cmp").read_text()
    assert "<th>settings that differ</th>" in page
    assert "<td>method.lora.r=32, method.type=dora, training.learning_rate=0.002</td>" in page
    alone = write_report(runs[:1], tmp_path / "one").read_text()
    assert "settings that differ" not in alone
    # A full fine-tune reads no method.lora.*: its rank is said as not used, not as a value (trial 39b).
    (runs[1] / "config.yaml").write_text(
        f"training: {{learning_rate: 0.002, seed: 1}}\nmethod: {{lora: {{r: 16}}, type: full}}\noutput: {{dir: {runs[1]}}}\n"
    )
    assert differing_settings(runs[:2]) == [
        {"method.lora.r": "8", "method.type": "(unset)"},
        {"method.lora.r": "(not used)", "method.type": "full"},
    ]


def test_a_failed_runs_status_cell_keeps_the_reason_after_its_announcing_line(tmp_path: Path) -> None:
    """'... to skip malformed rows:' and nothing after it (trial 40b); `ftl runs` showed the row."""
    from launcher.report.write import write_report
    from trainer.run_layout import RunLayout

    runs = []
    for name in ("ok", "bad"):
        (tmp_path / name).mkdir()
        run = _run(tmp_path / name, [{"kind": "train", "step": 1, "loss": 2.0}])
        (run / "config.yaml").write_text(f"output: {{dir: {run}}}\n")
        (run / ".ftl-run").write_text('{"ftl_run_directory": 1}')
        runs.append(run)
    reason = "training data has bad rows; set data.skip_bad_rows=true to skip malformed rows:\n  t.jsonl line 11: no assistant message"
    RunLayout(runs[1]).failure.write_text(json.dumps({"reason": reason}))
    page = write_report(runs, tmp_path / "cmp").read_text()
    assert "to skip malformed rows: t.jsonl line 11: no assistant message" in page, page[-3000:]


def test_compared_dpo_and_orpo_reward_charts_say_they_differ(tmp_path: Path) -> None:
    """Trial 52b: ORPO's λ·mean log-prob rewards were drawn beside DPO's β·log-ratios without a word."""
    from launcher.report.write import _rewards_caveat, objective_dependent

    runs = []
    for name in ("dpo", "orpo", "dpo2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(f"training: {{objective: {name.rstrip('2')}}}\n")
        runs.append(tmp_path / name)
    assert _rewards_caveat(runs[:2]).startswith("DPO (β·log-ratios, summed log-probs) and ORPO (λ·mean log-probs)")
    assert _rewards_caveat([runs[0], runs[2]]) == ""  # one objective: comparable
    # Trial 59d: log-probs and preference accuracy were drawn together without it.
    assert all(map(objective_dependent, ("eval_rewards_margin", "eval_logps_chosen", "eval_preference_accuracy")))
    assert not objective_dependent("train_loss") and not objective_dependent("lr")


def test_an_early_stopped_runs_final_test_score_is_plotted_at_the_best_step(tmp_path: Path) -> None:
    """Trial 64b: the final evaluation of the best step's weights was left out of every chart, right for
    validation (plotted at that step by its periodic evaluation) but the test set, scored at the end
    only, lost its final score."""
    records = [
        {"kind": "eval", "step": 0, "split": "validation", "label": "base", "eval_loss": 3.0},
        {"kind": "eval", "step": 0, "split": "test", "label": "base", "eval_loss": 3.1},
        {"kind": "eval", "step": 10, "split": "validation", "label": "periodic", "eval_loss": 1.0},
        {"kind": "eval", "step": 20, "split": "validation", "label": "periodic", "eval_loss": 1.5},
        {"kind": "eval", "step": 20, "split": "validation", "label": "final", "eval_loss": 1.0, "weights_step": 10},
        {"kind": "eval", "step": 20, "split": "test", "label": "final", "eval_loss": 1.2, "weights_step": 10},
    ]
    (tmp_path / "es").mkdir()
    charts = run_series(_run(tmp_path / "es", records))["charts"]
    assert charts["eval_eval_loss"] == {
        "validation": [(0, 3.0), (10, 1.0), (20, 1.5)],  # the best step's point once, the stop step's as scored
        "test": [(0, 3.1), (10, 1.2)],  # at the step whose weights it scored
    }
    assert "eval_weights_step" not in charts
