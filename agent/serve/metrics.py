"""The server's Prometheus metrics (``qtha_serve_*``), on an injected registry.

Every series carries ``version``: the model version that answered (``"base"`` before the first promotion), so the
daemon's drift detector and a canary comparison can tell versions apart. Label names are fixed here and
documented in the README ("Serving metrics"); change them only together with their consumers.

=========================================  =========  ==============================================
series                                     type       labels
=========================================  =========  ==============================================
qtha_serve_requests_total                  counter    version, status (HTTP code, e.g. "200", "429")
qtha_serve_request_duration_seconds        histogram  version (completed chat requests)
qtha_serve_time_to_first_token_seconds     histogram  version
qtha_serve_prompt_tokens_total             counter    version
qtha_serve_generated_tokens_total          counter    version
qtha_serve_queue_depth                     gauge      version (requests waiting for a decoding slot)
qtha_serve_in_flight                       gauge      version (requests being answered)
qtha_serve_swaps_total                     counter    version (the version swapped in)
qtha_serve_load_failures_total             counter    version (the version refused)
qtha_serve_feedback_total                  counter    version, kind ("score" | "correct_answer")
qtha_serve_feedback_score                  histogram  version
qtha_serve_usage_dropped_total             counter    (records the usage log could not keep up with)
qtha_serve_serving_info                    gauge      version (1 for the version answering new requests)
qtha_serve_ready                           gauge      (1 once a model is loaded and warmed)
=========================================  =========  ==============================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "ServeMetrics", "VersionLoad"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# From a few tokens on the tiny model to a long answer of a real one on a CPU.
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TTFT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SCORE_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

# Per live version: (queued requests, requests in flight), read at scrape time.
VersionLoad = Callable[[], Mapping[str, tuple[int, int]]]


class _LoadCollector(Collector):
    """Queue depth and in-flight per version, read from the live engines when Prometheus scrapes."""

    def __init__(self, read: VersionLoad) -> None:
        self._read = read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        queue = GaugeMetricFamily(
            "qtha_serve_queue_depth", "Requests waiting for a decoding slot.", labels=["version"]
        )
        flight = GaugeMetricFamily("qtha_serve_in_flight", "Requests being answered.", labels=["version"])
        for version, (queued, in_flight) in sorted(self._read().items()):
            queue.add_metric([version], queued)
            flight.add_metric([version], in_flight)
        yield queue
        yield flight

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


class ServeMetrics:
    """The metric objects of one server, with methods named after the events that move them.

    Example:
        >>> from prometheus_client import CollectorRegistry
        >>> m = ServeMetrics(CollectorRegistry())
        >>> m.request_done("v1", 200, duration_s=0.2, ttft_s=0.05, prompt_tokens=10, completion_tokens=4)
        >>> m.value("qtha_serve_generated_tokens_total", version="v1")
        4.0
    """

    def __init__(self, registry: CollectorRegistry, *, load: VersionLoad | None = None) -> None:
        self.registry = r = registry
        self.requests = Counter(
            "qtha_serve_requests", "Chat completion requests by answering version and HTTP status.",
            ["version", "status"], registry=r,
        )
        self.duration = Histogram(
            "qtha_serve_request_duration_seconds", "Time from a request's arrival to its last byte.",
            ["version"], buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.ttft = Histogram(
            "qtha_serve_time_to_first_token_seconds", "Time from a request's arrival to its first token.",
            ["version"], buckets=TTFT_BUCKETS_S, registry=r,
        )
        self.prompt_tokens = Counter(
            "qtha_serve_prompt_tokens", "Prompt tokens of answered requests.", ["version"], registry=r
        )
        self.generated_tokens = Counter(
            "qtha_serve_generated_tokens", "Tokens generated.", ["version"], registry=r
        )
        self.swaps = Counter(
            "qtha_serve_swaps", "Versions swapped in (promotions and rollbacks seen).", ["version"], registry=r
        )
        self.load_failures = Counter(
            "qtha_serve_load_failures",
            "New champions that could not be loaded (the previous version kept serving).",
            ["version"], registry=r,
        )
        self.feedback = Counter(
            "qtha_serve_feedback", "Feedback received by kind.", ["version", "kind"], registry=r
        )
        self.feedback_score = Histogram(
            "qtha_serve_feedback_score", "Scores given with POST /v1/feedback.", ["version"],
            buckets=SCORE_BUCKETS, registry=r,
        )
        self.usage_dropped = Counter(
            "qtha_serve_usage_dropped", "Usage records dropped because the writer fell behind or failed.",
            registry=r,
        )
        self.serving_info = Gauge(
            "qtha_serve_serving_info", "The version answering new requests (always 1).", ["version"], registry=r
        )
        self.ready = Gauge("qtha_serve_ready", "1 once a model is loaded and warmed.", registry=r)
        self._serving: str | None = None
        if load is not None:
            r.register(_LoadCollector(load))

    def request_done(
        self,
        version: str,
        status: int,
        *,
        duration_s: float | None = None,
        ttft_s: float | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        self.requests.labels(version=version, status=str(status)).inc()
        if duration_s is not None:
            self.duration.labels(version=version).observe(duration_s)
        if ttft_s is not None:
            self.ttft.labels(version=version).observe(ttft_s)
        if prompt_tokens:
            self.prompt_tokens.labels(version=version).inc(prompt_tokens)
        if completion_tokens:
            self.generated_tokens.labels(version=version).inc(completion_tokens)

    def swapped(self, new: str) -> None:
        """``new`` answers new requests from now on (the first load counts as a swap too)."""
        self.swaps.labels(version=new).inc()
        if self._serving is not None and self._serving != new:
            self.serving_info.remove(self._serving)
        self._serving = new
        self.serving_info.labels(version=new).set(1)
        self.ready.set(1)

    def load_failed(self, version: str) -> None:
        self.load_failures.labels(version=version).inc()

    def feedback_given(self, version: str, *, score: float | None, correct_answer: bool) -> None:
        if score is not None:
            self.feedback.labels(version=version, kind="score").inc()
            self.feedback_score.labels(version=version).observe(score)
        if correct_answer:
            self.feedback.labels(version=version, kind="correct_answer").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float | None:
        """A sample's current value (tests and status output)."""
        return self.registry.get_sample_value(name, labels)
