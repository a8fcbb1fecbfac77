"""The import contract: arrows point downward only, launcher -> cluster -> trainer.

Read from the source (every import statement, also those inside functions, and import_module
calls with a literal name), so an import that runs only on some path is caught too. The CLI
module itself imports nothing heavy, so `ftl --help` stays instant."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("launcher", "cluster", "trainer")
# What each package must never import (directly or from any of its modules).
FORBIDDEN = {"trainer": {"launcher", "cluster"}, "cluster": {"launcher"}, "launcher": set()}
HEAVY = ("torch", "transformers", "ray", "deepspeed")


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, the code of the dotted `module`."""
    found: list[tuple[int, str]] = []
    package = module.split(".")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: `from ..x import y` in a.b.c is a.x (a module's package is its parent)
                base = package[: len(package) - node.level]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.append((node.lineno, name))
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                getattr(node.func, "attr", None) == "import_module"
                or getattr(node.func, "id", None) in ("import_module", "__import__")
            )
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def layer_violations(root: Path) -> list[str]:
    problems = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            # An __init__ is its package: relative imports resolve from the package itself. (A relative
            # import never leaves its top-level package; resolved anyway, so every name is absolute.)
            anchor = module + ".__init__" if parts[-1] == "__init__" else module
            for line, name in imported_modules(path.read_text(), anchor):
                if name.split(".")[0] in FORBIDDEN[package]:
                    problems.append(f"{path.relative_to(root)}:{line}: {package} imports {name}")
    return problems


def test_arrows_point_downward_only() -> None:
    problems = layer_violations(REPO)
    assert not problems, (
        "launcher -> cluster -> trainer: trainer imports neither launcher nor cluster, cluster never "
        "imports launcher; move the shared piece down a layer instead:\n" + "\n".join(problems)
    )


def test_the_checker_sees_imports_inside_functions_relative_imports_and_import_module(tmp_path: Path) -> None:
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "trainer" / "loop.py").write_text(
        "import os\n\ndef run():\n    from cluster.worker import x\n    return x\n"
    )
    (tmp_path / "trainer" / "sub").mkdir()
    (tmp_path / "trainer" / "sub" / "__init__.py").write_text("from .helpers import y\nimport launcher.errors as e\n")
    (tmp_path / "cluster" / "ray.py").write_text("import importlib\nimportlib.import_module('launcher.cli')\n")
    (tmp_path / "launcher" / "cli.py").write_text("import cluster.local\nimport trainer.run\n")  # downward: fine

    assert layer_violations(tmp_path) == [
        "cluster/ray.py:2: cluster imports launcher.cli",
        "trainer/loop.py:4: trainer imports cluster.worker",
        "trainer/sub/__init__.py:2: trainer imports launcher.errors",
    ]


def test_relative_imports_resolve_against_the_package() -> None:
    assert imported_modules("from .catalogue import x\nfrom .. import errors\n", "launcher.plan.planner") == [
        (1, "launcher.plan.catalogue"),
        (2, "launcher"),
    ]
    assert imported_modules("from .memory import y\n", "launcher.plan.__init__") == [(1, "launcher.plan.memory")]


def test_the_cli_module_imports_nothing_heavy() -> None:
    """`ftl --help` is instant: building the parser imports no torch (nor Ray, transformers, DeepSpeed)."""
    code = (
        "import sys, launcher.cli; launcher.cli.build_parser(); "
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", (
        f"importing launcher.cli imported {out.stdout.strip()}: import it inside the verb that needs it"
    )


def test_the_fit_check_of_a_known_model_imports_nothing_heavy(tmp_path: Path) -> None:
    """Every `ftl train` plans its memory first (the fit check). With the model's inventory cached
    (any earlier launch or `ftl plan` of it) that is arithmetic: no torch, transformers or PEFT in
    the launcher (measured: a local 2-worker run's launcher 2.2 -> 0.3 s of CPU); its workers and
    the forkserver they come from import them."""
    from tests.conftest import BUNDLED_MODEL, write_config

    config = write_config(tmp_path / "c.yaml", BUNDLED_MODEL, tmp_path / "run", cluster={"workers": 2})
    code = (
        "import sys\n"
        "from launcher.config_loader import load_config\n"
        "from launcher.plan.command import check_fit\n"
        f"check_fit(load_config({str(config)!r}, []))\n"
        f"print(' '.join(m for m in {(*HEAVY, 'peft')!r} if m in sys.modules))\n"
    )
    env = {**os.environ, "FTL_CACHE_DIR": str(tmp_path / "cache")}
    first, second = (
        subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
        for _ in range(2)
    )
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "torch" in first.stdout.split()  # the first builds the inventory on the meta device
    assert "fit check:" in second.stderr, second.stderr
    assert second.stdout.strip() == "", f"the fit check with a cached inventory imported {second.stdout.strip()}"
