"""Turn rows (one example, or several packed ones) into model batches, and order them by epoch.

The sampler is indexed by the global sample index (trainer/data/sampler.py), so the data position
is a single integer: a resumed run continues exactly where it stopped, without replaying or
skipping batches.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainer.data.mixture import MixtureSpan
from trainer.data.mixture_resume import first_segment, segment_sampler
from trainer.data.sampler import GlobalSampler, RowSampler
from trainer.data.tokenized import TokenizedSet
from trainer.data.word_tags import IGNORE_INDEX  # noqa: F401  (re-exported: the loss ignores this label)


@dataclass
class RowDataset:
    """Training rows over a tokenized set: each row is a list of example indices."""

    examples: TokenizedSet
    rows: list[list[int]]
    packed: bool
    mixture: list[MixtureSpan] | None = None  # one per source when training on a data.mixture
    # Preference data: each row is [chosen, rejected] of one pair, and becomes two sequences of the
    # batch (all chosen first, then all rejected), so a pair never straddles micro-batches or workers.
    pairs: bool = False
    # transfer.head.class_weights resolved (one per class), training rows only: each classified
    # example's loss is weighted by its class's (evaluation sets keep None: their loss unweighted).
    class_weights: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def sampler(self, seed: int, shuffle: bool, mixture_segment: dict[str, Any] | None = None) -> RowSampler:
        """The row order of training: one seeded stream over all rows, or a weighted mixture (drawn
        by `mixture_segment`, the loop state's, when a resume changed the weights)."""
        if self.mixture:
            return segment_sampler(self.mixture, seed, shuffle, mixture_segment or first_segment(self.mixture))
        return GlobalSampler(len(self.rows), seed, shuffle)

    def row_tokens(self, row: int) -> int:
        return int(sum(len(self.examples.example(i)[0]) for i in self.rows[row]))


def rows_fingerprint(dataset: RowDataset) -> str:
    """A digest of the training rows as the loop sees them: every example's tokens and loss mask,
    and how examples form rows (packing). ~1 GB/s: a second per gigabyte of tokens, once a start."""
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    examples = dataset.examples
    for array in (examples.ids, examples.mask, examples.offsets):
        digest.update(np.ascontiguousarray(array).data)
    for extra in (examples.classes, examples.token_labels):
        if extra is not None:
            digest.update(np.ascontiguousarray(extra).data)
    digest.update(np.asarray([len(row) for row in dataset.rows], dtype=np.int64).data)
    digest.update(np.asarray([i for row in dataset.rows for i in row], dtype=np.int64).data)
    return digest.hexdigest()


def make_batch(
    dataset: RowDataset, row_indices: list[int], pad_id: int, sample_positions: Iterable[int] | None = None
) -> dict[str, torch.Tensor]:
    """Right-padded batch. Packed rows carry restarting position ids and no 2-D mask (so the
    model builds the block-diagonal mask); unpacked rows carry an attention mask and no positions. Preference rows
    give 2 * len(row_indices) sequences: the chosen responses, then the rejected ones in the same order.
    `sample_positions`: the rows' global positions in the training stream (training only), which seed
    image augmentation."""
    if dataset.examples.images is not None:
        return _image_batch(dataset, row_indices, sample_positions)
    if dataset.pairs:
        sequences = [dataset.rows[row][:1] for row in row_indices] + [dataset.rows[row][1:] for row in row_indices]
    else:
        sequences = [dataset.rows[row] for row in row_indices]
    seqs, masks, positions = [], [], []
    for examples in sequences:
        ids_parts, mask_parts, pos_parts = [], [], []
        for example in examples:
            ids, loss_mask = dataset.examples.example(example)
            ids_parts.append(ids)
            mask_parts.append(loss_mask)
            pos_parts.append(np.arange(len(ids)))
        seqs.append(np.concatenate(ids_parts))
        masks.append(np.concatenate(mask_parts))
        positions.append(np.concatenate(pos_parts))
    width = max(len(s) for s in seqs)
    batch = len(seqs)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((batch, width), dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    for b, (ids, loss_mask, pos) in enumerate(zip(seqs, masks, positions)):
        n = len(ids)
        ids_t = torch.from_numpy(ids.astype(np.int64))
        input_ids[b, :n] = ids_t
        labels[b, :n] = torch.where(torch.from_numpy(loss_mask.astype(bool)), ids_t, IGNORE_INDEX)
        position_ids[b, :n] = torch.from_numpy(pos)
        # Padding continues the position count of a new pseudo-sequence so it never joins a real one.
        position_ids[b, n:] = torch.arange(width - n)
        attention_mask[b, :n] = 1
    out = {"input_ids": input_ids, "labels": labels, "num_tokens": torch.tensor(int(attention_mask.sum()))}
    if dataset.packed:
        out["position_ids"] = position_ids
    else:
        # No position ids: the model numbers an unpadded row's tokens itself, as it will outside ftl
        # (a decoder from 0, the same as ours; RoBERTa-family encoders from their padding index + 1,
        # where 0..n-1 trained rows of the position table the exported model never uses).
        out["attention_mask"] = attention_mask
    if dataset.pairs:
        out["pairs"] = torch.tensor(len(row_indices))
        out["pair_rows"] = torch.tensor(row_indices, dtype=torch.long)  # looks up precomputed reference log-probs
    if dataset.examples.token_labels is not None:
        # Token classification (never packed): a tag per token, IGNORE_INDEX on unscored tokens and padding.
        tags = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
        for b, row in enumerate(row_indices):
            own = dataset.examples.token_labels_of(dataset.rows[row][0])
            tags[b, : len(own)] = torch.from_numpy(own.astype(np.int64))
        out["token_labels"] = tags
    if dataset.examples.classes is not None:
        # Classification rows hold one example each (packing is refused for them).
        out["class_labels"] = torch.tensor([int(dataset.examples.classes[dataset.rows[r][0]]) for r in row_indices])
        _add_example_weights(out, dataset)
    return out


def _add_example_weights(batch: dict[str, torch.Tensor], dataset: RowDataset) -> None:
    if dataset.class_weights is not None:
        batch["example_weights"] = torch.from_numpy(dataset.class_weights[batch["class_labels"].numpy()]).float()


def _image_batch(
    dataset: RowDataset, row_indices: list[int], positions: Iterable[int] | None
) -> dict[str, torch.Tensor]:
    """pixel_values from the model's image processor (augmented when positions are given) and the class ids."""
    images = dataset.examples.images
    assert images is not None and dataset.examples.classes is not None
    examples = [dataset.rows[row][0] for row in row_indices]  # one image per row (never packed)
    batch = {
        "pixel_values": images.pixel_values(examples, positions),
        "class_labels": torch.tensor([int(dataset.examples.classes[e]) for e in examples]),
        "num_tokens": torch.tensor(len(examples)),  # throughput counts images
    }
    _add_example_weights(batch, dataset)
    return batch
