"""Schema of the config sections the trainer owns: model, data, method, training, eval, checkpoint,
tracking (trainer/tracking/config.py).

The launcher composes these with its own sections (output, cluster) into the run config;
the trainer only ever reads the sections below, so it never needs to import the launcher.

Where the rules are: a rule about one section's keys is a validator on that section (its error
names the section and its YAML line); a rule that relates keys of several sections is a validator
on TrainerConfig, the smallest config that holds them all; rules that also involve the cluster
section are on the launcher's RunConfig (launcher/run_config.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from trainer.config_section import Section
from trainer.data.same_files import same_data as _same_data
from trainer.optim_rules import optimizer_problem
from trainer.tracking.config import TrackingConfig
from trainer.transfer.config import CLASSIFICATION_HEADS, HEAD_DATA_FORMATS, HEAD_RATE_WITHOUT_HEAD, TransferConfig

SHARDED = ("fsdp", "deepspeed")
# URI schemes pyarrow.fs opens (what Ray Train storage accepts without a custom filesystem).
STORAGE_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs", "file")


class ModelConfig(Section):
    # An empty path passed validate (trial 60b); train's refusal offered to download ''.
    path: str = Field(min_length=1, description="Local Hugging Face model directory, or a hub name when online.")
    tokenizer: str | None = Field(
        None, min_length=1, description="Tokenizer directory or name; defaults to model.path."
    )
    revision: str | None = Field(None, min_length=1)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto = bfloat16 on a GPU that supports it, float32 otherwise."
    )
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "eager"] = Field(
        "auto",
        description="auto = flash_attention_2 when flash-attn is installed, CUDA is used and the model supports it; "
        "else sdpa where the model supports it, else eager.",
    )
    gradient_checkpointing: bool = False
    activation_offloading: bool = Field(
        False,
        description="Keep the activations the decoder layers save for backward in CPU memory (pinned, copied "
        "alongside compute on CUDA) instead of GPU memory; with gradient_checkpointing only the layer inputs move, "
        "without it everything the layers save moves (more host traffic). No effect on a CPU worker (a warning says so).",
    )
    compile: bool = Field(
        False,
        description="torch.compile each decoder layer (inductor); same losses, faster steps "
        "once compiled. Not with parallel.strategy=deepspeed.",
    )
    liger_kernels: bool = Field(
        False,
        description="CUDA: Liger's fused RMSNorm/RoPE/SwiGLU kernels (pip install "
        "'ftl[liger]'); refused where Liger is not installed or the device is not CUDA.",
    )
    trust_remote_code: bool = False

    @field_validator("path", "tokenizer", "revision")
    @classmethod
    def _not_only_spaces(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():  # trial 60c: "  " passed as a model name
            raise ValueError(f"{value!r} is only spaces; give a model folder or hub name, or leave it out")
        return value


DataFormat = Literal[
    "alpaca",
    "chat",
    "completion",
    "text",
    "classification",
    "preference",
    "token_classification",
    "image_classification",
]


class ImageAugmentationConfig(Section):
    """Training-only image augmentation (data.format=image_classification), seeded by training.seed and
    each sample's position, so a resumed run sees the same images."""

    random_resized_crop: bool = Field(
        False, description="Crop a random area share (crop_scale) and aspect ratio (crop_ratio), resized back."
    )
    crop_scale: tuple[float, float] = Field(
        (0.5, 1.0), description="Share of the image area a random crop keeps: [min, max], within (0, 1]."
    )
    crop_ratio: tuple[float, float] = Field(
        (3 / 4, 4 / 3), description="Aspect ratio (width/height) range of a random crop, sampled log-uniformly."
    )
    horizontal_flip: bool = Field(False, description="Flip each training image left-right with probability 0.5.")

    @property
    def any(self) -> bool:
        return self.random_resized_crop or self.horizontal_flip

    @model_validator(mode="after")
    def _ranges(self) -> ImageAugmentationConfig:
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(
                f"data.augmentation.crop_scale must be [min, max] with 0 < min <= max <= 1; got {low, high}"
            )
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(
                f"data.augmentation.crop_ratio must be [min, max] with 0 < min <= max; got {self.crop_ratio}"
            )
        return self


def repeated_mixture_name(names: list[Any]) -> str | None:
    """Every data.mixture name given again, said of the repeats (the launcher also says it beside
    the entries' other errors, which keep this check from running: trial 62a)."""
    # None: an entry without a name (said apart), kept so the indexes stay the entries'.
    first: dict[Any, int] = {}
    repeats = []
    for index, name in enumerate(names):
        if name is None:
            continue
        # Names differing only in case are one name to a case-insensitive filesystem (macOS) and to
        # some trackers' metric keys (trial 63c: `qa` and `QA` were accepted).
        key = name.casefold() if isinstance(name, str) else name
        if key in first:
            # Which entries (trial 50b: the message pointed at `data:`, with the names alone), each
            # repeat (trial 62c: a third 'qa' was left out).
            earlier = names[first[key]]
            case = "" if earlier == name else f" {earlier!r} (names differing only in case count as one)"
            repeats.append(f"data.mixture[{index}] is named {name!r}, as data.mixture[{first[key]}] is{case}")
        else:
            first[key] = index
    if not repeats:
        return None
    # Said of the first repeat, so it is located at that entry's line (trial 57a: at the first's,
    # and cut to "and data.mixture[2] are both named").
    return (
        "; ".join(repeats) + "; names must be unique (each source's scores and data position are kept under its "
        f"name): rename {'one' if len(repeats) == 1 else 'the repeats'}"
    )


class MixtureSource(Section):
    """One dataset of a multi-task mixture."""

    name: str = Field(
        description="Short name; its validation set is reported under this name.", pattern=r"^[A-Za-z0-9_.-]+$"
    )
    train: str = Field(description="Training file or `datasets` name, as data.train.")
    weight: float = Field(1.0, gt=0, description="Relative sampling weight (normalised over the mixture).")
    format: DataFormat | None = Field(None, description="Row format; defaults to data.format.")
    validation: str | None = Field(None, description="Optional validation file, evaluated separately under `name`.")


