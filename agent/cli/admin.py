"""The admin commands of ``qtha`` (merged into :data:`agent.cli.app`): the daemon, reads and overrides.

Read commands (status, versions, history, decisions, policy show) read the database directly; ``--json`` prints
machine-readable output. Overrides (pause, resume, cycle --now, promote, rollback, pin, unpin, policy set/unset,
eval) are queued as command rows with an idempotency key; the leading daemon applies and audits them. They work
whether the daemon runs or not; ``--wait SECONDS`` waits for the outcome (exit 3 when the daemon refuses it).

Exit codes: 0 ok · 1 failure · 2 usage or bad configuration · 3 refused by policy · 4 lock held (a cycle is
running) · 5 environment not ready (database unreachable, state directory unusable, port in use).
"""

from __future__ import annotations

import getpass
import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from agent.cli.common import (
    EXIT_FAILURE,
    EXIT_LOCKED,
    EXIT_REFUSED,
    EXIT_USAGE,
    STARTUP_ERRORS,
    ConfigOption,
    JsonOption,
    exit_code_of,
    fail,
    read_config,
)
from agent.config import ConfigError, QthaConfig, short_repr
from agent.daemon import status as status_mod
from agent.daemon.commands import validate_args
from agent.daemon.inbox import InboxError, display_name, parse_examples, read_regular_file
from agent.daemon.planner import RecipeOverrideError, check_override
from agent.daemon.policy_inputs import OVERRIDE_PREFIX, parse_policy_value, resolve_policy
from agent.daemon.preflight import PreflightError, prepare_state_dir
from agent.series import UnknownSeriesError
from agent.series import check_sample as check_series
from agent.store import InvalidSampleError, Store, StoreError, check_sample, open_store

__all__ = ["admin_app"]

admin_app = typer.Typer()
policy_app = typer.Typer(help="Show or override the policy knobs.", no_args_is_help=True)
admin_app.add_typer(policy_app, name="policy")

KeyOption = Annotated[
    str | None,
    typer.Option("--key", help="Idempotency key (default: a new one); resubmitting it is a no-op."),
]
WaitOption = Annotated[
    float, typer.Option("--wait", min=0, help="Seconds to wait for the daemon to apply it (0: just queue).")
]


@contextmanager
def _store(cfg: QthaConfig) -> Iterator[Store]:
    try:
        prepare_state_dir(cfg.state_dir)
    except PreflightError as exc:
        fail(str(exc), exit_code_of(exc))
    try:
        store = open_store(cfg.database_url)
    except StoreError as exc:
        fail(str(exc), exit_code_of(exc))
    except Exception as exc:  # driver errors: a locked SQLite file, an unreachable server
        if "locked" in str(exc).lower():
            fail(f"the database is locked by another process ({exc}); retry in a moment", EXIT_LOCKED)
        fail(f"cannot open the database {cfg.database_url.split(':', 1)[0]}: {exc}")
    try:
        yield store
    finally:
        store.close()


def _first_line(error: str | None) -> str:
    """The cause of a failed cycle without the child's traceback (kept whole in the cycle row: --json)."""
    if not error:
        return ""
    head = error.split("; stderr tail:", 1)[0].strip().splitlines()
    return (head[0][:300] if head else "") + (" (details: qtha history --json)" if "\n" in error.strip() else "")


def _print(data: Any, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str) if as_json else text)


def _actor() -> str:
    try:
        return os.environ.get("QTHA_ACTOR") or getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _submit(config: Path | None, kind: str, args: dict[str, Any], *, key: str | None, wait: float) -> None:
    """Queues a command; with ``wait`` > 0, polls until the daemon applied it (or the deadline passes)."""
    try:
        validate_args(kind, args)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    cfg = read_config(config)
    with _store(cfg) as store:
        try:
            command = store.commands.submit(kind, args, key=key or uuid.uuid4().hex, actor=_actor())
        except ValueError as exc:
            fail(str(exc), EXIT_USAGE)
        deadline = time.monotonic() + wait
        while command.applied_at is None and time.monotonic() < deadline:
            time.sleep(0.2)  # the daemon applies commands every scheduler.commands_interval_s
            command = store.commands.get(command.key)
    if command.applied_at is None:
        typer.echo(f"queued {kind} (key {command.key}); the leading daemon applies it within seconds")
        if wait > 0:
            fail(f"not applied within {wait:g} s; is a daemon running? (`qtha status`)", EXIT_FAILURE)
        return
    if not command.ok:
        fail(f"{kind} refused: {command.result}", EXIT_REFUSED)
    typer.echo(f"{kind}: {command.result}")


