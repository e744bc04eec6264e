"""``qtha serve`` and ``qtha export`` at the command line (the model-loading paths are in test_model.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli.app import main as qtha


@pytest.fixture(autouse=True)
def _state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QTHA_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("QTHA_SERVE_KEY", raising=False)


def test_serve_refuses_a_public_address_without_a_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert qtha(["serve", "--host", "0.0.0.0"]) == 2
    assert "needs an API key" in capsys.readouterr().err


def test_serve_refuses_a_short_key(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("QTHA_SERVE_KEY", "short")
    assert qtha(["serve"]) == 2
    assert "at least 16" in capsys.readouterr().err


def test_export_of_an_unknown_version_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert qtha(["export", "v404", "--out", str(tmp_path / "out")]) == 2
    assert "'v404' does not exist" in capsys.readouterr().err
