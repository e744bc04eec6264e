from __future__ import annotations

import json
import logging

import pytest

from agent.logs import configure_logging


def test_json_lines_keep_extra_fields(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", json_lines=True)
    logging.getLogger("qtha.test").info("cycle %s started", 7, extra={"cycle_id": 7})
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["message"] == "cycle 7 started" and record["cycle_id"] == 7 and record["level"] == "INFO"


def test_text_lines_one_per_event(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("WARNING")
    logging.getLogger("qtha.test").info("hidden")
    logging.getLogger("qtha.test").warning("shown")
    err = capsys.readouterr().err
    assert "hidden" not in err and err.count("\n") == 1 and "WARNING qtha.test: shown" in err
