"""ftl as a user installs it: the wheel built from this checkout, installed (not editable) into a
fresh virtualenv and run from a directory outside the checkout. A file that ftl reads at run time
by a path into the source tree, instead of shipping it as package data, fails here.

Offline: the wheel is built without build isolation, and the fresh venv borrows the dependencies
(torch, transformers, pydantic, ...) of the environment running this test through a .pth file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import QA_DATA

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GOLDEN_SBATCH = REPO / "tests" / "golden" / "slurm_dry_run.sbatch"
# What the build reads: the project table (and its readme) and the packages; nothing else of the checkout.
BUILD_INPUTS = ("pyproject.toml", "README.md", "launcher", "cluster", "trainer")
# Files beside the modules that ftl opens at run time (pyproject.toml's package-data).
PACKAGE_DATA = ("launcher/plan/catalogue.json", "cluster/ftl.sbatch.template")


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (
        f"{' '.join(map(str, command))} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    )
    return out


def _user_env() -> dict[str, str]:
    """The environment minus anything that would put the checkout on the import path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["HF_HUB_OFFLINE"] = "1"
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy: setuptools builds in the source tree, and a stale build/ there would
    # ship files the checkout no longer has.
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, source / name)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--wheel-dir",
            tmp / "dist",
            source,
        ],
        cwd=tmp,
        env=_user_env(),
    )
    (built,) = (tmp / "dist").glob("ftl-*.whl")
    return built


@pytest.fixture(scope="module")
def user_venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    venv = tmp_path_factory.mktemp("user") / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=venv.parent, env=_user_env())
    python = venv / "bin" / "python"
    _run(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check", wheel],
        cwd=venv.parent,
        env=_user_env(),
    )
    # The dependencies come from the environment running this test; added after ftl is installed,
    # so pip never sees (nor touches) that environment, and ahead of it on sys.path stays the wheel.
    site = _run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=venv.parent
    ).stdout.strip()
    borrowed = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    Path(site, "zz-ftl-test-dependencies.pth").write_text("".join(f"{path}\n" for path in borrowed))
    return venv


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory outside the checkout, as a user's would be."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    assert REPO not in cwd.resolve().parents
    return cwd


def _user_config(path: Path, model_dir: Path, run_dir: Path) -> Path:
    """A user's own config: absolute paths to their model and data, nothing of the checkout's configs/."""
    path.write_text(
        f"model:\n  path: {model_dir}\n"
        f"data:\n  train: {QA_DATA / 'train.jsonl'}\n  validation: {QA_DATA / 'valid.jsonl'}\n  format: chat\n  max_seq_len: 128\n"
        "method:\n  type: lora\n  lora: {r: 8, alpha: 16, dropout: 0.0}\n"
        "training:\n  max_steps: 6\n  micro_batch_size: 4\n  learning_rate: 5.0e-3\n"
        f"output:\n  dir: {run_dir}\n"
    )
    return path


def test_the_wheel_ships_the_run_time_data_files(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [name for name in PACKAGE_DATA if name not in names]
    assert not missing, f"{wheel.name} lacks {missing}: add them to [tool.setuptools.package-data] in pyproject.toml"
    assert not [name for name in names if name.startswith(("tests/", "scripts/", "assets/", "configs/"))]


def test_installed_ftl_validates_plans_and_renders_the_sbatch_script_outside_the_checkout(
    user_venv: Path, elsewhere: Path, tiny_model_dir: Path
):
    python = user_venv / "bin" / "python"
    ftl = user_venv / "bin" / "ftl"
    env = _user_env()
    located = _run(
        [
            python,
            "-c",
            "import launcher.cli, cluster.slurm, trainer; "
            "print(launcher.cli.__file__, cluster.slurm.DEFAULT_TEMPLATE, trainer.__file__, sep='\\n')",
        ],
        cwd=elsewhere,
        env=env,
    ).stdout.split()
    site = Path(
        _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=elsewhere).stdout.strip()
    )
    for path in located:
        assert Path(path).is_relative_to(site), f"{path} is not the installed copy in {site}"

    config = _user_config(elsewhere / "my-run.yaml", tiny_model_dir, elsewhere / "runs" / "run")

    validated = _run([ftl, "validate", config.name], cwd=elsewhere, env=env)
    assert str(tiny_model_dir) in validated.stdout and "lora" in validated.stdout, validated.stdout

    # The same script as the checkout renders (tests/golden), with the installed package as the workdir.
    rendered = _run(
        [
            ftl,
            "slurm",
            config.name,
            "--dry-run",
            "--nodes",
            "2",
            "--time",
            "04:00:00",
            "--partition",
            "gpu",
            "--account",
            "proj1",
            "--gpus-per-node",
            "8",
            "--workers-per-node",
            "8",
            "output.dir=runs/run",
            "cluster.slurm.setup=[module load cuda]",
        ],
        cwd=elsewhere,
        env=env,
    ).stdout
    rendered = (
        rendered.replace(str(elsewhere.resolve() / "runs" / "run"), "RUN_DIR")
        .replace(str(python), "PYTHON")
        .replace(str(site.resolve()), "REPO")
    )
    assert rendered == GOLDEN_SBATCH.read_text()
    assert not (elsewhere / "runs").exists()  # a dry run writes nothing

    planned = _run([ftl, "plan", config.name, "--gpu", "H100"], cwd=elsewhere, env=env)
    assert "H100" in planned.stdout and "GiB" in planned.stdout, planned.stdout
    # A built-in architecture: read from the catalogue shipped as package data.
    catalogued = _run([ftl, "plan", config.name, "model.path=llama-3.2-1b", "--gpu", "H100"], cwd=elsewhere, env=env)
    assert "built-in catalogue" in catalogued.stdout, catalogued.stdout
