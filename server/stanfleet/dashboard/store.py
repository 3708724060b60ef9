"""The fleet database as the dashboard opens it: readings (listener) and desired
config (configuration manager) in one file. One connection per thread."""

from __future__ import annotations

import json

from ..services.configmgr import ConfigStore
from ..services.readings_db import ReadingsDB
from .queries import ReadingsQueries


class FleetDB:
    def __init__(self, path: str):
        # Both constructors create their tables if missing, so the dashboard
        # may start before the listener has written anything.
        self._readings = ReadingsDB(path)
        self._config = ConfigStore(path)
        # The fleet charts read every device by time: a covering index on
        # (ts, temp) keeps that to the range asked for. Made once; the
        # listener keeps it up to date like its own index.
        self._readings.conn.execute(
            "CREATE INDEX IF NOT EXISTS readings_by_ts ON readings (ts, temp)")
        self.queries = ReadingsQueries(self._readings.conn)

    def desired(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for device, key, value in self._config.conn.execute(
                "SELECT device, key, value FROM desired_config"):
            try:
                out.setdefault(device, {})[key] = json.loads(value)
            except ValueError:
                continue
        return out

    def record_desired(self, device: str, settings: dict) -> None:
        self._config.record(device, settings)

    def known_devices(self) -> list[str]:
        return self._config.known_devices()

    def close(self) -> None:
        self._readings.close()
        self._config.close()