# -- the daemon --------------------------------------------------------------------------------------------------
@admin_app.command("daemon")
def daemon(config: ConfigOption = None) -> None:
    """Run the daemon (foreground; SIGTERM stops it cleanly, SIGHUP reloads the config)."""
    from agent.cli.wiring import run

    read_config(config)  # exit 2 on a bad config before anything starts
    try:
        code = run(config)
    except STARTUP_ERRORS as exc:
        fail(str(exc), exit_code_of(exc))
    raise typer.Exit(code)


@admin_app.command("doctor")
def doctor(
    config: ConfigOption = None,
    as_json: JsonOption = False,
    model: Annotated[bool, typer.Option("--model/--no-model", help="Also load the model in a child.")] = True,
) -> None:
    """Run the start-up checks now (configuration, state directory, database, metrics port, model, backend)
    and print what is wrong. Exit 0 when all pass, else the status of the first failure."""
    from agent.cli.doctor import run_checks

    results = run_checks(config, check_model=model)
    _print(
        [r._asdict() for r in results],
        as_json,
        "\n".join(f"{'ok  ' if r.ok else 'FAIL'} {r.name}: {r.detail}" for r in results),
    )
    failed = [r for r in results if not r.ok]
    if failed:
        raise typer.Exit(failed[0].exit_code)


# -- reads -------------------------------------------------------------------------------------------------------
def _status_text(data: dict[str, Any]) -> str:
    champ = data["champion"]
    lines = [
        f"champion: {champ['version'] or 'none yet'} (epoch {champ['epoch']}"
        + (", pinned" if champ["pinned"] else "")
        + ")",
        f"paused: {'yes' if data['paused'] else 'no'}",
    ]
    if champ["metrics"]:
        shown = {k: v for k, v in champ["metrics"].items() if k.startswith("eval_")}
        lines.append(
            "champion metrics: "
            + ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(shown.items())
            )
        )
    cycle = data["cycle"]
    if cycle:
        progress = cycle.get("progress")
        step = f", step {progress['step']}/{progress['of']} loss {progress['loss']:.4f}" if progress else ""
        lines.append(
            f"cycle {cycle['id']}: {cycle['state']}{step} (reasons: {', '.join(cycle['trigger_reasons'])})"
        )
    last = data["last_cycle"]
    if last:
        lines.append(f"last cycle {last['id']}: {last['state']} — {last['outcome'] or _first_line(last['error'])}")
    leader = data["leader"]
    lines.append(f"leader: {leader['holder'] or 'none'} (epoch {leader['epoch']})")
    daemon_status, replica = data["daemon"], data.get("replica")
    if replica and replica["role"] == "standby":  # the role, fresh from the lease, says all the status line would
        leads = f"{replica['leader']} leads (epoch {replica['epoch']})" if replica["leader"] else "no one leads now"
        lines.append(f"this replica: {replica['name']} is a standby, idle by design: {leads}; it {replica['does']}")
    elif daemon_status:
        lines.append(f"daemon: {daemon_status['status']} (at {daemon_status['at']})")
    if data["pending_commands"]:
        lines.append("queued: " + ", ".join(c["kind"] for c in data["pending_commands"]))
    return "\n".join(lines)


