"""Sizes of the quality study: the profiles and the per-run plan they expand to."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from bench._quality_data import TaskSize

__all__ = ["PROFILES", "Profile", "RunSpec", "plan_runs", "run_settings"]


@dataclass(frozen=True)
class Profile:
    """Everything that sizes a study; identical for every arm.

    Attributes:
        name: the profile's name.
        seeds: training seeds (adapter init, dropout streams and batch order) of the cheap arms.
        costly_seeds: how many of ``seeds`` the costly arms (activation mode) run.
        maths: maths sizes; ``maths_steps`` and ``maths_batch`` its optimizer steps and batch size.
        dialogue: dialogue sizes; ``dialogue_steps``/``dialogue_batch`` likewise.
        learning_rate: peak learning rate of every arm in the comparison.
        warmup_steps: linear warm-up, then cosine decay to a tenth of the peak.
        lr_probe: extra peak learning rates tried on the maths task, first seed, for ``lr_probe_arms`` (the recipe's
            learning rate; these runs are not part of the LoRA comparison).
        lr_probe_arms: arms whose learning rate is probed.
        activation_qubits: circuit width of the activation-mode arm.
        activation_layers: its depth.
        arms: arms to run, by name (see ``bench._quality_arms.default_arms``).
        extra_arms: arms run like the costly ones (first ``costly_seeds`` seeds, after the others) to save time.
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
    lr_probe: tuple[float, ...] = ()
    lr_probe_arms: tuple[str, ...] = ("qtha_w10",)
    activation_qubits: int = 4
    activation_layers: int = 2
    arms: tuple[str, ...] = ("lora", "qtha_w10", "qtha_w4", "classical_w10", "qtha_act")
    extra_arms: tuple[str, ...] = ()
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
_PLAN_FIELDS = ("name", "seeds", "costly_seeds", "lr_probe", "lr_probe_arms", "arms", "extra_arms", "costly_tasks",
                "tasks", "bootstrap")


def run_settings(profile: dict[str, Any]) -> dict[str, Any]:
    """The run-defining part of a profile given as JSON data (see ``Profile.run_settings``)."""
    return {k: v for k, v in profile.items() if k not in _PLAN_FIELDS}


PROFILES: dict[str, Profile] = {
    # About two hours on an idle 2-core machine (the report gives the measured time per step of every arm).
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
        lr_probe=(3e-4, 3e-3),
        gen_batch=200,
        arms=("lora", "qtha_w10", "qtha_w4", "classical_w10", "qtha_act"),
        extra_arms=("classical_w10",),
        costly_tasks=("maths",),
    ),
    # About an hour on a 2-core machine shared with other work: fewer steps, shorter sequences, the ablation,
    # the small circuit and activation mode on maths with one seed.
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
        lr_probe=(3e-3, 1e-2),
        arms=("lora", "qtha_w10", "classical_w10", "qtha_w4", "qtha_act"),
        extra_arms=("classical_w10", "qtha_w4"),
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
    probe: bool = False

    @property
    def key(self) -> str:
        """Identity of the run inside one study (what ``--resume`` matches)."""
        return f"{self.task}/{self.arm}/seed{self.seed}/lr{self.learning_rate:g}"


def plan_runs(profile: Profile, costly: set[str]) -> list[RunSpec]:
    """The runs of a profile, in rounds, so that a study cut short still holds complete comparisons.

    Round k trains seed k of every cheap arm on every task; the costly arms (their first ``costly_seeds`` seeds)
    and the learning-rate probes come after all rounds.

    Args:
        profile: the sizes.
        costly: names of arms that only run ``profile.costly_seeds`` seeds (slow arms and ``extra_arms``).
    """
    costly = costly | set(profile.extra_arms)
    runs: list[RunSpec] = []
    for seed in profile.seeds:
        runs += [RunSpec(task, arm, seed, profile.learning_rate)
                 for task in profile.tasks for arm in profile.arms if arm not in costly]
    for seed in profile.seeds[: profile.costly_seeds]:
        runs += [RunSpec(task, arm, seed, profile.learning_rate)
                 for task in profile.tasks if task in profile.costly_tasks for arm in profile.arms if arm in costly]
    if "maths" in profile.tasks:
        for arm in profile.lr_probe_arms:
            if arm in profile.arms:
                runs += [RunSpec("maths", arm, profile.seeds[0], lr, probe=True) for lr in profile.lr_probe]
    return runs
