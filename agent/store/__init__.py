"""The daemon's database: the only module that imports sqlmodel / SQLAlchemy.

Open it with :func:`open_store`; everything it returns is a frozen record (:mod:`agent.store.records`).
"""

from agent.store._audit import Audit
from agent.store._candidates import Candidates
from agent.store._champion import Champion
from agent.store._cycles import Cycles
from agent.store._lease import Leases
from agent.store._migrations import LATEST_VERSION, LEADER_LEASE
from agent.store._observations import Decisions, Metrics, check_sample
from agent.store._operator import Commands, Overrides
from agent.store._store import Store, open_store, safe_url
from agent.store._usage import Usage
from agent.store._versions import Versions
from agent.store.errors import (
    ChampionMovedError,
    ChampionPinnedError,
    CycleAlreadyRunningError,
    DatabaseUnavailableError,
    DatabaseUrlError,
    InvalidSampleError,
    LeaseHeldError,
    NotFoundError,
    SchemaTooNewError,
    StaleCycleError,
    StaleEpochError,
    StoreError,
    VersionStateError,
)
from agent.store.records import (
    AuditEntry,
    AuditKind,
    CandidateState,
    ChampionState,
    Cycle,
    CycleCandidate,
    CycleState,
    DecisionRecord,
    Feedback,
    Lease,
    MetricSample,
    ModelVersion,
    OperatorCommand,
    ServingInterval,
    UsageRecord,
    VersionStatus,
)

__all__ = [
    "LATEST_VERSION",
    "LEADER_LEASE",
    "Audit",
    "AuditEntry",
    "AuditKind",
    "Candidates",
    "CandidateState",
    "Champion",
    "ChampionMovedError",
    "ChampionPinnedError",
    "ChampionState",
    "Commands",
    "Cycle",
    "CycleAlreadyRunningError",
    "CycleCandidate",
    "DatabaseUnavailableError",
    "DatabaseUrlError",
    "InvalidSampleError",
    "CycleState",
    "Cycles",
    "DecisionRecord",
    "Decisions",
    "Feedback",
    "Lease",
    "LeaseHeldError",
    "Leases",
    "MetricSample",
    "Metrics",
    "ModelVersion",
    "NotFoundError",
    "OperatorCommand",
    "Overrides",
    "SchemaTooNewError",
    "ServingInterval",
    "StaleCycleError",
    "StaleEpochError",
    "Store",
    "StoreError",
    "Usage",
    "UsageRecord",
    "Versions",
    "VersionStateError",
    "VersionStatus",
    "check_sample",
    "open_store",
    "safe_url",
]
