"""The `transfer` config section: freezing, gradual unfreezing, learning rates per group, task
heads and early stopping. Each is a transform of the model or the optimizer of the one trainer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from trainer.config import TrainerConfig


class _Section(BaseModel):
    # Same rules as trainer.config.Section (not imported: trainer.config imports this module).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class FreezeConfig(_Section):
    all_but_head: bool = Field(
        False, description="Feature extraction: train only the head (lm_head, or the classification head); freeze the rest."
    )
    embeddings: bool = Field(False, description="Partial fine-tuning: freeze the input embeddings.")
    first_n_blocks: int = Field(
        0, ge=0, description="Partial fine-tuning: freeze the first N transformer blocks (with LoRA: no adapters on them)."
    )
    patterns: list[str] = Field(
        default_factory=list,
        description="Freeze parameters whose name (without wrapper prefixes) matches one of these regular expressions.",
    )

    @property
    def any(self) -> bool:
        return self.all_but_head or self.embeddings or self.first_n_blocks > 0 or bool(self.patterns)


class GradualUnfreezingConfig(_Section):
    enabled: bool = Field(False, description="ULMFiT gradual unfreezing: start with the top group trainable, add one group per stage.")
    every: int = Field(1, ge=1, description="Unfreeze the next group every this many `unit`s.")
    unit: Literal["steps", "epochs"] = Field("steps", description="What `every` counts: optimizer steps or epochs.")
    blocks_per_stage: int = Field(1, ge=1, description="Transformer blocks unfrozen per stage, top to bottom.")


class LearningRatesConfig(_Section):
    head: float | None = Field(
        None, gt=0, le=1.0, description="Rate for the head (the new/task parameters); pretrained parameters use training.learning_rate."
    )
    layer_decay: float | None = Field(
        None, gt=0, le=1.0,
        description="Layer-wise decay: a pretrained parameter at distance d from the top trains at learning_rate x "
        "layer_decay^d (top block d=1, ..., bottom block d=num_blocks, embeddings d=num_blocks+1).",
    )
    lora_plus_ratio: float | None = Field(
        None, ge=1.0, description="LoRA+: LoRA B matrices train at this multiple of their group's rate (the paper suggests 16)."
    )

    @property
    def any(self) -> bool:
        return self.head is not None or self.layer_decay is not None or self.lora_plus_ratio is not None


class HeadConfig(_Section):
    type: Literal["causal_lm", "sequence_classification"] = Field(
        "causal_lm", description="sequence_classification: a new head of num_labels on the base's last token."
    )
    num_labels: int | None = Field(None, ge=2, description="Number of classes; defaults to the length of `labels`.")
    labels: list[str] = Field(
        default_factory=list, description="Class names, in id order; a row's label is a name or its 0-based id."
    )

    @property
    def label_names(self) -> list[str]:
        return list(self.labels) if self.labels else [str(i) for i in range(self.num_labels or 0)]

    @property
    def is_classification(self) -> bool:
        return self.type == "sequence_classification"

    @model_validator(mode="after")
    def _labels(self) -> "HeadConfig":
        if self.type == "sequence_classification":
            if not self.labels and self.num_labels is None:
                raise ValueError("transfer.head.type=sequence_classification needs transfer.head.labels (class names) or num_labels")
            if self.labels and self.num_labels is not None and self.num_labels != len(self.labels):
                raise ValueError(f"transfer.head.num_labels={self.num_labels} but transfer.head.labels has {len(self.labels)} names")
            if len(set(self.labels)) != len(self.labels):
                raise ValueError("transfer.head.labels must be unique")
        elif self.labels or self.num_labels is not None:
            raise ValueError("transfer.head.labels/num_labels apply to type=sequence_classification only")
        return self


EarlyStoppingMetric = Literal["eval_loss", "accuracy", "macro_f1", "exact_match"]


class EarlyStoppingConfig(_Section):
    enabled: bool = Field(False, description="Stop when the metric has not improved for `patience` evaluations; final/ holds the best.")
    metric: EarlyStoppingMetric = Field("eval_loss", description="Lower is better for eval_loss, higher for the others.")
    split: str = Field("validation", description="The evaluation set to watch: validation, or a data.mixture name.")
    patience: int = Field(3, ge=1, description="Evaluations in a row without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0, description="An evaluation improves only if it beats the best by more than this.")

    @property
    def mode(self) -> str:
        return "min" if self.metric == "eval_loss" else "max"


class TransferConfig(_Section):
    freeze: FreezeConfig = Field(default_factory=FreezeConfig)
    gradual_unfreezing: GradualUnfreezingConfig = Field(default_factory=GradualUnfreezingConfig)
    learning_rates: LearningRatesConfig = Field(default_factory=LearningRatesConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)

    def features(self) -> list[str]:
        """The strategies this config switches on, named by their config key."""
        on = []
        if self.freeze.any:
            on.append("transfer.freeze")
        if self.gradual_unfreezing.enabled:
            on.append("transfer.gradual_unfreezing")
        if self.learning_rates.any:
            on.append("transfer.learning_rates")
        if self.head.is_classification:
            on.append("transfer.head")
        if self.early_stopping.enabled:
            on.append("transfer.early_stopping")
        return on


def check_transfer(cfg: "TrainerConfig") -> None:
    """Combinations that do not make sense, each with what to do instead (raises ValueError)."""
    transfer, method = cfg.transfer, cfg.method
    used = transfer.features()
    if used and cfg.parallel.strategy in ("fsdp", "deepspeed"):
        raise ValueError(
            f"{', '.join(used)} with parallel.strategy={cfg.parallel.strategy} is not supported (sharded parameters "
            "cannot be frozen, regrouped or restored per group here); use parallel.strategy=ddp, or drop those settings"
        )
    _check_head(cfg)
    if transfer.freeze.all_but_head and method.uses_adapter:
        raise ValueError("transfer.freeze.all_but_head (feature extraction) trains only the head, so adapters would stay "
                         "untrained; use method.type=full with it")
    if transfer.gradual_unfreezing.enabled and transfer.freeze.all_but_head:
        raise ValueError("transfer.gradual_unfreezing unfreezes blocks that transfer.freeze.all_but_head keeps frozen; choose one")
    if transfer.learning_rates.lora_plus_ratio is not None and not method.uses_adapter:
        raise ValueError("transfer.learning_rates.lora_plus_ratio needs an adapter method (method.type=lora, dora or qlora)")
    _check_early_stopping(cfg)


def _check_head(cfg: "TrainerConfig") -> None:
    classification = cfg.transfer.head.is_classification
    formats = {cfg.data.format_of(s) for s in cfg.data.mixture} if cfg.data.mixture else {cfg.data.format}
    if classification and formats != {"classification"}:
        raise ValueError("transfer.head.type=sequence_classification trains on {text, label} rows: set data.format=classification")
    if not classification and "classification" in formats:
        raise ValueError("data.format=classification needs a classification head: set transfer.head.type=sequence_classification "
                         "and transfer.head.labels")
    if not classification:
        return
    if cfg.data.packing:
        raise ValueError("a classification head scores one example per row: set data.packing=false")
    if cfg.method.type == "qlora":
        raise ValueError("transfer.head.type=sequence_classification is not supported with method.type=qlora; use lora or full")
    if cfg.eval.retain:
        raise ValueError("eval.retain measures language-modelling loss, which a classification model has no head for; remove it")


def _check_early_stopping(cfg: "TrainerConfig") -> None:
    stopping = cfg.transfer.early_stopping
    if not stopping.enabled:
        return
    if not cfg.eval.every_steps:
        raise ValueError("transfer.early_stopping needs periodic evaluations: set eval.every_steps (e.g. 20)")
    sets = eval_set_names(cfg)
    if stopping.split not in sets:
        have = ", ".join(sets) or "none"
        raise ValueError(f"transfer.early_stopping.split={stopping.split!r} is not an evaluation set of this run (have: {have}); "
                         "set data.validation or pick one of those")
    classification = cfg.transfer.head.is_classification
    if stopping.metric in ("accuracy", "macro_f1") and not classification:
        raise ValueError(f"transfer.early_stopping.metric={stopping.metric} needs transfer.head.type=sequence_classification; "
                         "use eval_loss or exact_match")
    if stopping.metric == "exact_match" and (classification or not cfg.eval.generation.enabled):
        raise ValueError("transfer.early_stopping.metric=exact_match needs eval.generation.enabled=true and prompt/answer data; "
                         "use eval_loss")


def eval_set_names(cfg: "TrainerConfig") -> list[str]:
    """Names of the evaluation sets a run will score, as they appear in metrics."""
    data = cfg.data
    names = ["validation"] if data.validation or data.validation_split > 0 else []
    names += [source.name for source in data.mixture if source.validation]
    names += ["test"] if data.test else []
    names += ["retain"] if cfg.eval.retain else []
    return names
