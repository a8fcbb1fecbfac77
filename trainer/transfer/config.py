"""The `transfer` config section: freezing, gradual unfreezing, learning rates per group, task
heads and early stopping. Each is a transform of the model or the optimizer of the one trainer.

Rules within one of these sections are its validators; the rules between transfer settings and
the method, data, eval or parallel sections are on TrainerConfig (trainer/config.py)."""

from __future__ import annotations

import difflib
import math
import re
import unicodedata
from typing import Literal

from pydantic import Field, field_validator, model_validator

from trainer.config_section import Section

# Said before anything starts (trainer/config.py) when the config alone shows it, else when the
# optimizer is built (trainer/transfer/param_groups.py).
HEAD_RATE_WITHOUT_HEAD = (
    "transfer.learning_rates.head: no trainable parameter belongs to the head (with an adapter method on a "
    "causal LM only the adapters train, not the LM head), so this rate would apply to nothing; remove it, "
    "or train the head (method.type=full, or a task head with transfer.head.type)"
)


# Loss weights of a class: inside float32's range with room to spare, and ratios of at most 1e12.
CLASS_WEIGHT_RANGE = (1e-6, 1e6)


class FreezeConfig(Section):
    all_but_head: bool = Field(
        False,
        description="Feature extraction: train only the head (lm_head, or the classification head); freeze the rest.",
    )
    embeddings: bool = Field(False, description="Partial fine-tuning: freeze the input embeddings.")
    first_n_blocks: int = Field(
        0,
        ge=0,
        description="Partial fine-tuning: freeze the first N transformer blocks (with LoRA: no adapters on them).",
    )
    train_last_n_blocks: int | None = Field(
        None,
        ge=1,
        description="Partial fine-tuning: train only the last N transformer blocks (and what follows them: final "
        "norm, head), freeze the blocks below, however many the model has (with LoRA: adapters on the last N only). "
        "Instead of first_n_blocks; add embeddings: true to freeze the embeddings too.",
    )
    patterns: list[str] = Field(
        default_factory=list,
        description="Freeze parameters whose name (without wrapper prefixes) matches one of these regular expressions.",
    )

    @property
    def any(self) -> bool:
        return (
            self.all_but_head
            or self.embeddings
            or self.first_n_blocks > 0
            or self.train_last_n_blocks is not None
            or bool(self.patterns)
        )

    @property
    def freezes_blocks(self) -> bool:
        return self.first_n_blocks > 0 or self.train_last_n_blocks is not None

    def frozen_block_count(self, num_blocks: int) -> int:
        """How many of the model's first blocks are frozen (checked against the model by
        trainer/transfer/freezing.py's check_block_count)."""
        if self.train_last_n_blocks is None:
            return self.first_n_blocks
        return max(num_blocks - self.train_last_n_blocks, 0)

    @model_validator(mode="after")
    def _one_block_count(self) -> FreezeConfig:
        if self.first_n_blocks and self.train_last_n_blocks is not None:
            raise ValueError(
                f"transfer.freeze.first_n_blocks={self.first_n_blocks} and train_last_n_blocks="
                f"{self.train_last_n_blocks} both say which blocks train; keep one"
            )
        if self.all_but_head and self.freezes_blocks:
            # Trial 42a: accepted, and only the head trained, whatever the block count said.
            raise ValueError(
                "transfer.freeze.all_but_head freezes every block already, so first_n_blocks/train_last_n_blocks "
                "would change nothing; to train the head and the top blocks, use train_last_n_blocks without "
                "all_but_head (add embeddings: true to freeze the embeddings too)"
            )
        return self

    @field_validator("patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for index, pattern in enumerate(patterns):
            if any(ord(char) < 32 for char in pattern):
                # YAML double quotes read `\b` as a backspace and `\t` as a tab (trial 44a: a `\bq_proj`
                # that matched nothing, its message showing an invisible character).
                raise ValueError(
                    f"transfer.freeze.patterns[{index}]={pattern!r} holds a control character: in YAML double "
                    r"quotes `\b`, `\t` and `\x2e` are escapes, not regex; write regexes in single quotes ('\bq_proj')"
                )
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"transfer.freeze.patterns[{index}]={pattern!r} is not a valid regular expression ({exc}); "
                    r"escape literal dots and brackets (e.g. 'layers\.0\.', 'mlp\[0\]')"
                ) from None
            if not pattern:
                raise ValueError(f"transfer.freeze.patterns[{index}] is empty: it would match (freeze) every parameter")
        return patterns


