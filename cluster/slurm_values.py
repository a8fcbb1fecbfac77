"""The grammars of the Slurm values ftl writes into #SBATCH lines (--time, --mem), so a typo is
refused by `ftl validate` and `--dry-run`, naming the key, instead of by sbatch after the run
directory was set up."""

from __future__ import annotations

import re

# sbatch --time: "minutes", "minutes:seconds", "hours:minutes:seconds", "days-hours",
# "days-hours:minutes", "days-hours:minutes:seconds"; or no limit at all.
_MINUTES = re.compile(r"(\d+)(?::(\d+))?")
_HOURS = re.compile(r"(\d+):(\d+):(\d+)")
_DAYS = re.compile(r"(\d+)-(\d+)(?::(\d+))?(?::(\d+))?")
UNLIMITED = ("unlimited", "infinite")
TIME_FORMATS = (
    "minutes, minutes:seconds, hours:minutes:seconds, days-hours, days-hours:minutes or "
    "days-hours:minutes:seconds (e.g. 30, 04:00:00, 1-12:00:00), or UNLIMITED"
)
# sbatch --mem: an integer with an optional unit (megabytes without one); 0 = all of the node's memory.
MEM = re.compile(r"\d+[KMGTkmgt]?")


def slurm_time_seconds(text: str) -> int | None:
    """Seconds of a Slurm time limit; None for no limit. Raises ValueError on text sbatch refuses."""
    value = text.strip()
    if value.lower() in UNLIMITED:
        return None
    if match := _HOURS.fullmatch(value):
        hours, minutes, seconds = (int(part) for part in match.groups())
        return hours * 3600 + minutes * 60 + seconds
    if match := _MINUTES.fullmatch(value):
        return int(match.group(1)) * 60 + int(match.group(2) or 0)
    if match := _DAYS.fullmatch(value):
        days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
        return days * 86400 + hours * 3600 + minutes * 60 + seconds
    raise ValueError(f"{text!r} is not a Slurm time limit: use {TIME_FORMATS}")


def check_slurm_mem(text: str) -> str:
    if not MEM.fullmatch(text.strip()):
        raise ValueError(
            f"{text!r} is not a Slurm memory size: an integer with an optional unit K, M, G or T "
            "(megabytes without one), e.g. 64G; 0 asks for all of a node's memory"
        )
    value = text.strip()
    if value.isdigit() and 0 < int(value) < 1024:  # trial 52a: `mem: 64` meant 64G, and Slurm reads 64 MB
        raise ValueError(
            f"{value!r} without a unit is {value} megabytes to Slurm, too little to load a model: write {value}G "
            f"(or {value}M if megabytes is meant)"
        )
    return value
