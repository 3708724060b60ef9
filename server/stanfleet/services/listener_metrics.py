"""The listener's Prometheus metrics, in a registry of its own (one per
listener, so several can live in one test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ListenerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.saved = Counter("stanfleet_listener_readings_saved", "readings committed", registry=r)
        self.rejected = Counter("stanfleet_listener_readings_rejected",
                                "invalid payloads stored in rejects", registry=r)
        self.db_errors = Counter("stanfleet_listener_db_errors",
                                 "failed batch commits (left unacked, redelivered)", registry=r)
        self.retention_deleted = Counter("stanfleet_listener_retention_deleted",
                                         "readings dropped by the retention setting", registry=r)
        self.batch_seconds = Histogram("stanfleet_listener_batch_seconds",
                                       "time to commit one batch", registry=r,
                                       buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5,
                                                1, 2.5, 5))
        self.devices = Gauge("stanfleet_listener_devices", "devices followed", registry=r)
        self.queued = Gauge("stanfleet_listener_queued", "readings received, not yet committed",
                            registry=r)
        self.connected = Gauge("stanfleet_listener_connected", "1 while a STAN session is up",
                               registry=r)
