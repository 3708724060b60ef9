"""Defaults every part of stanfleet agrees on, below all of them.

The streaming server, its clients, the credentials store and the simulator
all name the same STAN cluster unless told otherwise; keeping the value here
lets each import it without importing the others.
"""

DEFAULT_CLUSTER_ID = "test-cluster"  # the Go server's default, so stock clients connect
