# The device application: what the seed's device does, done properly.
#
#   readings  sampled every sending_frequency seconds into a bounded buffer,
#             published in order to devices.<ID>.events, each after the last's PubAck
#   cfg       durable devices.<ID>.cfg: validated (cfgrules), persisted, then acked
#   releases  durable devices.releases, manual acks: see ota.py
#   status    devices.<ID>.status at boot and after each change
#
# Lines starting with "stanfleet: " are the device's log; the simulator, the
# tests and flash.sh watch them. Code for one moment of a boot lives apart
# and is loaded only then: app.link (connecting), app.release (a release
# message), app.install (an install; the check after an image update),
# app.settings and cfgrules (boot, a cfg).
#
# Long because the device's whole life (readings, cfg, releases, status,
# the link and its closing before an install) shares this one object's state.

import asyncio
import gc
import json
import time

import otaboot
import stan
from hal import net, system
from hal.sensor import Sensor

from app.buffer import Buffer

RETRY_MIN_MS = 500
RETRY_MAX_MS = 30000
MAX_SEND_ERRORS = 5  # permanent refusals of one reading before it is dropped
# The OTA code (app.ota, bundle, http_get, ed25519) is imported when a
# release is to be installed, not at boot nor for a release that is only
# acked (app.release decides that).
#
# An install runs with the NATS link closed (run()): a release is acked only
# once the device runs it, i.e. by the redelivery after the reboot, so from
# the decision to install until the reset nothing needs the link. The
# device closes it, records the release (INSTALL_KEY) and resets; the next
# boot drops the code only the link uses (_LINK_MODULES) and installs
# without ever opening the link, so the download and the signature check
# (the OTA's peak) have a heap the link's teardown never left in pieces.
# It resets after the install too, into the new version or, when it failed,
# into the one it runs. Readings go on into the buffer meanwhile and are
# saved for each next boot (app/buffer.py).
_LINK_MODULES = ("stan", "nats", "pb", "app.settings", "cfgrules", "hal.net")
_DECISION_MODULES = ("app.release", "rollout")
# Code for one moment of a boot: opening the link (app.link, dropped once
# connected) and installing or checking an installed image (app.install).
_CONNECT_MODULES = ("app.link",)
_INSTALL_MODULES = ("app.install",)
# config.json and settings.json are read at boot and settings.json written
# when a cfg arrives: their code (app.settings, cfgrules) is loaded then and
# dropped after, not kept on the heap of a connected device (frozen: about
# 450 bytes of module and function objects; as .mpy files about 2.5 KB).
_SETTINGS_MODULES = ("app.settings", "cfgrules")
# ota.json key: seqs of releases whose install failed in the last boot. The
# redelivery right after the reboot is skipped (not acked) so that a release
# that keeps failing is tried once per ack_wait, not at every boot in a loop.
FAILED_KEY = "install_failed"
# ota.json key: [seq, release] decided in this boot, installed in the next
# one (run()), which opens no link: the download and the signature check
# have the heap without the link's code and the holes its teardown leaves
# (32-bit, .mpy files: 64k instead of 68k).
INSTALL_KEY = "install"


def log(msg):
    print(msg)


