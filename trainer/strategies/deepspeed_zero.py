"""DeepSpeed ZeRO-1/2/3, with optimizer and parameter offload, driven by our own loop.

We keep control of the maths DeepSpeed would otherwise change:
- loss normalisation: `backward(loss, scale_wrt_gas=False)`, since our loss is already divided by
  the global step's token count (DeepSpeed would divide by gradient_accumulation_steps again);
- learning rate: our schedule writes the lr into the ZeRO optimizer's param_groups each step (no
  DeepSpeed scheduler is configured);
- clipping: DeepSpeed clips by the global norm (`gradient_clipping` = training.max_grad_norm).
`engine.step()` runs after every micro-batch; DeepSpeed only steps the optimizer at the
accumulation boundary.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainer.cache_dir import cache_root
from trainer.config import ParallelConfig, TrainingConfig
from trainer.deepspeed_json import generated_config, merged_config, read_user_config
from trainer.strategies.base import Optimizer, Strategy, host_copy_once, resolved_precision
from trainer.strategies.registry import register

if TYPE_CHECKING:
    from trainer.checkpointing.layouts import StateIO


def deepspeed_config(
    training: TrainingConfig, parallel: ParallelConfig, world_size: int, *, load_universal: bool = False
) -> dict[str, Any]:
    """Our DeepSpeed config, generated from the run config, with the user's JSON merged over it
    (refused where it changes what the run config decides: trainer/deepspeed_json.py).
    `load_universal`: the engine will load a universal checkpoint (a resume on another worker count)."""
    precision = resolved_precision(parallel.mixed_precision, "cuda" if torch.cuda.is_available() else "cpu")
    config = generated_config(training, parallel, world_size, precision)
    if parallel.deepspeed_config:
        config = merged_config(config, read_user_config(parallel.deepspeed_config), parallel.deepspeed_config)
    # After the user's JSON: which format the engine loads is ftl's decision (from the manifest).
    config.setdefault("checkpoint", {})["load_universal"] = load_universal
    return config


def torch_extensions_dir() -> Path:
    """Where DeepSpeed JIT-builds its ops (CPU Adam): $TORCH_EXTENSIONS_DIR, else in ftl's cache
    ($FTL_CACHE_DIR/torch_extensions, ~/.cache/ftl/torch_extensions by default)."""
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cache_root() / "torch_extensions")


@register("deepspeed")
class DeepSpeedStrategy(Strategy):
    checkpoint_layout = "deepspeed"

    def __init__(self, training: TrainingConfig, parallel: ParallelConfig, *, rank: int, world_size: int, device: str):
        super().__init__(training, parallel, rank=rank, world_size=world_size, device=device)
        self.zero_stage = parallel.zero_stage
        # ZeRO-1/2 keep full parameters on every rank (only gradients/optimizer are split);
        # ZeRO-3 partitions parameters, so forward passes gather them collectively.
        self.replicated = parallel.zero_stage < 3
        self.forward_is_collective = parallel.zero_stage == 3
        self.engine: Any = None
        self._universal_checkpoint: Path | None = None

    def prepare_resume(self, checkpoint: Path, saved_world_size: int, run_dir: Path) -> None:
        # The engine is built knowing which format it loads (checkpoint.load_universal): ZeRO state
        # partitioned over another worker count loads through its universal copy, made now.
        from trainer.checkpointing.universal import discard_universal_copies, prepare_universal

        if saved_world_size != self.world_size:
            self._universal_checkpoint = prepare_universal(checkpoint, run_dir, rank=self.rank)
        elif self.rank == 0:
            discard_universal_copies(run_dir)

    @property
    def universal_checkpoint(self) -> Path | None:
        """The universal copy (trainer/checkpointing/universal.py) the engine loads instead of the
        resumed checkpoint, when that was written by another worker count."""
        return self._universal_checkpoint

    def wrap(
        self, model: torch.nn.Module, make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer]
    ) -> tuple[torch.nn.Module, Optimizer]:
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(torch_extensions_dir()))
        import deepspeed

        _skip_shared_memory_allreduce_build()
        config = deepspeed_config(
            self.training, self.parallel, self.world_size, load_universal=self.universal_checkpoint is not None
        )
        optimizer = self._optimizer(model, make_optimizer)
        if self.parallel.offload_optimizer != "none" and not _is_ds_cpu_adam(optimizer):
            config["zero_force_ds_cpu_optimizer"] = False
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        self.engine = engine
        # The ZeRO optimizer is what holds the live param_groups our LR schedule writes into.
        return engine, engine.optimizer

    def build_ahead(self) -> str | None:
        """Trial 59a: the first run with offload_optimizer spent ~58 s building DeepSpeed's CPU Adam
        with nothing on the console or in the log."""
        if self.parallel.offload_optimizer == "none":
            return None
        from deepspeed.git_version_info import installed_ops

        folder = torch_extensions_dir() / "cpu_adam"
        if installed_ops.get("cpu_adam") or any(folder.glob("cpu_adam*.so")):
            return None  # prebuilt with DeepSpeed, or built by an earlier run
        return f"building DeepSpeed's CPU Adam (parallel.offload_optimizer) into {folder}: once per cache folder (FTL_CACHE_DIR), ~1-2 min"

    def _optimizer(
        self, model: torch.nn.Module, make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer]
    ) -> Any:
        torch_optimizer = make_optimizer(model)
        if self.parallel.offload_optimizer == "none":
            return torch_optimizer
        # With offload the step runs on CPU: DeepSpeed's vectorised CPU Adam (same AdamW maths,
        # JIT-built once and cached in TORCH_EXTENSIONS_DIR) is far faster than torch's.
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        defaults = torch_optimizer.defaults
        # Each group keeps its own rate and name (transfer.learning_rates' head rate, layer decay, LoRA+).
        groups = [
            {key: g[key] for key in ("params", "weight_decay", "lr", "name") if key in g}
            for g in torch_optimizer.param_groups
        ]
        return DeepSpeedCPUAdam(
            groups, lr=defaults["lr"], betas=defaults["betas"], eps=defaults["eps"], adamw_mode=True
        )

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()  # the engine runs the model in its configured precision

    def backward(self, model: torch.nn.Module, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)
        # The scale this step's gradients were scaled by: an overflow may halve it, or (hysteresis,
        # trial 42a: 131072 was said for 65536) not yet.
        self._scale_at_step = getattr(self.engine.optimizer, "cur_scale", None)
        self.engine.step()  # a no-op for the optimizer until the accumulation boundary

    def clip_and_step(self, model: torch.nn.Module, optimizer: Optimizer, max_norm: float | None) -> float:
        # Clipping and the optimizer step already happened in the boundary engine.step().
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else 0.0

    def skipped_step(self) -> float | None:
        if self.engine is None or self.engine.was_step_applied():
            return None
        scale = getattr(self, "_scale_at_step", None)
        return float(scale) if scale is not None else float("nan")

    def unwrapped(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.engine.module if self.engine is not None else model

    def checkpoint_io(self, adapter_only: bool) -> StateIO:
        from trainer.checkpointing.deepspeed_state import DeepSpeedStateIO

        return DeepSpeedStateIO(self, adapter_only)

    def load_full_weights(self, live: torch.nn.Module, values: dict[str, torch.Tensor] | None) -> None:
        if self.replicated:  # ZeRO-1/2: every rank holds the whole module
            super().load_full_weights(live, values)
            return
        import deepspeed

        # ZeRO-3: gather one parameter at a time; rank 0's copy is re-partitioned to all on exit.
        with torch.no_grad():
            for name, parameter in live.named_parameters():
                if not parameter.is_floating_point():
                    continue
                with deepspeed.zero.GatheredParameters([parameter], modifier_rank=0):
                    if values is not None:
                        parameter.data.copy_(values[name].to(parameter.device, parameter.dtype))

    def trainable_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        module = self.unwrapped(model)
        if self.replicated:  # ZeRO-1/2
            return super().trainable_state(model)
        import deepspeed

        trainable = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
        # Collective: every rank gathers; the full tensors exist only inside the context (so copied).
        with deepspeed.zero.GatheredParameters([p for _, p in trainable], modifier_rank=None):
            return {name: host_copy_once(p.detach()) for name, p in trainable}


def _skip_shared_memory_allreduce_build() -> None:
    """DeepSpeed's communication backend JIT-compiles a shared-memory all-reduce where an
    accelerator offers one (its CPU accelerator does: about a minute of C++ compiling on the first
    run on a machine). Only DeepSpeed's inference all-reduce (tensor-parallel inference) uses it; a
    ZeRO training step reduces through torch.distributed, so training never calls it. Without the
    build the backend is the same minus that kernel (DeepSpeed's own path when the op cannot be built)."""
    # By module name: the attribute `deepspeed.comm.torch` is torch itself (re-exported by
    # deepspeed.comm), so `import deepspeed.comm.torch as m` would bind torch.
    backend_module: Any = importlib.import_module("deepspeed.comm.torch")
    backend_module.build_shm_op = lambda: None


def _is_ds_cpu_adam(optimizer: Any) -> bool:
    return type(optimizer).__name__ == "DeepSpeedCPUAdam"