class DataConfig(Section):
    train: str | None = Field(
        None,
        description="Training data: a .jsonl/.json/.parquet/.csv file, or a `datasets` name "
        "(required unless data.mixture is set).",
    )
    format: DataFormat = Field(
        "chat",
        description="Row format; `classification` = {text, label} rows for a classification head; `preference` = "
        "{prompt, chosen, rejected} pairs for training.objective dpo/orpo; `token_classification` = "
        "{tokens, tags} rows (a tag per word) for a token-classification head.",
    )
    mixture: list[MixtureSource] = Field(
        default_factory=list,
        description="Multi-task training: several datasets sampled by weight (instead of data.train), each evaluated separately.",
    )
    validation: str | None = Field(None, description="Validation file; otherwise see validation_split.")
    validation_split: float = Field(
        0.0, ge=0.0, lt=1.0, description="Fraction of train held out when no validation file."
    )
    test: str | None = Field(None, description="Optional held-out test set, scored before and after training.")
    split: str = Field("train", description="Split name when `train` is a `datasets` hub name.")
    max_seq_len: int = Field(512, ge=8, le=1_048_576)
    packing: bool = True
    too_long: Literal["truncate", "drop", "error", "split"] = Field(
        "truncate",
        description="A row longer than max_seq_len: cut to its first max_seq_len tokens, dropped, an error, or "
        "(format text) split into consecutive pieces of up to max_seq_len tokens, each an example.",
    )
    skip_bad_rows: bool = Field(False, description="Skip malformed rows (and report how many) instead of stopping.")
    cache_dir: str | None = Field(None, description="Tokenized-data cache; default $FTL_CACHE_DIR or ~/.cache/ftl.")
    shuffle: bool = Field(True, description="Reshuffle the training rows each epoch (seeded by training.seed).")
    augmentation: ImageAugmentationConfig = Field(
        default_factory=ImageAugmentationConfig,
        description="image_classification only: random augmentation of training images (evaluation never augments).",
    )

    @model_validator(mode="after")
    def _train_or_mixture(self) -> DataConfig:
        if not self.train and not self.mixture:
            if self.mixture == [] and "mixture" in self.model_fields_set:  # trial 50b: `mixture: []` said as no train
                raise ValueError(
                    "data.mixture is empty; list datasets under it ({name, train, weight}), or give data.train"
                )
            raise ValueError(
                "data.train: required key is missing; give a training file, or list datasets under data.mixture"
            )
        if self.train and self.mixture:
            raise ValueError("set either data.train or data.mixture (a list of datasets with weights), not both")
        if self.mixture:
            names = [source.name for source in self.mixture]
            repeated = repeated_mixture_name(names)
            if repeated:
                raise ValueError(repeated)
            reserved = sorted(set(names) & {"validation", "test", "retain"})
            if reserved:
                raise ValueError(f"data.mixture name {reserved[0]!r} is reserved for another evaluation set; rename it")
            if self.validation_split > 0:
                raise ValueError(
                    "data.validation_split does not apply to data.mixture; give each mixture entry a validation file"
                )
        return self

    @model_validator(mode="after")
    def _validation_file_or_split(self) -> DataConfig:
        if self.validation and self.validation_split > 0:
            raise ValueError("set either data.validation (a file) or data.validation_split (a ratio), not both")
        return self

    @model_validator(mode="after")
    def _split_is_for_plain_text(self) -> DataConfig:
        if self.too_long != "split":
            return self
        others = sorted(self.formats() - {"text"})
        if others:
            raise ValueError(
                f"data.too_long=split cuts long documents into pieces, which only format text can be (every token "
                f"is trained); {', '.join(others)} rows would lose their prompt or label in the later pieces: "
                "use truncate, drop or error there"
            )
        if self.validation_split > 0:
            raise ValueError(
                "data.too_long=split with data.validation_split: the pieces of one document would land in both "
                "training and validation; give data.validation a file of its own"
            )
        return self

    def format_of(self, source: MixtureSource | None = None) -> str:
        return (source.format if source and source.format else None) or self.format

    def formats(self) -> set[str]:
        """The row formats training reads: data.format, or those of the mixture's sources."""
        return {self.format_of(source) for source in self.mixture} if self.mixture else {self.format}


class LoraConfig(Section):
    r: int = Field(16, ge=1, le=4096)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = Field("all-linear", description="`all-linear` or a list of module names.")
    rslora: bool = Field(False, description="Rank-stabilised scaling alpha/sqrt(r) instead of alpha/r.")
    modules_to_save: list[str] = Field(default_factory=list)
    init_from: str | None = Field(
        None,
        description="A PEFT LoRA/DoRA adapter folder (e.g. RUN/final/adapter) whose weights the new adapters start "
        "from, on the same base model and settings (rank, alpha, targets); a resume starts from its checkpoint.",
    )

    @field_validator("target_modules")
    @classmethod
    def _targets_are_names_or_a_pattern(cls, value: str | list[str]) -> str | list[str]:
        """A string other than all-linear is PEFT's regular expression over module names: it must
        compile, and one that looks like a list was meant as one (a `[` or `,` slip on a command line)."""
        if isinstance(value, list):
            if not value:
                raise ValueError("is an empty list: name the modules to adapt (e.g. [q_proj, v_proj]) or all-linear")
            return value
        if value == "all-linear":
            return value
        names = [name.strip(" '\"") for name in value.strip("[]").split(",") if name.strip(" '\"")]
        as_list = (
            f"{value!r} is one string, read as a regular expression; for a list of module names write "
            f"[{', '.join(names)}] (in YAML, or quoted on the command line: 'method.lora.target_modules=[{','.join(names)}]')"
        )
        # No module name holds a comma: one outside a {m,n} quantifier is a list written as a string.
        if "," in re.sub(r"\{\d*,\d*\}", "", value):
            raise ValueError(as_list)
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(
                as_list if value.startswith("[") else f"{value!r} is not a valid regular expression ({exc})"
            ) from None
        return value


class QuantizationConfig(Section):
    bits: Literal[4] = 4
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto = the model dtype."
    )


class MethodConfig(Section):
    type: Literal["full", "lora", "dora", "qlora"] = "lora"
    adapter_dtype: Literal["auto", "float32", "compute"] = Field(
        "auto",
        description="Adapter methods: the dtype of the adapters and of the trainable or non-quantized "
        "embeddings/head/norms. float32 = master copies in fp32; compute = the model's compute dtype (leaner); "
        "auto = see docs/configuration.md (Memory settings).",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig)
    quantization: QuantizationConfig = Field(default_factory=QuantizationConfig)

    @property
    def uses_adapter(self) -> bool:
        return self.type in ("lora", "dora", "qlora")

    @property
    def adapters_in_fp32(self) -> bool:
        """adapter_dtype resolved: auto = float32, the measured choice (docs/configuration.md, Memory
        settings: with compute, bf16 adapters and AdamW states lose small updates to rounding)."""
        return self.adapter_dtype in ("auto", "float32")

    @model_validator(mode="after")
    def _adapter_settings_need_an_adapter(self) -> MethodConfig:
        if self.type == "full" and self.lora.modules_to_save:
            raise ValueError("method.lora.modules_to_save only applies to adapter methods (lora, dora, qlora)")
        if self.type == "full" and self.lora.init_from:
            raise ValueError(
                "method.lora.init_from starts adapters (method.type=lora, dora or qlora); for full fine-tuning of "
                "an adapter's result, set model.path to its merged model (RUN/final/merged)"
            )
        if self.type == "full" and self.adapter_dtype != "auto":
            raise ValueError(
                "method.adapter_dtype only applies to adapter methods (lora, dora, qlora); with method.type=full "
                "the trained weights keep model.dtype: remove method.adapter_dtype"
            )
        return self


# Rows of the head's weight gradient made per product when the chunked loss sums it in another dtype
# than the matmul's (fp32 weights, 16-bit autocast): bounds that temporary to VOCAB_SLICE x hidden.
# Here, not in trainer/chunked_loss.py, so the planner counts it without importing torch.
VOCAB_SLICE = 8192


