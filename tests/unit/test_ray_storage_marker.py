"""Ray Train's storage probe is removed from the run directory when a Ray launch ends (trial 50b:
a failed start left `.validate_storage_marker` beside the run's files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from cluster.run_storage import RAY_STORAGE_MARKER, drop_ray_storage_marker


def test_the_marker_is_ray_trains_own_name() -> None:
    from ray.train.v2._internal.constants import VALIDATE_STORAGE_MARKER_FILENAME

    assert RAY_STORAGE_MARKER == VALIDATE_STORAGE_MARKER_FILENAME


def test_the_marker_is_removed_and_nothing_else(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / RAY_STORAGE_MARKER).write_bytes(b"")
    (run / "config.yaml").write_text("kept")
    drop_ray_storage_marker(pafs.LocalFileSystem(), str(run))
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]
    drop_ray_storage_marker(pafs.LocalFileSystem(), str(run))  # none there: nothing to do


def test_a_storage_that_refuses_the_removal_does_not_fail_the_end_of_the_launch(tmp_path: Path) -> None:
    class Refusing:
        def get_file_info(self, path: str) -> Any:
            return pafs.LocalFileSystem().get_file_info(path)

        def delete_file(self, path: str) -> None:
            raise OSError(30, "Read-only file system")

    (tmp_path / RAY_STORAGE_MARKER).write_bytes(b"")
    drop_ray_storage_marker(Refusing(), str(tmp_path))  # logged, not raised: the run's own error comes first
    assert (tmp_path / RAY_STORAGE_MARKER).exists()
