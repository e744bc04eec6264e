"""The long-running daemon: lifecycle, runtime, APScheduler jobs (lease holder only), operator commands, the
policy-driven cycle driver and its inputs, the leader lease, sd_notify, Prometheus metrics, metric sources, the
inbox and the status file."""
