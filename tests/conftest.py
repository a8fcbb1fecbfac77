"""Shared fixtures: the bundled model/data, a tinier random model for mechanics tests, configs."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster_fixtures import ray_cluster, s3_server, slurm  # noqa: F401

# The cluster fixtures are registered here, once: a session fixture imported into several test
# modules is a separate fixture in each (pytest keys fixtures by the module that holds them), and
# each module then started its own two-node Ray cluster and kept it until the session ended (four
# at once, found by their CPU use in a suite run). Test modules use them by name and never import
# them (check_cluster_fixtures_are_not_imported).
from trainer.dict_merge import deep_merged

REPO = Path(__file__).resolve().parent.parent
BUNDLED_MODEL = REPO / "assets" / "models" / "ftl-tiny-llama"
QA_DATA = REPO / "assets" / "data" / "fictional-qa"
FTL = [sys.executable, "-m", "launcher.cli"]


# Tests that start or use a Ray or Slurm cluster (or the S3 endpoint their runs write to). Under
# pytest-xdist (scripts/test.sh runs two processes) one process runs all of them, one after another:
# each holds a cluster of its own (the session fixtures are per process) and the Ray tests, run
# together, would fight over the machine's cores and Ray's per-machine state (/tmp/ray).
CLUSTER_FIXTURES = {"ray_cluster", "slurm", "s3_server"}
CLUSTER_BACKENDS = {"ray", "slurm"}


def uses_a_cluster(item: pytest.Item) -> bool:
    if item.get_closest_marker("cluster") or CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and any(
        isinstance(value, str) and value in CLUSTER_BACKENDS for value in callspec.params.values()
    )


def runs_only_on_slurm(item: pytest.Item) -> bool:
    """A Slurm test that starts no Ray: it takes the `slurm` fixture (by name or by a "slurm"
    parameter) and is not marked `starts_ray` (Slurm's ray mode, or a leg on ftl's own local Ray).
    These form a group of their own: Slurm jobs and Ray clusters share no per-machine state, and
    one process running every Ray and Slurm test in turn was the suite's critical path (1732 s of
    a 2013 s CI run, the other process idle at the end)."""
    if item.get_closest_marker("starts_ray") or uses_the_shared_ray_cluster(item):
        return False
    if "slurm" in getattr(item, "fixturenames", ()):
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and "slurm" in callspec.params.values()


def xdist_group_of(item: pytest.Item) -> str:
    if runs_only_on_slurm(item):
        return "slurm"
    return "clusters" if uses_a_cluster(item) else item.nodeid.split("::")[0]


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """xdist groups (used with --dist loadgroup): the Ray tests form one group and the Slurm-only
    tests another; every other test goes with its module, so a module's expensive module-scoped
    fixture (a reference training run, a built wheel) is built once, by one process (test_backends'
    golden run is the exception: its Slurm and Ray tests each build it, ~20 s)."""
    for item in items:
        item.add_marker(pytest.mark.xdist_group(xdist_group_of(item)))
    shared_ray_cluster_last(items)


def uses_the_shared_ray_cluster(item: pytest.Item) -> bool:
    """Whether a test uses the `ray_cluster` fixture, by name or by a "ray" parameter (the
    parametrised tests that take it with request.getfixturevalue; a "ray" test that starts ftl's
    own local Ray instead is moved later too, which costs nothing)."""
    if "ray_cluster" in getattr(item, "fixturenames", ()):
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and "ray" in callspec.params.values()


def shared_ray_cluster_last(items: list[pytest.Item]) -> None:
    """Reorder the cluster tests (in the places they hold, so the group starts where it did) so the
    two-node Ray cluster is started as late as it can be: modules that never use it first, then
    each module that does, its tests without the cluster before those with it. The cluster lives
    from its first user to the end of the session, and idle it takes ~9% of a core (measured: 5.3 s
    of CPU per minute), which every other cluster test ran beside. A module's tests stay together
    (its module-scoped fixtures are built once)."""
    positions = [index for index, item in enumerate(items) if uses_a_cluster(item)]
    cluster_items = [items[index] for index in positions]
    module_order = {item.nodeid.split("::")[0]: order for order, item in reversed(list(enumerate(cluster_items)))}
    with_ray = {item.nodeid.split("::")[0] for item in cluster_items if uses_the_shared_ray_cluster(item)}

    def key(item: pytest.Item) -> tuple[bool, int, bool]:
        module = item.nodeid.split("::")[0]
        return module in with_ray, module_order[module], uses_the_shared_ray_cluster(item)

    for index, item in zip(positions, sorted(cluster_items, key=key), strict=True):
        items[index] = item


def pytest_collection_finish(session: pytest.Session) -> None:
    check_cluster_fixtures_are_not_imported(session.items)
    # xdist carries a test's group in its node id ("...@group"); where a pytest release stops that
    # from taking effect (pytest-xdist#1386), the groups would be ignored without a word.
    grouping = hasattr(session.config, "workerinput") and session.config.getvalue("loadgroup")
    if grouping and session.items and "@" not in session.items[0].nodeid:
        raise pytest.UsageError("pytest-xdist ignored the test groups (pytest-xdist#1386): install pytest<9.2")


def check_cluster_fixtures_are_not_imported(items: list[pytest.Item]) -> None:
    modules = {item.module for item in items if getattr(item, "module", None) is not None}
    for module in sorted(modules, key=lambda m: m.__name__):
        imported = sorted(CLUSTER_FIXTURES & set(vars(module)))
        if imported:
            raise pytest.UsageError(
                f"{module.__file__} imports the cluster fixture(s) {imported}: use them by name only "
                "(tests/conftest.py registers them once; an import makes a second cluster)"
            )


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Tokenized-data cache per test session, so tests never read a stale cache from elsewhere.
    os.environ["FTL_CACHE_DIR"] = str(tmp_path_factory.mktemp("ftl-cache"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["HF_HUB_OFFLINE"] = "1"
    # DeepSpeed JIT-builds its CPU Adam once; keep the build in the repo-local cache so test
    # runs after the first reuse it (CI builds it once per run).
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    # Runs on the test Ray cluster (which ftl joins, so Ray's defaults apply) get the settings of a
    # local Ray started by ftl (cluster/ray_driver.py LOCAL_RAY_TRAIN_ENV): no test is about Ray's
    # own preemption watcher or metrics, which cost CPU per run, and the controller's 0.5 s checks
    # on the workers save ~5 s of waiting per run.
    from cluster.ray_driver import LOCAL_RAY_TRAIN_ENV

    for name, value in LOCAL_RAY_TRAIN_ENV.items():
        os.environ.setdefault(name, value)


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(BUNDLED_MODEL))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    """A 2-layer random Llama with the bundled tokenizer, saved and loaded like any HF model.

    Mechanics tests (packing, export, resume) need a real architecture, not a trained one;
    this keeps them fast."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-model")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def tiny_gemma3_config(**text: Any) -> Any:
    """A Gemma 3 of a few KB (a vision tower and a projector beside its language model): the
    multimodal model trained on text in test_multimodal_text_runs and test_text_only_parts.
    `text`: text_config fields over the tiny sizes (the tokenizer's vocabulary and special ids)."""
    from transformers import Gemma3Config

    sizes = {
        "vocab_size": 256,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
    }
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = Gemma3Config(text_config={**sizes, **text}, vision_config={**vision, "image_size": 28, "patch_size": 14})
    config.mm_tokens_per_image = 4
    return config


