"""Weights & Biases: one W&B run per ftl run, its id kept in trackers.json so a resume continues
it. Offline (files in RUN_DIR/wandb/, `wandb sync` uploads them) when there is no key or no
network. Imported only when tracking.wandb.enabled. The API key comes from WANDB_API_KEY or
`wandb login`, never from the config.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import wandb

from trainer.tracking.config import WandbConfig

log = logging.getLogger(__name__)
STEP = "step"  # every series is plotted against ftl's optimizer step, not W&B's call counter


def resolve_mode(cfg: WandbConfig) -> str | None:
    """None = W&B decides ($WANDB_MODE is set); else online or offline."""
    if cfg.mode != "auto":
        return cfg.mode
    if os.environ.get("WANDB_MODE"):
        return None
    if not (os.environ.get("WANDB_API_KEY") or _netrc_has_key()):
        log.info("W&B: no API key (WANDB_API_KEY or `wandb login`); logging offline")
        return "offline"
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        log.info("W&B: %s is unreachable; logging offline (upload later: wandb sync RUN_DIR/wandb/offline-run-*)", host)
        return "offline"
    return "online"


def _netrc_has_key() -> bool:
    import netrc

    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbTracker:
    name = "wandb"

    def __init__(self, cfg: WandbConfig, run_dir: Path, params: dict[str, Any], state: dict[str, Any]):
        run_id = state.get("run_id") or uuid.uuid4().hex[:12]
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            name=cfg.run_name or run_dir.name,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            mode=resolve_mode(cfg),  # type: ignore[arg-type]
            config=params,
            tags=cfg.tags or None,
            settings=wandb.Settings(console="off", silent=True),
        )
        self.run.define_metric(STEP)
        self.run.define_metric("*", step_metric=STEP)
        self.files = Path(self.run.dir)
        # Where it went, for the run's final table: online, or this start's offline folder.
        state.update(run_id=run_id, project=cfg.project, offline=bool(self.run.offline))

    def log(self, step: int, series: dict[str, float], when: float | None) -> None:  # W&B stamps its own time
        self.run.log({**series, STEP: step})

    def finish(self, finished: bool, artifacts: list[Path]) -> None:
        for path in artifacts:
            # Copied into the run's files folder, which W&B uploads (now, or at `wandb sync`); under
            # ftl/, because W&B writes a config.yaml of its own there.
            target = self.files / "ftl" / path.name
            target.parent.mkdir(exist_ok=True)
            if path.is_dir():
                shutil.copytree(path, target, dirs_exist_ok=True)
            else:
                shutil.copy2(path, target)
        self.run.finish(exit_code=0 if finished else 1)
