"""Pure decision functions: recorded history + now + config in, a decision with its reasons out.

- :func:`decide_trigger`: should a training cycle start now?
- :func:`propose_recipe` / :func:`record_recipe_outcome`: how to train (Optuna TPE ask-and-tell; the caller
  passes the storage).
- :func:`decide_promotion`: promote, reject or hold a candidate against the champion.
- :func:`select_candidate`: of several candidates of one cycle, promote at most one (Holm's correction).
- :func:`decide_rollback`: roll a recent promotion back?
- :func:`replay_history`: the decisions a recorded history produces.

Every metric is higher-is-better; every timestamp timezone-aware; nothing here reads a clock, does I/O or logs.
"""

from .breaker import BreakerConfig, BreakerStatus, breaker_status
from .budget import Budget, day_start, remaining_budget, spent_today
from .cost import BackendOption, CostEstimate, CostModel, Recipe, calibrate_cpu, estimate_cost
from .decision import Action, Decision, PolicyInputError, Reason, ReasonKind
from .drift import DriftConfig, DriftResult, detect_drift
from .live import LiveComparison, LiveConfig, LiveStats, compare_live, decide_canary, decide_live_rollback
from .promotion import PromotionConfig, decide_promotion, paired_bootstrap_lcb, paired_bootstrap_p
from .recipe import (
    RecipeConfig,
    RecipeOutcome,
    RecipeProposal,
    propose_recipe,
    propose_recipes,
    recipe_score,
    record_operator_recipe,
    record_recipe_outcome,
    study_name_for,
    withdraw_proposal,
)
from .records import CycleOutcome, CycleRecord, Evaluation, ExampleScore, MetricSample, Spend
from .replay import ReplayConfig, ReplayStep, parse_history, replay_history
from .rollback import PromotionRecord, RollbackConfig, decide_rollback
from .selection import CandidateVerdict, Selection, holm_levels, select_candidate
from .smoke import ProbeResult, SmokeVerdict, final_integer, is_degenerate, probe_failure, smoke_verdict
from .space import PAPER_RECIPE, SearchSpace
from .trigger import TriggerConfig, TriggerHistory, decide_trigger

__all__ = [
    "LiveComparison",
    "LiveConfig",
    "LiveStats",
    "compare_live",
    "decide_canary",
    "decide_live_rollback",
    "SmokeVerdict",
    "final_integer",
    "is_degenerate",
    "probe_failure",
    "smoke_verdict",
    "PAPER_RECIPE",
    "Action",
    "BackendOption",
    "BreakerConfig",
    "BreakerStatus",
    "CandidateVerdict",
    "Budget",
    "CostEstimate",
    "CostModel",
    "CycleOutcome",
    "CycleRecord",
    "Decision",
    "DriftConfig",
    "DriftResult",
    "Evaluation",
    "ExampleScore",
    "MetricSample",
    "PolicyInputError",
    "ProbeResult",
    "PromotionConfig",
    "PromotionRecord",
    "Reason",
    "ReasonKind",
    "Recipe",
    "RecipeConfig",
    "RecipeOutcome",
    "RecipeProposal",
    "ReplayConfig",
    "ReplayStep",
    "RollbackConfig",
    "SearchSpace",
    "Selection",
    "Spend",
    "TriggerConfig",
    "TriggerHistory",
    "breaker_status",
    "calibrate_cpu",
    "day_start",
    "decide_promotion",
    "decide_rollback",
    "decide_trigger",
    "detect_drift",
    "estimate_cost",
    "holm_levels",
    "paired_bootstrap_lcb",
    "paired_bootstrap_p",
    "parse_history",
    "propose_recipe",
    "propose_recipes",
    "recipe_score",
    "record_operator_recipe",
    "record_recipe_outcome",
    "remaining_budget",
    "replay_history",
    "select_candidate",
    "spent_today",
    "study_name_for",
    "withdraw_proposal",
]
