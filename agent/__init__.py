"""The daemon: the only package with side effects. It wires ``policies``, ``model`` and ``quantum`` together.

Layout (the folder tree is the architecture; imports flow downward in this list):

* ``config``, ``clock``, ``logs`` — the typed configuration tree, time as a collaborator, log set-up.
* ``store/`` — the database (SQLite or PostgreSQL); the only place that imports SQLAlchemy/SQLModel.
* ``artifacts/`` — version directories on disk (layout, digests) and the registry that ties them to the store.
* ``cycle/`` — the cycle's state machine and the trainer protocol it drives.
* ``child/`` — the training/evaluation child process: the parent side, its entry point and the tasks it runs;
  the only part of ``agent/`` that imports ``model``, ``quantum`` or ``jax``.
* ``console/`` — the operator's console: read-only pages of what the daemon did and why (served beside
  ``/metrics``) and each finished cycle's report file; reads the store, writes nothing to it.
* ``daemon/`` — lifecycle, runtime, scheduled jobs, operator commands, the policy driver and its inputs, leader
  lease, sd_notify, Prometheus metrics, metric sources, inbox, status.
* ``serve/`` — ``qtha serve``: the champion behind an OpenAI-compatible API, hot-swapped on promotion; its
  ``loader`` is, with ``child/``, the only part of ``agent/`` that imports ``model``.
* ``cli/`` — the ``qtha`` command line and the production wiring.
"""
