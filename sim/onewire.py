# Stand-in for `onewire`: a bus with one DS18B20 on it (none with SIM_SENSOR=none).
import sensor_model

ROM = b"\x28\xff\x64\x1e\x0f\x00\x00\x4d"


class OneWireError(Exception):
    pass


class OneWire:
    def __init__(self, pin):
        self.pin = pin

    def scan(self):
        return [ROM] if sensor_model.present() else []

    def reset(self, required=False):
        if required and not sensor_model.present():
            raise OneWireError
        return sensor_model.present()
