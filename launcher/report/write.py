"""Draw a report: one PNG per chart (several runs overlaid), data.json with exactly the points
drawn, and index.html with the pictures embedded and a summary table (one file to send around)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from launcher.report.series import chart_title, run_series
from launcher.report.settings import differing_settings
from launcher.runs import RunInfo, describe_run, failure_line
from trainer.console import duration

DATA_FILE = "data.json"
PAGE_FILE = "index.html"
MARKER_FILE = ".ftl-report"  # a folder ftl wrote a report into: a later report may replace it


def refuse_foreign_target(out: Path) -> None:
    """`--out` may be new, empty, or an earlier ftl report; never a file or a folder of the user's."""
    from launcher.errors import UserError

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; name a new or empty folder")
    if not out.is_dir() or not any(out.iterdir()) or (out / MARKER_FILE).is_file() or _earlier_report(out):
        return
    raise UserError(
        f"--out {out} is not empty and is not an ftl report; ftl does not write into a folder it did not make. "
        "Name a new or empty folder"
    )


def _earlier_report(out: Path) -> bool:
    """A report written before the marker existed: its data.json is ftl's."""
    try:
        data = json.loads((out / DATA_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and set(data) == {"runs", "labels"} and (out / PAGE_FILE).is_file()


def write_report(runs: list[Path], out: Path) -> Path:
    """Writes out/{CHART}.png, out/data.json, out/index.html; returns the page's path."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, and no GUI toolkit on a cluster node
    series = [run_series(run) for run in runs]
    labels = _labels(runs)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER_FILE).touch()
    charts = sorted({chart for s in series for chart in s["charts"]}, key=_chart_order)
    caveat = _rewards_caveat(runs)
    pictures = [(chart, _plot(chart, series, labels, out / f"{chart}.png", caveat)) for chart in charts]
    (out / DATA_FILE).write_text(json.dumps({"runs": series, "labels": labels}, indent=1))
    page = out / PAGE_FILE
    settings = differing_settings(runs) if len(runs) > 1 else None
    page.write_text(_page(runs, labels, [describe_run(run) for run in runs], pictures, settings), encoding="utf-8")
    return page


def _rewards_caveat(runs: list[Path]) -> str:
    """A subtitle for the reward charts of compared DPO and ORPO runs: β·log-ratios beside λ·mean
    log-probabilities, different quantities on one axis (trial 52b: drawn without a word)."""
    from launcher.report.settings import flat_config

    objectives = {str(flat_config(run).get("training.objective", "sft")) for run in runs}
    if {"dpo", "orpo"} <= objectives:
        return "DPO (β·log-ratios, summed log-probs) and ORPO (λ·mean log-probs) differ: compare runs of one objective"
    return ""


# Charts whose values a DPO and an ORPO run compute differently (trial 59d: log-probs and preference
# accuracy were drawn together without a word; the rewards had the caveat since trial 52b).
_OBJECTIVE_CHARTS = ("reward", "logps", "preference_accuracy", "margin")


def objective_dependent(chart: str) -> bool:
    return any(name in chart for name in _OBJECTIVE_CHARTS)


def _plot(chart: str, series: list[dict[str, Any]], labels: list[str], path: Path, caveat: str = "") -> Path:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 3.6), dpi=110)
    try:
        for run_index, (run, label) in enumerate(zip(series, labels)):
            color = f"C{run_index}"
            lines = run["charts"].get(chart, {})
            styles = ["-", "--", ":", "-."]
            for line_index, (name, points) in enumerate(sorted(lines.items())):
                steps, values = zip(*points)
                name_shown = name if len(series) == 1 else f"{label}: {name}"
                marker = "o" if len(points) < 30 else None
                axes.plot(
                    steps, values, styles[line_index % 4], color=color, marker=marker, markersize=3, label=name_shown
                )
            for step in run["resumes"]:  # where a start continued from a checkpoint (resume or restart)
                axes.axvline(step, color=color, alpha=0.5, linestyle=":", linewidth=1)
                axes.annotate(
                    (f"{label}: " if len(series) > 1 else "")
                    + f"resumed @{step}"
                    + (", config changed" if step in run.get("config_changed_at", ()) else ""),
                    (step, 1),
                    xycoords=("data", "axes fraction"),
                    # Each compared run's labels a column of their own: runs resumed at (nearly) the same
                    # step were drawn on top of each other (trial 45b).
                    xytext=(-9 * run_index, 0),
                    textcoords="offset points",
                    fontsize=7,
                    color=color,
                    rotation=90,
                    va="top",
                    ha="right",
                )
        if caveat and objective_dependent(chart):
            axes.set_title(f"{chart_title(chart)}\n{caveat}", fontsize=9)
        else:
            axes.set_title(chart_title(chart))
        axes.set_xlabel("step")
        if chart in ("lr", "grad_norm") or chart.startswith("lr"):
            axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(path)
    finally:
        plt.close(figure)
    return path


def _page(
    runs: list[Path],
    labels: list[str],
    infos: list[RunInfo],
    pictures: list[tuple[str, Path]],
    settings: list[dict[str, str]] | None,
) -> str:
    # Compared runs: a column of the settings that tell them apart (a sweep's learning rates...).
    differ = [", ".join(f"{k}={v}" for k, v in s.items()) or "-" for s in settings] if settings else None
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(cell)}</td>"
            for cell in (
                label,
                str(info.path),
                info.status + (f": {failure_line(info.failure)}" if info.failure else ""),  # as `ftl runs` says it
                "-" if info.step is None else str(info.step),
                "-" if info.last_loss is None else f"{info.last_loss:.4f}",
                info.eval_score(),
                info.speed(),
                "-" if info.wall_s is None else duration(info.wall_s),
                *([differ[index]] if differ else []),
            )
        )
        + "</tr>"
        for index, (label, info) in enumerate(zip(labels, infos))
    )
    images = "".join(
        f'<figure><img alt="{html.escape(chart)}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode()}"></figure>'
        for chart, path in pictures
    )
    # What the table's figures do not say (a resume under another config, early stopping's weights).
    notes = "".join(
        f"<p>{html.escape(label)}: {html.escape(info.note)}</p>" for label, info in zip(labels, infos) if info.note
    )
    title = "ftl report: " + ", ".join(labels)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}figure{{display:inline-block;margin:8px}}</style>
</head><body><h1>{html.escape(title)}</h1>
<table><tr><th>run</th><th>directory</th><th>status</th><th>step</th><th>last loss</th><th>eval</th>
<th>speed</th><th>wall time</th>{"<th>settings that differ</th>" if differ else ""}</tr>{rows}</table>
{notes}<p>Dotted vertical lines: a start that resumed from a checkpoint (a resume or a restart).
The points drawn are in {DATA_FILE} beside this page.</p>
{images}
</body></html>
"""


def _labels(runs: list[Path]) -> list[str]:
    names = [run.name for run in runs]
    return names if len(set(names)) == len(names) else [str(run) for run in runs]


def _chart_order(chart: str) -> tuple[int, str]:
    order = [
        "loss",
        "reward_margin",
        "reward_accuracy",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "images_per_s",
        "eval_eval_loss",
        "retain",
    ]
    return (order.index(chart) if chart in order else len(order), chart)
