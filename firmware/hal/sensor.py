# Temperature: a DS18B20 on 1-Wire, or the chip's own sensor when there is none.

import asyncio

CONVERSION_MS = 750  # DS18B20 at 12-bit resolution


class Sensor:
    def __init__(self, pin=4):
        self.ds = None
        self.rom = None
        try:
            import ds18x20
            import machine
            import onewire

            ds = ds18x20.DS18X20(onewire.OneWire(machine.Pin(pin)))
            roms = ds.scan()
            if roms:
                self.ds, self.rom = ds, roms[0]
        except Exception:  # no 1-Wire support or no bus: the chip sensor it is
            self.ds = None
        self.kind = "ds18b20" if self.ds else "mcu"

    async def read(self):
        """Degrees Celsius, two decimals."""
        if self.ds:
            try:
                self.ds.convert_temp()
                await asyncio.sleep_ms(CONVERSION_MS)
                return round(self.ds.read_temp(self.rom), 2)
            except Exception:  # a loose wire: fall back for this reading
                pass
        import esp32

        return float(esp32.mcu_temperature())