def write_config(path: Path, model_dir: Path, run_dir: Path, **sections: dict[str, Any]) -> Path:
    """A small, fast config on the bundled QA data; `sections` deep-merge over the defaults."""
    config: dict[str, Any] = {
        "model": {"path": str(model_dir)},
        "data": {
            "train": str(QA_DATA / "train.jsonl"),
            "validation": str(QA_DATA / "valid.jsonl"),
            "format": "chat",
            "max_seq_len": 128,
        },
        "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
        "training": {"max_steps": 6, "micro_batch_size": 4, "learning_rate": 5e-3, "progress_bar": False, "seed": 1},
        "eval": {"at_start": False, "max_samples": 16, "generation": {"enabled": False}},
        # The end-of-run report (plots) is checked by its own test; the others skip its cost.
        "output": {"dir": str(run_dir), "report": False},
        # In-process/local workers unless a test is about another backend: fast and no services.
        "cluster": {"backend": "local"},
    }
    for section, values in sections.items():
        config[section] = deep_merged(config.get(section, {}), values)
    if config["method"].get("type") == "full" and "lora" not in sections.get("method", {}):
        del config["method"]["lora"]  # a full fine-tune's config has no adapter settings (they are warned of)
    path.write_text(yaml.safe_dump(config))
    return path
