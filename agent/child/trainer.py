"""The production :class:`~agent.cycle.trainer.Trainer`: training and evaluation in a child process.

Each call runs ``python -m agent.child.entry`` with a task of :mod:`agent.child.tasks` (which wraps ``model/``:
load the base, inject the adapter the recipe names, train with step checkpoints, save the adapter; or score a
version on the held-out set). A crash or an out-of-memory kill ends the child, not the daemon, and the memory goes
back to the system. Progress flows back as events to the injected :class:`~agent.cycle.trainer.TrainingObserver`
(the daemon's writes ``train_loss`` samples, moves the Prometheus metrics and the status line); checkpoints are
reported to the cycle, which may fence the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import policies
from agent.child.datasplit import dataset_fingerprint
from agent.child.runner import ChildOutcome, TaskRunner
from agent.config import QthaConfig
from agent.cycle.trainer import (
    CycleInterrupted,
    DataRefusedError,
    EvalOutcome,
    NullObserver,
    Progress,
    TrainingObserver,
    TrainOutcome,
    checkpoint_step,
)

__all__ = ["TrainingFailedError", "ChildTrainer", "task_config"]

log = logging.getLogger("qtha.trainer")

TRAIN_ENTRY = "agent.child.tasks:train"
EVALUATE_ENTRY = "agent.child.tasks:evaluate"


class TrainingFailedError(RuntimeError):
    """The training or evaluation child failed, was killed or timed out; the message has its stderr tail."""


def task_config(config: QthaConfig) -> dict[str, Any]:
    """The parts of the configuration a task needs, as JSON (the child does not read config files)."""
    return {
        "model_source": config.model.source,
        "targets": list(config.model.targets),
        "task": config.data.task,
        "data_seed": config.data.seed,
        "dataset_dir": str(config.dataset_dir),
        "heldout_fraction": config.data.heldout_fraction,
        "eval_inbox_max": config.evaluation.inbox_examples,
        "seq_len": config.training.seq_len,
        "batch_size": config.training.batch_size,
        "seed": config.training.seed,
        "eval_examples": config.evaluation.examples,
        "eval_pool_examples": config.evaluation.pool_examples,
        "eval_max_new_tokens": config.evaluation.max_new_tokens,
        "eval_batch_size": config.evaluation.batch_size,
        "eval_score": config.evaluation.score,
        "smoke_probes": config.evaluation.smoke_probes,
        "smoke_max_new_tokens": config.evaluation.smoke_max_new_tokens,
        "backend": config.quantum.backend,
        # The [quantum] section as given: file paths and the key's variable name, never the key itself.
        "quantum": config.quantum.model_dump(mode="json"),
        "jax_cache_dir": str(config.state_dir / "jax-cache"),
        "self_improve_dir": str(config.state_dir / "self-improve"),
    }


class ChildTrainer:
    """Trains and evaluates through child processes.

    Args:
        config: the daemon's configuration, or a function returning the current one (read at every call, so a
            SIGHUP reload applies to the next task).
        runner: runs the child (shared with the daemon, which asks it to stop on SIGTERM; a
            :class:`~agent.child.remote.RayRunner` runs it on a Ray cluster).
        observer: told of training steps, circuits run and progress lines.
        train_entry, evaluate_entry: ``module:function`` of the tasks (tests may point at their own).
    """

    def __init__(
        self,
        config: QthaConfig | Callable[[], QthaConfig],
        runner: TaskRunner,
        *,
        observer: TrainingObserver | None = None,
        train_entry: str = TRAIN_ENTRY,
        evaluate_entry: str = EVALUATE_ENTRY,
    ) -> None:
        self._config = config
        self.runner = runner
        self.observer = observer or NullObserver()
        self.train_entry = train_entry
        self.evaluate_entry = evaluate_entry

    @property
    def config(self) -> QthaConfig:
        return self._config() if callable(self._config) else self._config

    def train(
        self,
        recipe: policies.Recipe,
        workdir: Path,
        *,
        resume_from: Path | None,
        parent_dir: Path | None,
        progress: Progress,
    ) -> TrainOutcome:
        cycle = workdir.name
        seen = {"steps": 0, "nonfinite": 0}
        rounds: list[dict[str, Any]] = []  # the self-improvement round's numbers, when the recipe samples

        def on_event(event: dict[str, Any]) -> None:
            kind = event.get("event")
            if kind == "progress":
                step, total = int(event["step"]), int(event["of"])
                nonfinite = int(event.get("nonfinite", 0))
                self.observer.training_step(
                    cycle,
                    step=step,
                    total=total,
                    loss=float(event["loss"]),
                    new_steps=max(0, step - seen["steps"]),
                    new_nonfinite=max(0, nonfinite - seen["nonfinite"]),
                )
                seen["steps"], seen["nonfinite"] = max(seen["steps"], step), max(seen["nonfinite"], nonfinite)
                progress(step, None)
            elif kind == "checkpoint":
                progress(int(event["step"]), Path(event["path"]))
            elif kind == "quantum":
                self._quantum(event)
            elif kind == "self_improve":
                rounds.append(event)
                log.info("cycle %s: self-improve drew %d samples, verified %d, used %d (%s)", cycle,
                         int(event["si_drawn"]), int(event["si_verified"]), int(event["si_used"]), event.get("reasons"))
            elif kind == "log":
                log.info("cycle %s: %s", cycle, event.get("message"))

        payload = task_config(self.config) | {
            "recipe": recipe.to_dict(),
            "workdir": str(workdir),
            "resume_from": None if resume_from is None else str(resume_from),
            "parent_dir": None if parent_dir is None else str(parent_dir),
        }
        # Already-done steps of a resumed run count once: start from the checkpoint's step.
        if resume_from is not None:
            seen["steps"] = checkpoint_step(resume_from)
        outcome = self.runner.run(
            self.train_entry,
            payload,
            workdir / "child",
            on_event=on_event,
            timeout_s=self.config.daemon.train_timeout_s,
        )
        if outcome.status == "failed" and rounds and rounds[-1].get("stopped"):
            numbers = {k: float(v) for k, v in rounds[-1].items() if k.startswith("si_")}
            raise DataRefusedError(str(rounds[-1]["stopped"]), numbers)
        result = self._result(outcome, what=f"training of cycle {cycle}")
        return TrainOutcome(
            artifact_dir=Path(result["artifact_dir"]),
            steps=int(result["steps"]),
            metrics={k: float(v) for k, v in result.get("metrics", {}).items()},
            base_fingerprint=str(result.get("base_fingerprint", "")),
            adapter_kind=str(result.get("adapter_kind", "")),
            adapter_config=dict(result.get("adapter_config", {})),
        )

    def evaluate(self, artifact_dir: Path, *, version_id: str, window: int | None = None) -> EvalOutcome:
        """Scores a version; the result is cached per version, evaluation setting and sampling window (a
        version's artifact is immutable and verified, a window's sample fixed and decoding greedy, so a second
        run gives the same numbers — e.g. the champion's scores in the next cycle's validation — while the next
        window's scheduled evaluation draws new examples and is not served from the cache)."""
        payload = task_config(self.config) | {
            "artifact_dir": str(artifact_dir),
            "version_id": version_id,
            "eval_window": window,
            # The held-out pool includes the inbox's held-out share: new inbox data is a new setting.
            "dataset_fingerprint": dataset_fingerprint(self.config.dataset_dir),
        }
        setting = {
            k: v for k, v in payload.items() if k not in ("artifact_dir", "jax_cache_dir", "dataset_dir")
        }
        key = hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:16]
        cached = self.config.state_dir / "work" / "evals" / f"{version_id}-{key}.json"
        if cached.exists():
            data = json.loads(cached.read_text(encoding="utf-8"))
            return EvalOutcome(version_id, data["scores"], data["metrics"], _probes(data.get("probes", ())))
        work = self.config.state_dir / "work" / f"eval-{version_id}"

        def on_event(event: dict[str, Any]) -> None:
            if event.get("event") == "quantum":
                self._quantum(event)
            elif event.get("event") == "progress":
                self.observer.status(f"evaluating {version_id}: {event.get('done')}/{event.get('of')} examples")

        outcome = self.runner.run(
            self.evaluate_entry,
            payload,
            work,
            on_event=on_event,
            timeout_s=self.config.daemon.train_timeout_s,
        )
        result = self._result(outcome, what=f"evaluation of {version_id}")
        scores = {str(k): float(v) for k, v in result["scores"].items()}
        metrics = {k: float(v) for k, v in result.get("metrics", {}).items()}
        probes = _probes(result.get("probes", ()))
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.tmp")
        record = {"scores": scores, "metrics": metrics, "probes": [p.to_dict() for p in probes]}
        tmp.write_text(json.dumps(record), encoding="utf-8")
        os.replace(tmp, cached)
        return EvalOutcome(version_id=version_id, scores=scores, metrics=metrics, probes=probes)

    def _quantum(self, event: Mapping[str, Any]) -> None:
        backend = str(event.get("backend", self.config.quantum.backend))
        if event.get("offline"):
            offline = dict(event["offline"])
            log.warning(
                "quantum backend %s went offline; policy %s %s: %s",
                backend,
                offline.get("policy"),
                "finished the cycle on qsim" if offline.get("action") == "fell_back" else "failed the cycle",
                offline.get("reason"),
            )
        self.observer.circuits_run(
            backend,
            circuits=int(event.get("circuits", 0)),
            shots=int(event.get("shots", 0)),
            errors={str(k): int(v) for k, v in dict(event.get("errors", {})).items()},
        )

    @staticmethod
    def _result(outcome: ChildOutcome, *, what: str) -> dict[str, Any]:
        if outcome.status == "done":
            return dict(outcome.result or {})
        if outcome.status == "interrupted":
            raise CycleInterrupted(f"{what} stopped on request after a checkpoint")
        raise TrainingFailedError(f"{what} {outcome.status}: {outcome.error}")


def _probes(raw: Any) -> tuple[policies.ProbeResult, ...]:
    return tuple(policies.ProbeResult.from_dict(p) for p in raw)
