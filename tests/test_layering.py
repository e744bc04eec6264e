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
DATABASE_LIBS = ("sqlmodel", "sqlalchemy")
# Inside agent/, only the processes that hold a model may import it (or JAX): the training child's tasks and the
# server. The daemon itself never loads a model, so a crash or leak in training cannot take it down.
MODEL_LIBS = ("model", "quantum", "jax", "jaxlib", "flax", "optax")
MODEL_HOLDERS = ("agent/child/tasks.py", "agent/serve/")


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
                if package != "agent":
                    continue
                where = rel.as_posix()
                if top in DATABASE_LIBS and not where.startswith("agent/store/"):
                    violations.append(Violation(str(rel), line, name, f"only agent/store may import {top}"))
                if top in MODEL_LIBS and not where.startswith(MODEL_HOLDERS):
                    violations.append(
                        Violation(str(rel), line, name, f"inside agent/ only {' and '.join(MODEL_HOLDERS)} import {top}")
                    )
                if top == "tests":
                    violations.append(Violation(str(rel), line, name, "agent/ may not import test support"))
    return violations


def import_cycles(root: Path) -> list[list[str]]:
    """Import cycles among our modules (top-level and function-level imports alike), as sorted module lists."""
    files = {}
    for package in OURS:
        for path in (root / package).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    edges: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        parts = module.split(".") + ["__init__"] if path.name == "__init__.py" else module.split(".")
        for _line, name in _imported_modules(ast.parse(path.read_text(encoding="utf-8")), parts):
            target = name
            while target and target not in files:  # `from pkg import mod` names a module; else its package
                target = target.rpartition(".")[0]
            if target and target != module and not module.startswith(target + "."):
                edges[module].add(target)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in files and f"{node.module}.{alias.name}" != module:
                        edges[module].add(f"{node.module}.{alias.name}")
    return _strongly_connected(edges)


def _strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles() -> None:
    cycles = import_cycles(ROOT)
    assert not cycles, "import cycles:\n" + "\n".join(" → ".join(c) for c in cycles)


def test_cycle_finder_catches_a_function_level_loop(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "agent/commands.py": "def f():\n    from agent import jobs\n",
            "agent/jobs.py": "from agent.commands import f\n",
            "agent/ok.py": "from agent import jobs\n",
        },
    )
    assert import_cycles(root) == [["agent.commands", "agent.jobs"]]


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
        ("agent/daemon/jobs.py", "import sqlalchemy\n", "only agent/store may import sqlalchemy"),
        ("agent/daemon/driver.py", "def f():\n    import jax\n", "inside agent/ only agent/child/tasks.py and agent/serve/ import jax"),
        ("agent/child/trainer.py", "from model import lm\n", "inside agent/ only agent/child/tasks.py and agent/serve/ import model"),
        ("agent/cycle/machine.py", "from tests.support import x\n", "agent/ may not import test support"),
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
            "agent/store/rows.py": "import sqlmodel\nfrom policies import trigger\n",
            "agent/child/tasks.py": "from model import lm\nimport jax\n",
            "agent/serve/engine.py": "import quantum\n",
            "policies/trigger.py": "from . import _math\nimport numpy\n",
        },
    )
    assert check_layering(root) == []
