"""One remote task, end to end: the bridge child that drives it from the daemon's host, and its body on a node.

The daemon never talks to Ray itself. :class:`agent.child.remote.RayRunner` starts this module's :func:`run` as an
ordinary local child (``python -m agent.child.entry``, the protocol of :mod:`agent.child.entry`); that child
connects to the cluster, submits :func:`run_on_node` as a Ray task with the configured resource request and
retries, relays the task's events back as its own, and returns the task's result as its own. So a remote task is
stopped, timed out, fenced and accounted exactly like a local child — the daemon's :class:`ChildRunner` runs it —
and whatever Ray does in the bridge cannot harm the daemon: Ray's driver process exits by itself when it loses the
cluster's head for longer than ``gcs_rpc_server_reconnect_timeout_s`` (measured here: exit status 1, "the
program will terminate"), and ``ray.init`` on an address where no head answers blocks for minutes. Here that ends
one child, never the daemon; the next task starts a fresh child, which connects again.

On the node, :func:`run_on_node` runs the local child's entry point there (``python -m agent.child.entry`` with the
same task, e.g. ``agent.child.tasks:train``), so a remote child is a local child of the node: the same stop flag,
checkpoints, exit statuses, out-of-memory isolation and ``PR_SET_PDEATHSIG`` (if Ray kills the task's worker, the
child checkpoints and exits). Events and the stop request travel through a :class:`~agent.child.channel.Channel`
on the shared storage; the result comes back through Ray.

How a remote task ends (what the daemon's runner sees, as for a local child):
    * done: the child's result; a ``remote``/``finished`` event carries the node, attempts and CPU-seconds.
    * interrupted (exit 75, resumable): stopped on request (``stop`` file → the child checkpoints; SIGKILL after
      the grace; ``ray.cancel(force=True)`` after the grace plus :data:`FORCE_AFTER_S` if the task still runs),
      or Ray lost the task for good (worker node gone after every retry, the head unreachable for
      ``[cluster] head_timeout_s``, or no head answering when connecting, after retries with backoff).
    * failed: the remote child failed, was killed or refused its data (its stderr tail in the message).
"""

from __future__ import annotations

import math
import os
import resource
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from agent.child.channel import Channel
from agent.child.entry import EXIT_INTERRUPTED, Interrupted, TaskContext
from agent.child.runner import ChildRunner

__all__ = [
    "BRIDGE_ENTRY",
    "RESOURCES_ENTRY",
    "FORCE_AFTER_S",
    "HeadLost",
    "RemoteChildError",
    "RemoteSpec",
    "TaskKey",
    "gpus_to_request",
    "resources",
    "run",
    "run_on_node",
]

BRIDGE_ENTRY = "agent.child.bridge:run"
RESOURCES_ENTRY = "agent.child.bridge:resources"
POLL_S = 0.5
FORCE_AFTER_S = 5.0  # after the grace: the node's own kill did not end the task, so Ray kills its worker
_PROBE_EVERY_S = 1.0
_CANCEL_WAIT_S = 30.0  # after ray.cancel(force=True), how long to wait for Ray to report the task ended


class RemoteChildError(RuntimeError):
    """The remote child failed, was killed or timed out; the message names the node and has its stderr tail."""


class HeadLost(Interrupted):
    """The cluster's head has not answered for ``head_timeout_s`` while a task ran."""


@dataclass(frozen=True)
class TaskKey:
    """What a remote task is: its kind (``train``, ``evaluate``), its subject (the cycle id for training, the
    version for an evaluation) and the leader lease's epoch it was submitted under (None: no lease, e.g. a tool).
    A result is accepted only while that epoch is still the leader's (see :class:`agent.child.remote.RayRunner`)."""

    kind: str
    subject: str
    epoch: int | None

    @property
    def name(self) -> str:
        """The Ray task's name (``ray list tasks`` shows it): ``qtha-train-12-e3``."""
        return f"qtha-{self.kind}-{self.subject}-e{'none' if self.epoch is None else self.epoch}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "subject": self.subject, "epoch": self.epoch}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskKey:
        epoch = data.get("epoch")
        return cls(str(data["kind"]), str(data["subject"]), None if epoch is None else int(epoch))


