"""Live tensor bytes on CPU: torch's MemTracker, taught to accept frozen parameters.

Why this tracker: on CPU torch has no max_memory_allocated, and process RSS counts libraries and
allocator caching. MemTracker (torch.distributed._tools.mem_tracker) is a TorchDispatchMode that
sees every tensor an op creates and frees (forward, backward and optimizer), so its peak is the
peak of live tensor bytes, which is what the planner predicts. Stock MemTracker installs a
gradient hook on every parameter and fails on frozen ones (LoRA, QLoRA), hence the subclass.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType


class FrozenAwareMemTracker(MemTracker):
    def _track_module_params_and_buffers(
        self, module: torch.nn.Module, install_grad_hooks: bool = True
    ) -> tuple[int, int]:
        param_memory = 0
        for param in module.parameters():
            winfos = self._update_and_maybe_create_winfos(param, _MemRefType.PARAM)
            param_memory += sum(w.mem_consumed for w in winfos)
            if param.grad is not None:
                self._update_and_maybe_create_winfos(param.grad, _MemRefType.GRAD)
            if param.requires_grad and install_grad_hooks and self._param_to_grad_hook_handles.get(param) is None:

                def hook(grad: torch.Tensor) -> None:
                    self._update_and_maybe_create_winfos(grad, _MemRefType.GRAD)

                self._param_to_grad_hook_handles[param] = (
                    param.register_hook(hook),
                    param.register_post_accumulate_grad_hook(lambda p: hook(p.grad)),
                )
        buffer_memory = 0
        for buffer in module.buffers():
            winfos = self._update_and_maybe_create_winfos(buffer, _MemRefType.BUFFER)
            buffer_memory += sum(w.mem_consumed for w in winfos)
        return param_memory, buffer_memory

    def peak_bytes(self) -> int:
        return int(self.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"])


def quant_state_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """The bitsandbytes 4-bit block scales and codes, which live beside (not in) the parameters."""
    tensors: list[torch.Tensor] = []
    for param in model.parameters():
        state: Any = getattr(param, "quant_state", None)
        while state is not None:
            tensors += [t for t in (state.absmax, state.code, state.offset) if torch.is_tensor(t)]
            state = state.state2 if getattr(state, "nested", False) else None
    return tensors
