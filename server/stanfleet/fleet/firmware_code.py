"""Firmware modules that the CPython side shares with the devices.

Some rules must be identical on both sides (which config a device accepts,
the bundle format), so they are written once, in MicroPython-compatible code
under firmware/lib/, and loaded from there by the services.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

# The checkout's firmware/ directory: server/stanfleet/ -> repository root.
FIRMWARE_DIR = Path(__file__).resolve().parents[3] / "firmware"


def load(name: str):
    """Import firmware/lib/<name>.py as the module `stanfleet_fw_<name>`."""
    qualified = f"stanfleet_fw_{name}"
    if qualified in sys.modules:
        return sys.modules[qualified]
    path = FIRMWARE_DIR / "lib" / f"{name}.py"
    if not path.exists():
        raise ImportError(f"firmware module {path} not found: stanfleet runs from a checkout")
    spec = importlib.util.spec_from_file_location(qualified, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module
    spec.loader.exec_module(module)
    return module
