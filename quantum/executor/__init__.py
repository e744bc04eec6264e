"""Runs many programs on a hardware backend: batching, bounded concurrency, polling, retries, spend limit, stats."""

from quantum.executor.core import Executor, ExecutorConfig
from quantum.executor.sampler_backend import ExecutorSampler, SamplerJobBackend
from quantum.executor.stats import ExecutionStats, SpendLimit

__all__ = [
    "ExecutionStats",
    "Executor",
    "ExecutorConfig",
    "ExecutorSampler",
    "SamplerJobBackend",
    "SpendLimit",
]