@admin_app.command("status")
def status(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """What the daemon is doing: champion, running cycle and its progress, leader, queued commands."""
    cfg = read_config(config)
    with _store(cfg) as store:
        data = status_mod.status(store, cfg.state_dir)
    _print(data, as_json, _status_text(data))


@admin_app.command("versions")
def versions(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Model versions with status, lineage and metrics."""
    cfg = read_config(config)
    with _store(cfg) as store:
        data = status_mod.versions(store)
    text = (
        "\n".join(
            f"{v['id']:10} {v['status']:9} parent={v['parent'] or '-':10} {v['adapter']:6} "
            f"eval_mean={v['metrics'].get('eval_mean', '-')}"
            for v in data
        )
        or "no versions yet"
    )
    _print(data, as_json, text)


@admin_app.command("history")
def history(
    config: ConfigOption = None,
    as_json: JsonOption = False,
    limit: Annotated[int, typer.Option(min=1, help="Newest cycles to show.")] = 20,
) -> None:
    """Cycles (newest first) and which version served when."""
    cfg = read_config(config)
    with _store(cfg) as store:
        data = status_mod.history(store, limit=limit)
    lines = [
        f"cycle {c['id']:4} {c['state']:9} {c['started_at']} {', '.join(c['trigger_reasons'])}: "
        f"{c['outcome'] or _first_line(c['error']) or ''}"
        for c in data["cycles"]
    ]
    lines += [
        f"served {s['version']} from {s['from']} until {s['until'] or 'now'} ({s['moved_by']}: {s['reason']})"
        for s in data["serving"]
    ]
    _print(data, as_json, "\n".join(lines) or "no history yet")


@admin_app.command("decisions")
def decisions(
    config: ConfigOption = None,
    as_json: JsonOption = False,
    kind: Annotated[str | None, typer.Option(help="trigger, recipe, promotion, rollback or self-improve.")] = None,
    limit: Annotated[int, typer.Option(min=1)] = 20,
) -> None:
    """Policy decisions with every reason and the evidence behind them."""
    cfg = read_config(config)
    with _store(cfg) as store:
        data = [status_mod.decision_dict(d) for d in store.decisions.list(kind=kind, limit=limit)]
    lines = []
    for d in data:
        lines.append(
            f"{d['at']} {d['kind']} → {d['action']}" + (f" (cycle {d['cycle']})" if d["cycle"] else "")
        )
        for reason in d["reasons"]:
            lines.append(
                "    "
                + (
                    f"[{reason['kind']}] {reason['code']}: {reason['message']}"
                    if isinstance(reason, dict)
                    else str(reason)
                )
            )
    _print(data, as_json, "\n".join(lines) or "no decisions yet")


@admin_app.command("report")
def report(
    cycle_id: Annotated[int, typer.Argument(metavar="CYCLE", help="The cycle number (`qtha history`).")],
    config: ConfigOption = None,
    open_it: Annotated[bool, typer.Option("--open", help="Open it in the default browser too.")] = False,
) -> None:
    """Print the path of a finished cycle's report (cycles/<n>/report.html), writing it if it is missing."""
    from agent.console import report_path, write_cycle_report

    cfg = read_config(config)
    path = report_path(cfg.state_dir, cycle_id)
    if not path.is_file():
        with _store(cfg) as store:
            try:
                cycle = store.cycles.get(cycle_id)
            except StoreError as exc:
                fail(str(exc), EXIT_USAGE)
            if not cycle.state.terminal:
                fail(f"cycle {cycle_id} is still running ({cycle.state}); its report is written when it finishes")
            try:
                path = write_cycle_report(store, cfg.state_dir, cycle_id)
            except OSError as exc:
                fail(f"cannot write {path}: {exc}")
    typer.echo(str(path.resolve()))
    if open_it:
        import webbrowser

        if not webbrowser.open(path.resolve().as_uri()):
            fail(f"no browser could be opened; open {path.resolve()} yourself")


@policy_app.command("show")
def policy_show(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """The effective policy: the config file's [policy] with operator overrides on top."""
    cfg = read_config(config)
    with _store(cfg) as store:
        overrides = store.overrides.all()
    policy, ignored = resolve_policy(cfg, overrides)
    for message in ignored:
        typer.echo(f"warning: {message}", err=True)
    effective = policy.model_dump(mode="json")
    overridden = {k[len(OVERRIDE_PREFIX) :] for k in overrides if k.startswith(OVERRIDE_PREFIX)}
    overridden = {k for k in overridden if k in effective and effective[k] == overrides[OVERRIDE_PREFIX + k]}
    data = {
        k: {"value": v, "source": "override" if k in overridden else "config"} for k, v in effective.items()
    }
    _print(
        data,
        as_json,
        "\n".join(
            f"{k} = {json.dumps(v['value'])}" + ("  # override" if v["source"] == "override" else "")
            for k, v in data.items()
        ),
    )


# -- overrides (queued commands) -----------------------------------------------------------------------------------
@admin_app.command("pause")
def pause(config: ConfigOption = None, key: KeyOption = None, wait: WaitOption = 0) -> None:
    """Stop starting new cycles (a running cycle finishes)."""
    _submit(config, "pause", {}, key=key, wait=wait)


@admin_app.command("resume")
def resume(config: ConfigOption = None, key: KeyOption = None, wait: WaitOption = 0) -> None:
    """Allow cycles again."""
    _submit(config, "resume", {}, key=key, wait=wait)


_MAX_PAIR_VALUE = 200


def _parse_pairs(pairs: list[str], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            fail(f"{what} {short_repr(pair)} must look like KEY=VALUE", EXIT_USAGE)
        if len(raw) > _MAX_PAIR_VALUE:  # no knob needs more; and the refusal must still fit on one line
            fail(f"{what} {name[:40]}: the value has {len(raw)} characters; at most {_MAX_PAIR_VALUE}", EXIT_USAGE)
        try:
            out[name] = json.loads(raw)
        except (ValueError, RecursionError):  # not JSON (or a 5000-digit number): the text itself
            out[name] = raw
    return out


@admin_app.command("cycle")
def cycle(
    now: Annotated[
        bool, typer.Option("--now", help="Run a cycle now (overrides cooldown and quiet hours).")
    ] = False,
    recipe: Annotated[
        list[str] | None,
        typer.Option("--recipe", help="Recipe override KEY=VALUE, repeatable (e.g. steps=20, adapter=lora)."),
    ] = None,
    config: ConfigOption = None,
    key: KeyOption = None,
    wait: WaitOption = 0,
) -> None:
    """Ask for a cycle now. Exit 4 when a cycle is already running."""
    if not now:
        fail("say --now to ask for a cycle (the trigger policy decides otherwise)", EXIT_USAGE)
    overrides = _parse_pairs(recipe or [], "--recipe")
    cfg = read_config(config)
    try:
        check_override(cfg, overrides)
    except RecipeOverrideError as exc:
        fail(str(exc), EXIT_USAGE)
    with _store(cfg) as store:
        active = store.cycles.active()
    if active is not None:
        fail(
            f"cycle {active.id} is running ({active.state}); one cycle at a time — retry when it ends",
            EXIT_LOCKED,
        )
    _submit(config, "cycle", {"recipe": overrides}, key=key, wait=wait)


@admin_app.command("promote")
def promote(
    version: Annotated[str | None, typer.Argument(help="The version to make champion.")] = None,
    now: Annotated[
        bool, typer.Option("--now", help="End the running canary with a promotion (or skip the next canary).")
    ] = False,
    config: ConfigOption = None,
    key: KeyOption = None,
    wait: WaitOption = 0,
) -> None:
    """Make VERSION the champion (verified first; audited). `--now` skips the canary: the running canary's
    candidate (or the next one that passes the gate) is promoted without waiting for live traffic."""
    if version is None and not now:
        fail("give a VERSION to promote, or --now to end the running canary", EXIT_USAGE)
    _submit(config, "promote", {"version": version, "now": True} if now else {"version": version}, key=key, wait=wait)


@admin_app.command("rollback")
def rollback(config: ConfigOption = None, key: KeyOption = None, wait: WaitOption = 0) -> None:
    """Serve the previous champion again."""
    _submit(config, "rollback", {}, key=key, wait=wait)


@admin_app.command("pin")
def pin(
    version: Annotated[str | None, typer.Argument(help="Promote this version first.")] = None,
    config: ConfigOption = None,
    key: KeyOption = None,
    wait: WaitOption = 0,
) -> None:
    """Freeze the champion against automatic promotion and rollback."""
    _submit(config, "pin", {"version": version}, key=key, wait=wait)


@admin_app.command("unpin")
def unpin(config: ConfigOption = None, key: KeyOption = None, wait: WaitOption = 0) -> None:
    """Allow automatic promotion and rollback again."""
    _submit(config, "unpin", {}, key=key, wait=wait)


@admin_app.command("eval")
def evaluate(version: str, config: ConfigOption = None, key: KeyOption = None, wait: WaitOption = 0) -> None:
    """Evaluate VERSION on the held-out set (results in `qtha versions`)."""
    _submit(config, "eval", {"version": version}, key=key, wait=wait)


@policy_app.command("set")
def policy_set(
    assignment: str, config: ConfigOption = None, key: KeyOption = None, wait: WaitOption = 0
) -> None:
    """Override one policy knob: KEY=VALUE (see `qtha policy show`)."""
    name, sep, raw = assignment.partition("=")
    if not sep:
        fail(f"{assignment!r} must look like KEY=VALUE", EXIT_USAGE)
    try:
        parse_policy_value(read_config(config).policy, name, raw)  # refuse typos before queueing
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    _submit(config, "policy_set", {"key": name, "value": raw}, key=key, wait=wait)


@policy_app.command("unset")
def policy_unset(name: str, config: ConfigOption = None, key: KeyOption = None, wait: WaitOption = 0) -> None:
    """Drop an override: KEY returns to the config file's value."""
    _submit(config, "policy_unset", {"key": name}, key=key, wait=wait)


# -- data ----------------------------------------------------------------------------------------------------------
@admin_app.command("ingest")
def ingest(file: Path, config: ConfigOption = None) -> None:
    """Validate a JSONL file and drop it into the inbox (the daemon de-duplicates and moves it into the dataset)."""
    cfg = read_config(config)
    shown = display_name(str(file))
    if not file.name.endswith(".jsonl"):
        fail(f"{shown} refused: the name does not end in .jsonl; only JSON Lines files are accepted")
    try:
        # Read once, validate those bytes and queue those bytes: a FIFO is refused without blocking, and a file
        # that changes after validation cannot queue unvalidated lines.
        data = read_regular_file(file, max_bytes=cfg.data.max_file_bytes, follow_symlinks=True)
        examples = parse_examples(data, max_chars=cfg.data.max_text_chars)
    except FileNotFoundError:
        fail(f"{shown} does not exist", EXIT_USAGE)
    except PermissionError:
        fail(f"{shown} cannot be read (permission denied); check its mode and owner", EXIT_USAGE)
    except InboxError as exc:
        fail(f"{shown} refused: {exc}")
    inbox = cfg.inbox_dir
    inbox.mkdir(parents=True, exist_ok=True)
    if display_name(file.name) != file.name:
        fail(f"{shown} refused: the file name is not UTF-8; rename it")
    target = inbox / f"{uuid.uuid4().hex[:8]}-{file.name}"
    tmp = target.with_name(target.name + ".part")  # the daemon skips *.part files until the rename
    tmp.write_bytes(data)
    os.replace(tmp, target)
    typer.echo(f"queued {len(examples)} examples as {target}")


@admin_app.command("observe")
def observe(
    name: str,
    value: Annotated[str, typer.Argument(help="A finite number.")],
    label: Annotated[list[str] | None, typer.Option("--label", help="k=v, repeatable.")] = None,
    config: ConfigOption = None,
) -> None:
    """Record a metric sample about the deployed model (drift detection reads policy.drift_metric).

    Only documented series are accepted (e.g. live_feedback_score --label version=c000002); see the README,
    'What the daemon watches'. Anything else is refused with exit status 2.
    """
    labels = {k: str(v) for k, v in _parse_pairs(label or [], "--label").items()}
    try:
        number = check_sample(name, value, labels)  # before touching the database: inf, NaN, an empty name
    except InvalidSampleError as exc:
        fail(str(exc), EXIT_USAGE)
    cfg = read_config(config)
    try:
        check_series(name, labels)
    except UnknownSeriesError as exc:
        fail(str(exc), EXIT_USAGE)
    with _store(cfg) as store:
        sample = store.metrics.record(name, number, source="operator", labels=labels)
    typer.echo(f"recorded {sample.name}={sample.value:g} {labels or ''} at {sample.at.isoformat()}")
