"""Inside ``quantum/`` imports flow one way: each unit imports only the units declared below it.

A unit is a top-level module or sub-package of ``quantum`` (``quantum.qpu``, ``quantum.circuits``, …). Upward means
a unit importing one later in ``LAYERS``, or any submodule importing the ``quantum`` package itself (its
``__init__`` re-exports every layer, so that import reaches the top). A sub-package's modules may import each
other, never through their own ``__init__`` (which imports them back), and no module may be part of an import loop.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.test_layering import _imported_modules

ROOT = Path(__file__).resolve().parents[2]
# Lowest first; a unit may import itself and any unit listed before it.
LAYERS = (
    "errors",
    "qpu",  # the device vocabulary: programs, job protocol, errors, pricing, device clock
    "circuits",
    "lowering",
    "fusion",
    "native",  # the fused C kernels and their layout vocabulary
    "kernels",
    "statevector",
    "shift",
    "mitigation",
    "backends",
    "gradients",
    "qnn",
    "emulator",
    "executor",
    "hardware",
)


def _modules(root: Path) -> dict[str, Path]:
    """Dotted module name → file, for every module under ``root/quantum``."""
    out = {}
    for path in sorted((root / "quantum").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _quantum_imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[int, str]]:
    """The ``quantum`` modules ``name`` imports (``from pkg import mod`` resolved to ``pkg.mod`` when it is one)."""
    parts = name.split(".") + (["__init__"] if path.name == "__init__.py" else [])
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for line, imported in _imported_modules(tree, parts):
        if imported.split(".")[0] != "quantum":
            continue
        found.append((line, imported))
    for node in ast.walk(tree):  # `from quantum.x import y` where y is a module imports quantum.x.y too
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("quantum")
            and not node.level
        ):
            found += [
                (node.lineno, f"{node.module}.{a.name}")
                for a in node.names
                if f"{node.module}.{a.name}" in modules
            ]
    return found


def _unit(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def check_quantum_layers(root: Path) -> list[str]:
    """Every upward import and every import loop among the modules under ``root/quantum``."""
    modules = _modules(root)
    rank = {unit: i for i, unit in enumerate(LAYERS)}
    problems = []
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        where = f"{path.relative_to(root)}"
        unit = _unit(name)
        if unit and unit not in rank:
            problems.append(f"{where}: {name} is in no layer; add {unit!r} to LAYERS")
            continue
        graph[name] = set()
        for line, imported in _quantum_imports(name, path, modules):
            if name == "quantum":
                continue  # the package's __init__ is the top: it re-exports every layer
            if imported == "quantum":
                problems.append(
                    f"{where}:{line}: imports the quantum package itself (its __init__ is the top)"
                )
                continue
            target = _unit(imported)
            if target not in rank:
                problems.append(f"{where}:{line}: imports {imported}, which is in no layer")
            elif rank[target] > rank[unit]:
                problems.append(f"{where}:{line}: imports {imported} (layer {target!r} is above {unit!r})")
            package = ".".join(name.split(".")[:2])
            if target == unit and imported == package and name != package:
                problems.append(
                    f"{where}:{line}: imports its own package {package} (whose __init__ imports it)"
                )
            if imported in modules and imported != name:
                graph[name].add(imported)
    problems += [f"import loop: {' -> '.join(loop)}" for loop in _loops(graph)]
    return problems


def _loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules that import each other (depth-first search)."""
    loops, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                loops.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return loops


def test_quantum_imports_only_downward() -> None:
    problems = check_quantum_layers(ROOT)
    assert not problems, "upward imports in quantum/:\n" + "\n".join(problems)


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in {"quantum/__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "needle"),
    [
        (
            {"quantum/qpu/errors.py": "from quantum.emulator import DeviceEmulator\n"},
            "layer 'emulator' is above 'qpu'",
        ),
        ({"quantum/emulator/cost.py": "from quantum import Program\n"}, "imports the quantum package itself"),
        (
            {"quantum/executor/core.py": "import quantum.hardware.shots\n"},
            "layer 'hardware' is above 'executor'",
        ),
        (
            {
                "quantum/emulator/__init__.py": "",
                "quantum/emulator/jobs.py": "from quantum.emulator import x\n",
            },
            "imports its own package quantum.emulator",
        ),
        (
            {"quantum/emulator/jobs.py": "from ...quantum import hardware\n"},
            "imports the quantum package itself",
        ),
        ({"quantum/newthing.py": "import numpy\n"}, "'newthing' to LAYERS"),
        (
            {"quantum/qpu/a.py": "from quantum.qpu import b\n", "quantum/qpu/b.py": "import quantum.qpu.a\n"},
            "import loop: quantum.qpu.a -> quantum.qpu.b -> quantum.qpu.a",
        ),
    ],
)
def test_checker_catches_upward_imports(tmp_path: Path, files: dict[str, str], needle: str) -> None:
    problems = check_quantum_layers(_tree(tmp_path, files))
    assert any(needle in p for p in problems), problems


def test_checker_accepts_downward_imports(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "quantum/qpu/__init__.py": "from quantum.qpu.errors import E\n",
            "quantum/qpu/errors.py": "class E(Exception): ...\n",
            "quantum/emulator/__init__.py": "from quantum.emulator.device import D\n",
            "quantum/emulator/device.py": "from quantum.qpu.errors import E\nfrom quantum.circuits import c\n",
            "quantum/circuits.py": "from quantum.errors import QuantumSpecError\n",
            "quantum/errors.py": "",
            "quantum/hardware/factory.py": "from quantum.emulator import D\nfrom quantum.qpu import E\n",
        },
    )
    root.joinpath("quantum/__init__.py").write_text("from quantum.hardware.factory import f\n")
    assert check_quantum_layers(root) == []