class GradualUnfreezingConfig(Section):
    enabled: bool = Field(
        False, description="ULMFiT gradual unfreezing: start with the top group trainable, add one group per stage."
    )
    every: int = Field(1, ge=1, description="Unfreeze the next group every this many `unit`s.")
    unit: Literal["steps", "epochs"] = Field("steps", description="What `every` counts: optimizer steps or epochs.")
    blocks_per_stage: int = Field(1, ge=1, description="Transformer blocks unfrozen per stage, top to bottom.")


class LearningRatesConfig(Section):
    head: float | None = Field(
        None,
        gt=0,
        le=1.0,
        description="Rate for the head (the new/task parameters); pretrained parameters use training.learning_rate.",
    )
    layer_decay: float | None = Field(
        None,
        gt=0,
        le=1.0,
        description="Layer-wise decay: a pretrained parameter at distance d from the top trains at learning_rate x "
        "layer_decay^d (top block d=1, ..., bottom block d=num_blocks, embeddings d=num_blocks+1).",
    )
    lora_plus_ratio: float | None = Field(
        None,
        ge=1.0,
        description="LoRA+: LoRA B matrices train at this multiple of their group's rate (the paper suggests 16).",
    )

    @property
    def any(self) -> bool:
        return self.head is not None or self.layer_decay is not None or self.lora_plus_ratio is not None


# The data.format each task head trains on (causal_lm: any of the language-modelling formats).
HEAD_DATA_FORMATS = {
    "sequence_classification": "classification",
    "token_classification": "token_classification",
    "image_classification": "image_classification",
}
# Head types with one label per example, scored by accuracy and macro-F1.
CLASSIFICATION_HEADS = ("sequence_classification", "image_classification")