def _reading(secs, centi):
    """The JSON payload of a buffered reading (docs: {"ts": ..., "temp": 21.37})."""
    sign = "-" if centi < 0 else ""
    centi = abs(centi)
    return ('{"ts": "%s", "temp": %s%d.%02d}'
            % (system.iso(secs), sign, centi // 100, centi % 100)).encode()


async def backoff(delay):
    from random import getrandbits

    await asyncio.sleep_ms(delay // 2 + getrandbits(16) % (delay // 2 + 1))
    return min(delay * 2, RETRY_MAX_MS)


class Device:
    def __init__(self):
        # config.json, settings.json, the saved buffer and the OTA state: read
        # once, by code dropped after (app.settings).
        from app import settings

        settings.init_device(self)
        settings = None
        _unload(_SETTINGS_MODULES)
        cfg = self.cfg
        self.buf = Buffer(max(2, int(cfg.get("buffer_size", 120))))
        # Readings' guids: this boot's prefix and a number kept in the buffer.
        from random import getrandbits

        self._guid_pfx = "%08xr" % getrandbits(32)
        self._guid_n = 0
        saved = self.buf.restore()  # readings of the boot before a planned reset
        if saved:
            # Its guids go on: a reading sent just before the reset keeps its guid.
            self._guid_pfx, self._guid_n = saved
            log("stanfleet: restored buffered=%d" % len(self.buf))
        st = otaboot.state()
        last = st.get("last")
        self.image = st.get("image")  # MicroPython image version, when one was installed
        self.ota_state = last or {"state": "idle", "version": None, "reason": ""}
        self.cfg_errors = []
        self.sc = None
        self.online = False  # a STAN session is up and the link with it
        self.freq_ev = asyncio.Event()  # sending_frequency changed
        self.status_ev = asyncio.Event()  # something in the status changed
        self.reboot_ev = asyncio.Event()  # close the link, install if asked, reset
        # The release to install once the link is closed (run()). One at a time:
        # up to 4 releases are in flight (max_in_flight), and two installs
        # would write the same inactive slot.
        self.to_install = None

    # ---- status ------------------------------------------------------------------

    def status(self):
        gc.collect()
        return json.dumps({
            "ts": system.iso_now(),
            "version": otaboot.current["version"],
            "slot": otaboot.current["slot"],
            "image": self.image,
            "config": self.settings,
            "cfg_errors": self.cfg_errors,
            "buffer_dropped": self.buf.dropped,
            "buffered": len(self.buf),
            "ota": self.ota_state,
            "mem_free": gc.mem_free(),
        }).encode()

    def changed(self):
        self.status_ev.set()

    def set_ota(self, state, version, reason=""):
        self.ota_state = {"state": state, "version": version, "reason": reason}
        log("stanfleet: ota state=%s version=%s reason=%s" % (state, version, reason))
        if state in ("failed", "rejected"):
            otaboot.record(state, version, reason)  # still known after a reboot
        self.changed()

    async def _status_loop(self):
        while True:
            await self.status_ev.wait()
            self.status_ev.clear()
            delay = RETRY_MIN_MS
            # A retry sends the same bytes under the same guid, so the server
            # stores one copy; a change meanwhile is sent next, under a new one.
            data = self.status()
            guid = self.sc.new_guid()
            while True:
                try:
                    await self.sc.publish("devices.%s.status" % self.id, data, guid)
                    break
                except Exception as e:  # noqa: BLE001 - offline or refused: try again later
                    log("stanfleet: status not sent error=%r" % (e,))
                    delay = await backoff(delay)

    # ---- readings ----------------------------------------------------------------

    async def _sampler(self, sensor):
        nxt = time.ticks_ms()
        dropped = 0
        while True:
            secs = int(time.time())  # a float on the unix port
            t = await sensor.read()
            self.buf.push(secs, int(round(t * 100)))
            if not self.online:
                log("stanfleet: offline buffered=%d" % len(self.buf))
            if self.buf.dropped != dropped:
                dropped = self.buf.dropped
                if dropped == 1 or dropped % 50 == 0:
                    log("stanfleet: buffer full, dropped=%d" % dropped)
            period = self.settings["sending_frequency"] * 1000
            nxt = time.ticks_add(nxt, period)
            wait = time.ticks_diff(nxt, time.ticks_ms())
            if wait < 0:  # late (slow sensor, busy loop): keep the period from now
                nxt, wait = time.ticks_ms(), 0
            self.freq_ev.clear()
            try:
                await asyncio.wait_for_ms(self.freq_ev.wait(), wait)
                nxt = time.ticks_ms()  # new frequency: next reading now, then the new period
            except asyncio.TimeoutError:
                pass

    async def _sender(self):
        buf = self.buf
        channel = "devices.%s.events" % self.id
        delay = RETRY_MIN_MS
        errors = 0
        reported = 0
        while True:
            item = buf.head()
            if item is None:
                buf.ev.clear()
                await buf.ev.wait()
                continue
            secs, centi, g = item
            if not g:
                # One guid per reading across retries: the server stores it once.
                self._guid_n += 1
                g = self._guid_n
                buf.set_guid(g)
            buf.sending = True
            try:
                await self.sc.publish(channel, _reading(secs, centi),
                                      "%s%x" % (self._guid_pfx, g))
            except stan.StanError as e:
                log("stanfleet: reading refused error=%s" % e)
                # Only a refusal that can never change drops the reading; a
                # session or store problem on the server is retried like an outage.
                if _permanent(str(e)):
                    errors += 1
                    if errors >= MAX_SEND_ERRORS:
                        buf.sent()
                        buf.dropped += 1
                        errors = 0
                delay = await backoff(delay)
                continue
            except Exception as e:  # noqa: BLE001 - timeout or link down: keep it, retry
                buf.sending = False
                log("stanfleet: reading not acked yet buffered=%d error=%r" % (len(buf), e))
                delay = await backoff(delay)
                continue
            buf.sent()
            errors = 0
            delay = RETRY_MIN_MS
            if buf.dropped != reported:
                reported = buf.dropped
                self.changed()

    # ---- cfg -----------------------------------------------------------------------

    async def on_cfg(self, msg):
        # Validated and saved by app.settings with cfgrules, loaded for a cfg
        # and dropped after (a cfg is rare; about 2.5 KB as .mpy files).
        from app import settings

        try:
            await settings.on_cfg(self, msg)
        finally:
            settings = None
            _unload(_SETTINGS_MODULES)

    # ---- releases ------------------------------------------------------------------

    async def on_release(self, msg):
        # Releases are rare and most are only acked: their handling's code
        # (app.release, rollout) is loaded for one and does not stay on the
        # heap between them (about 3 KB as .mpy files on 32-bit).
        from app import release

        try:
            await release.handle(self, msg)
        finally:
            release = None
            _unload(_DECISION_MODULES)

    def on_link_down(self, reason):
        self.online = False
        log("stanfleet: disconnected reason=%s" % reason)

    def on_link_up(self, reconnected):
        # The STAN session usually outlives a short outage (the server's
        # heartbeats are slow to give up), so this is "connected again".
        if reconnected and self.sc is not None:
            self.online = True
            log("stanfleet: reconnected buffered=%d" % len(self.buf))

    def on_session_lost(self, reason):
        self.online = False
        log("stanfleet: session lost reason=%s" % reason)

    def on_session(self, renewed):
        self.online = True
        trial = otaboot.state().get("image_trial")
        if trial:  # the first session after an image update
            from app import install

            install.check_image(self, trial)
            install = None
            _unload(_INSTALL_MODULES)
        if otaboot.mark_good():
            log("stanfleet: ota healthy version=%s" % otaboot.current["version"])
            self.ota_state = {"state": "installed", "version": otaboot.current["version"],
                              "reason": ""}
        log("stanfleet: connected client=%s version=%s renewed=%s"
            % (self.client_id, otaboot.current["version"], renewed))
        self.changed()

    async def _trial_deadline(self, seconds):
        await asyncio.sleep(seconds)
        if otaboot.current["trial"]:
            log("stanfleet: trial version=%s not healthy after %ds, resetting"
                % (otaboot.current["version"], seconds))
            self.reboot_ev.set()

    async def _online(self):
        """Connect, send readings and status, take cfg and releases until a
        release is to be installed or a reset is due; then close the link.
        A coroutine of its own: once it returns, its frame (and the stale
        pointers to the link that MicroPython's conservative gc would follow
        in it) is garbage, so the link can be freed."""
        from app import link

        nc = await link.connect_nats(self)
        await link.connect_stan(self, nc)
        link = None
        _unload(_CONNECT_MODULES)
        self.on_session(False)
        work = (asyncio.create_task(self._sender()), asyncio.create_task(self._status_loop()))
        await self.reboot_ev.wait()  # a release to install, or a trial out of time
        from app import closing  # code for one moment too

        await closing.close_link(self, nc, work)

    # ---- main ----------------------------------------------------------------------

    async def run(self):
        cfg = self.cfg
        log("stanfleet: start device=%s version=%s frequency=%d"
            % (self.id, otaboot.current["version"], self.settings["sending_frequency"]))
        wdt = system.Watchdog(cfg.get("watchdog_ms", 60000))
        tasks = [asyncio.create_task(wdt.run())]
        if otaboot.current["trial"]:
            tasks.append(asyncio.create_task(self._trial_deadline(cfg.get("trial_s", 300))))
        await net.up(cfg, log)
        system.sync_clock(log)
        # Readings are taken from now on, connected or not; the buffer holds them.
        tasks.append(asyncio.create_task(self._sampler(Sensor(cfg.get("onewire_pin", 4)))))
        pending = otaboot.state().get(INSTALL_KEY)
        if pending:
            # The boot after the decision: install with a heap the link never
            # had. Once only: a crash in it boots normally, and the release
            # comes again after ack_wait.
            otaboot.put(INSTALL_KEY, None)
            _unload(_LINK_MODULES)
            gc.collect()
            from app import install

            await install.install(self, *pending)
        else:
            await self._online()
            if self.to_install:
                # Installed in the next boot (above), not in this heap, where
                # the link's teardown left it in pieces.
                otaboot.put(INSTALL_KEY, list(self.to_install))
        # Into the install, into the new version, or back into this one after
        # a failed install (the failed release comes again after ack_wait).
        # The sampler and the watchdog ran until now; the buffered readings go
        # to the next boot.
        for t in tasks:
            t.cancel()
        self.buf.save(self._guid_pfx, self._guid_n)
        log("stanfleet: rebooting %sbuffered=%d"
            % ("to install " if self.to_install and not pending else "", len(self.buf)))
        system.reset()


def _unload(names):
    """Forget modules: their module objects (and, not frozen, their bytecode)
    are freed once neither sys.modules nor a global names them and no object
    of theirs is left."""
    import sys

    g = globals()
    for name in names:
        m = sys.modules.pop(name, None)
        if m is None:
            continue
        for k in [k for k, v in g.items() if v is m]:  # a module imported at the top
            del g[k]
        pkg, _, short = name.rpartition(".")
        if pkg and pkg in sys.modules:  # "from hal import net" set hal.net
            try:
                delattr(sys.modules[pkg], short)
            except AttributeError:
                pass


def _permanent(error):
    """A PubAck error that a retry cannot fix."""
    for text in ("not authorized", "too large", "does not match", "invalid"):
        if text in error:
            return True
    return False


def main():
    asyncio.run(Device().run())
