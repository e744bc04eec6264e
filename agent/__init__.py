"""The daemon: configuration, database, scheduler, metrics, files, CLI. The only package with side effects."""
