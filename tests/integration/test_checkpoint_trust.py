"""Checkpoints of the `dcp` (FSDP2) and `deepspeed` (ZeRO) layouts are pickles underneath. Nothing in
them runs: a file altered after the commit is refused by its manifest before anything is read
(`ftl export --checkpoint`, `checkpoint.resume=PATH`), and a file whose manifest was rewritten to
match is still read only as tensors and plain state (DCP's metadata by a restricted unpickler,
DeepSpeed's torch.load forced to weights_only), on export, resume and the universal conversion.

The payload would create a file if it ever ran; every test asserts that file never appears."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import FTL, REPO, write_config
from trainer.checkpointing.digests import ALGORITHM, file_digest

pytestmark = pytest.mark.integration

LAYOUTS = {
    # layout -> (parallel section, a pickle file inside the checkpoint that every load reads)
    "dcp": ({"strategy": "fsdp"}, "state/.metadata"),
    "deepspeed": ({"strategy": "deepspeed", "zero_stage": 2}, "ds/mp_rank_00_model_states.pt"),
}


class _Payload:
    """Unpickling this runs `touch MARKER`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def _config(tmp_path: Path, name: str, model_dir: Path, parallel: dict, **checkpoint: object) -> Path:
    return write_config(
        tmp_path / f"{name}.yaml",
        model_dir,
        tmp_path / name,
        parallel=parallel,
        training={"max_steps": 1, "micro_batch_size": 2},
        eval={"max_samples": 4},
        checkpoint={"every_steps": 1, **checkpoint},
        cluster={"workers": 1},
    )


