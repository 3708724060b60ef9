# ruff: noqa: F821 - include() is given by MicroPython's manifestfile.py
# What ESP32_GENERIC freezes (asyncio, ds18x20, onewire, ...), then the
# stanfleet firmware (firmware/manifest.py). Relative paths start from this
# folder's real location, also when it is linked into ports/esp32/boards.
include("$(PORT_DIR)/boards/manifest.py")
include("../../manifest.py")
