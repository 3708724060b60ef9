# Stand-in for `esp32`: the chip sensor, and a partition table without OTA
# slots (the simulator updates application bundles, not MicroPython itself).
import sensor_model


def mcu_temperature():
    return int(sensor_model.temperature() + 19)  # the die runs warmer than the room


class Partition:
    BOOT = 0
    RUNNING = 1
    TYPE_APP = 0
    TYPE_DATA = 1

    def __init__(self, id):
        raise OSError("no such partition")

    @staticmethod
    def find(type=0, subtype=255, label=None):
        return []

    @staticmethod
    def mark_app_valid_cancel_rollback():
        pass
