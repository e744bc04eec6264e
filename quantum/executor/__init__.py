"""Runs many programs on a hardware backend: batching, bounded concurrency, polling, retries, budget, stats."""

from quantum.executor.core import Executor, ExecutorConfig
from quantum.executor.sampler_backend import ExecutorSampler, SamplerJobBackend
from quantum.executor.stats import Budget, ExecutionStats

__all__ = ["Budget", "ExecutionStats", "Executor", "ExecutorConfig", "ExecutorSampler", "SamplerJobBackend"]