class LossConfig(Section):
    chunked: bool = Field(
        True,
        description="Run the LM head and cross-entropy in chunks of tokens, and only on "
        "positions that carry a label, so the full logits are never built.",
    )
    chunk_tokens: int = Field(1024, ge=16, le=1_048_576, description="Tokens per chunk of the chunked loss.")
    kernel: Literal["auto", "liger", "cut_cross_entropy", "none"] = Field(
        "auto",
        description="CUDA: a fused linear cross-entropy kernel (optional extra); auto = the first installed, "
        "else the chunked path.",
    )


class PreferenceConfig(Section):
    """training.preference: the settings of the preference objectives (trainer/preference_loss.py)."""

    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field(
        "sigmoid",
        description="DPO loss: sigmoid (DPO, Rafailov et al. 2023), ipo (Azar et al. 2023), hinge (SLiC-style).",
    )
    beta: float = Field(
        0.1, gt=0, description="DPO: strength of the pull towards the reference model (the reward scale)."
    )
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=0.5, description="DPO sigmoid: assumed probability that a pair's labels are flipped (cDPO)."
    )
    orpo_lambda: float = Field(0.1, gt=0, description="ORPO: weight of the odds-ratio term added to the SFT loss.")
    reference: Literal["auto", "adapters_disabled", "copy", "precomputed"] = Field(
        "auto",
        description="DPO reference model: adapters_disabled = the base model with the adapters switched off (adapter "
        "methods; no extra memory); copy = a frozen copy of the initial model (full fine-tuning, one process or "
        "ddp; a second set of weights); precomputed = the initial model scores every pair once before the first "
        "step, cached in the run directory (any method and strategy; no extra weights, no reference forward per "
        "step); auto = adapters_disabled for adapter methods, copy for full, precomputed for full under fsdp or "
        "deepspeed.",
    )

    @model_validator(mode="after")
    def _smoothing_is_sigmoid_only(self) -> PreferenceConfig:
        if self.label_smoothing and self.loss_type != "sigmoid":
            raise ValueError(
                f"training.preference.label_smoothing applies to loss_type=sigmoid only (got {self.loss_type}); "
                "remove it"
            )
        return self


