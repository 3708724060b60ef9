"""What every long-running service shares: the deployment config file, logging,
the /healthz, /readyz and /metrics endpoints, and SIGTERM/SIGHUP handling."""
