"""model.activation_offloading: the activations the decoder stack saves for backward live in CPU
memory between forward and backward.

Saved-tensor hooks (torch.autograd.graph.saved_tensors_hooks) are active while the decoder stack
(embeddings, layers, final norm) runs its forward — entered and left by hooks on that module, so
the loop and the loss stay untouched and the LM head/loss (whose saved tensors backward needs
first) are never offloaded. With gradient checkpointing, each checkpointed layer saves only its
input, so only those move; without it, everything the layers save moves.

On CUDA a tensor is copied to pinned host memory on a side stream, overlapping the next
operations of the forward; the GPU block is released once that copy has run (record_stream), and
backward brings the tensor back (waiting for its copy). Parameters and tensors under
MIN_OFFLOAD_BYTES stay where they are: copying them saves nothing or costs more than it frees.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

MIN_OFFLOAD_BYTES = 1 << 20


class ActivationOffloader:
    """The pack/unpack pair. `copy_on_cpu` makes CPU tensors take the copy path as well (tests)."""

    def __init__(self, copy_on_cpu: bool = False, min_bytes: int = MIN_OFFLOAD_BYTES):
        self.copy_on_cpu, self.min_bytes = copy_on_cpu, min_bytes
        self.stream: Any = None
        self.packed = 0  # tensors seen by pack (offloaded or kept)
        self.offloaded = 0
        self.offloaded_bytes = 0
        self._hooks: torch.autograd.graph.saved_tensors_hooks | None = None

    def pack(self, tensor: torch.Tensor) -> Any:
        self.packed += 1
        size = tensor.numel() * tensor.element_size()
        if isinstance(tensor, torch.nn.Parameter) or size < self.min_bytes:
            return tensor
        if tensor.device.type == "cpu" and not self.copy_on_cpu:
            return tensor  # already in CPU memory
        self.offloaded += 1
        self.offloaded_bytes += size
        if tensor.device.type != "cuda":
            return (tensor.device, tensor.to("cpu", copy=True), None)
        if self.stream is None:
            self.stream = torch.cuda.Stream(tensor.device)
        self.stream.wait_stream(torch.cuda.current_stream(tensor.device))
        with torch.cuda.stream(self.stream):
            host = torch.empty(tensor.size(), dtype=tensor.dtype, layout=tensor.layout, pin_memory=True)
            host.copy_(tensor, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        # The caching allocator may hand the GPU block to someone else only after the copy ran.
        tensor.record_stream(self.stream)
        return (tensor.device, host, done)

    def unpack(self, packed: Any) -> torch.Tensor:
        if isinstance(packed, torch.Tensor):
            return packed
        device, host, done = packed
        if done is None:
            return host.to(device, copy=True)
        torch.cuda.current_stream(device).wait_event(done)
        return host.to(device, non_blocking=True)

    def enter(self, module: torch.nn.Module, args: Any) -> None:
        if self._hooks is None:  # a nested call of the same stack (should not happen) keeps the outer hooks
            self._hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)
            self._hooks.__enter__()

    def leave(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self._hooks is not None:
            hooks, self._hooks = self._hooks, None
            hooks.__exit__(None, None, None)


def enable_activation_offloading(
    model: torch.nn.Module, device: str, *, copy_on_cpu: bool = False, min_bytes: int = MIN_OFFLOAD_BYTES
) -> ActivationOffloader:
    """Offload what the model's decoder stack saves for backward; returns the offloader (counters)."""
    stack = decoder_stack(model)
    if not device.startswith("cuda") and not copy_on_cpu:
        log.warning(
            "model.activation_offloading on a %s worker: activations are in CPU memory already, so nothing "
            "moves (the hooks run, losses are unchanged); it saves memory only on CUDA",
            device,
        )
    offloader = ActivationOffloader(copy_on_cpu=copy_on_cpu, min_bytes=min_bytes)
    stack.register_forward_pre_hook(offloader.enter)
    # always_call: an exception inside the forward must not leave the hooks installed.
    stack.register_forward_hook(offloader.leave, always_call=True)
    return offloader


def decoder_stack(model: torch.nn.Module) -> torch.nn.Module:
    """The module that runs the decoder layers (LlamaModel in LlamaForCausalLM): the owner of the layer list."""
    from trainer.transfer.model_parts import base_of, decoder_blocks

    first = decoder_blocks(model)[0]
    for module in base_of(model).modules():
        for child in module.children():
            if isinstance(child, torch.nn.ModuleList) and any(layer is first for layer in child):
                return module
    raise ValueError(
        f"model.activation_offloading: cannot find the module that runs the decoder layers of {type(base_of(model)).__name__}"
    )
