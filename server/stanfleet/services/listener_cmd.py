"""`stanfleet listener`."""

from .commands import configure_listener as configure
from .commands import run_listener as run

__all__ = ["configure", "run"]
