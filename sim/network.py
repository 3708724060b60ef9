# Stand-in for `network` on the unix port: the host's network is always there.
# Network faults are made outside, by the fleet runner's per-device proxy.
STA_IF = 0
AP_IF = 1
STAT_IDLE = 0
STAT_CONNECTING = 1
STAT_GOT_IP = 1010


class WLAN:
    def __init__(self, interface=STA_IF):
        self._active = False
        self._ssid = None

    def active(self, on=None):
        if on is None:
            return self._active
        self._active = bool(on)

    def connect(self, ssid=None, key=None):
        self._ssid = ssid

    def disconnect(self):
        self._ssid = None

    def isconnected(self):
        return self._active and self._ssid is not None

    def status(self, *args):
        return STAT_GOT_IP if self.isconnected() else STAT_IDLE

    def ifconfig(self, *args):
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")

    def config(self, *args, **kw):
        if args == ("mac",):
            return b"\x02\x00\x00\x00\x00\x01"
        return None
