"""Race test: two processes promote different candidates concurrently, 200 attempts each.

Each attempt reads the champion and promotes one of its own candidates with a compare-and-swap on the epoch it
saw. Never two champions (each process checks after every attempt), every successful promotion appears in the
audit log exactly once under its epoch, the epochs have no gap, and ``current`` ends on the champion.

Run as ``python -m tests.agent.test_race worker ...`` for one contender.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.artifacts import layout as artifacts
from agent.artifacts.layout import Layout
from agent.artifacts.registry import Registry
from agent.store import AuditKind, ChampionMovedError, VersionStatus, open_store

ROOT = Path(__file__).resolve().parents[2]
ATTEMPTS = 200


def _contender(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--candidates", required=True)
    parser.add_argument("--attempts", type=int, default=ATTEMPTS)
    args = parser.parse_args(argv)
    store = open_store(args.url)
    registry = Registry(store, Layout(args.state_dir))
    mine = args.candidates.split(",")
    print("ready", flush=True)
    sys.stdin.readline()  # start barrier: both contenders begin together
    won, lost, two_champions = [], 0, 0
    for attempt in range(args.attempts):
        seen = store.champion.get()
        target = mine[0] if seen.version_id != mine[0] else mine[1]
        try:
            state = registry.promote(
                target, expected_epoch=seen.epoch, actor=args.name, reason=f"attempt {attempt}"
            )
            won.append(state.epoch)
        except ChampionMovedError:
            lost += 1
        if len(store.versions.list(status=VersionStatus.CHAMPION)) != 1:
            two_champions += 1
    store.close()
    print(
        json.dumps({"name": args.name, "won": won, "lost": lost, "two_champions": two_champions}), flush=True
    )
    return 0


def _race(state_dir: Path, url: str) -> None:
    store = open_store(url)
    registry = Registry(store, Layout(state_dir))
    src = state_dir.parent / "src"
    for i, version_id in enumerate(["base", "a1", "a2", "b1", "b2"]):
        (src / version_id).mkdir(parents=True)
        (src / version_id / "adapter.bin").write_bytes(bytes([i]) * 4096)
        registry.publish_candidate(version_id, src / version_id, base_fingerprint="b", adapter_kind="lora")
    registry.promote("base", expected_epoch=0, actor="bootstrap", reason="first")

    procs = {
        name: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.agent.test_race",
                "worker",
                "--state-dir",
                str(state_dir),
                "--url",
                url,
                "--name",
                name,
                "--candidates",
                candidates,
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for name, candidates in [("proc-a", "a1,a2"), ("proc-b", "b1,b2")]
    }
    for proc in procs.values():
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    for proc in procs.values():
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = {}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
        results[name] = json.loads(out.strip().splitlines()[-1])

    champion = store.champion.get()
    serves = store.audit.entries(kind=AuditKind.SERVE)
    total_won = sum(len(r["won"]) for r in results.values())
    print(
        f"\nrace ({store.backend}): "
        + ", ".join(f"{n} won {len(r['won'])} lost {r['lost']}" for n, r in results.items())
        + f", champion epoch {champion.epoch}"
    )
    for name, r in results.items():
        assert len(r["won"]) + r["lost"] == ATTEMPTS
        assert r["two_champions"] == 0
        assert len(r["won"]) > 0
        # Every promotion this process won is in the audit log exactly once, under its epoch and its name.
        assert sorted(e.epoch for e in serves if e.actor == name) == sorted(r["won"])
    assert [e.epoch for e in serves] == list(range(1, champion.epoch + 1))
    assert champion.epoch == 1 + total_won
    assert [v.id for v in store.versions.list(status=VersionStatus.CHAMPION)] == [champion.version_id]
    assert artifacts.read_current(Layout(state_dir)) == champion.version_id == serves[-1].version_id
    store.close()


@pytest.mark.slow
def test_two_processes_never_both_promote_sqlite(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    _race(state_dir, f"sqlite:///{state_dir / 'qtha.db'}")


@pytest.mark.slow
@pytest.mark.postgres
def test_two_processes_never_both_promote_postgres(tmp_path: Path, postgres: object) -> None:
    _race(tmp_path / "state", postgres.fresh_url())  # type: ignore[attr-defined]


if __name__ == "__main__":
    if sys.argv[1:2] != ["worker"]:
        sys.exit(
            "usage: python -m tests.agent.test_race worker --state-dir D --url U --name N --candidates A,B"
        )
    sys.exit(_contender(sys.argv[2:]))
