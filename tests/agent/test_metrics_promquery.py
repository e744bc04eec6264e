"""PromQL instant queries against a local HTTP server that speaks Prometheus' /api/v1/query."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from agent.daemon.promquery import PromQueryError, query

RESPONSES = {
    "accuracy": (200, {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"slice": "easy"}, "value": [1700000000.5, "0.75"]},
        {"metric": {"slice": "hard"}, "value": [1700000000.5, "NaN"]}]}}),
    "scalar(1)": (200, {"status": "success", "data": {"resultType": "scalar", "result": [1700000001, "1"]}}),
    "up[5m]": (200, {"status": "success", "data": {"resultType": "matrix", "result": []}}),
    "bad(": (400, {"status": "error", "errorType": "bad_data", "error": "parse error: unclosed left parenthesis"}),
}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        parsed = urllib.parse.urlparse(self.path)
        assert parsed.path == "/api/v1/query"
        promql = urllib.parse.parse_qs(parsed.query)["query"][0]
        code, body = RESPONSES[promql]
        payload = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def prometheus() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_vector_result_drops_non_finite(prometheus: str) -> None:
    [sample] = query(prometheus, "accuracy")
    assert (sample.value, sample.at, sample.labels) == (0.75, 1700000000.5, {"slice": "easy"})


def test_scalar_result(prometheus: str) -> None:
    assert [(s.value, s.labels) for s in query(prometheus, "scalar(1)")] == [(1.0, {})]


def test_errors_say_what_went_wrong(prometheus: str) -> None:
    with pytest.raises(PromQueryError, match="bad_data: parse error: unclosed left parenthesis"):
        query(prometheus, "bad(")
    with pytest.raises(PromQueryError, match="'matrix' is not supported"):
        query(prometheus, "up[5m]")
    with pytest.raises(PromQueryError, match="cannot reach the server"):
        query("http://127.0.0.1:9", "accuracy", timeout_s=2)
