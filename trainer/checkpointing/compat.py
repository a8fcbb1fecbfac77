"""Can this run resume that checkpoint? Decided from the manifest alone, before any model is built.

A ZeRO checkpoint resumed on another worker count goes through DeepSpeed's universal checkpoint
(universal.py); what that path cannot handle is refused here, with the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.checkpointing.universal import universal_problem


def resume_problem(path: Path, manifest: dict[str, Any], *, layout: str, strategy: str, world_size: int,
                   zero_stage: int | None, nvme_offload: bool = False) -> str | None:
    saved_layout = manifest.get("layout", "replicated")  # format 1 wrote only replicated checkpoints
    saved_strategy = manifest.get("strategy", "ddp or single process")
    saved_world = int(manifest.get("world_size", 1))
    if saved_layout != layout:
        return (f"checkpoint {path} holds {saved_layout} state (parallel.strategy={saved_strategy}) but this run uses "
                f"parallel.strategy={strategy} ({layout} state); resume with parallel.strategy={saved_strategy}, "
                "or start a new output.dir")
    if layout == "deepspeed":
        if manifest.get("zero_stage") != zero_stage:
            return (f"checkpoint {path} was written with DeepSpeed ZeRO stage {manifest.get('zero_stage')}, this run uses "
                    f"stage {zero_stage}; resume with parallel.zero_stage={manifest.get('zero_stage')}")
        if saved_world != world_size:
            reason = universal_problem(manifest, nvme_offload=nvme_offload)
            if reason:
                return (f"checkpoint {path} holds DeepSpeed ZeRO state partitioned over {saved_world} worker(s); this run "
                        f"has {world_size}, and it cannot be resharded: {reason}. Resume with "
                        f"cluster.workers={saved_world}, or use parallel.strategy=fsdp, whose checkpoints reshard to any "
                        "worker count")
    return None