@dataclass(frozen=True)
class RemoteSpec:
    """The bridge child's payload: the task to run on a node and how.

    Attributes:
        entry, payload: the child task (``module:function`` and its JSON payload), as for a local child.
        key: the task's identity.
        channel: the shared directory of this submission (events up, stop down).
        address: the Ray cluster (``host:6379`` or ``ray://host:10001``).
        num_cpus, memory_bytes, num_gpus: the resource request (``num_gpus`` None: one if the cluster has GPUs).
        max_retries: Ray's reruns of a task whose worker or node was lost (each resumes from the newest checkpoint).
        head_timeout_s: how long the head may be unreachable (while connecting or running) before giving up.
        grace_s: after a stop request, how long the child may take to checkpoint before it is killed.
    """

    entry: str
    payload: Mapping[str, Any]
    key: TaskKey
    channel: str
    address: str
    num_cpus: float
    memory_bytes: int
    num_gpus: float | None
    max_retries: int
    head_timeout_s: float
    grace_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "entry": self.entry,
            "payload": dict(self.payload),
            "key": self.key.to_dict(),
            "channel": self.channel,
            "address": self.address,
            "num_cpus": self.num_cpus,
            "memory_bytes": self.memory_bytes,
            "num_gpus": self.num_gpus,
            "max_retries": self.max_retries,
            "head_timeout_s": self.head_timeout_s,
            "grace_s": self.grace_s,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RemoteSpec:
        gpus = data.get("num_gpus")
        return cls(
            entry=str(data["entry"]),
            payload=dict(data["payload"]),
            key=TaskKey.from_dict(data["key"]),
            channel=str(data["channel"]),
            address=str(data["address"]),
            num_cpus=float(data["num_cpus"]),
            memory_bytes=int(data.get("memory_bytes", 0)),
            num_gpus=None if gpus is None else float(gpus),
            max_retries=int(data["max_retries"]),
            head_timeout_s=float(data["head_timeout_s"]),
            grace_s=float(data["grace_s"]),
        )


def gpus_to_request(configured: float | None, cluster_resources: Mapping[str, float]) -> float:
    """GPUs per task: the configured number, or (None) one when the cluster has a GPU and none otherwise."""
    if configured is not None:
        return configured
    return 1.0 if cluster_resources.get("GPU", 0.0) >= 1.0 else 0.0


# -- the bridge child (a local child of the daemon) ------------------------------------------------------------------


def run(payload: dict[str, Any], ctx: TaskContext) -> Any:
    """The bridge's entry point (``agent.child.bridge:run``): submits, follows, returns the remote result.

    Raises:
        Interrupted: stopped on request, or Ray lost the task or the head (the cycle resumes later).
        RemoteChildError: the remote child failed.
    """
    spec = RemoteSpec.from_dict(payload)
    channel = Channel(Path(spec.channel)).open()
    if ctx.stop_requested:
        raise Interrupted("stop requested before the remote task was submitted")
    ray = connect(spec.address, spec.head_timeout_s, ctx)
    try:
        return follow(ray, submit(ray, spec, ctx), spec, channel, ctx)
    except HeadLost as exc:
        _give_up(ctx, "head-lost", str(exc))


def resources(payload: dict[str, Any], ctx: TaskContext) -> dict[str, dict[str, float]]:
    """Entry point ``agent.child.bridge:resources``: the cluster's ``available`` and ``total`` resources (a
    one-shot child, so the daemon learns them without importing Ray). Payload: ``address``, ``head_timeout_s``.

    Raises:
        Interrupted: no head answered.
    """
    ray = connect(str(payload["address"]), float(payload["head_timeout_s"]), ctx)
    return {"available": dict(ray.available_resources()), "total": dict(ray.cluster_resources())}


