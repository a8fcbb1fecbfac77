"""Evaluation: mean loss on answer tokens, and exact-match of greedy generations."""

from __future__ import annotations

import math
import string
import unicodedata
from typing import Any

import torch

from trainer.config import LossConfig
from trainer.data.batches import RowDataset, make_batch
from trainer.data.formats import Prompt
from trainer.data.prepare import EvalSet
from trainer.distributed import all_gather_object, all_reduce_sum
from trainer.loss import loss_sum
from trainer.sequence_length import learned_position_limit
from trainer.strategies.base import Strategy


def lockstep_batches(count: int, batch_size: int, rank: int, world: int, collective: bool) -> list[list[int] | None]:
    """This rank's share of `count` items in batches. When forward passes are collectives
    (sharded models), every rank gets the same number of batches; None marks a filler batch
    the rank runs only to keep step with the others."""
    batches: list[list[int] | None] = []
    for start in range(0, count, batch_size * world):
        mine = list(range(start + rank * batch_size, min(count, start + (rank + 1) * batch_size)))
        if mine:
            batches.append(mine)
        elif collective:
            batches.append(None)
    return batches


@torch.no_grad()
def eval_loss(
    model: torch.nn.Module,
    eval_set: EvalSet,
    batch_size: int,
    pad_id: int,
    strategy: Strategy,
    max_samples: int | None,
    settings: LossConfig | None = None,
) -> float:
    """Mean loss per label token; `settings` = training.loss, so evaluation computes it as training does."""
    count = min(len(eval_set.examples), max_samples or len(eval_set.examples))
    rows = RowDataset(eval_set.examples, [[i] for i in range(count)], packed=False)
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for indices in lockstep_batches(
        count, batch_size, strategy.rank, strategy.world_size, strategy.forward_is_collective
    ):
        batch = make_batch(rows, indices or [0], pad_id)
        summed, n = loss_sum(model, {k: v.to(strategy.device) for k, v in batch.items()}, settings)
        if indices is not None:
            total += float(summed)
            tokens += n
    model.train(was_training)
    summed_loss, token_count = all_reduce_sum([total, float(tokens)], strategy.device)
    return summed_loss / max(token_count, 1)


def normalize_answer(text: str, normalized: bool = False) -> str:
    """The answer as exact match compares it: whitespace runs and the ends aside; `normalized`
    (eval.generation.match) also case, punctuation and the English articles, as SQuAD scores
    (trial 64b: "15." against "15" was a miss, with nothing to change that)."""
    if normalized:
        # SQuAD's order: lower case, punctuation deleted (not spaced: "1,000" is "1000", "U.S." is "US"),
        # articles dropped, whitespace collapsed; Unicode punctuation too ("«», —").
        text = "".join(c for c in text.casefold() if c not in string.punctuation and unicodedata.category(c)[0] != "P")
        return " ".join(word for word in text.split() if word not in ("a", "an", "the"))
    return " ".join(text.strip().split())


@torch.no_grad()
def generate_texts(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    max_new_tokens: int,
    batch_size: int,
    device: str,
    synced: bool = False,
    position_limit: int | None = None,
    **sampling: Any,
) -> list[str]:
    """Greedy (or sampled) continuations of token-id prompts, left-padded in batches.

    `synced` keeps every rank generating until all are done (sharded models run collectives
    in each forward). `position_limit`: prompt and continuation stop there (`ftl generate` gives
    the model's max_position_embeddings, past which a rotary model answers noise)."""
    was_training = model.training
    model.eval()
    pad_id = tokenizer.pad_token_id
    outputs: list[str] = []
    eos_ids = _stop_ids(model, tokenizer)
    # A learned position table has no row past its end (an IndexError deep in the model): the
    # continuation stops there. Prompts fit it (exact match leaves out rows longer than max_seq_len).
    limits = [limit for limit in (learned_position_limit(model), position_limit) if limit is not None]
    positions = min(limits) if limits else None
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        new_tokens = max_new_tokens if positions is None else max(1, min(max_new_tokens, positions - width))
        budgets = [new_tokens if positions is None else max(1, min(max_new_tokens, positions - len(p))) for p in chunk]
        if len(set(budgets)) > 1 and not synced:
            # The batch's longest prompt leaves the others less room than their own length does
            # (trial 42a: a reply cut to 2 tokens beside a long prompt): prompts with the same room
            # are batched together, as unbatched generation would answer each (trial 43a: not all
            # one by one when only a few are long).
            texts: dict[int, str] = {}
            for budget in sorted(set(budgets), reverse=True):
                rows = [i for i, own in enumerate(budgets) if own == budget]
                answers = generate_texts(
                    model,
                    tokenizer,
                    [chunk[i] for i in rows],
                    max_new_tokens,
                    len(rows),
                    device,
                    position_limit=position_limit,
                    **sampling,
                )
                texts.update(zip(rows, answers))
            outputs += [texts[i] for i in range(len(chunk))]
            continue
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, ids in enumerate(chunk):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
        generated = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            max_new_tokens=new_tokens,
            eos_token_id=eos_ids,
            pad_token_id=pad_id,
            use_cache=True,
            **({"synced_gpus": True} if synced else {}),
            **({"do_sample": False} if not sampling else sampling),
        )
        for row in generated[:, width:]:
            outputs.append(tokenizer.decode(row, skip_special_tokens=True))
    model.train(was_training)
    return outputs


