"""Defaults every part of stanfleet agrees on, below all of them.

The streaming server, its clients, the credentials store and the simulator
all name the same STAN cluster unless told otherwise; keeping the value here
lets each import it without importing the others.
"""

DEFAULT_CLUSTER_ID = "test-cluster"  # the Go server's default, so stock clients connect
# The channels every device owns, as channel families (--channel_families):
# one JetStream stream for each pattern instead of one per device and channel,
# which stopped a fleet short of 10,000 devices (docs/scale.md). `stanfleet up`
# and the deploy guide turn them on; the drop-in server alone has none.
DEVICE_CHANNEL_FAMILIES = ("devices.*.events", "devices.*.cfg", "devices.*.status")