def head_endpoint(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``host:port`` or ``ray://host:port`` (what a TCP probe can reach), else None."""
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def reachable(endpoint: tuple[str, int], *, timeout_s: float = 1.0) -> bool:
    try:
        with socket.create_connection(endpoint, timeout=timeout_s):
            return True
    except OSError:
        return False


def _give_up(ctx: TaskContext, phase: str, message: str) -> NoReturn:
    """Ends the bridge as interrupted at once. ``os._exit``: Ray's exit handlers would wait for the lost head."""
    ctx.emit({"event": "remote", "phase": phase, "message": message})
    os._exit(EXIT_INTERRUPTED)


def connect(
    address: str, head_timeout_s: float, ctx: TaskContext, *, sleep: Callable[[float], None] = time.sleep
) -> Any:
    """Connects this process to the cluster and returns the ``ray`` module.

    The head is probed first, with retries and exponential backoff for up to ``head_timeout_s``, since
    ``ray.init`` on an address where nothing answers blocks for minutes; a watchdog bounds ``ray.init`` itself.

    Raises:
        Interrupted: no head answered (the cycle resumes on a later tick).
    """
    endpoint = head_endpoint(address)
    if endpoint is not None:
        delay, waited = 0.5, 0.0
        while not reachable(endpoint):
            if ctx.stop_requested:
                raise Interrupted("stop requested while waiting for the Ray head")
            if waited >= head_timeout_s:
                message = (
                    f"no Ray head answers at {address} (tried for {waited:.0f} s); check [cluster] address "
                    "and that the head runs; the cycle resumes from its checkpoint on a later tick"
                )
                ctx.emit({"event": "remote", "phase": "unreachable", "message": message})
                raise Interrupted(message)
            sleep(delay)
            waited += delay
            delay = min(delay * 2, 8.0)
    # Our own probe must decide that the head is lost before Ray's driver gives up and exits by itself.
    os.environ.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", str(math.ceil(max(60.0, 3 * head_timeout_s))))
    import ray

    watchdog = threading.Timer(
        head_timeout_s + 30.0,
        _give_up,
        args=(ctx, "unreachable", f"ray.init({address!r}) did not return; giving up on this attempt"),
    )
    watchdog.daemon = True
    handler = signal.getsignal(signal.SIGTERM)
    watchdog.start()
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except SystemExit:  # Ray's own SIGTERM handler, installed by ray.init, fired while connecting
        raise Interrupted("stop requested while connecting to the Ray cluster") from None
    finally:
        watchdog.cancel()
        # ray.init replaces SIGTERM's handler with sys.exit; ours asks the remote task to stop first.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handler)
    return ray


def submit(ray: Any, spec: RemoteSpec, ctx: TaskContext) -> Any:
    """Submits :func:`run_on_node` with the resource request; returns its object ref."""
    options: dict[str, Any] = {
        "name": spec.key.name,
        "num_cpus": spec.num_cpus,
        "max_retries": spec.max_retries,
        "retry_exceptions": False,  # a failing child is the task's verdict; only lost workers are retried
    }
    gpus = gpus_to_request(spec.num_gpus, ray.cluster_resources())
    if gpus > 0:
        options["num_gpus"] = gpus
    if spec.memory_bytes > 0:
        options["memory"] = spec.memory_bytes
    task = ray.remote(run_on_node).options(**options)
    ref = task.remote(spec.entry, dict(spec.payload), spec.key.to_dict(), spec.channel, spec.grace_s)
    ctx.emit({
        "event": "remote", "phase": "submitted", "task": spec.key.name, "bridge_pid": os.getpid(),
        "resources": {k: v for k, v in options.items() if k in ("num_cpus", "num_gpus", "memory")},
    })
    return ref


def follow(
    ray: Any,
    ref: Any,
    spec: RemoteSpec,
    channel: Channel,
    ctx: TaskContext,
    *,
    clock: Callable[[], float] = time.monotonic,
    head_up: Callable[[], bool] | None = None,
) -> Any:
    """Relays the task's events until it ends; stops it on request; gives up when the head is lost.

    Args:
        head_up: the head probe (default: a TCP connection to the address; tests inject their own).

    Raises:
        Interrupted, RemoteChildError: see the module docstring.
    """
    endpoint = head_endpoint(spec.address)
    if head_up is None and endpoint is not None:
        head_up = lambda: reachable(endpoint)  # noqa: E731
    reader = channel.reader()
    attempts = 0
    stop_at: float | None = None
    cancelled_at: float | None = None
    down_since: float | None = None
    probed = clock()

    def relay() -> None:
        nonlocal attempts
        for event in reader.read():
            if event.get("event") == "remote" and event.get("phase") == "started":
                attempts += 1
            ctx.emit(event)

    while True:
        ready, _ = ray.wait([ref], timeout=POLL_S)
        relay()
        if ready:
            break
        now = clock()
        if ctx.stop_requested and stop_at is None:
            channel.request_stop()
            stop_at = now
            ctx.emit({"event": "remote", "phase": "stopping", "task": spec.key.name})
        if stop_at is not None and cancelled_at is None and now - stop_at > spec.grace_s + FORCE_AFTER_S:
            ray.cancel(ref, force=True)
            cancelled_at = now
            ctx.emit({"event": "remote", "phase": "cancelled", "task": spec.key.name})
        if cancelled_at is not None and now - cancelled_at > _CANCEL_WAIT_S:
            raise Interrupted(f"remote task {spec.key.name} did not end {_CANCEL_WAIT_S:.0f} s after "
                              "ray.cancel(force=True); giving up on it")
        if head_up is not None and now - probed >= _PROBE_EVERY_S:
            probed = now
            if head_up():
                down_since = None
            elif down_since is None:
                down_since = now
            elif now - down_since > spec.head_timeout_s:
                raise HeadLost(f"the Ray head at {spec.address} has not answered for {now - down_since:.0f} s; "
                               "the cycle resumes from its checkpoint on a later tick")
    relay()
    try:
        reply = ray.get(ref)
    except ray.exceptions.TaskCancelledError:
        raise Interrupted(f"remote task {spec.key.name} was cancelled after the stop request") from None
    except ray.exceptions.RayTaskError as exc:  # run_on_node itself raised: our bug or the shared storage
        raise RemoteChildError(f"remote task {spec.key.name} raised: {exc}") from None
    except ray.exceptions.RayError as exc:  # a lost worker or node after every retry, a lost object or head
        raise Interrupted(
            f"Ray lost remote task {spec.key.name} after {attempts} attempt(s) ({type(exc).__name__}: {exc}); "
            "the cycle resumes from its checkpoint on a later tick"
        ) from None
    return _verdict(reply, spec, ctx, attempts, stopped=stop_at is not None)


def _verdict(reply: Mapping[str, Any], spec: RemoteSpec, ctx: TaskContext, attempts: int, *, stopped: bool) -> Any:
    status = reply["status"]
    ctx.emit({
        "event": "remote", "phase": "finished", "task": spec.key.name, "status": status, "node": reply["node"],
        "attempts": attempts, "cpu_s": reply["cpu_s"], "wall_s": reply["wall_s"],
    })
    if status == "done":
        return reply["result"]
    if status == "interrupted" or (stopped and status == "killed"):
        raise Interrupted(f"remote task {spec.key.name} stopped on request ({status}) on node {reply['node'][:12]}")
    raise RemoteChildError(f"the remote child on node {reply['node'][:12]} {status}: {reply['error']}")


# -- the task's body on a node ---------------------------------------------------------------------------------------


def process_cpu_s() -> float:
    """CPU-seconds of this process and of its children that have ended (user + system)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _from_newest_checkpoint(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A retried attempt resumes from the newest checkpoint in the workdir, which a lost attempt may have
    written after the task was submitted: re-running a task is idempotent, it never repeats finished steps."""
    from agent.cycle.trainer import latest_checkpoint  # here: Ray workers import this module, keep it light

    out = dict(payload)
    if "workdir" in out and "resume_from" in out:
        newest = latest_checkpoint(Path(out["workdir"]))
        if newest is not None:
            out["resume_from"] = str(newest)
    return out


def run_on_node(
    entry: str, payload: Mapping[str, Any], key: Mapping[str, Any], channel_path: str, grace_s: float
) -> dict[str, Any]:
    """The Ray task: runs the child task ``entry`` in a child process of this node and returns how it ended.

    The child's events go to the channel; a ``stop`` file there stops it (SIGTERM, so it checkpoints; SIGKILL
    after ``grace_s``). Returns ``status``, ``result``, ``error``, ``node``, ``wall_s`` and ``cpu_s`` (this
    process's and the child's CPU time during the task: what the node spent on it).
    """
    import ray

    node = ray.get_runtime_context().get_node_id()
    channel = Channel(Path(channel_path)).open()
    task = _from_newest_checkpoint(payload) | {"remote": {"node": node, "key": dict(key)}}
    channel.append({"event": "remote", "phase": "started", "node": node, "pid": os.getpid(),
                    "resume_from": task.get("resume_from")})
    runner = ChildRunner()
    cpu_before, started = process_cpu_s(), time.monotonic()
    box: dict[str, Any] = {}

    def child() -> None:
        try:
            box["outcome"] = runner.run(entry, task, channel.path / f"attempt-{node[:12]}-{os.getpid()}",
                                        on_event=channel.append)
        except BaseException as exc:  # re-raised in the task's thread below
            box["error"] = exc

    thread = threading.Thread(target=child, name="remote-child", daemon=True)
    thread.start()
    stop_at: float | None = None
    while thread.is_alive():
        thread.join(POLL_S)
        if stop_at is None and channel.stop_requested():
            runner.request_stop()
            stop_at = time.monotonic()
        elif stop_at is not None and time.monotonic() - stop_at > grace_s:
            runner.kill()
    if "error" in box:
        raise box["error"]
    outcome = box["outcome"]
    return {
        "status": outcome.status,
        "result": outcome.result,
        "error": outcome.error,
        "returncode": outcome.returncode,
        "node": node,
        "wall_s": time.monotonic() - started,
        "cpu_s": process_cpu_s() - cpu_before,
    }
