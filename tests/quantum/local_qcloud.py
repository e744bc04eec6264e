"""Origin QCloud played locally: jobs run on pyqpanda3's CPUQVM, with QCloud's lifecycle and failure modes.

Shared by the vendor-adapter tests and the hardware-from-configuration tests; needs pyqpanda3 (the ``origin`` extra).
"""

from __future__ import annotations

import itertools
from typing import Any


class LocalQCloudJob:
    """Plays QCloudJob: queued, then computing, then finished, one step per status query."""

    _ids = itertools.count()

    def __init__(self, progs: list[Any], shots: int) -> None:
        from pyqpanda3.core import CPUQVM

        self._id = f"local-{next(self._ids)}"
        self._queries = 0
        self._counts = []
        for prog in progs:
            qvm = CPUQVM()
            qvm.run(prog, shots)
            self._counts.append(qvm.result().get_counts())

    def job_id(self) -> str:
        return self._id

    def status(self) -> Any:
        from pyqpanda3.qcloud import JobStatus

        self._queries += 1
        return (
            [JobStatus.QUEUING, JobStatus.COMPUTING][self._queries - 1]
            if self._queries <= 2
            else JobStatus.FINISHED
        )

    def result(self) -> Any:
        counts = self._counts

        class Result:
            def get_counts_list(self) -> list[dict[str, int]]:
                return counts

        return Result()

    def cancel(self) -> bool:
        return True


class LocalQCloudBackend:
    """Plays QCloudBackend: ``run(progs, shots, options)`` on CPUQVM; records the options of every call.

    Attributes:
        options: what each ``run`` call was given (``None`` when the caller passed none).
        refuse_with: when set, ``run`` raises ``RuntimeError`` with this text instead (the SDK's way).
    """

    def __init__(self, *, refuse_with: str | None = None) -> None:
        self.options: list[Any] = []
        self.refuse_with = refuse_with

    def run(self, progs: list[Any], shots: int, options: Any = None) -> LocalQCloudJob:
        self.options.append(options)
        if self.refuse_with is not None:
            raise RuntimeError(self.refuse_with)
        return LocalQCloudJob(progs, shots)
