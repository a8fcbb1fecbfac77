"""The run as the planner sees it: what the config and the target hardware resolve to."""

from __future__ import annotations

from dataclasses import dataclass, replace

from launcher.plan.hardware import Accelerator


@dataclass(frozen=True)
class Setup:
    method: str  # full | lora | dora | qlora
    strategy: str  # none | ddp | fsdp | deepspeed
    zero_stage: int
    offload_optimizer: str  # none | cpu | nvme
    offload_params: str
    reshard_after_forward: bool
    workers: int  # total ranks (GPUs), nodes x gpus per node
    gpus_per_node: int
    micro_batch: int
    accumulation: int
    seq_len: int
    packing: bool
    checkpointing: bool
    attention: str  # sdpa | flash_attention_2 | eager
    param_bytes: int  # element size of the model's parameters as loaded (2 = bf16, 4 = fp32)
    precision: str  # bf16 | fp16 | fp32: the compute precision
    lora_dropout: float
    accelerator: Accelerator
    # Lean-memory settings (issue 13). Defaults are the path before them, so bare setups
    # (published.py) keep their meaning.
    loss_chunked: bool = False  # LM head + cross-entropy in chunks of chunk_tokens label positions
    chunk_tokens: int = 1024
    optimizer: str = "adamw"  # adamw | adamw_8bit | paged_adamw_8bit
    optimizer_in_backward: bool = False  # per-parameter step in a post-accumulate-grad hook
    clipping: bool = True  # training.max_grad_norm is set (clipping by global norm needs every gradient)
    adapter_dtype: str = "float32"  # resolved method.adapter_dtype: float32 | compute
    activation_offloading: bool = False
    compile: bool = False
    liger: bool = False
    # training.objective dpo/orpo: each micro-batch holds chosen + rejected (micro_batch counts both);
    # reference: DPO's reference model (trainer/config.py reference_kind): adapters_disabled and
    # copy run one more forward per micro-batch, copy also keeps a frozen copy of the weights;
    # precomputed scores the training pairs once before step 1.
    preference: str = ""  # "" (sft) | dpo | orpo
    reference: str = ""  # "" (none) | adapters_disabled | copy | precomputed
    # Rows whose attention needs a (sequence x sequence) mask under SDPA: packed rows (several
    # examples each) and micro-batches of several padded rows. flash-attn (varlen) needs none.
    attention_mask: bool = False

    @property
    def reference_copy(self) -> bool:
        return self.reference == "copy"

    def but(self, **changes: object) -> Setup:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def activation_bytes(self) -> int:
        return 2 if self.precision in ("bf16", "fp16") else 4

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.micro_batch * self.seq_len

    def chunk_words(self) -> str:
        """'1024 tokens/chunk', or, when a micro-batch holds fewer tokens, that it is one chunk (the
        worker's log names the configured size: trial 40b read 256 here and 1024 there)."""
        if self.tokens_per_micro_batch < self.chunk_tokens:
            return (
                f"one chunk of the micro-batch's {self.tokens_per_micro_batch} tokens; chunk_tokens {self.chunk_tokens}"
            )
        return f"{self.chunk_tokens} tokens/chunk"

    def describe(self) -> str:
        parts = [self.method]
        if self.strategy == "deepspeed":
            parts.append(f"ZeRO-{self.zero_stage}")
        elif self.strategy == "fsdp":
            parts.append("FSDP2")
        elif self.strategy == "ddp":
            parts.append("DDP")
        else:
            parts.append("single process")
        if self.offload_optimizer != "none":
            parts.append(f"optimizer offload {self.offload_optimizer}")
        if self.offload_params != "none":
            parts.append(f"parameter offload {self.offload_params}")
        pairs = f" ({self.micro_batch // 2} {self.preference.upper()} pairs)" if self.preference else ""
        parts.append(f"micro-batch {self.micro_batch}{pairs} x {self.seq_len} tokens")
        if self.checkpointing:
            parts.append("activation checkpointing")
        if self.activation_offloading:
            parts.append("activation offloading")
        parts.append(f"chunked loss ({self.chunk_words()})" if self.loss_chunked else "full-logits loss")
        parts.append(
            {"adamw": "AdamW", "adamw_8bit": "8-bit AdamW", "paged_adamw_8bit": "paged 8-bit AdamW"}.get(
                self.optimizer, self.optimizer
            )
            + (" stepped in backward" if self.optimizer_in_backward else "")
        )
        if self.method != "full":
            parts.append(f"adapters in {'the compute dtype' if self.adapter_dtype == 'compute' else 'fp32'}")
        if self.compile:
            parts.append("torch.compile")
        if self.liger:
            parts.append("Liger kernels")
        return ", ".join(parts)
