# stanfleet board image: MicroPython's ESP32_GENERIC (same SDKCONFIG_DEFAULTS,
# in the same order) plus sdkconfig.board, which adds the A/B app partitions
# hal/image.py updates into and the bootloader's rollback. The app is frozen
# in by manifest.py. Build: README.md in this folder.
set(SDKCONFIG_DEFAULTS
    boards/sdkconfig.base
    ${SDKCONFIG_IDF_VERSION_SPECIFIC}
    boards/sdkconfig.ble
    boards/STANFLEET_ESP32/sdkconfig.board
)

set(MICROPY_FROZEN_MANIFEST ${MICROPY_BOARD_DIR}/manifest.py)
