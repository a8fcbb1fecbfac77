"""Prepare the run directory: refuse to clobber a finished run, write the redacted config snapshot
and the environment record (versions, git hash, host) that make a run reproducible."""

from __future__ import annotations

import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from launcher.errors import UserError
from launcher.run_config import RunConfig
from trainer.run_files import SUMMARY_FILE, is_finished

SECRET_KEY = re.compile(r"(token|secret|password|passwd|api[_-]?key|access[_-]?key|private[_-]?key)", re.I)
SECRET_VALUE = re.compile(r"^(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,}|ghp_[A-Za-z0-9]{20,})$")
REDACTED = "***redacted***"
TRACKED_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "deepspeed", "ray", "accelerate", "datasets", "ftl")


def redact(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if isinstance(value, str) and (SECRET_KEY.search(key) or SECRET_VALUE.match(value)):
        return REDACTED
    return value


def local_run_dir(cfg: RunConfig) -> Path:
    """Where workers write: output.dir, or for a URI output.dir its local working copy."""
    from cluster.run_storage import default_local_dir, is_uri

    if not is_uri(cfg.output.dir):
        return Path(cfg.output.dir)
    return Path(cfg.output.local_dir) if cfg.output.local_dir else default_local_dir(cfg.output.dir)


def prepare_run_dir(cfg: RunConfig, argv: list[str] | None = None) -> Path:
    run_dir = local_run_dir(cfg)
    if is_finished(run_dir):
        raise UserError(
            f"output.dir {run_dir} already holds a finished run ({SUMMARY_FILE} exists); "
            "choose a new output.dir (e.g. output.dir=runs/my-run-2) or delete the old one"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"output.dir {run_dir}: cannot write there ({exc.strerror}); pick a writable directory") from None
    snapshot = yaml.safe_dump(redact(cfg.model_dump(mode="json")), sort_keys=False)
    _atomic_write(run_dir / "config.yaml", snapshot)
    _atomic_write(run_dir / "environment.json", json.dumps(environment_record(argv), indent=1))
    return run_dir


def environment_record(argv: list[str] | None = None) -> dict[str, Any]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "packages": versions,
        "git_commit": _git_commit(),
        "argv": redact(list(argv or sys.argv)),
    }


def _git_commit() -> str | None:
    source = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain"], capture_output=True, text=True, timeout=5)
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_snapshot(run_dir: Path) -> RunConfig:
    """The config a run was started with (paths already absolute)."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise UserError(f"{run_dir}: not a run directory (no config.yaml); pass the output.dir of a run")
    return RunConfig.model_validate(yaml.safe_load(path.read_text()))
