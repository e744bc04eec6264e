"""Model metrics from a Prometheus server: PromQL instant queries over its HTTP API (``/api/v1/query``).

The only outbound network call of the daemon besides the quantum backend, and only when
``observe.prometheus_url`` is configured. Standard library only.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

__all__ = ["PromQueryError", "PromSample", "query"]


class PromQueryError(RuntimeError):
    """A PromQL query failed; the message names the server, the query and the reason."""


@dataclass(frozen=True, slots=True)
class PromSample:
    """One element of a query result: its labels, value and Prometheus timestamp (Unix seconds)."""

    value: float
    at: float
    labels: dict[str, str] = field(default_factory=dict)


def _parse(body: dict, where: str) -> list[PromSample]:
    if body.get("status") != "success":
        raise PromQueryError(f"{where}: {body.get('errorType', 'error')}: {body.get('error', body)}")
    data = body.get("data", {})
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        return [PromSample(value=float(result[1]), at=float(result[0]))]
    if kind == "vector":
        samples = [
            PromSample(value=float(item["value"][1]), at=float(item["value"][0]), labels=dict(item.get("metric", {})))
            for item in result
        ]
        # NaN/Inf (e.g. a ratio over zero traffic) carries no information for drift detection.
        return [s for s in samples if math.isfinite(s.value)]
    raise PromQueryError(f"{where}: result type {kind!r} is not supported; write an instant vector or scalar query")


def query(base_url: str, promql: str, *, timeout_s: float = 10.0) -> list[PromSample]:
    """Runs one instant query.

    Args:
        base_url: the server, e.g. ``http://127.0.0.1:9090``.
        promql: an instant-vector or scalar expression.
        timeout_s: HTTP timeout.

    Raises:
        PromQueryError: unreachable server, HTTP error, bad JSON, a PromQL error or a range-vector result.
    """
    url = base_url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    where = f"Prometheus query {promql!r} at {base_url}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        # Prometheus answers 400/422 with a JSON error body that says what is wrong with the query.
        try:
            body = json.loads(exc.read().decode("utf-8"))
        except (ValueError, OSError):
            raise PromQueryError(f"{where}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise PromQueryError(f"{where}: cannot reach the server ({exc}); check observe.prometheus_url") from None
    except ValueError as exc:
        raise PromQueryError(f"{where}: response is not JSON ({exc})") from None
    return _parse(body, where)
