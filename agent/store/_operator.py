"""Operator commands (idempotent by key, applied once by the daemon) and policy overrides, all audited."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from agent.store import _audit, _convert
from agent.store._db import TableAccess
from agent.store._tables import CommandRow, OverrideRow
from agent.store.errors import NotFoundError
from agent.store.records import AuditKind, OperatorCommand

_C = CommandRow.__table__  # type: ignore[attr-defined]
_O = OverrideRow.__table__  # type: ignore[attr-defined]


def _by_key(conn: Connection, key: str) -> OperatorCommand | None:
    row = conn.execute(select(_C).where(_C.c.key == key)).mappings().first()
    return None if row is None else _convert.command(row)


class Commands(TableAccess):
    """Commands the CLI queues and the daemon applies (pause, resume, cycle now, promote, rollback, pin)."""

    def submit(
        self, kind: str, args: Mapping[str, Any] | None = None, *, key: str, actor: str
    ) -> OperatorCommand:
        """Queues a command. Idempotent: submitting the same ``key`` again returns the first command.

        Raises:
            ValueError: ``key`` was used for a different command (kind or args differ); use a new key.
        """
        args = dict(args or {})
        try:
            with self._db.tx() as conn:
                existing = _by_key(conn, key)
                if existing is None:
                    conn.execute(
                        insert(_C).values(
                            key=key, kind=kind, args=args, actor=actor, created_at=self._clock.now()
                        )
                    )
                    found = _by_key(conn, key)
                    assert found is not None
                    return found
        except IntegrityError:  # PostgreSQL: a concurrent submit of the same key won the insert
            existing = self.get(key)
        if existing.kind != kind or dict(existing.args) != args:
            raise ValueError(
                f"idempotency key {key!r} already names command {existing.kind} {dict(existing.args)}; "
                "use a new key for a different command"
            )
        return existing

    def get(self, key: str) -> OperatorCommand:
        """The command with idempotency key ``key``. Raises NotFoundError."""
        with self._db.tx(write=False) as conn:
            found = _by_key(conn, key)
        if found is None:
            raise NotFoundError(f"no operator command with key {key!r}")
        return found

    def pending(self) -> list[OperatorCommand]:
        """Commands not yet applied, oldest first."""
        with self._db.tx(write=False) as conn:
            rows = conn.execute(select(_C).where(_C.c.applied_at.is_(None)).order_by(_C.c.id)).mappings()
            return [_convert.command(r) for r in rows]

    def list(self, *, limit: int | None = None) -> list[OperatorCommand]:
        """Commands newest first."""
        query = select(_C).order_by(_C.c.id.desc())
        if limit is not None:
            query = query.limit(limit)
        with self._db.tx(write=False) as conn:
            return [_convert.command(r) for r in conn.execute(query).mappings()]

    def mark_applied(
        self, command_id: int, *, ok: bool, result: str, actor: str = "daemon"
    ) -> OperatorCommand:
        """Records the outcome of a command exactly once (audited); a second call returns the first outcome."""
        now = self._clock.now()
        with self._db.tx() as conn:
            moved = conn.execute(
                update(_C)
                .where(_C.c.id == command_id, _C.c.applied_at.is_(None))
                .values(applied_at=now, ok=ok, result=result)
            )
            row = conn.execute(select(_C).where(_C.c.id == command_id)).mappings().first()
            if row is None:
                raise NotFoundError(f"no operator command with id {command_id}")
            command = _convert.command(row)
            if moved.rowcount == 1:
                _audit.append(
                    conn,
                    at=now,
                    kind=AuditKind.COMMAND,
                    actor=f"{command.actor} via {actor}",
                    reason=f"{command.kind}: {'ok' if ok else 'refused'}: {result}",
                    details={"command_id": command.id, "key": command.key, "args": dict(command.args)},
                )
            return command


class Overrides(TableAccess):
    """A small key-value of operator policy overrides (e.g. ``paused``, ``promotion.min_gain``)."""

    def set(self, key: str, value: Any, *, actor: str, reason: str) -> None:
        """Sets ``key`` to the JSON-serialisable ``value`` (audited)."""
        now = self._clock.now()
        with self._db.tx() as conn:
            conn.execute(delete(_O).where(_O.c.key == key))
            conn.execute(insert(_O).values(key=key, value=value, actor=actor, updated_at=now))
            _audit.append(
                conn, at=now, kind=AuditKind.OVERRIDE, actor=actor, reason=reason, details={key: value}
            )

    def clear(self, key: str, *, actor: str, reason: str) -> bool:
        """Removes ``key`` (audited); False if it was not set."""
        now = self._clock.now()
        with self._db.tx() as conn:
            removed = conn.execute(delete(_O).where(_O.c.key == key)).rowcount
            if removed:
                _audit.append(
                    conn, at=now, kind=AuditKind.OVERRIDE, actor=actor, reason=reason, details={key: None}
                )
            return bool(removed)

    def get(self, key: str, default: Any = None) -> Any:
        with self._db.tx(write=False) as conn:
            row = conn.execute(select(_O.c.value).where(_O.c.key == key)).first()
        return default if row is None else row[0]

    def all(self) -> Mapping[str, Any]:
        with self._db.tx(write=False) as conn:
            rows = conn.execute(select(_O.c.key, _O.c.value).order_by(_O.c.key)).all()
        return MappingProxyType({k: v for k, v in rows})