def answers_past_new_tokens(evals: list[Any], tokenizer: Any, max_new_tokens: int) -> str | None:
    """Reference answers longer than eval.generation.max_new_tokens, which no generation can match
    (trial 64b: max_new_tokens 1 against 2-token answers scored 0.0% -> 0.0% without a word)."""
    said = []
    for eval_set in evals:
        prompts = getattr(eval_set, "prompts", None) or []
        longer = [len(tokenizer.encode(p.reference, add_special_tokens=False)) for p in prompts]
        longer = [n for n in longer if n > max_new_tokens]
        if longer:
            said.append(f"{eval_set.name}: {len(longer)} of {len(prompts)} (up to {max(longer)} tokens)")
    if not said:
        return None
    return (
        f"reference answers longer than eval.generation.max_new_tokens={max_new_tokens} tokens can never be an "
        f"exact match: {'; '.join(said)}; raise eval.generation.max_new_tokens"
    )


SAMPLES = 3  # generated answers kept with each evaluation record (and shown on the console)


def exact_match(
    model: Any,
    tokenizer: Any,
    prompts: list[Prompt],
    max_new_tokens: int,
    batch_size: int,
    strategy: Strategy,
    normalized: bool = False,
) -> tuple[float, list[dict[str, str]]]:
    hits, own = 0, list[tuple[int, dict[str, str]]]()
    collective = strategy.forward_is_collective
    for indices in lockstep_batches(len(prompts), batch_size, strategy.rank, strategy.world_size, collective):
        chunk = [prompts[i] for i in (indices or [0])]
        texts = generate_texts(
            model,
            tokenizer,
            [p.input_ids for p in chunk],
            max_new_tokens,
            len(chunk),
            strategy.device,
            synced=collective,
        )
        if indices is None:
            continue
        hits += sum(
            normalize_answer(t, normalized) == normalize_answer(p.reference, normalized) for t, p in zip(texts, chunk)
        )
        own.extend((i, {"reference": p.reference, "generated": t}) for i, p, t in zip(indices, chunk, texts))
    (total_hits,) = all_reduce_sum([float(hits)], strategy.device)
    # The set's first SAMPLES prompts, whichever rank generated them (trial 40b: on 2 workers rank 0's
    # share alone was shown, 2 samples of 3).
    gathered = [pair for share in all_gather_object(sorted(own)[:SAMPLES]) for pair in share]
    samples = [sample for _, sample in sorted(gathered, key=lambda pair: pair[0])[:SAMPLES]]
    return (total_hits / len(prompts) if prompts else math.nan), samples


def _stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """EOS, the generation config's stop ids, and the chat template's end-of-turn token.

    Many base models' generation configs stop only at EOS, while their chat template closes an
    assistant turn with another special token (<|eot_id|>, <|im_end|>, ...); stopping at it keeps
    a fine-tuned chat model from running on into a new turn.
    """
    ids: set[int] = set()
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(config_eos, int):
        ids.add(config_eos)
    elif isinstance(config_eos, list):
        ids.update(config_eos)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    end_of_turn = chat_end_of_turn_id(tokenizer)
    if end_of_turn is not None:
        ids.add(end_of_turn)
    return sorted(ids)


def chat_end_of_turn_id(tokenizer: Any) -> int | None:
    """The first special token the chat template puts after an assistant message's content."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    marker = "ftl-end-of-turn-probe"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}], tokenize=False
        )
    except Exception:  # templates may reject unusual conversations; then we simply do not know
        return None
    tail = text[text.rfind(marker) + len(marker) :]
    specials = set(tokenizer.all_special_ids)
    for token in tokenizer(tail, add_special_tokens=False)["input_ids"]:
        if token in specials:
            return token
    return None
