"""Keep worker processes from importing heavy libraries their run never uses.

Every worker process pays for its imports in CPU, and on a small machine (or a Ray cluster that
starts a new worker group after each failure) that is most of a short run's cost. Two libraries
are imported by others without being used:

- bitsandbytes: peft imports it whenever it is installed (peft/helpers.py), and bitsandbytes
  wraps its kernels in torch.compile at import, which loads the inductor: 2.4 s of CPU per
  process on the development machine (peft's import: 3.1 s -> 0.7 s). A run needs it only for
  QLoRA, the 8-bit optimizers, or a model saved already quantized. `hide_bitsandbytes` makes
  the package look absent in this process (an entry of None in sys.modules: `import` raises
  ImportError and importlib's find_spec answers None, which is how peft asks), so peft takes the
  path it takes where bitsandbytes is not installed. Only for dedicated worker processes
  (cluster/worker.py, a Ray worker, the forkserver of local workers): a process that may train
  another config later (the launcher running a worker in-process, a test session) keeps it.
- mlflow: DeepSpeed's autotuner (which ftl never runs) imports it when deepspeed is imported:
  1.5 of deepspeed's 2.1 s of import CPU (MLflow, pandas, its web and GenAI modules). Hidden like
  bitsandbytes in a run's dedicated processes unless the run logs to MLflow (tracking.mlflow);
  the forkserver of a local DeepSpeed run hides it before importing deepspeed
  (cluster/forkserver_hides_mlflow.py), and a worker forked from it whose run does log to MLflow
  makes it importable again (the forkserver of an in-process launcher outlives one run).
- deepspeed: transformers' save_pretrained unwraps the model through accelerate, which imports
  deepspeed (2.5 s of CPU, mlflow and its web framework included) only to ask whether the model
  is a DeepSpeedEngine. It can only be one where deepspeed was imported already, so
  `deepspeed_probe_skipped` answers that question without the import otherwise.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_EIGHT_BIT_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit")


def needs_bitsandbytes(cfg: Any) -> bool:
    """Whether a run of this TrainerConfig uses bitsandbytes (where unsure: yes)."""
    if cfg.method.type == "qlora" or cfg.training.optimizer in _EIGHT_BIT_OPTIMIZERS:
        return True
    model_config = Path(cfg.model.path) / "config.json"
    try:
        saved = json.loads(model_config.read_text())
    except (OSError, ValueError):
        return True  # not a local model folder we can read: leave the decision to the libraries
    quantization = saved.get("quantization_config") if isinstance(saved, dict) else None
    return quantization is not None


def hide_bitsandbytes() -> None:
    """From now on this process behaves as if bitsandbytes were not installed (no-op where it
    was imported already)."""
    hide("bitsandbytes")


def hide(name: str) -> None:
    """From now on `import name` raises ImportError in this process and find_spec answers None,
    as if the package were not installed (no-op where it was imported already)."""
    sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def unhide(name: str) -> None:
    """Undo hide(name) (nothing where the package was imported or never hidden)."""
    if name in sys.modules and sys.modules[name] is None:
        del sys.modules[name]


def skip_unused_imports(cfg: Any) -> None:
    """In a dedicated worker process, before the model is built: hide what this run never uses."""
    if not needs_bitsandbytes(cfg):
        hide_bitsandbytes()
    if cfg.tracking.mlflow.enabled:
        unhide("mlflow")
    else:
        hide("mlflow")


@contextlib.contextmanager
def deepspeed_probe_skipped() -> Iterator[None]:
    """Inside: accelerate's "is this a DeepSpeedEngine?" check does not import deepspeed unless
    deepspeed was imported before (nothing can be a DeepSpeedEngine otherwise)."""
    if "deepspeed" in sys.modules:
        yield
        return
    try:
        import accelerate.utils.other as accelerate_other
    except ImportError:
        yield
        return
    original = accelerate_other.is_deepspeed_available
    accelerate_other.is_deepspeed_available = lambda: False
    try:
        yield
    finally:
        accelerate_other.is_deepspeed_available = original