class TrainingConfig(Section):
    objective: Literal["sft", "dpo", "orpo"] = Field(
        "sft",
        description="sft = next-token loss on the response tokens; dpo / orpo = preference tuning on "
        "data.format=preference pairs (docs/preference-tuning.md).",
    )
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, le=10**12, description="Optimizer steps; overrides epochs when set.")
    # Bounded far beyond any memory: an absurd value got absurd fit-check advice (trial 50b).
    micro_batch_size: int = Field(8, ge=1, le=1_048_576)
    gradient_accumulation_steps: int = Field(1, ge=1, le=1_048_576)
    learning_rate: float = Field(2e-4, gt=0, le=1.0)
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = Field(1e-8, gt=0)
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit"] = Field(
        "adamw",
        description="adamw = torch AdamW (fused/foreach where available); adamw_8bit / paged_adamw_8bit = "
        "bitsandbytes 8-bit states (paged: spill to CPU under memory pressure).",
    )
    optimizer_in_backward: bool = Field(
        False,
        description="Step each parameter as soon as its gradient is ready (no full gradient copy); needs "
        "gradient_accumulation_steps=1 and max_grad_norm=null.",
    )
    loss: LossConfig = Field(default_factory=LossConfig)
    lr_scheduler: Literal["cosine", "linear", "constant", "slanted_triangular"] = Field(
        "cosine",
        description="After warmup: cosine/linear decay to min_lr_ratio, or constant. slanted_triangular (ULMFiT): "
        "linear rise from min_lr_ratio over the warmup steps, then linear fall back to it.",
    )
    warmup_steps: int | None = Field(None, ge=0)
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    min_lr_ratio: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Final LR as a fraction of the peak (cosine/linear); slanted_triangular's start and end, "
        "ULMFiT's 1/32 (0.03125) when not set (0 would spend its first step at lr 0).",
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping; null disables it.")
    seed: int = Field(
        42,
        ge=0,
        le=2**64 - 1,
        description="Seeds torch, Python and the data order; numpy's generators take only non-negative seeds.",
    )
    log_every_steps: int = Field(1, ge=1)
    progress_bar: bool = Field(
        True, description="A live progress bar when stdout is a terminal; false = plain progress lines there too."
    )
    progress_every_s: float = Field(
        10.0,
        ge=0.0,
        description="Where stdout is not a terminal (Slurm/Ray Job logs, CI, a file): print a progress line "
        "(step/total, loss, lr, tokens/s, ETA) at most this often; 0 = every step.",
    )
    watchdog_timeout_s: float = Field(
        1800.0,
        ge=0.0,
        description="A worker that makes no step progress (step, eval, checkpoint) for this long dumps "
        "its stacks and exits non-zero, so a hang becomes a failure restarts handle; 0 = off.",
    )

    @model_validator(mode="after")
    def _slanted_triangle_starts_above_zero(self) -> TrainingConfig:
        # ULMFiT's ratio of 32; the shared default of 0 suits the decays (they end there), not a
        # rise that starts there. Only when unset: a config that says 0 (or a snapshot) keeps it.
        if self.lr_scheduler == "slanted_triangular" and "min_lr_ratio" not in self.model_fields_set:
            self.min_lr_ratio = 1 / 32
        return self

    @field_validator("adam_betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError("both betas must be in [0, 1)")
        return betas


class GenerationEvalConfig(Section):
    enabled: bool = True
    max_new_tokens: int = Field(32, ge=1)
    max_samples: int | None = Field(
        200, ge=1, description="Score at most this many rows per eval (generation is slow)."
    )
    metric: Literal["exact_match"] = "exact_match"
    match: Literal["exact", "normalized"] = Field(
        "exact",
        description="exact: the answer as written (whitespace runs and the ends aside); normalized: also "
        "ignoring case, punctuation and the English articles a/an/the (SQuAD's rule).",
    )


class EvalConfig(Section):
    every_steps: int = Field(0, ge=0, description="Evaluate every N optimizer steps; 0 = only at start and end.")
    at_start: bool = Field(True, description="Score the base model before training, for the before/after report.")
    micro_batch_size: int | None = Field(None, ge=1, le=1_048_576, description="Defaults to training.micro_batch_size.")
    max_samples: int | None = Field(None, ge=1, description="Limit loss evaluation to the first N rows.")
    generation: GenerationEvalConfig = Field(default_factory=GenerationEvalConfig)
    retain: str | None = Field(
        None,
        description="Forgetting check: general text ({text} rows) the base model was good at, scored on the base "
        "model before training and at every evaluation; the loss change is reported as retain_loss_change.",
    )


class CheckpointConfig(Section):
    every_steps: int = Field(0, ge=0, description="Save every N optimizer steps; 0 = no step-based checkpoints.")
    every_minutes: float = Field(
        0.0,
        ge=0.0,
        description="Also save when this many minutes passed since the last "
        "save (decided on rank 0 for all ranks); 0 = no time-based checkpoints.",
    )
    keep_last: int = Field(
        2, ge=1, description="Keep the newest K checkpoints (older ones are deleted after each commit)."
    )
    keep_every: int = Field(
        0, ge=0, description="Additionally keep every checkpoint whose step is a multiple of M; 0 = off."
    )
    async_save: bool = Field(
        False,
        description="Write checkpoints in the background while training continues "
        "(single process, DDP, FSDP2); the commit waits for the write. Needs keep_last >= 2.",
    )
    resume: str = Field(
        "auto",
        min_length=1,
        description="`auto` (latest valid checkpoint in output.dir), `never` (start at step 0; "
        "refused when output.dir holds checkpoints of an earlier run, see move_aside), or a checkpoint "
        "path (later checkpoints in output.dir are moved to checkpoints/branches/).",
    )
    move_aside: bool = Field(
        False,
        description="With resume: never, move the checkpoints (and metrics) of an earlier "
        "run in output.dir to checkpoints/branches/ and start over, instead of refusing to start.",
    )

    @model_validator(mode="after")
    def _async_keeps_two(self) -> CheckpointConfig:
        if self.async_save and self.keep_last < 2:
            # While a save is in flight the previous checkpoint is the only valid one: it must survive.
            raise ValueError(
                "checkpoint.async_save needs checkpoint.keep_last >= 2 (the previous checkpoint must "
                "survive while the next is written); set keep_last: 2"
            )
        return self


class ParallelConfig(Section):
    strategy: Literal["auto", "none", "ddp", "fsdp", "deepspeed"] = Field(
        "auto", description="auto = none for one worker, ddp for several."
    )
    zero_stage: Literal[1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage (strategy=deepspeed).")

    @field_validator("zero_stage", mode="before")
    @classmethod
    def _stage_is_a_number(cls, value: object) -> object:
        if isinstance(value, bool):  # YAML `yes`/`true` is 1 to pydantic (trial 41b: taken as stage 1)
            raise ValueError(f"parallel.zero_stage must be 1, 2 or 3; got {str(value).lower()}")
        return value

    offload_optimizer: Literal["none", "cpu", "nvme"] = Field("none", description="DeepSpeed optimizer-state offload.")
    offload_params: Literal["none", "cpu", "nvme"] = Field(
        "none", description="Parameter offload: DeepSpeed ZeRO-3 (cpu/nvme) or FSDP2 (cpu)."
    )
    nvme_path: str | None = Field(None, description="Directory for NVMe offload (ZeRO-3).")
    reshard_after_forward: bool = Field(
        True, description="FSDP2: free gathered parameters after forward (ZeRO-3 like)."
    )
    mixed_precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto = bf16 on GPUs that support it, fp32 on CPU."
    )
    deepspeed_config: str | None = Field(None, description="A DeepSpeed JSON merged over the generated config.")

    @model_validator(mode="after")
    def _settings_fit_strategy(self) -> ParallelConfig:
        # `auto` never resolves to a sharded strategy, so it is refused where one is needed.
        strategy = self.strategy
        if self.mixed_precision == "fp16" and strategy != "deepspeed":
            raise ValueError(
                "parallel.mixed_precision=fp16 needs dynamic loss scaling, which ftl gets from DeepSpeed: "
                "use bf16, or parallel.strategy=deepspeed"
            )
        if self.deepspeed_config and strategy != "deepspeed":
            # Ignored without a word before (trial 59a), as offload_optimizer is refused below.
            raise ValueError(
                f"parallel.deepspeed_config is read with parallel.strategy=deepspeed only (this run's is {strategy}); "
                "remove it, or set parallel.strategy: deepspeed"
            )
        if self.offload_optimizer != "none" and strategy != "deepspeed":
            raise ValueError(
                "parallel.offload_optimizer needs parallel.strategy=deepspeed "
                "(with fsdp, parallel.offload_params=cpu offloads parameters, gradients and the optimizer step)"
            )
        if self.offload_params != "none":
            if strategy == "deepspeed" and self.zero_stage != 3:
                raise ValueError(
                    "parallel.offload_params needs parallel.zero_stage=3 (ZeRO-1/2 do not partition parameters); "
                    "use offload_optimizer with stages 1-2"
                )
            if strategy == "fsdp" and self.offload_params != "cpu":
                raise ValueError("parallel.offload_params: fsdp offloads to cpu only; use deepspeed ZeRO-3 for nvme")
            if strategy not in SHARDED:
                raise ValueError("parallel.offload_params needs parallel.strategy=fsdp or deepspeed")
        if "nvme" in (self.offload_params, self.offload_optimizer) and not self.nvme_path:
            raise ValueError("parallel.nvme_path is required for nvme offload (a directory on a fast local disk)")
        return self

    def strategy_for(self, world_size: int) -> str:
        """The strategy a run of this many workers uses (auto: none for one, ddp for several)."""
        if self.strategy == "auto":
            return "ddp" if world_size > 1 else "none"
        return self.strategy


class OutputConfig(Section):
    dir: str = Field(
        min_length=1,  # an empty path meant the current directory
        description="The run directory: config snapshot, logs, metrics, checkpoints, final model. A path, or "
        "with cluster.backend=ray an object-store URI (s3://bucket/runs/NAME, gs://, abfss://, "
        "hdfs://, file://) stored through Ray Train, with a local working copy in output.local_dir.",
    )
    local_dir: str | None = Field(
        None,
        description="Only with a URI output.dir: the working copy workers write before each "
        "checkpoint is uploaded (every worker must see it). Default: "
        "~/.cache/ftl/runs/SCHEME/BUCKET/PATH.",
    )
    save_adapter: bool = Field(True, description="Write final/adapter (PEFT format) for adapter methods.")
    save_merged: bool = Field(True, description="Write final/merged (full model, HF safetensors).")
    report: bool = Field(
        True,
        description="Write RUN_DIR/report/ (plots and an HTML page of the run's metrics) when the run finishes; "
        "`ftl report RUN_DIR` writes it at any time.",
    )

    @model_validator(mode="after")
    def _local_dir_only_for_uris(self) -> OutputConfig:
        if self.local_dir is not None and "://" not in self.dir:
            raise ValueError(
                "output.local_dir is the working copy of a URI output.dir; with a path output.dir, remove it"
            )
        if self.local_dir is not None and "://" in self.local_dir:
            raise ValueError(
                f"output.local_dir {self.local_dir!r} must be a filesystem path (checkpoints are committed there "
                "with atomic renames)"
            )
        return self

    @model_validator(mode="after")
    def _uri_scheme_is_a_storage(self) -> OutputConfig:
        # Which backend may store to a URI is a rule with the cluster section (launcher/run_config.py).
        one_slash = re.match(r"^([A-Za-z][A-Za-z0-9+.-]+):/(?!/)", self.dir)
        if one_slash and one_slash.group(1).lower() in STORAGE_SCHEMES:  # trial 55a: `file:/abs` made a folder `file:`
            raise ValueError(
                f"output.dir {self.dir!r} reads as a relative path (a URI has '://'): write "
                f"{one_slash.group(1).lower()}:///{self.dir[one_slash.end() :]} or a plain path"
            )
        if "://" not in self.dir:
            return self
        scheme, rest = self.dir.split("://", 1)
        if scheme.lower() not in STORAGE_SCHEMES:
            raise ValueError(
                f"output.dir {self.dir!r}: {scheme}:// is not a storage ftl can use; use a path, or one of "
                + ", ".join(f"{s}://" for s in STORAGE_SCHEMES)
            )
        if scheme != scheme.lower():  # pyarrow takes lowercase schemes only (trial 55a: FILE:// passed, then failed)
            raise ValueError(f"output.dir {self.dir!r}: write the scheme in lowercase ({scheme.lower()}://)")
        if scheme == "file" and not rest.startswith("/"):  # file://relative/dir: `relative` read as a host
            raise ValueError(
                f"output.dir {self.dir!r}: a file URI names an absolute path after three slashes "
                f"(file:///abs/path); or write a plain path"
            )
        path = rest.split("?", 1)[0]
        if any(part in (".", "..") for part in path.split("/")):  # trial 55a: `..` slipped past the finished-run check
            raise ValueError(f"output.dir {self.dir!r}: write the URI's path without '.' or '..' segments")
        return self


class TrainerConfig(Section):
    """Everything a worker needs; the launcher's RunConfig extends it with cluster settings."""

    model: ModelConfig
    data: DataConfig
    method: MethodConfig = Field(default_factory=MethodConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    transfer: TransferConfig = Field(default_factory=TransferConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    output: OutputConfig

    @model_validator(mode="after")
    def _cross_section_rules(self) -> TrainerConfig:
        # Each rule here relates keys of several sections, which no single section's validator sees.
        nvme = "nvme" in (self.parallel.offload_optimizer, self.parallel.offload_params)
        if self.checkpoint.async_save and self.parallel.strategy == "deepspeed" and nvme:
            raise ValueError(
                "checkpoint.async_save is not supported with DeepSpeed NVMe offload (parallel.offload_optimizer "
                "or offload_params = nvme): DeepSpeed swaps that state between NVMe and memory as training goes "
                "on, outside the state it hands to the checkpoint writer; set checkpoint.async_save=false or "
                "offload to cpu"
            )
        formats = self.data.formats()
        if (
            formats <= {"text", "classification", "token_classification"}
            and self.eval.generation.enabled
            and self._has_eval_data()
        ):
            # Plain text has no prompt/answer split, so exact-match has nothing to compare. Generation
            # is on by default: off by itself for such data, refused only where the config asks for it.
            if "enabled" in self.eval.generation.model_fields_set:
                raise ValueError(
                    f"eval.generation.enabled needs prompt/answer data; with data.format={'/'.join(sorted(formats))} "
                    "set eval.generation.enabled=false"
                )
            self.eval.generation.enabled = False
        one_per_row = (
            self.training.objective in ("dpo", "orpo")
            or self.transfer.head.is_classification
            or "image_classification" in formats
        )
        if one_per_row and self.data.packing and "packing" not in self.data.model_fields_set:
            # Preference pairs, classification heads and images take one example per row: packing
            # (on by default) is off by itself for them, refused only where the config asks for it.
            self.data.packing = False
        problem = optimizer_problem(self)  # training.optimizer* with parallel.* (trainer/optim_rules.py)
        if problem:
            raise ValueError(problem)
        if self.model.compile and self.parallel.strategy == "deepspeed":
            # ZeRO gathers and releases parameters in hooks around every submodule, inside the layers.
            # (The device-dependent model options, e.g. liger_kernels needs CUDA, are checked by the
            # worker: trainer/model_options.py.)
            raise ValueError(
                "model.compile is not supported with parallel.strategy=deepspeed (ZeRO's parameter hooks run "
                "inside the compiled layers); set model.compile=false, or use fsdp or ddp"
            )
        _check_transfer(self)
        _check_preference(self)
        return self

    def _has_eval_data(self) -> bool:
        return bool(
            self.data.validation
            or self.data.validation_split > 0
            or self.data.test
            or any(source.validation for source in self.data.mixture)
        )

    def snapshot_values(self) -> dict[str, Any]:
        """The config as the JSON values of the run's config.yaml: every key but the preference keys
        its objective does not read (written back, the launcher would refuse them)."""
        values = self.model_dump(mode="json")
        for key in unread_preference_keys(self.training.objective):
            values["training"]["preference"].pop(key, None)
        return values

    def eval_set_names(self) -> list[str]:
        """Names of the evaluation sets a run will score, as they appear in metrics."""
        data = self.data
        names = ["validation"] if data.validation or data.validation_split > 0 else []
        names += [source.name for source in data.mixture if source.validation]
        names += ["test"] if data.test else []
        names += ["retain"] if self.eval.retain else []
        return names

    def reference_kind(self) -> str | None:
        """DPO's reference model for this config (trainer/preference_reference.py builds it):
        adapters_disabled, copy, precomputed, or None (no reference needed)."""
        if self.training.objective != "dpo":
            return None
        return dpo_reference(
            self.training.preference.reference,
            self.method.uses_adapter,
            bool(self.method.lora.init_from),
            self.parallel.strategy,
        )


def dpo_reference(chosen: str, uses_adapter: bool, adapter_given: bool, strategy: str) -> str:
    """training.preference.reference resolved (`auto` by the method): also read from a run's config
    snapshot by `ftl runs`, which does not validate a whole config."""
    if chosen != "auto":
        return chosen
    if uses_adapter and not adapter_given:
        return "adapters_disabled"
    if uses_adapter:  # the base without the adapter it starts from is not the initial model
        return "precomputed"
    # A frozen copy is not sharded: under fsdp/deepspeed the initial model scores the pairs once instead.
    return "precomputed" if strategy in SHARDED else "copy"


# Keys of training.preference that only one objective reads; set for the other, they did nothing.
DPO_ONLY_KEYS = ("loss_type", "beta", "label_smoothing", "reference")
ORPO_ONLY_KEYS = ("orpo_lambda",)


def unread_preference_keys(objective: str) -> tuple[str, ...]:
    """The training.preference keys a preference objective does not read. The launcher refuses them
    when the file or command line writes them, whatever the value, and leaves them out of the run's
    config snapshot; SFT reads none of the section and keeps it as written."""
    return {"orpo": DPO_ONLY_KEYS, "dpo": ORPO_ONLY_KEYS}.get(objective, ())


def _check_objective_keys(objective: str, preference: PreferenceConfig) -> None:
    """A value the objective ignores is refused (TRL's ORPOConfig.beta is ORPO's lambda: `beta: 0.5`
    with ORPO was silently ignored, lambda stayed 0.1)."""
    defaults = PreferenceConfig()
    if objective == "orpo":
        changed = [k for k in DPO_ONLY_KEYS if getattr(preference, k) != getattr(defaults, k)]
        if changed:
            raise ValueError(
                f"training.preference.{changed[0]} is a DPO setting; training.objective=orpo does not read it. "
                "ORPO's one weight is training.preference.orpo_lambda (TRL's ORPOConfig.beta), default 0.1"
            )
    elif objective == "dpo" and preference.orpo_lambda != defaults.orpo_lambda:
        raise ValueError(
            "training.preference.orpo_lambda is an ORPO setting; training.objective=dpo does not read it "
            "(DPO's strength is training.preference.beta)"
        )


def _check_preference(cfg: TrainerConfig) -> None:
    """training.objective against the data, method and parallel sections (docs/preference-tuning.md)."""
    objective, formats = cfg.training.objective, cfg.data.formats()
    preference = objective in ("dpo", "orpo")
    if preference and cfg.data.mixture:
        raise ValueError(
            f"training.objective={objective} trains on one preference dataset: use data.train, not data.mixture"
        )
    if preference and formats != {"preference"}:
        raise ValueError(
            f"training.objective={objective} trains on preference pairs: set data.format=preference "
            "({prompt, chosen, rejected} rows)"
        )
    if not preference and "preference" in formats:
        raise ValueError(
            "data.format=preference holds pairs for a preference objective: set training.objective=dpo or orpo"
        )
    if not preference:
        return
    if cfg.data.packing:
        raise ValueError(
            f"training.objective={objective} scores chosen and rejected as whole sequences side by side, which "
            "packing would mix with other examples: set data.packing=false"
        )
    reference = cfg.training.preference.reference
    if objective == "orpo" and reference != "auto":
        raise ValueError("training.objective=orpo is reference-free: remove training.preference.reference")
    _check_objective_keys(objective, cfg.training.preference)
    if objective != "dpo":
        return
    if reference == "adapters_disabled" and not cfg.method.uses_adapter:
        raise ValueError(
            "training.preference.reference=adapters_disabled needs an adapter method (method.type=lora, dora or "
            "qlora); with method.type=full use reference=copy or precomputed"
        )
    if reference == "adapters_disabled" and cfg.method.lora.init_from:
        raise ValueError(
            "training.preference.reference=adapters_disabled would score against the base model without the "
            "adapter method.lora.init_from starts from; use reference=precomputed (auto picks it): the initial "
            "model, adapter included, scores every pair once before the first step"
        )
    if reference == "copy" and cfg.method.uses_adapter:
        # With init_from the reference is the initial model, adapter included (trial 52b: the message
        # named adapters_disabled, which is refused there).
        instead = (
            "the initial model, method.lora.init_from's adapter included, scores every pair once before the first "
            "step (reference=precomputed, which auto picks)"
            if cfg.method.lora.init_from
            else "the base model with adapters disabled is the reference at no memory cost (reference=auto)"
        )
        raise ValueError(
            f"training.preference.reference=copy is for full fine-tuning; with an adapter method {instead}"
        )
    if reference == "copy" and cfg.parallel.strategy in SHARDED:
        raise ValueError(
            f"training.preference.reference=copy under parallel.strategy={cfg.parallel.strategy}: the frozen copy "
            "is not sharded (a full unsharded copy per worker would defeat the sharding); use "
            "reference=precomputed (or auto, which picks it here): the initial model scores every pair once "
            "under the same sharding before the first step"
        )


def _check_transfer(cfg: TrainerConfig) -> None:
    """Transfer settings against the method, data, eval and parallel sections: combinations that do not
    make sense, each with what to do instead (raises ValueError). Rules within transfer.* alone are
    validators of its sections (trainer/transfer/config.py)."""
    transfer, method = cfg.transfer, cfg.method
    _check_sharded_transfer(cfg)
    _check_head(cfg)
    if transfer.freeze.all_but_head and method.uses_adapter:
        raise ValueError(
            "transfer.freeze.all_but_head (feature extraction) trains only the head, so adapters would stay "
            "untrained; use method.type=full with it"
        )
    if transfer.learning_rates.layer_decay is not None and transfer.freeze.all_but_head:
        raise ValueError(
            "transfer.learning_rates.layer_decay decays the rates of pretrained layers, which "
            "transfer.freeze.all_but_head keeps frozen (only the head trains); remove one of them"
        )
    if transfer.gradual_unfreezing.enabled and transfer.freeze.all_but_head:
        raise ValueError(
            "transfer.gradual_unfreezing unfreezes blocks that transfer.freeze.all_but_head keeps frozen; choose one"
        )
    if transfer.gradual_unfreezing.enabled and cfg.training.optimizer_in_backward:
        raise ValueError(
            "transfer.gradual_unfreezing with training.optimizer_in_backward: the per-parameter step is hooked onto "
            "each parameter when the optimizer is built, and a parameter that is still frozen then cannot take the "
            "hook, so the blocks the schedule unfreezes later would never step; set "
            "training.optimizer_in_backward=false (keeps the schedule), or freeze statically with "
            "transfer.freeze.first_n_blocks (keeps the step in backward)"
        )
    if transfer.learning_rates.head is not None and _adapters_leave_the_lm_head_frozen(cfg):
        raise ValueError(HEAD_RATE_WITHOUT_HEAD)
    if transfer.learning_rates.lora_plus_ratio is not None and not method.uses_adapter:
        raise ValueError(
            "transfer.learning_rates.lora_plus_ratio needs an adapter method (method.type=lora, dora or qlora)"
        )
    _check_early_stopping(cfg)


def _adapters_leave_the_lm_head_frozen(cfg: TrainerConfig) -> bool:
    """An adapter method on a causal LM trains no part of its output head, unless modules_to_save or
    a list of target_modules may name it (the head's name depends on the model: the worker, which
    has the model, checks those cases)."""
    method = cfg.method
    if not method.uses_adapter or cfg.transfer.head.type != "causal_lm" or method.lora.modules_to_save:
        return False
    return method.lora.target_modules == "all-linear"  # PEFT's all-linear leaves the output layer out


def _check_sharded_transfer(cfg: TrainerConfig) -> None:
    """What the sharded strategies cannot do with transfer settings (docs/transfer-learning.md has the matrix).
    Static freezing, parameter groups (head rate, layer decay, LoRA+), task heads and early stopping work
    under both; FSDP2 also follows gradual unfreezing, since it reduces whatever requires grad at each backward."""
    transfer, strategy = cfg.transfer, cfg.parallel.strategy
    if strategy == "deepspeed" and transfer.gradual_unfreezing.enabled:
        raise ValueError(
            "transfer.gradual_unfreezing is not supported with parallel.strategy=deepspeed: ZeRO builds its "
            "partitioned fp32 weights, gradients and optimizer state from the parameters that require grad when the "
            "engine is created, so a block unfrozen later would never train; use parallel.strategy=fsdp (sharded, "
            "follows the schedule) or ddp, or freeze statically with transfer.freeze.first_n_blocks"
        )


def _check_image_head(cfg: TrainerConfig) -> None:
    """transfer.head.type=image_classification and data.format=image_classification go together."""
    formats = cfg.data.formats()
    if cfg.transfer.head.type != "image_classification" or formats != {"image_classification"}:
        raise ValueError(
            "transfer.head.type=image_classification trains on images: set data.format=image_classification "
            "(an image folder root/<label>/*.png or a jsonl of {image, label}) and transfer.head.labels, both together"
        )
    if cfg.data.mixture:
        raise ValueError("data.mixture does not support image_classification yet; use data.train")
    if cfg.data.packing:
        raise ValueError("images are classified one per row and cannot be packed: set data.packing=false")
    if cfg.eval.retain:
        raise ValueError("eval.retain measures language-modelling loss, which an image classifier has no head for")
    if cfg.eval.generation.enabled:
        raise ValueError("eval.generation scores generated text; an image classifier does not generate: disable it")


def _format_keys(cfg: TrainerConfig, fmt: str) -> str:
    """The keys that set `fmt` (trial 50b: a mixture source's format was said as data.format)."""
    keys = [f"data.mixture[{i}].format" for i, source in enumerate(cfg.data.mixture) if source.format == fmt]
    if cfg.data.format == fmt and (not cfg.data.mixture or any(not source.format for source in cfg.data.mixture)):
        keys.insert(0, "data.format")
    return ", ".join(keys) or "data.format"


def _check_head(cfg: TrainerConfig) -> None:
    if cfg.transfer.head.type == "image_classification" or "image_classification" in cfg.data.formats():
        return _check_image_head(cfg)
    if cfg.data.augmentation.any:
        raise ValueError("data.augmentation applies to data.format=image_classification only; remove it")
    head = cfg.transfer.head
    classification = head.is_classification
    formats = cfg.data.formats()
    wanted = HEAD_DATA_FORMATS.get(head.type)
    if wanted is not None and formats != {wanted}:
        raise ValueError(f"transfer.head.type={head.type} trains on {wanted} rows: set data.format={wanted}")
    for head_type, fmt in HEAD_DATA_FORMATS.items():
        if fmt in formats and head.type != head_type:
            raise ValueError(
                f"{_format_keys(cfg, fmt)}={fmt} needs its head: set transfer.head.type={head_type} and "
                "transfer.head.labels"
            )
    if not classification:
        return
    if cfg.data.packing:
        raise ValueError(f"a {head.type} head scores one example per row: set data.packing=false")
    if cfg.eval.retain:
        raise ValueError(
            "eval.retain measures language-modelling loss, which a classification model has no head for; remove it"
        )


def unused_zero_stage(cfg: TrainerConfig) -> str | None:
    """parallel.zero_stage set (off its default) with a strategy other than deepspeed, where nothing
    reads it (trial 41b: `strategy: fsdp, zero_stage: 3`, meant as "FSDP like ZeRO-3", said nothing)."""
    parallel = cfg.parallel
    if parallel.strategy == "deepspeed" or parallel.zero_stage == ParallelConfig.model_fields["zero_stage"].default:
        return None
    using = parallel.strategy if parallel.strategy != "auto" else "auto (ddp or none)"
    like = "; fsdp shards parameters, gradients and optimizer state already, as ZeRO-3 does" if using == "fsdp" else ""
    return (
        f"parallel.zero_stage={parallel.zero_stage} is a DeepSpeed setting and this run uses strategy {using}, "
        f"which does not read it{like}; set parallel.strategy=deepspeed for ZeRO, or remove zero_stage"
    )


def unused_method_settings(cfg: TrainerConfig) -> list[str]:
    """method.quantization written without QLoRA, method.lora under full fine-tuning: read by nothing
    (trial 60b: `type: full` with a quantization block trained a full-precision full fine-tune without
    a word, where adapter_dtype under full is refused and zero_stage under ddp warned of). The keys
    the config wrote (trial 60c: judged by value, a block equal to the defaults was not said)."""
    method = cfg.method
    notes = []
    quantized = _written_keys(method, "quantization", QuantizationConfig())
    if quantized and method.type != "qlora":
        notes.append(
            f"method.quantization ({', '.join(quantized)}) is read by method.type=qlora only, and this run is "
            f"{method.type}, which loads the base unquantized; set method.type=qlora for a 4-bit base, or remove it"
        )
    adapters = _written_keys(method, "lora", LoraConfig())
    if adapters and method.type == "full":
        notes.append(
            f"method.lora ({', '.join(adapters)}) configures adapters, and method.type=full trains every weight "
            "without them; set method.type=lora (or dora, qlora) to train adapters, or remove it"
        )
    return notes


def _written_keys(parent: Section, name: str, default: Section) -> list[str]:
    """The keys of section `name` the config wrote. A config that sets every key is a snapshot (the
    run's config.yaml, a job's copy): there, the keys whose values differ from the defaults."""
    if name not in parent.model_fields_set:
        return []
    section = getattr(parent, name)
    fields = type(section).model_fields
    written = [key for key in fields if key in section.model_fields_set]
    if len(written) == len(fields) and len(parent.model_fields_set) == len(type(parent).model_fields):
        ours, theirs = section.model_dump(mode="json"), default.model_dump(mode="json")
        return [key for key in ours if ours[key] != theirs.get(key)]
    return written or ["an empty block"]


def periodic_eval_without_data(cfg: TrainerConfig) -> str | None:
    """eval.every_steps with nothing to evaluate: the run trains without a number (trial 37b). A
    warning, not a refusal: a recipe's every_steps is fine to keep while trying data without a split."""
    names = cfg.eval_set_names()
    if not cfg.eval.every_steps or set(names) - {"test"}:
        return None
    if names:  # data.test alone: it is scored at the start (eval.at_start) and the end, never in between
        return (
            f"eval.every_steps={cfg.eval.every_steps} but the run's only evaluation data is data.test, which "
            "periodic evaluations leave out (it reports the final model; choosing steps by it would make that "
            "score optimistic), so nothing is evaluated during training; set data.validation (a file) or "
            "data.validation_split (e.g. 0.05) to follow training"
        )
    return (
        f"eval.every_steps={cfg.eval.every_steps} but the run has no evaluation data, so nothing is evaluated; set "
        "data.validation (a file), data.validation_split (e.g. 0.05) or eval.retain"
    )


def warmup_longer_than_the_run(cfg: TrainingConfig, total_steps: int) -> str | None:
    """training.warmup_steps at or past the run's last step: cut to the run, so the learning rate
    rises for the whole run and never decays (trial 37b: said nowhere)."""
    if cfg.warmup_steps is None or cfg.warmup_steps < total_steps:
        return None
    return (
        f"training.warmup_steps={cfg.warmup_steps} is not shorter than the run ({total_steps} steps): the learning "
        f"rate rises over the whole run, the {cfg.lr_scheduler} schedule after the warmup never comes; lower "
        "warmup_steps or use training.warmup_ratio"
    )


def intervals_past_the_run(cfg: TrainerConfig, total_steps: int) -> list[str]:
    """eval.every_steps / checkpoint.every_steps not shorter than the run: no evaluation or no
    checkpoint before its end (trial 56a: said nowhere; a stop request still checkpoints)."""
    notes = []
    every = cfg.eval.every_steps
    if every and every >= total_steps and cfg.eval_set_names():
        notes.append(
            f"eval.every_steps={every} is not shorter than the run ({_steps(total_steps)}): nothing is evaluated before "
            "the final evaluation; lower it to follow training"
        )
    every = cfg.checkpoint.every_steps
    if every and every >= total_steps:
        notes.append(
            f"checkpoint.every_steps={every} is not shorter than the run ({_steps(total_steps)}): no checkpoint is "
            "written while it trains (final/ is saved at its end, and a stop request still writes one), so a crash "
            "loses the whole run; lower it"
        )
    return notes


def _steps(count: int) -> str:
    return f"{count} step{'' if count == 1 else 's'}"  # trial 63a: "(1 steps)"


def same_data_warnings(cfg: TrainerConfig) -> list[str]:
    """Held-out sets that are another set's data (one path, or the same bytes: trial 51a, a copy):
    data.test the data.validation data (its score repeats the validation score, and early stopping's
    choice; trial 49a), or either the training data (its score measures recall)."""
    data = cfg.data
    warnings = []
    if data.validation and data.test and _same_data(data.validation, data.test):
        chosen = (
            "; early stopping chooses final/ by it, so the test score is not an independent measure"
            if cfg.transfer.early_stopping.enabled
            else ""
        )
        shown = data.test if data.test == data.validation else f"{data.validation} and {data.test}"
        warnings.append(
            f"data.validation and data.test are the same data ({shown}): the test score repeats the "
            f"validation score{chosen}; give data.test a set of its own, or leave it out"
        )
    for key, held in (("data.validation", data.validation), ("data.test", data.test)):
        if data.train and held and _same_data(data.train, held):
            warnings.append(
                f"{key} is the data.train data ({held}): its scores measure recall of trained rows, not "
                f"generalization; give {key} rows training does not see (or data.validation_split)"
            )
    return warnings


def local_revision_note(cfg: TrainerConfig) -> str | None:
    """model.revision names a hub revision; a local folder is loaded as it is (trial 52a: `revision:
    0123` on a bundled folder was recorded and silently unused)."""
    revision, path = cfg.model.revision, cfg.model.path
    if not revision or not Path(path).is_dir():
        return None
    return (
        f"model.revision={revision} is not used: model.path {path} is a local folder, loaded as it is (a revision "
        "picks a hub model's branch, tag or commit); remove model.revision, or check out that revision there"
    )


# A source below this share of the mixture's weight draws next to nothing (trial 38b: 1e-6 was taken
# without a word, and its validation still cost an evaluation each time).
SMALL_MIXTURE_SHARE = 0.001


def mixture_notes(cfg: TrainerConfig) -> list[str]:
    """Warnings for a data.mixture that is valid but likely not what was meant: a source whose weight
    draws next to nothing, and one file listed as two sources (its rows drawn under both weights)."""
    sources = cfg.data.mixture
    if not sources:
        return []
    notes = []
    total = sum(source.weight for source in sources)
    for index, source in enumerate(sources):
        if source.weight / total < SMALL_MIXTURE_SHARE:
            notes.append(
                f"data.mixture[{index}] ({source.name}): weight {source.weight:g} is {source.weight / total:.2g} of the "
                "mixture's total, so training draws next to none of its rows; raise it, or remove the entry (to only "
                "score a set, give it as data.validation or data.test)"
            )
    seen: dict[str, str] = {}
    for source in sources:
        key = (
            str(Path(source.train).expanduser().resolve()) if Path(source.train).expanduser().exists() else source.train
        )
        if key in seen:
            notes.append(
                f"data.mixture sources {seen[key]} and {source.name} read the same training data ({source.train}): its "
                "rows are drawn under both weights; list it once with their sum if that was not meant"
            )
        else:
            seen[key] = source.name
    return notes


def _check_early_stopping(cfg: TrainerConfig) -> None:
    stopping = cfg.transfer.early_stopping
    if not stopping.enabled:
        return
    if not cfg.eval.every_steps:
        raise ValueError("transfer.early_stopping needs periodic evaluations: set eval.every_steps (e.g. 20)")
    if stopping.split == "test":
        # The checkpoint chosen on the test set scores best on it by construction: its test score is
        # then no held-out score (trial 39b: the final table still showed it as one).
        raise ValueError(
            "transfer.early_stopping.split=test: data.test is scored to report the final model, and choosing the "
            "checkpoint on it makes that score optimistic (no longer held out); stop on a validation set: "
            "data.validation (a file), or data.validation_split (e.g. 0.1) to hold out part of data.train"
        )
    sets = [name for name in cfg.eval_set_names() if name != "test"]
    if stopping.split not in sets:
        import difflib

        have = ", ".join(sets) or "none"
        close = difflib.get_close_matches(stopping.split, sets, n=1, cutoff=0.6)  # `valdation` (trial 53b)
        hint = f"; did you mean {close[0]!r}?" if close else "; set data.validation or pick one of those"
        raise ValueError(
            f"transfer.early_stopping.split={stopping.split!r} is not an evaluation set of this run (have: {have})"
            + hint
        )
    head = cfg.transfer.head
    classification = head.is_classification
    # What each head's evaluations score, for the hint after a metric the head has none of (trial 39b: the
    # entity_f1 refusal on a sequence classifier suggested token_accuracy, refused next).
    if head.type in CLASSIFICATION_HEADS:
        scored = "accuracy, macro_f1 or eval_loss"
    elif head.type == "token_classification":
        scored = "entity_f1, token_accuracy or eval_loss" if head.tags_entities else "token_accuracy or eval_loss"
    else:
        scored = "eval_loss or exact_match" if cfg.eval.generation.enabled else "eval_loss"
    if stopping.metric in ("accuracy", "macro_f1") and head.type not in CLASSIFICATION_HEADS:
        raise ValueError(
            f"transfer.early_stopping.metric={stopping.metric} needs transfer.head.type=sequence_classification "
            f"or image_classification; use {scored}"
        )
    if stopping.metric == "token_accuracy" and head.type != "token_classification":
        raise ValueError(
            f"transfer.early_stopping.metric=token_accuracy needs transfer.head.type=token_classification; use {scored}"
        )
    if stopping.metric == "entity_f1" and not head.tags_entities:
        raise ValueError(
            "transfer.early_stopping.metric=entity_f1 needs transfer.head.type=token_classification with BIO tags "
            f"(transfer.head.labels: O, B-TYPE, I-TYPE ...); use {scored}"
        )
    if stopping.metric == "exact_match" and classification:
        raise ValueError(
            f"transfer.early_stopping.metric=exact_match scores generated answers, and a {head.type} head generates "
            f"none; use {scored}"
        )
    if stopping.metric == "exact_match" and not cfg.eval.generation.enabled:
        raise ValueError(
            "transfer.early_stopping.metric=exact_match needs eval.generation.enabled=true and prompt/answer data; "
            "use eval_loss"
        )
