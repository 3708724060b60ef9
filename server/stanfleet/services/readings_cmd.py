"""`stanfleet readings`."""

from .commands import configure_readings as configure
from .commands import run_readings as run

__all__ = ["configure", "run"]
