"""The HTTP API through the official ``openai`` client and raw HTTP, against a real uvicorn server (stand-in engine).

The model side is the stand-in :class:`~tests.support.serve.EchoEngine`; tests/agent/serve/test_model.py serves
the real tiny model.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import httpx
import openai
import pytest

from agent.serve import ServeSetupError
from agent.store import Store
from tests.agent.serve.conftest import MakeParts, promote
from tests.support.serve import echo_loader, expected_answer, running

USER = [{"role": "user", "content": "hello there"}]


def _client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30)


def test_answers_plain_and_streamed_name_their_version(make_parts: MakeParts, serve_store: Store) -> None:
    promote(serve_store, "v1")
    with running(make_parts()) as url:
        client = _client(url)
        raw = client.chat.completions.with_raw_response.create(model="qtha", messages=USER, max_tokens=100)
        reply = raw.parse()
        assert reply.choices[0].message.content == expected_answer("v1", USER)
        assert reply.model == "v1" and raw.headers["x-qtha-version"] == "v1"
        assert raw.headers["x-request-id"] == reply.id and reply.id.startswith("chatcmpl-")
        assert reply.choices[0].finish_reason == "stop"
        assert reply.usage is not None and reply.usage.completion_tokens == len(expected_answer("v1", USER))

        chunks = list(client.chat.completions.create(
            model="qtha", messages=USER, max_tokens=100, stream=True, stream_options={"include_usage": True}
        ))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == expected_answer("v1", USER)
        assert {c.model for c in chunks} == {"v1"}
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(text)


def test_max_tokens_stop_and_n(make_parts: MakeParts, serve_store: Store) -> None:
    promote(serve_store, "v1")
    with running(make_parts()) as url:
        client = _client(url)
        cut = client.chat.completions.create(model="qtha", messages=USER, max_tokens=5)
        assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == ("v1: e", "length")
        stopped = client.chat.completions.create(model="qtha", messages=USER, max_tokens=50, stop=["r"])
        assert stopped.choices[0].message.content == "v1: e"
        many = client.chat.completions.create(model="v1", messages=USER, max_tokens=50, n=3)
        assert [c.index for c in many.choices] == [0, 1, 2]
        streamed = client.chat.completions.create(model="qtha", messages=USER, max_tokens=50, n=2, stream=True)
        texts = ["", ""]
        for chunk in streamed:
            for choice in chunk.choices:
                texts[choice.index] += choice.delta.content or ""
        assert texts == [expected_answer("v1", USER)] * 2


@pytest.mark.parametrize(
    ("body", "status", "param", "says"),
    [
        ({"messages": USER, "max_tokens": -1}, 400, "max_tokens", "greater than or equal to 1"),
        ({"messages": USER, "max_tokens": 10_000}, 400, "max_tokens", "limit of 512"),
        ({"messages": USER, "logprobs": True}, 400, "logprobs", "unknown field"),
        ({"messages": []}, 400, "messages", "at least 1"),
        ({"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role", "'user'"),
        ({"messages": USER, "temperature": 3}, 400, "temperature", "less than or equal to 2"),
        ({"messages": USER, "n": 9}, 400, "n", "limit of 4"),
        ({"messages": USER, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "at most 4"),
        ({"messages": USER, "model": "gpt-4"}, 404, "model", "not served here"),
        ({"max_tokens": 3}, 400, "messages", "missing required field"),
    ],
)
def test_bad_requests_get_openai_errors_naming_the_field(
    make_parts: MakeParts, serve_store: Store, body: dict, status: int, param: str, says: str
) -> None:
    with running(make_parts()) as url:
        reply = httpx.post(f"{url}/v1/chat/completions", json=body)
        assert reply.status_code == status
        error = reply.json()["error"]
        assert error["param"] == param and says in error["message"], error
        assert set(error) == {"message", "type", "param", "code"}


def test_malformed_json_huge_bodies_and_unknown_routes(make_parts: MakeParts) -> None:
    with running(make_parts(max_prompt_tokens=1000)) as url:
        bad = httpx.post(f"{url}/v1/chat/completions", content=b'{"messages": [', headers={"content-type": "application/json"})
        assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
        not_object = httpx.post(f"{url}/v1/chat/completions", json=[1, 2])
        assert not_object.status_code == 400 and "JSON object" in not_object.json()["error"]["message"]
        huge = "x" * 1_000_000
        too_big = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": huge}]})
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "too_long"
        # A body under the byte limit whose prompt is over the token limit.
        long_prompt = httpx.post(
            f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "y" * 5000}]}
        )
        assert long_prompt.status_code == 413 and long_prompt.json()["error"]["param"] == "messages"

        # Chunked upload without a content-length: counted as it arrives.
        def chunks():
            yield b'{"messages": [{"role": "user", "content": "'
            for _ in range(40):
                yield b"z" * 10_000
            yield b'"}]}'

        chunked = httpx.post(f"{url}/v1/chat/completions", content=chunks())
        assert chunked.status_code == 413
        missing = httpx.get(f"{url}/v1/engines")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}


def test_openai_client_sees_errors_in_its_own_types(make_parts: MakeParts) -> None:
    with running(make_parts()) as url:
        client = _client(url)
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="qtha", messages=USER, max_tokens=100_000)
        assert caught.value.status_code == 400 and "max_tokens" in caught.value.message
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", messages=USER)


def test_health_readiness_and_models(make_parts: MakeParts, serve_store: Store) -> None:
    gate = threading.Event()

    def slow_load(version_id: str | None, epoch: int):  # noqa: ANN202
        gate.wait(10)
        return echo_loader()(version_id, epoch)

    with running(make_parts(load=slow_load), wait_ready=False) as url:
        assert httpx.get(f"{url}/healthz").status_code == 200
        not_ready = httpx.get(f"{url}/readyz")
        assert not_ready.status_code == 503 and not_ready.json()["error"]["code"] == "unavailable"
        early = httpx.post(f"{url}/v1/chat/completions", json={"messages": USER})
        assert early.status_code == 503 and "no model is loaded" in early.json()["error"]["message"]
        gate.set()
        for _ in range(200):
            if httpx.get(f"{url}/readyz").status_code == 200:
                break
            threading.Event().wait(0.02)
        assert httpx.get(f"{url}/readyz").json() == {"status": "ready", "version": "base"}
        ids = [m.id for m in _client(url).models.list()]
        assert ids == ["qtha", "champion", "base"]


def test_api_key_is_required_beyond_loopback_and_checked(make_parts: MakeParts, tmp_path: Path) -> None:
    with pytest.raises(ServeSetupError, match="needs an API key"):
        make_parts(host="0.0.0.0")
    key = "k" * 32
    parts = make_parts(host="0.0.0.0", environ={"QTHA_SERVE_KEY": key})
    with running(parts) as url:  # the test still connects over loopback
        with pytest.raises(openai.AuthenticationError):
            _client(url, key="wrong-key-wrong-key").chat.completions.create(model="qtha", messages=USER)
        no_header = httpx.post(f"{url}/v1/chat/completions", json={"messages": USER})
        assert no_header.status_code == 401 and no_header.json()["error"]["type"] == "authentication_error"
        ok = _client(url, key=key).chat.completions.create(model="qtha", messages=USER)
        assert ok.choices[0].message.content == expected_answer("base", USER)
        assert httpx.get(f"{url}/healthz").status_code == 200  # probes need no key


def test_queue_full_is_429_and_a_timeout_is_504(make_parts: MakeParts) -> None:
    gate = threading.Event()
    parts = make_parts(load=echo_loader(max_queue=2, gate=gate), request_timeout_s=1.0)
    with running(parts) as url:

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=30) as client:
                return await asyncio.gather(*[
                    client.post(f"{url}/v1/chat/completions", json={"messages": USER}) for _ in range(6)
                ])

        replies = asyncio.run(burst())
        codes = sorted(r.status_code for r in replies)
        assert codes == [429, 429, 429, 429, 504, 504], codes
        full = next(r for r in replies if r.status_code == 429)
        assert full.json()["error"]["code"] == "queue_full" and full.headers["retry-after"] == "1"
        gate.set()
        metrics = httpx.get(f"{url}/metrics").text
        assert 'qtha_serve_requests_total{status="429",version="base"} 4.0' in metrics
        assert 'qtha_serve_requests_total{status="504",version="base"} 2.0' in metrics


def test_many_concurrent_connections_are_refused_cleanly_and_the_server_stays_up(make_parts: MakeParts) -> None:
    parts = make_parts(load=echo_loader(max_queue=32, token_delay_s=0.002), max_connections=100)
    with running(parts) as url:

        async def flood(n: int) -> list[int]:
            limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
            async with httpx.AsyncClient(timeout=60, limits=limits) as client:
                async def one() -> int:
                    try:
                        reply = await client.post(f"{url}/v1/chat/completions", json={"messages": USER})
                    except httpx.TransportError:
                        return -1
                    if reply.status_code != 200:
                        assert set(reply.json()["error"]) == {"message", "type", "param", "code"}
                    return reply.status_code

                return await asyncio.gather(*[one() for _ in range(n)])

        codes = asyncio.run(flood(1000))
        assert set(codes) <= {200, 429, 503}, sorted(set(codes))
        assert codes.count(200) >= 32 and codes.count(429) + codes.count(503) > 0
        # Memory is bounded: a second and a third flood of 1000 connections leave the resident set where the first
        # one left it (queue, connections and bodies are capped; nothing accumulates per refused request).
        after_first = _rss_mb()
        for _ in range(2):
            assert set(asyncio.run(flood(1000))) <= {200, 429, 503}
        assert _rss_mb() - after_first < 64, (after_first, _rss_mb())
        after = _client(url).chat.completions.create(model="qtha", messages=USER)
        assert after.choices[0].message.content == expected_answer("base", USER)


def test_usage_log_and_feedback(make_parts: MakeParts, serve_store: Store) -> None:
    promote(serve_store, "v2")
    with running(make_parts()) as url:
        client = _client(url)
        reply = client.chat.completions.create(model="qtha", messages=USER, max_tokens=64, temperature=0.5, seed=7)
        given = httpx.post(f"{url}/v1/feedback", json={"request_id": reply.id, "score": 0.75})
        assert given.status_code == 200 and given.json()["version"] == "v2"
        corrected = httpx.post(f"{url}/v1/feedback", json={"request_id": reply.id, "correct_answer": "hi"})
        assert corrected.status_code == 200
        unknown = httpx.post(f"{url}/v1/feedback", json={"request_id": "chatcmpl-nope", "score": 1})
        assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "request_id"
        empty = httpx.post(f"{url}/v1/feedback", json={"request_id": reply.id})
        assert empty.status_code == 400 and "score" in empty.json()["error"]["message"]
        refused = httpx.post(f"{url}/v1/chat/completions", json={"messages": USER, "max_tokens": 0})
        assert refused.status_code == 400
        metrics = httpx.get(f"{url}/metrics").text
    record = serve_store.usage.get(reply.id)
    assert record.version_id == "v2" and record.status == 200
    assert record.answers == (expected_answer("v2", USER),)
    assert record.messages == ({"role": "user", "content": "hello there"},)
    assert dict(record.sampling) | {"stop": []} == {
        "max_tokens": 64, "temperature": 0.5, "top_p": 1.0, "stop": [], "seed": 7, "n": 1, "stream": False
    }
    assert record.latency_s > 0 and record.completion_tokens == len(record.answers[0])
    assert [(f.score, f.correct_answer) for f in serve_store.usage.feedback(request_id=reply.id)] == [
        (0.75, None), (None, "hi")
    ]
    assert 'qtha_serve_feedback_total{kind="score",version="v2"} 1.0' in metrics
    assert 'qtha_serve_feedback_score_sum{version="v2"} 0.75' in metrics
    assert 'qtha_serve_generated_tokens_total{version="v2"}' in metrics
    assert 'qtha_serve_serving_info{version="v2"} 1.0' in metrics
    assert 'qtha_serve_time_to_first_token_seconds_count{version="v2"} 1.0' in metrics


def test_usage_opt_out_and_content_switch(make_parts: MakeParts, serve_store: Store) -> None:
    with running(make_parts(usage_log=False)) as url:
        reply = _client(url).chat.completions.create(model="qtha", messages=USER)
        given = httpx.post(f"{url}/v1/feedback", json={"request_id": reply.id, "score": 1})
        assert given.status_code == 404 and "usage_log = false" in given.json()["error"]["message"]
    assert serve_store.usage.list() == []
    with running(make_parts(usage_content=False)) as url:
        reply = _client(url).chat.completions.create(model="qtha", messages=USER)
        httpx.post(f"{url}/v1/feedback", json={"request_id": reply.id, "score": 1}).raise_for_status()
    record = serve_store.usage.get(reply.id)
    assert record.messages == () and record.answers == () and record.completion_tokens > 0


def test_stream_error_after_headers_is_an_error_event(make_parts: MakeParts) -> None:
    gate = threading.Event()
    with running(make_parts(load=echo_loader(gate=gate), request_timeout_s=0.5)) as url:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json={"messages": USER, "stream": True}) as reply:
            assert reply.status_code == 200
            events = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
        gate.set()
    assert json.loads(events[-1])["error"]["code"] == "timeout"


def _rss_mb() -> float:
    """This process's resident set (the server runs in a thread of it), in MiB, from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")
