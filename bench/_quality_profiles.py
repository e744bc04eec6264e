"""Sizes of the quality study: the profiles and the per-run plan they expand to."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from bench._quality_data import TaskSize

__all__ = ["PROFILES", "Profile", "RunSpec", "plan_comparison", "plan_sweep", "rates_by_task", "run_settings",
           "runs_on", "task_learning_rate"]


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
        lr_grid: peak learning rates swept, on each of ``sweep_tasks`` with the first seed, for each of
            ``sweep_arms`` that runs on that task; each swept arm is then compared, on that task, at the rate of its
            lowest late training loss (the held-out set plays no part). Empty: no sweep; every arm at the rates of
            ``rates_from`` or else at ``learning_rate``.
        sweep_arms: arms whose learning rate is swept (LoRA among them, so that both sides are tuned alike).
        sweep_tasks: tasks that choose their own rates; any other task uses the rates chosen on the first of them.
        lr_follows: (arm, swept arm) pairs: the arm trains at the swept arm's chosen rate (the weight-mode
            classical ablation shares its quantum twin's rate, to change nothing but the circuit).
        rates_from: a results file, relative to the study's output folder, whose chosen rates this profile uses
            instead of a sweep of its own (the full profile takes the quick study's).
        activation_qubits: circuit width of the activation-mode arm.
        activation_layers: its depth.
        arms: arms to run, by name (see ``bench._quality_arms.default_arms``).
        extra_arms: arms run like the costly ones (after the others, on ``costly_tasks``) to save time, with the
            first ``extra_seeds`` seeds (default: ``costly_seeds``).
        extra_seeds: see ``extra_arms``.
        costly_tasks: the tasks the costly and extra arms run on.
        costly_in_rounds: train the costly arms seed by seed with the others (round k: seed k of every arm)
            instead of after all rounds, so that a study cut short holds every arm's first seeds.
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
    sweep_tasks: tuple[str, ...] = ("maths",)
    lr_follows: tuple[tuple[str, str], ...] = ()
    rates_from: str = ""
    activation_qubits: int = 4
    activation_layers: int = 2
    arms: tuple[str, ...] = ("lora", "qtha_w10", "qtha_w4", "classical_w10", "qtha_act")
    extra_arms: tuple[str, ...] = ()
    extra_seeds: int | None = None
    costly_tasks: tuple[str, ...] = ("maths", "dialogue")
    costly_in_rounds: bool = False
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
                "extra_seeds", "costly_tasks", "tasks", "bootstrap", "lr_probe", "lr_probe_arms", "sweep_tasks",
                "rates_from", "costly_in_rounds")


def run_settings(profile: dict[str, Any]) -> dict[str, Any]:
    """The run-defining part of a profile given as JSON data (see ``Profile.run_settings``)."""
    return {k: v for k, v in profile.items() if k not in _PLAN_FIELDS}


PROFILES: dict[str, Profile] = {
    # The longer runs (issue 20): 6x the maths steps, 200 test problems, maths only, LoRA against the best weight-mode
    # arm and the best activation-mode arm of the quick study, three seeds each, at the rates the quick study chose
    # (a sweep at this length would cost ~10 min a run). About 10 min a run on an idle 2-core machine.
    "full": Profile(
        name="full",
        seeds=(0, 1, 2),
        costly_seeds=3,
        maths=TaskSize(seq_len=144, n_train=2000, n_test=200, max_new_tokens=64),
        maths_steps=120,
        maths_batch=4,
        dialogue=TaskSize(seq_len=64, n_train=2000, n_test=1000),
        dialogue_steps=80,
        dialogue_batch=8,
        rates_from="../results.json",
        gen_batch=200,
        arms=("lora", "qtha_w10", "qtha_act"),
        costly_tasks=("maths",),
        costly_in_rounds=True,
        tasks=("maths",),
    ),
    # Short runs: every arm's learning rate swept on maths (the per-token stand-in's too), LoRA's and QTHA's again on
    # dialogue; three seeds of LoRA and QTHA on both tasks and of the other arms on maths. The first version
    # (activation mode once, at weight mode's rate; no per-token stand-in; dialogue at the maths rates) measured
    # 31 runs, 68 min of training and evaluation on an idle 2-core machine.
    "quick": Profile(
        name="quick",
        seeds=(0, 1, 2),
        costly_seeds=3,
        maths=TaskSize(seq_len=128, n_train=400, n_test=80, max_new_tokens=64),
        maths_steps=20,
        maths_batch=4,
        dialogue=TaskSize(seq_len=64, n_train=2000, n_test=1000),
        dialogue_steps=20,
        dialogue_batch=4,
        warmup_steps=3,
        lr_grid=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
        sweep_arms=("lora", "qtha_w10", "qtha_w4", "qtha_act", "classical_act"),
        sweep_tasks=("maths", "dialogue"),
        lr_follows=(("classical_w10", "qtha_w10"),),
        arms=("lora", "qtha_w10", "classical_w10", "qtha_w4", "qtha_act", "classical_act"),
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


def runs_on(profile: Profile, arm: str, task: str, costly: Collection[str]) -> bool:
    """Whether the study trains ``arm`` on ``task``: the cheap arms on every task, the costly and extra arms on
    ``costly_tasks`` only."""
    later = arm in costly or arm in profile.extra_arms
    return arm in profile.arms and task in profile.tasks and (not later or task in profile.costly_tasks)


def plan_sweep(profile: Profile, costly: Collection[str] = ()) -> list[RunSpec]:
    """The learning-rate sweep: on each of ``sweep_tasks``, every swept arm that runs there at every rate of the
    grid, with the first seed. Empty when the profile has no grid."""
    if not profile.lr_grid:
        return []
    return [RunSpec(task, arm, profile.seeds[0], lr, sweep=True)
            for task in profile.sweep_tasks for arm in profile.sweep_arms if runs_on(profile, arm, task, costly)
            for lr in profile.lr_grid]


def rates_by_task(rates: Mapping[str, Any], first_task: str = "maths") -> dict[str, dict[str, float]]:
    """Chosen rates as task → arm → rate. A results file of the first studies holds one arm → rate mapping (chosen
    on maths, used on every task): it is read as ``first_task``'s."""
    if all(isinstance(v, int | float) for v in rates.values()):
        return {first_task: dict(rates)} if rates else {}
    return {task: dict(by_arm) for task, by_arm in rates.items()}


