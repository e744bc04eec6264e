"""The child process that trains and evaluates: the parent side (:mod:`agent.child.runner`, the
:class:`~agent.child.trainer.ChildTrainer`), its entry point (:mod:`agent.child.entry`) and the tasks it runs
(:mod:`agent.child.tasks`). Only :mod:`agent.child.tasks` imports ``model``, ``quantum`` or ``jax``: the daemon
never loads a model itself, so a crash or an out-of-memory kill fails the cycle, never the daemon."""