def _ftl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FTL, *args], cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def trained(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> tuple[str, Path]:
    """A run of one step with one checkpoint (step-1) in this layout."""
    layout = request.param
    tmp = tmp_path_factory.mktemp(f"trust-{layout}")
    done = _ftl("train", str(_config(tmp, "run", tiny_model_dir, LAYOUTS[layout][0])))
    assert done.returncode == 0, done.stderr[-3000:]
    return layout, tmp / "run"


def _poisoned_copy(trained: tuple[str, Path], tmp_path: Path, *, fix_manifest: bool) -> tuple[Path, Path, Path]:
    """(run copy, its step-1 checkpoint, marker): one pickle file of the checkpoint replaced by the
    payload; with `fix_manifest` its manifest entry is rewritten to match (size and checksum)."""
    layout, run = trained
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    checkpoint = copy / "checkpoints" / "step-1"
    marker = tmp_path / "PWNED"
    name = LAYOUTS[layout][1]
    if name.endswith(".pt"):
        torch.save({"module": _Payload(marker)}, checkpoint / name)  # a real torch.save archive
    else:
        (checkpoint / name).write_bytes(pickle.dumps(_Payload(marker)))
    if fix_manifest:
        manifest = json.loads((checkpoint / "manifest.json").read_text())
        manifest["files"][name] = {
            "bytes": (checkpoint / name).stat().st_size,
            ALGORITHM: file_digest(checkpoint / name),
        }
        (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    return copy, checkpoint, marker


def _resume_from(
    checkpoint: Path, trained: tuple[str, Path], tmp_path: Path, model_dir: Path
) -> subprocess.CompletedProcess[str]:
    layout, _ = trained
    config = _config(tmp_path, "resumed", model_dir, LAYOUTS[layout][0], resume=str(checkpoint))
    return _ftl("train", str(config), "training.max_steps=2")


def test_a_checkpoint_altered_after_its_commit_is_refused_before_any_load(trained, tmp_path, tiny_model_dir):
    run, checkpoint, marker = _poisoned_copy(trained, tmp_path, fix_manifest=False)
    exported = _ftl("export", str(run), "--checkpoint", str(checkpoint))
    assert exported.returncode == 2, exported.stderr[-3000:]
    mismatch = re.compile(r"(checksum mismatch|has \d+ bytes, manifest says \d+)")
    assert f"checkpoint {checkpoint}" in exported.stderr and mismatch.search(exported.stderr), exported.stderr[-3000:]
    resumed = _resume_from(checkpoint, trained, tmp_path, tiny_model_dir)
    assert resumed.returncode == 2, resumed.stderr[-3000:]
    assert str(checkpoint) in resumed.stderr and mismatch.search(resumed.stderr), resumed.stderr[-3000:]
    assert not marker.exists()


def test_a_pickle_payload_with_a_matching_manifest_is_refused(trained, tmp_path, tiny_model_dir):
    run, checkpoint, marker = _poisoned_copy(trained, tmp_path, fix_manifest=True)
    exported = _ftl("export", str(run), "--checkpoint", str(checkpoint))
    assert not marker.exists(), "the payload ran"
    assert exported.returncode == 2, exported.stderr[-3000:]
    assert f"checkpoint {checkpoint}" in exported.stderr and "refused to load" in exported.stderr, exported.stderr[
        -3000:
    ]
    resumed = _resume_from(checkpoint, trained, tmp_path, tiny_model_dir)
    assert not marker.exists(), "the payload ran"
    assert resumed.returncode == 2, resumed.stderr[-3000:]
    assert "refused to load" in resumed.stderr and str(checkpoint) in resumed.stderr, resumed.stderr[-3000:]
    assert not marker.exists()
    if trained[0] == "deepspeed":  # another worker count reads the checkpoint through the universal conversion
        from trainer.checkpointing.universal import prepare_universal
        from trainer.errors import TrainerInputError

        with pytest.raises(TrainerInputError, match="refused to load"):
            prepare_universal(checkpoint, tmp_path / "other", rank=0)
        assert not marker.exists()


@pytest.mark.parametrize("trained", ["deepspeed"], indirect=True)  # universal copies exist for ZeRO only
def test_a_damaged_universal_copy_is_converted_again_not_loaded(trained, tmp_path):
    """The universal copy (ZeRO on another worker count) is ftl's own derived file; it is reused
    only while its manifest matches."""
    from trainer.checkpointing.protocol import validate_checkpoint
    from trainer.checkpointing.universal import prepare_universal

    checkpoint = trained[1] / "checkpoints" / "step-1"
    copy = prepare_universal(checkpoint, tmp_path, rank=0)
    assert validate_checkpoint(copy) is None
    state = next(copy.rglob("fp32.pt"))
    good = state.read_bytes()
    state.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # same size, one bit flipped
    assert prepare_universal(checkpoint, tmp_path, rank=0) == copy
    assert state.read_bytes() == good and validate_checkpoint(copy) is None


def test_early_stopping_restores_the_best_checkpoint_only_if_it_matches_its_manifest(tmp_path):
    """At the end of an early-stopped run every rank loads the best checkpoint: verified first."""
    from types import SimpleNamespace

    from safetensors.torch import save_file

    from trainer.checkpointing.layouts import TRAINABLE_FILE
    from trainer.checkpointing.protocol import write_manifest
    from trainer.errors import TrainerInputError
    from trainer.transfer.controller import TransferController

    checkpoint = tmp_path / "checkpoints" / "step-1"
    checkpoint.mkdir(parents=True)
    save_file({"weight": torch.ones(2, 2), "bias": torch.ones(2)}, str(checkpoint / TRAINABLE_FILE))
    write_manifest(checkpoint, {"layout": "replicated"}, {TRAINABLE_FILE: file_digest(checkpoint / TRAINABLE_FILE)})
    data = (checkpoint / TRAINABLE_FILE).read_bytes()
    (checkpoint / TRAINABLE_FILE).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # a flipped bit in the bias
    controller = TransferController.__new__(TransferController)  # only the early-stopping state matters here
    controller.early = SimpleNamespace(best_step=1, best=0.5, best_dir=None)
    controller.cfg = SimpleNamespace(transfer=SimpleNamespace(early_stopping=SimpleNamespace(metric="eval_loss")))
    with pytest.raises(TrainerInputError, match=r"step-1 cannot be loaded: trainable.safetensors checksum mismatch"):
        controller.restore_best(torch.nn.Linear(2, 2), tmp_path, 2, lambda: torch.nn.Linear(2, 2))
