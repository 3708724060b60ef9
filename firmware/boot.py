# Runs first at every boot: pick the firmware slot (otaboot.py explains how).
import sys

# Frozen modules before the flash root's: on a board image that carries the
# app (firmware/manifest.py) its otaboot runs from flash, which keeps about
# 1.3 KB of heap that the copy provisioned next to this file would take.
if ".frozen" in sys.path:
    sys.path.remove(".frozen")
    sys.path.insert(0, ".frozen")

import otaboot  # noqa: E402

otaboot.select()
