"""The model inventory cache: the same answer as building it, rebuilt for any other question or a
damaged entry, and never a reason for a run to fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.plan import inventory_build
from launcher.plan.catalogue import model_config_fields
from launcher.plan.inventory_build import build_inventory
from launcher.plan.inventory_cache import cached_inventory
from trainer.config import MethodConfig
from trainer.transfer.config import FreezeConfig

LORA = MethodConfig(type="lora")


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The questions that reached build_inventory (the cache misses)."""
    seen: list[str] = []

    def counting(label, fields, method, dtype, adapter_dtype=None, freeze=None):  # type: ignore[no-untyped-def]
        seen.append(f"{method.type}/{dtype}")
        return build_inventory(label, fields, method, dtype, adapter_dtype, freeze)

    monkeypatch.setattr(inventory_build, "build_inventory", counting)
    return seen


def test_a_hit_is_the_built_inventory_without_building_it(tmp_path: Path, builds: list[str]) -> None:
    label, fields = model_config_fields("llama-3.1-8b")
    first = cached_inventory(label, fields, LORA, "bfloat16", root=tmp_path)
    again = cached_inventory(label, fields, LORA, "bfloat16", root=tmp_path)
    assert builds == ["lora/bfloat16"]  # the second answer came from disk
    assert again == first == build_inventory(label, fields, LORA, "bfloat16")
    assert again.total(trainable=True) == 41_943_040  # PEFT's count for Llama 3 8B, r=16
    assert [p.name for p in tmp_path.iterdir()] == [next(tmp_path.glob("*.json")).name]  # no temporary left


def test_every_input_of_the_answer_is_part_of_the_question(tmp_path: Path, builds: list[str]) -> None:
    label, fields = model_config_fields("llama-3.1-8b")
    cached_inventory(label, fields, LORA, "bfloat16", root=tmp_path)
    cached_inventory(label, fields, MethodConfig(type="lora", lora={"r": 8}), "bfloat16", root=tmp_path)
    cached_inventory(label, fields, LORA, "float32", root=tmp_path)
    cached_inventory(label, fields, LORA, "bfloat16", "bfloat16", root=tmp_path)
    cached_inventory(label, {**fields, "num_hidden_layers": 2}, LORA, "bfloat16", root=tmp_path)
    cached_inventory(label, fields, LORA, "bfloat16", freeze=FreezeConfig(first_n_blocks=2), root=tmp_path)
    assert len(builds) == 6 and len(list(tmp_path.glob("*.json"))) == 6


def test_a_damaged_entry_is_rebuilt_not_trusted(tmp_path: Path, builds: list[str]) -> None:
    label, fields = model_config_fields("llama-3.1-8b")
    good = cached_inventory(label, fields, LORA, "bfloat16", root=tmp_path)
    (entry,) = tmp_path.glob("*.json")
    entry.write_text(entry.read_text()[:100])  # torn
    assert cached_inventory(label, fields, LORA, "bfloat16", root=tmp_path) == good
    assert len(builds) == 2
    assert cached_inventory(label, fields, LORA, "bfloat16", root=tmp_path) == good  # rewritten whole
    assert len(builds) == 2


def test_an_unwritable_cache_only_costs_time(tmp_path: Path, builds: list[str]) -> None:
    label, fields = model_config_fields("llama-3.1-8b")
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    inventory = cached_inventory(label, fields, LORA, "bfloat16", root=blocked / "inventory")
    assert inventory == build_inventory(label, fields, LORA, "bfloat16")
