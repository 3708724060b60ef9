# Runs first at every boot: pick the firmware slot (otaboot.py explains how).
import otaboot

otaboot.select()
