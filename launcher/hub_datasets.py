"""Data values that name a Hugging Face Hub dataset, judged before anything starts (trial 56a: a
typo'd path without a slash or suffix, `data.train=trainset`, passed `ftl validate`; training then
started Ray, both workers retried the Hub five times, and it failed after 1.5 minutes)."""

from __future__ import annotations

import os
from pathlib import Path

from launcher.hub_cache import TRUE_VALUES, downloads_off
from launcher.local_paths import did_you_mean, looks_local, relative_to_cwd
from launcher.run_config import RunConfig

DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")  # a value ending so is a file, never a Hub name

HUB_ANSWER_S = 10.0


def data_values(cfg: RunConfig) -> list[tuple[str, str]]:
    """(key, value) of every dataset the config names."""
    values = [
        ("data.train", cfg.data.train),
        ("data.validation", cfg.data.validation),
        ("data.test", cfg.data.test),
        ("eval.retain", cfg.eval.retain),
    ]
    for index, source in enumerate(cfg.data.mixture):
        values += [
            (f"data.mixture[{index}].train", source.train),
            (f"data.mixture[{index}].validation", source.validation),
        ]
    return [(key, value) for key, value in values if value]


def hub_names(cfg: RunConfig) -> list[tuple[str, str]]:
    """The data values that are not local files or folders: the workers load them with
    datasets.load_dataset, from the cache or the Hub. (A missing path is check_inputs' to say.)"""
    return [
        (key, value)
        for key, value in data_values(cfg)
        if not looks_local(value) and not value.endswith(DATA_SUFFIXES) and not Path(value).exists()
    ]


def cached(name: str) -> bool:
    """Whether this machine's Hugging Face caches hold dataset `name` (downloaded, or prepared)."""
    from datasets import config as datasets_config
    from huggingface_hub import constants

    hub = Path(constants.HF_HUB_CACHE) / f"datasets--{name.replace('/', '--')}"
    prepared = Path(datasets_config.HF_DATASETS_CACHE) / name.replace("/", "___")
    return hub.is_dir() or prepared.is_dir()


def hub_dataset_problems(cfg: RunConfig, ask_the_hub: bool = True) -> list[str]:
    """Each data value that names a Hub dataset the workers could not load: not cached while
    downloads are off, or (asking the Hub once, for at most HUB_ANSWER_S) no such dataset there, or
    no answer from it. `ask_the_hub=False`: only what the cache and the environment say."""
    problems = []
    offline = downloads_off() or os.environ.get("HF_DATASETS_OFFLINE", "").strip().lower() in TRUE_VALUES
    for key, name in hub_names(cfg):
        if cached(name):
            continue
        head = f"{key}: {name!r} is not a local file or folder{did_you_mean(name)}{relative_to_cwd(name)}"
        if offline:
            problems.append(
                f"{head}, and no Hub dataset of that name is in the Hugging Face cache while downloads are off "
                "(HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set); check the path, or download the dataset once "
                "with downloads on"
            )
        elif ask_the_hub:
            answer = _hub_answer(name)
            if answer:
                problems.append(f"{head}, and as a Hub dataset name: {answer}; check the path or the name")
    return problems


def _hub_answer(name: str) -> str | None:
    """None when the Hub has dataset `name` (gated or private ones included); else what it said."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    try:
        HfApi().dataset_info(name, timeout=HUB_ANSWER_S)
    except GatedRepoError:
        return None  # it exists; the workers' token decides
    except (RepositoryNotFoundError, HFValidationError):
        return "the Hub has no dataset of that name (or it is private, and no token here may read it)"
    except Exception as exc:  # noqa: BLE001 - no network, a proxy, a timeout: the workers would fail alike
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"the Hub could not be reached ({type(exc).__name__}: {first[:200]})"
    return None
