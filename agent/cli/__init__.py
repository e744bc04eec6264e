"""The ``qtha`` command line (Typer) and the production wiring of the daemon.

Exit codes: 0 ok, 1 failure, 2 usage or bad configuration, 3 refused by policy, 4 lock held.
"""
