"""``qtha serve``: the champion behind an OpenAI-compatible API, hot-swapped on promotion.

* ``app`` — the HTTP API (chat completions, streamed or not; models; feedback; health; readiness; metrics).
* ``follower`` — follows the champion row, loads a new version beside the old and swaps between requests.
* ``loader`` — verifies a version's artifact, merges its adapter into the base and warms an engine; the only
  module of the server that imports ``model`` (with ``export``, ``qtha export``).
* ``engine`` — the engine protocol the app speaks; ``errors`` — OpenAI-shaped refusals; ``schemas`` — strict
  request bodies; ``security`` — loopback by default, bearer token otherwise; ``metrics`` — ``qtha_serve_*``;
  ``usage`` — the usage log writer; ``server`` — wiring and the process.
"""

from agent.serve.app import ServeParts, create_app
from agent.serve.engine import Delta, Engine, Finished, Handle, Sampling, Served
from agent.serve.follower import BASE_VERSION, Follower
from agent.serve.metrics import ServeMetrics
from agent.serve.security import ServeSetupError
from agent.serve.server import ServeProcess, build_parts, run_serve
from agent.serve.usage import UsageWriter

__all__ = [
    "BASE_VERSION",
    "Delta",
    "Engine",
    "Finished",
    "Follower",
    "Handle",
    "Sampling",
    "ServeMetrics",
    "ServeParts",
    "ServeProcess",
    "ServeSetupError",
    "Served",
    "UsageWriter",
    "build_parts",
    "create_app",
    "run_serve",
]
