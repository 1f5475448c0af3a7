"""The layering of ARCHITECTURE.md holds: import-linter's contracts in pyproject.toml, on the real import graph.

Each contract is also shown to break: a copy of the packages with one forbidden import added fails it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("servable", "models", "export", "service", "benchmarks")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
#: Hand-written modules stay readable in one sitting; generated protobuf code is not read by people.
MAX_MODULE_LINES = 400
GENERATED = ("_pb2.py", "_pb2.pyi")

#: (contract name as pyproject.toml gives it, a module, the import that breaks it)
VIOLATIONS = [
    ("the contract package imports nothing of ours", "servable/card.py", "import service.errors"),
    ("serving never imports models/, export/ or torch", "service/doors/predict.py", "import torch"),
    ("serving never imports models/, export/ or torch", "service/engine/runtime.py", "import models"),
    ("export/ never imports the service", "export/publish.py", "import service.settings"),
    ("models/ knows nothing of ONNX, HTTP or export", "models/factory.py", "import onnx"),
    ("the parent of the worker processes loads no model and serves nothing", "service/workers/supervisor.py",
     "import service.app"),
    ("inside the service: doors, then the pipeline, then the engine, then limits", "service/engine/batcher.py",
     "import service.pipeline.core"),
]


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    if not LINT_IMPORTS.exists():
        pytest.skip(f"{LINT_IMPORTS} is absent: install the test extra (pip install -e '.[test]')")
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root, capture_output=True, text=True, timeout=300,
        env={"PATH": str(LINT_IMPORTS.parent), "PYTHONPATH": str(root), "NO_COLOR": "1"},
    )


def test_every_import_contract_is_kept() -> None:
    result = lint_imports(REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.fixture(scope="module")
def packages_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packages and pyproject.toml copied, for breaking one rule at a time."""
    root = tmp_path_factory.mktemp("layering")
    shutil.copy(REPO_ROOT / "pyproject.toml", root)
    for package in PACKAGES:
        shutil.copytree(REPO_ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.mark.parametrize(("contract", "module", "statement"), VIOLATIONS, ids=[f"{m}: {s}" for _, m, s in VIOLATIONS])
def test_a_forbidden_import_breaks_its_contract(packages_copy: Path, contract: str, module: str, statement: str) -> None:
    path = packages_copy / module
    original = path.read_text()
    path.write_text(f"{original}\n{statement}  # the violation under test\n")
    try:
        result = lint_imports(packages_copy)
    finally:
        path.write_text(original)
    assert result.returncode != 0
    assert f"{contract} BROKEN" in result.stdout, result.stdout


def hand_written_modules() -> list[Path]:
    return sorted(
        path for folder in (*PACKAGES, "tests") for path in (REPO_ROOT / folder).rglob("*.py")
        if not path.name.endswith(GENERATED) and "__pycache__" not in path.parts
    )


def test_no_hand_written_module_is_longer_than_a_sitting() -> None:
    long = {str(p.relative_to(REPO_ROOT)): n for p in hand_written_modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"split these by job (at most {MAX_MODULE_LINES} lines): {long}"
