"""Each data file's first row against the format it is read in, before anything starts: a file
given in another format (a mixture source's `format` applies to its validation file too) was
found by the workers after a backend start (trial 41a: 40 s of Ray). `validate --data` reads
every row; this reads one per file, so plain `validate` and `train` can afford it."""

from __future__ import annotations

from pathlib import Path

from launcher.run_config import RunConfig

# Formats whose rows need fixed fields (a preference row's prompt may live in its conversations,
# an image set is a folder): those are left to the full check.
PROBED = ("chat", "alpaca", "completion", "text", "classification", "token_classification")


def data_format_problems(cfg: RunConfig) -> list[str]:
    data = cfg.data
    # The split of a folder each is read with (prepare.py): data.split for the training data.
    files = [("data.train", data.train, data.format, data.split)]
    files += [
        ("data.validation", data.validation, data.format, "train"),
        ("data.test", data.test, data.format, "train"),
    ]
    for index, source in enumerate(data.mixture):
        fmt = source.format or data.format
        files += [(f"data.mixture[{index}].train", source.train, fmt, "train")]
        files += [(f"data.mixture[{index}].validation", source.validation, fmt, "train")]
    problems = []
    for key, spec, fmt, split in files:
        problem = _first_row_problem(key, spec, fmt, split, data.skip_bad_rows)
        if problem:
            problems.append(problem)
    return problems


def _first_row_problem(
    key: str, spec: str | None, fmt: str, split: str = "train", skip_bad_rows: bool = False
) -> str | None:
    if not spec or fmt not in (*PROBED, "preference") or not (Path(spec).is_file() or Path(spec).is_dir()):
        return None  # a hub name or a missing file: said elsewhere
    from trainer.data.formats import missing_format_fields, other_format_hint
    from trainer.data.sources import read_rows
    from trainer.errors import DataError

    folder = Path(spec).is_dir()
    try:
        row = next(iter(read_rows(spec, split)), None)
    except DataError as exc:
        # A folder's files that do not make one dataset (types mixed, no data files): the workers
        # refuse it after a backend start (trial 46a); a file's own problem is the full reader's to say.
        return f"{key}: {exc}" if folder else None
    except (OSError, ValueError):
        return None  # an unreadable file is the full reader's to say, with its reason
    if row is None:
        # Refused by every worker alike once a backend had started (trial 50b: an empty mixture
        # source passed validate, and train refused it after starting Ray and its workers).
        from trainer.data.sources import empty_reason

        fix = (
            "give it rows"
            if key == "data.train"
            else "give it rows, or drop the source"
            if key.endswith("].train")
            else "give it rows, or leave the key out"
        )
        return f"{key}: {spec}: holds no rows ({empty_reason(spec)}); {fix}"
    if not isinstance(row.values, dict):
        return None
    values = row.values
    missing = missing_format_fields(values, fmt) if fmt != "preference" else []
    where = f"{spec}: {row.where}" if folder else row.where  # a folder's rows are named within it
    if not missing:
        from trainer.data.formats import chat_row_problem, preference_row_problem

        # A first row training refuses for its messages or its pair (trial 64b: `{"messages": []}` in the
        # validation file passed validate, and the workers refused it after Ray's start-up; 64c: a pair).
        check = {"chat": chat_row_problem, "preference": preference_row_problem}.get(fmt)
        refused = check(values) if check is not None and not skip_bad_rows else None
        fix = "fix the row, or set data.skip_bad_rows=true to skip such rows (`ftl validate --data` checks every row)"
        return f"{key}: {where}: {refused}; {fix}" if refused else None
    fields = ", ".join(sorted(map(str, values))) or "none"
    return (
        f"{key}: {where}: data.format {fmt!r} needs the field(s) {', '.join(missing)}; the row has {fields}"
        f"{other_format_hint(values, fmt)}"
    )
