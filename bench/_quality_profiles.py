"""Sizes of the quality study: the profiles and the per-run plan they expand to."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from bench._quality_data import TaskSize

__all__ = ["PROFILES", "Profile", "RunSpec", "plan_comparison", "plan_sweep", "run_settings"]


@dataclass(frozen=True)
class Profile:
    """Everything that sizes a study; identical for every arm.

    Attributes:
        name: the profile's name.
        seeds: training seeds (adapter init, dropout streams and batch order) of the cheap arms.
        costly_seeds: how many of ``seeds`` the costly arms (activation mode) run.
        maths: maths sizes; ``maths_steps`` and ``maths_batch`` its optimizer steps and batch size.
        dialogue: dialogue sizes; ``dialogue_steps``/``dialogue_batch`` likewise.
        learning_rate: peak learning rate of an arm that is neither swept nor follows a swept arm (and of every arm
            when ``lr_grid`` is empty).
        warmup_steps: linear warm-up, then cosine decay to a tenth of the peak.
        lr_grid: peak learning rates swept, on the maths task with the first seed, for each of ``sweep_arms``; each
            swept arm is then compared at the rate of its lowest late training loss (the held-out set plays no part).
            Empty: no sweep, every arm at ``learning_rate``.
        sweep_arms: arms whose learning rate is swept (LoRA among them, so that both sides are tuned alike).
        lr_follows: (arm, swept arm) pairs: the arm trains at the swept arm's chosen rate (the classical ablation
            must share its quantum twin's rate to isolate the circuit; activation mode is too costly to sweep).
        activation_qubits: circuit width of the activation-mode arm.
        activation_layers: its depth.
        arms: arms to run, by name (see ``bench._quality_arms.default_arms``).
        extra_arms: arms run like the costly ones (after the others, on ``costly_tasks``) to save time, with the
            first ``extra_seeds`` seeds (default: ``costly_seeds``).
        extra_seeds: see ``extra_arms``.
        costly_tasks: the tasks the costly and extra arms run on.
        tasks: tasks to run.
        data_seed: fixes the problems drawn and the dialogue split (the same for all arms and seeds).
        eval_batch: rows per held-out loss batch.
        gen_batch: prompts per greedy-generation batch (at least n_test: one prompt width, one compilation).
        bootstrap: bootstrap resamples of each paired difference.
    """

    name: str
    seeds: tuple[int, ...]
    costly_seeds: int
    maths: TaskSize
    maths_steps: int
    maths_batch: int
    dialogue: TaskSize
    dialogue_steps: int
    dialogue_batch: int
    learning_rate: float = 1e-3
    warmup_steps: int = 10
    lr_grid: tuple[float, ...] = ()
    sweep_arms: tuple[str, ...] = ("lora", "qtha_w10")
    lr_follows: tuple[tuple[str, str], ...] = ()
    activation_qubits: int = 4
    activation_layers: int = 2
    arms: tuple[str, ...] = ("lora", "qtha_w10", "qtha_w4", "classical_w10", "qtha_act")
    extra_arms: tuple[str, ...] = ()
    extra_seeds: int | None = None
    costly_tasks: tuple[str, ...] = ("maths", "dialogue")
    tasks: tuple[str, ...] = ("maths", "dialogue")
    data_seed: int = 0
    eval_batch: int = 8
    gen_batch: int = 100
    bootstrap: int = 2000

    def run_settings(self) -> dict[str, Any]:
        """The fields that define what one run measures (what ``--resume`` must find unchanged)."""
        return json.loads(json.dumps(run_settings(self.to_json())))  # tuples as the lists a results file holds

    def to_json(self) -> dict[str, Any]:
        """The profile as plain JSON data (recorded with the results, compared on ``--resume``)."""
        return asdict(self)

    def with_overrides(self, **changes: Any) -> Profile:
        """This profile with the given fields replaced (None values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


# Fields that only choose which runs a study plans, or how it summarises them: a run does not depend on them.
# ``lr_probe``/``lr_probe_arms`` are the plan fields of the first study's results files (read by ``--resume``).
_PLAN_FIELDS = ("name", "seeds", "costly_seeds", "lr_grid", "sweep_arms", "lr_follows", "arms", "extra_arms",
                "extra_seeds", "costly_tasks", "tasks", "bootstrap", "lr_probe", "lr_probe_arms")


def run_settings(profile: dict[str, Any]) -> dict[str, Any]:
    """The run-defining part of a profile given as JSON data (see ``Profile.run_settings``)."""
    return {k: v for k, v in profile.items() if k not in _PLAN_FIELDS}


PROFILES: dict[str, Profile] = {
    # The larger study: 6x the maths steps, longer sequences, 200 test problems. Not yet run end to end: from the
    # quick profile's measured times per step, about 3 h on an idle 2-core machine.
    "full": Profile(
        name="full",
        seeds=(0, 1, 2),
        costly_seeds=1,
        maths=TaskSize(seq_len=144, n_train=2000, n_test=200, max_new_tokens=64),
        maths_steps=120,
        maths_batch=4,
        dialogue=TaskSize(seq_len=64, n_train=2000, n_test=1000),
        dialogue_steps=80,
        dialogue_batch=8,
        lr_grid=(1e-3, 3e-3, 1e-2),
        sweep_arms=("lora", "qtha_w10"),
        lr_follows=(("classical_w10", "qtha_w10"), ("qtha_act", "qtha_w10"), ("qtha_w4", "qtha_w10")),
        gen_batch=200,
        arms=("lora", "qtha_w10", "qtha_w4", "classical_w10", "qtha_act"),
        extra_arms=("classical_w10", "qtha_w4"),
        costly_tasks=("maths",),
    ),
    # About 70 min on an idle 2-core machine (measured: 31 runs, 68 min of training and evaluation): short runs,
    # every cheap arm's learning rate swept, three seeds of LoRA and QTHA on both tasks and of the ablation and the
    # small circuit on maths, activation mode once.
    "quick": Profile(
        name="quick",
        seeds=(0, 1, 2),
        costly_seeds=1,
        maths=TaskSize(seq_len=128, n_train=400, n_test=80, max_new_tokens=64),
        maths_steps=20,
        maths_batch=4,
        dialogue=TaskSize(seq_len=64, n_train=2000, n_test=1000),
        dialogue_steps=20,
        dialogue_batch=4,
        warmup_steps=3,
        lr_grid=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
        sweep_arms=("lora", "qtha_w10", "qtha_w4"),
        lr_follows=(("classical_w10", "qtha_w10"), ("qtha_act", "qtha_w10")),
        arms=("lora", "qtha_w10", "classical_w10", "qtha_w4", "qtha_act"),
        extra_arms=("classical_w10", "qtha_w4"),
        extra_seeds=3,
        costly_tasks=("maths",),
    ),
    # Seconds: checks the pipeline end to end on the tiny test model (a byte-level tokenizer, hence the long
    # sequences); its numbers mean nothing.
    "smoke": Profile(
        name="smoke",
        seeds=(0, 1),
        costly_seeds=1,
        maths=TaskSize(seq_len=448, n_train=8, n_test=4, max_new_tokens=4),
        maths_steps=2,
        maths_batch=2,
        dialogue=TaskSize(seq_len=256, n_train=8, n_test=4),
        dialogue_steps=2,
        dialogue_batch=2,
        warmup_steps=1,
        activation_qubits=2,
        activation_layers=1,
        eval_batch=4,
        gen_batch=4,
        bootstrap=100,
    ),
}


@dataclass(frozen=True)
class RunSpec:
    """One training run of the study."""

    task: str
    arm: str
    seed: int
    learning_rate: float
    sweep: bool = False

    @property
    def key(self) -> str:
        """Identity of the run inside one study (what ``--resume`` matches)."""
        return f"{self.task}/{self.arm}/seed{self.seed}/lr{self.learning_rate:g}"


def plan_sweep(profile: Profile) -> list[RunSpec]:
    """The learning-rate sweep: every swept arm at every rate of the grid, on maths, with the first seed.

    Empty when the profile has no grid or no maths task.
    """
    if not profile.lr_grid or "maths" not in profile.tasks:
        return []
    return [RunSpec("maths", arm, profile.seeds[0], lr, sweep=True)
            for arm in profile.sweep_arms if arm in profile.arms for lr in profile.lr_grid]


def learning_rate_of(arm: str, chosen: Mapping[str, float], *, follows: Iterable[Sequence[str]],
                     default: float) -> float:
    """The peak learning rate ``arm`` is compared at: its own chosen rate, that of the arm it follows
    (``follows``: (arm, swept arm) pairs), or ``default``."""
    followed = dict((a, b) for a, b in follows).get(arm, "")
    return chosen.get(arm, chosen.get(followed, default))


def plan_comparison(profile: Profile, costly: set[str], chosen: Mapping[str, float]) -> list[RunSpec]:
    """The comparison runs, in rounds, so that a study cut short still holds complete comparisons.

    Round k trains seed k of every cheap arm on every task; the costly arms (their first ``costly_seeds`` seeds)
    and the extra arms (first ``extra_seeds``) come after all rounds, on ``costly_tasks``. A run that the sweep
    already made (same task, arm, seed and rate) is planned again under the same key and reused, not retrained.

    Args:
        profile: the sizes.
        costly: names of arms that only run ``profile.costly_seeds`` seeds (slow arms).
        chosen: swept arm → chosen peak learning rate (see :func:`learning_rate_of`).
    """
    extra = set(profile.extra_arms)
    later = costly | extra

    def rate(arm: str) -> float:
        return learning_rate_of(arm, chosen, follows=profile.lr_follows, default=profile.learning_rate)

    runs: list[RunSpec] = []
    for seed in profile.seeds:
        runs += [RunSpec(task, arm, seed, rate(arm))
                 for task in profile.tasks for arm in profile.arms if arm not in later]
    extra_seeds = profile.costly_seeds if profile.extra_seeds is None else profile.extra_seeds
    for arm in profile.arms:
        if arm not in later:
            continue
        n = profile.costly_seeds if arm in costly else extra_seeds
        runs += [RunSpec(task, arm, seed, rate(arm))
                 for seed in profile.seeds[:n] for task in profile.tasks if task in profile.costly_tasks]
    return runs
