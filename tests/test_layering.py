"""The architecture's import rules, checked by walking the source's AST (see shared design/architecture.md)."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("agent", "quantum", "model", "policies")
# Which of our packages each package may import.
ALLOWED_OURS = {"agent": set(OURS), "quantum": set(), "model": {"quantum"}, "policies": set()}
SIDE_EFFECT_LIBS = ("sqlmodel", "sqlalchemy", "apscheduler", "prometheus_client")
BACKEND_LIBS = ("qsimcirq", "cirq_google", "cirq_ionq", "pyqpanda3", "pyqpanda")


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    imported: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: imports {self.imported} ({self.rule})"


def _imported_modules(tree: ast.AST, module_parts: list[str]) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the importing module's package
                base = module_parts[: len(module_parts) - node.level]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


def check_layering(root: Path) -> list[Violation]:
    """Every forbidden import in the packages under ``root``."""
    violations = []
    for package in OURS:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root)
            module_parts = list(rel.with_suffix("").parts)
            if module_parts[-1] == "__init__":
                module_parts = module_parts[:-1] + ["__init__"]
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            is_backend = package == "quantum" and len(rel.parts) > 1 and rel.parts[1].startswith("backends")
            for line, name in _imported_modules(tree, module_parts):
                top = name.split(".")[0]
                if top in OURS and top != package and top not in ALLOWED_OURS[package]:
                    violations.append(Violation(str(rel), line, name, f"{package}/ may not import {top}/"))
                if top in SIDE_EFFECT_LIBS and package != "agent":
                    violations.append(Violation(str(rel), line, name, f"only agent/ may import {top}"))
                if top in BACKEND_LIBS and not is_backend:
                    violations.append(Violation(str(rel), line, name, f"only quantum/backends* may import {top}"))
    return violations


def test_project_respects_layering() -> None:
    violations = check_layering(ROOT)
    assert not violations, "forbidden imports:\n" + "\n".join(map(str, violations))


def _tree(root: Path, files: dict[str, str]) -> Path:
    for package in OURS:
        (root / package).mkdir(parents=True, exist_ok=True)
        (root / package / "__init__.py").touch()
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize(
    ("rel", "source", "rule"),
    [
        ("quantum/sim.py", "import model.lm\n", "quantum/ may not import model/"),
        ("quantum/sim.py", "from agent import store\n", "quantum/ may not import agent/"),
        ("model/lm.py", "from policies.trigger import decide\n", "model/ may not import policies/"),
        ("policies/trigger.py", "from quantum import circuits\n", "policies/ may not import quantum/"),
        ("policies/trigger.py", "from ..model import lm\n", "policies/ may not import model/"),
        ("model/train.py", "import sqlmodel\n", "only agent/ may import sqlmodel"),
        ("policies/x.py", "from prometheus_client import Counter\n", "only agent/ may import prometheus_client"),
        ("quantum/jaxsim.py", "import qsimcirq\n", "only quantum/backends* may import qsimcirq"),
        ("model/x.py", "def f():\n    import apscheduler\n", "only agent/ may import apscheduler"),
    ],
)
def test_checker_catches_forbidden_import(tmp_path: Path, rel: str, source: str, rule: str) -> None:
    root = _tree(tmp_path, {rel: source})
    violations = check_layering(root)
    assert [v.rule for v in violations] == [rule]
    assert violations[0].path == rel


def test_checker_accepts_allowed_imports(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "model/qtha.py": "from quantum import circuits\nimport jax\n",
            "quantum/backends/qsim.py": "import qsimcirq\n",
            "quantum/backends_sampler.py": "import cirq_google\n",
            "agent/store.py": "import sqlmodel\nfrom model import lm\nfrom policies import trigger\n",
            "policies/trigger.py": "from . import _math\nimport numpy\n",
        },
    )
    assert check_layering(root) == []
