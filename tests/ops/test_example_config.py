"""ops/qtha.toml documents every configuration key and loads through agent/config.py to the defaults."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from agent.config import QthaConfig, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "ops" / "qtha.toml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("QTHA_") or name == "STATE_DIRECTORY":
            monkeypatch.delenv(name)


def _sections(text: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {"": []}
    current = ""
    for line in text.splitlines():
        header = re.fullmatch(r"\[([a-z_]+)\]", line.strip())
        if header:
            current = header.group(1)
            sections[current] = []
        else:
            sections[current].append(line)
    return sections


def test_example_loads_to_the_defaults() -> None:
    assert load_config(EXAMPLE).model_dump() == load_config().model_dump()


def test_every_key_is_present_and_commented() -> None:
    sections = _sections(EXAMPLE.read_text())
    expected: dict[str, list[str]] = {"": []}
    for name, field in QthaConfig.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            expected[name] = list(field.annotation.model_fields)
        else:
            expected[""].append(name)
    assert set(sections) == set(expected)
    for section, keys in expected.items():
        lines = sections[section]
        for key in keys:
            found = [i for i, line in enumerate(lines) if re.match(rf"^#? ?{key} = ", line)]
            assert len(found) == 1, f"[{section}] {key} appears {len(found)} times in {EXAMPLE.name}"
            above = lines[found[0] - 1]
            assert above.startswith("# ") and not re.match(r"^# ?\w+ = ", above), (
                f"[{section}] {key} lacks a comment"
            )


def test_commented_examples_are_valid_values(tmp_path: Path) -> None:
    # Un-commenting every example must still give a valid configuration.
    path = tmp_path / "uncommented.toml"
    path.write_text(re.sub(r"^# (\w+ = )", r"\1", EXAMPLE.read_text(), flags=re.M))
    cfg = load_config(path)
    assert cfg.database.url and cfg.observe.queries and cfg.policy.quiet_hours == (8, 18)
