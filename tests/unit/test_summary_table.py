"""The end-of-run table: a metric column only when some evaluation scored that metric."""

from __future__ import annotations

from typing import Any

from launcher.commands import format_summary


def _summary(scores: dict[str, Any], tmp: str) -> dict[str, Any]:
    return {"steps": 4, "first_loss": 3.0, "last_loss": 1.5, "scores": scores, "final_dir": f"{tmp}/final"}


def test_generation_off_leaves_out_the_exact_match_column(tmp_path: Any) -> None:
    loss_only = {"validation": {"base": {"eval_loss": 3.0}, "final": {"eval_loss": 1.25}}}
    table = format_summary(_summary(loss_only, str(tmp_path)))
    assert "held-out set  eval loss (base -> tuned)\n" in table and "exact match" not in table
    assert "validation    3.0000 -> 1.2500\n" in table + "\n"

    scored = {
        "validation": {"base": {"eval_loss": 3.0, "exact_match": 0.0}, "final": {"eval_loss": 1.25, "exact_match": 0.5}}
    }
    table = format_summary(_summary(scored, str(tmp_path)))
    assert "exact match (base -> tuned)" in table and "0.0% -> 50.0%" in table