class HeadConfig(Section):
    type: Literal["causal_lm", "sequence_classification", "token_classification", "image_classification"] = Field(
        "causal_lm",
        description="sequence_classification: a new head of num_labels on the base's last token (an encoder: its "
        "pooled output); token_classification: a new head tagging every word (e.g. BIO entity tags, "
        "data.format=token_classification); image_classification: a vision backbone's classifier, replaced by one "
        "for `labels`.",
    )
    num_labels: int | None = Field(None, ge=2, description="Number of classes; defaults to the length of `labels`.")
    labels: list[str] = Field(
        default_factory=list,
        description="Class (or tag) names, in id order; a row's label is a name or its 0-based id (when any name "
        "is a number, e.g. ratings 1-5, a row's number is read as a name only). Tags named "
        "O, B-TYPE, I-TYPE (BIO/IOB2) also give entity-level precision/recall/F1.",
    )
    dropout: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="Dropout before the new head (transformers' classifier_dropout); default: the model's own "
        "(0.1 for transformers' token-classification heads on decoders and for BERT).",
    )

    class_weights: Literal["balanced"] | list[float] | dict[str, float] | None = Field(
        None,
        description="sequence/image classification: weight each class's loss, for imbalanced data. `balanced`: "
        "rows / (classes x rows of the class), from the training data (sklearn's rule); one weight per label, "
        "in id order; or a mapping of label names to weights (a label left out weighs 1). Weights are positive, "
        f"from {CLASS_WEIGHT_RANGE[0]:g} to {CLASS_WEIGHT_RANGE[1]:g}. Evaluation losses stay unweighted.",
    )

    @field_validator("class_weights", mode="before")
    @classmethod
    def _weights_are_numbers(cls, value: object) -> object:
        """A bool is a slip, not a weight (trial 41a: [true, 1] was taken as 1, 1); a number YAML read
        as text (`1e39`: YAML 1.1 wants `1.0e+39`) is the number, as for every other key; inf/nan
        and weights float32 cannot hold are said as what they are."""
        if isinstance(value, str) and value != "balanced":
            close = " (did you mean 'balanced'?)" if value.strip().lower() == "balanced" else ""
            raise ValueError(
                f"transfer.head.class_weights={value!r}: give `balanced`{close}, one weight per label in id order "
                "([1.0, 4.0]), or a mapping of label names to weights ({rare: 4.0})"
            )
        if isinstance(value, dict):
            if not value:
                raise ValueError(
                    "transfer.head.class_weights={} weighs no class; leave it out (every class weighs 1) or name "
                    "the labels to weigh ({rare: 4.0})"
                )
            return {cls._label_key(key): cls._weight(weight) for key, weight in value.items()}
        if isinstance(value, list):
            return [cls._weight(weight) for weight in value]
        return value

    @field_validator("labels", mode="before")
    @classmethod
    def _numbers_are_names(cls, value: object) -> object:
        """`labels: [1, 2, 3]` (ratings) means the names "1", "2", "3", as YAML users write them."""
        if not isinstance(value, list):
            return value
        for index, name in enumerate(value):
            if isinstance(name, bool):
                # YAML reads true/false unquoted as booleans (ftl's reader keeps yes/no/on/off as text).
                raise ValueError(
                    f"transfer.head.labels[{index}] was read as the boolean {str(name).lower()}: YAML reads true and "
                    "false unquoted as booleans; quote the names as written (labels: ['true', 'false'])"
                )
            if isinstance(name, float):
                raise ValueError(
                    f"transfer.head.labels[{index}] is the number {name!r}: label names are text; quote it as the "
                    f"data writes it (labels: ['{name!r}', ...]), as rows match labels by name"
                )
        names = [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        if not all(isinstance(name, str) for name in names):
            return names  # the field's own check says what is wrong
        # Names as data labels are matched (trainer/data/label_ids.py), so the model's id2label,
        # metrics and predictions say "pos", not the config's "pos " (trial 40a).
        readings = [unicodedata.normalize("NFC", name).strip() for name in names]
        same = next(
            (name for name in readings if readings.count(name) > 1 and names.count(name) < readings.count(name)), None
        )
        if same is not None and same:
            raise ValueError(
                f"transfer.head.labels has two names that read as {same!r} (they differ only in surrounding "
                "spaces or Unicode form); keep one"
            )
        return readings

    @property
    def label_names(self) -> list[str]:
        return list(self.labels) if self.labels else [str(i) for i in range(self.num_labels or 0)]

    @property
    def is_classification(self) -> bool:
        """A task head with labels (it replaces the LM head), of whichever type."""
        return self.type in HEAD_DATA_FORMATS

    @property
    def tags_entities(self) -> bool:
        """Token classification with BIO/IOB2 tag names, so entity spans can be scored."""
        return self.type == "token_classification" and is_bio_tag_set(self.label_names)

    @staticmethod
    def _label_key(key: object) -> str:
        """A mapping's key as a label name: `{2: 5.0}` names label "2", as `labels: [1, 2]` names
        "1" and "2"; read as labels are (NFC, no surrounding spaces) so it matches them."""
        if isinstance(key, int) and not isinstance(key, bool):
            return str(key)
        if isinstance(key, float) and math.isfinite(key):
            return repr(key)  # `{1.5: 4.0}` names the label "1.5" (trial 49a: "no label name")
        if not isinstance(key, str):
            raise ValueError(
                f"transfer.head.class_weights: the key {key!r} is no label name; the keys are label names "
                "({rare: 4.0}), or give one weight per label in id order ([1.0, 4.0])"
            )
        return unicodedata.normalize("NFC", key).strip()

    @staticmethod
    def _weight(weight: object) -> float:
        if isinstance(weight, str):
            try:
                weight = float(weight)
            except ValueError:
                raise ValueError(f"transfer.head.class_weights: {weight!r} is not a number") from None
        if weight is None:  # `{rare:4}`: YAML reads one key `rare:4` with no value (trial 62d: "None is not a number")
            raise ValueError(
                "transfer.head.class_weights: a label with no weight; write each as `name: weight`, with a space "
                "after the colon ({rare: 4.0}: YAML reads `rare:4` as one key with no value)"
            )
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ValueError(f"transfer.head.class_weights: {weight!r} is not a number; weights are numbers (4.0)")
        low, high = CLASS_WEIGHT_RANGE
        if not low <= weight <= high:  # also inf and nan; float32 turns 1e39 into inf and 1e-46 into 0
            raise ValueError(
                f"transfer.head.class_weights: {weight:g} is not a weight from {low:g} to {high:g}; only their "
                "ratios matter (the loss is their weighted mean), so scale them into that range"
            )
        return float(weight)

    @model_validator(mode="after")
    def _labels(self) -> HeadConfig:
        if self.is_classification:
            if not self.labels and self.num_labels is None:
                raise ValueError(
                    f"transfer.head.type={self.type} needs transfer.head.labels (class names) or num_labels"
                )
            if self.labels and self.num_labels is not None and self.num_labels != len(self.labels):
                raise ValueError(
                    f"transfer.head.num_labels={self.num_labels} but transfer.head.labels has {len(self.labels)} names"
                )
            empty = [index for index, name in enumerate(self.labels) if not str(name).strip()]
            if empty:
                raise ValueError(f"transfer.head.labels[{empty[0]}] is an empty name; give every class a name")
            if len(set(self.labels)) != len(self.labels):
                twice = next(name for name in self.labels if self.labels.count(name) > 1)
                first, again = [i for i, name in enumerate(self.labels) if name == twice][:2]
                # Said of the repeat, so it is located at that entry's line (trial 57a: at transfer.head's).
                raise ValueError(
                    f"transfer.head.labels[{again}] is {twice!r}, as [{first}] is; class names must be unique: keep one"
                )
            if len(self.labels) == 1:
                # One class: every prediction is that class, the loss is 0 and nothing trains (and a
                # one-label config.json loads in transformers as a regression head).
                raise ValueError(
                    f"transfer.head.labels={self.labels!r} has one class; a classifier needs at least 2 (add the "
                    "other class names, e.g. the negative class)"
                )
        elif self.labels or self.num_labels is not None or self.dropout is not None:
            set_keys = [k for k in ("labels", "num_labels", "dropout") if getattr(self, k) not in (None, [])]
            raise ValueError(
                f"transfer.head.{'/'.join(set_keys)} apply to a classification head only (transfer.head.type is "
                f"{self.type}): set transfer.head.type (sequence_classification with data.format: classification, "
                "token_classification with data.format: token_classification, image_classification), or remove them"
            )
        if self.class_weights is not None:
            self._check_class_weights()
        return self

    def _check_class_weights(self) -> None:
        if self.type not in CLASSIFICATION_HEADS:
            raise ValueError(
                "transfer.head.class_weights applies to sequence_classification and image_classification heads; "
                f"this head is {self.type}"
            )
        if isinstance(self.class_weights, dict):
            names = self.label_names
            readings = {unicodedata.normalize("NFC", str(key)).strip(): key for key in self.class_weights}
            unknown = [key for reading, key in readings.items() if reading not in names]
            if unknown:
                close = difflib.get_close_matches(str(unknown[0]), names, n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                if str(unknown[0]).isdigit() and int(unknown[0]) < len(names):
                    # Data rows may give a label by id; these keys are names (trial 47b).
                    hint = f" (label id {unknown[0]} is {names[int(unknown[0])]!r}: the keys are label names)"
                raise ValueError(
                    f"transfer.head.class_weights names {unknown[0]!r}, which is not a label{hint}; labels: "
                    + ", ".join(names)
                )
        if isinstance(self.class_weights, list):
            count = len(self.label_names)
            if len(self.class_weights) != count:
                raise ValueError(
                    f"transfer.head.class_weights has {len(self.class_weights)} weights for {count} labels; give one "
                    "per label, in id order (or `balanced`)"
                )
            bad = [w for w in self.class_weights if not (w > 0 and w < float("inf"))]
            if bad:
                raise ValueError(f"transfer.head.class_weights must all be positive numbers; got {bad[0]}")


def is_bio_tag_set(names: list[str]) -> bool:
    """Every name is O or B-TYPE / I-TYPE, and there is at least one entity type."""
    return any(n != "O" for n in names) and all(n == "O" or (n[:2] in ("B-", "I-") and len(n) > 2) for n in names)


EarlyStoppingMetric = Literal["eval_loss", "accuracy", "macro_f1", "exact_match", "token_accuracy", "entity_f1"]


class EarlyStoppingConfig(Section):
    enabled: bool = Field(
        False, description="Stop when the metric has not improved for `patience` evaluations; final/ holds the best."
    )
    metric: EarlyStoppingMetric = Field(
        "eval_loss", description="Lower is better for eval_loss, higher for the others."
    )
    split: str = Field("validation", description="The evaluation set to watch: validation, or a data.mixture name.")
    patience: int = Field(3, ge=1, description="Evaluations in a row without improvement before stopping.")
    min_delta: float = Field(
        0.0, ge=0, description="An evaluation improves only if it beats the best by more than this."
    )

    @property
    def mode(self) -> str:
        return "min" if self.metric == "eval_loss" else "max"


class TransferConfig(Section):
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