def learning_rate_of(arm: str, chosen: Mapping[str, float], *, follows: Iterable[Sequence[str]],
                     default: float) -> float:
    """The peak learning rate ``arm`` is compared at: its own chosen rate, that of the arm it follows
    (``follows``: (arm, swept arm) pairs), or ``default``."""
    followed = dict((a, b) for a, b in follows).get(arm, "")
    return chosen.get(arm, chosen.get(followed, default))


def task_learning_rate(profile: Mapping[str, Any], chosen: Mapping[str, Mapping[str, float]], arm: str,
                       task: str) -> float:
    """The peak learning rate ``arm`` is compared at on ``task``: chosen on that task when it was swept there,
    else on the first swept task; an arm that follows another takes that arm's; else the profile's default.

    Args:
        profile: the profile as JSON data (``Profile.to_json()`` or a results file's).
        chosen: task → arm → chosen rate.
        arm: the arm.
        task: the task.
    """
    first = (profile.get("sweep_tasks") or ["maths"])[0]
    rates = {**chosen.get(first, {}), **chosen.get(task, {})}
    return learning_rate_of(arm, rates, follows=profile.get("lr_follows", []), default=profile["learning_rate"])


def plan_comparison(profile: Profile, costly: set[str], chosen: Mapping[str, Mapping[str, float]]) -> list[RunSpec]:
    """The comparison runs, in rounds, so that a study cut short still holds complete comparisons.

    Round k trains seed k of every cheap arm on every task; the costly arms (their first ``costly_seeds`` seeds)
    and the extra arms (first ``extra_seeds``) come after all rounds, on ``costly_tasks`` (with
    ``costly_in_rounds``, the costly arms train in the rounds instead). A run that the sweep
    already made (same task, arm, seed and rate) is planned again under the same key and reused, not retrained.

    Args:
        profile: the sizes.
        costly: names of arms that only run ``profile.costly_seeds`` seeds (slow arms).
        chosen: task → swept arm → chosen peak learning rate (see :func:`task_learning_rate`).
    """
    later = costly | set(profile.extra_arms)
    settings = profile.to_json()

    def spec(task: str, arm: str, seed: int) -> RunSpec:
        return RunSpec(task, arm, seed, task_learning_rate(settings, chosen, arm, task))

    extra_seeds = profile.costly_seeds if profile.extra_seeds is None else profile.extra_seeds
    in_rounds = costly if profile.costly_in_rounds else set()

    def seeds_of(arm: str) -> tuple[int, ...]:
        return profile.seeds if arm not in later else profile.seeds[:profile.costly_seeds if arm in costly
                                                                    else extra_seeds]

    def trains(arm: str, task: str, seed: int) -> bool:
        return runs_on(profile, arm, task, costly) and seed in seeds_of(arm)

    runs: list[RunSpec] = []
    for seed in profile.seeds:
        runs += [spec(task, arm, seed) for task in profile.tasks for arm in profile.arms
                 if (arm not in later or arm in in_rounds) and trains(arm, task, seed)]
    for arm in profile.arms:
        if arm in later and arm not in in_rounds:
            runs += [spec(task, arm, seed) for seed in seeds_of(arm) for task in profile.tasks
                     if trains(arm, task, seed)]
    return runs
