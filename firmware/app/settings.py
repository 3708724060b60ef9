# The device's two configuration files (docs/device.md):
#   config.json    provisioning, written by flash.sh / the simulator, read-only here
#   settings.json  config accepted from devices.<ID>.cfg, so it survives a reboot
# and a cfg message (on_cfg). Loaded at boot and for a cfg, dropped after
# (Device.on_cfg): a connected device does not keep this code on its heap.

import json
import os

import cfgrules

CONFIG = "config.json"
SETTINGS = "settings.json"
DEFAULTS = {"sending_frequency": 3}
# Bytes allocated between two automatic collections, as a fraction of the
# heap (config.json "gc_threshold" overrides it; docs/device.md "Memory").
# Without a threshold MicroPython collects only when the heap is full, so
# garbage fills every free byte and a large buffer finds the heap in pieces.
GC_THRESHOLD_DIV = 32
GC_THRESHOLD_MIN = 512


class ConfigError(Exception):
    pass


def _load(path):
    with open(path) as f:
        return json.load(f)


def load_config():
    try:
        cfg = _load(CONFIG)
    except OSError:
        raise ConfigError("%s is missing: provision the device first" % CONFIG)
    except ValueError:
        raise ConfigError("%s is not valid JSON" % CONFIG)
    if not isinstance(cfg, dict) or not cfg.get("nats"):
        raise ConfigError("%s has no \"nats\" server URL" % CONFIG)
    return cfg


def load_settings(cfg, log):
    """Defaults, then the factory values in config.json, then the saved ones.
    Anything invalid is skipped with a log line: a bad file never stops the device."""
    out = dict(DEFAULTS)
    factory, errs = cfgrules.validate({k: cfg[k] for k in cfgrules.RULES if k in cfg})
    out.update(factory)
    try:
        saved = _load(SETTINGS)
    except OSError:
        saved = {}
    except ValueError:
        log("stanfleet: %s is corrupt, using defaults" % SETTINGS)
        saved = {}
    accepted, errs2 = cfgrules.validate(saved)
    out.update(accepted)
    for e in errs + errs2:
        log("stanfleet: setting ignored: %s" % e)
    return out


def init_device(dev):
    """A Device's configuration at boot: config.json and the settings."""
    from hal import system

    from app.device import log

    cfg = load_config()
    dev.cfg = cfg
    dev.id = cfg.get("device_id") or system.unique_hex()
    dev.client_id = "device-" + dev.id
    dev.settings = load_settings(cfg, log)
    gc_threshold(cfg, log)


def gc_threshold(cfg, log):
    import gc

    gc.collect()
    n = cfg.get("gc_threshold")
    if not isinstance(n, int) or n <= 0:
        n = (gc.mem_free() + gc.mem_alloc()) // GC_THRESHOLD_DIV
    n = max(GC_THRESHOLD_MIN, n)
    gc.threshold(n)
    log("stanfleet: gc threshold=%d" % n)


def save_settings(settings):
    tmp = SETTINGS + ".new"
    with open(tmp, "w") as f:
        json.dump(settings, f)
    os.rename(tmp, SETTINGS)  # a power cut leaves the old file or the new one


async def on_cfg(dev, msg):
    """A message on devices.<ID>.cfg: validated, saved, applied, then acked
    (a save that fails is not acked: the message comes again)."""
    try:
        data = json.loads(msg.data)
    except ValueError:
        data = None
    accepted, errors = cfgrules.validate(data)
    from app.device import log

    for e in errors:
        log("stanfleet: cfg rejected seq=%d %s" % (msg.sequence, e))
    new = dict(dev.settings)
    new.update(accepted)
    if new != dev.settings:
        save_settings(new)
        dev.settings = new
        dev.freq_ev.set()
    if accepted:
        log("stanfleet: cfg applied seq=%d %s" % (msg.sequence, json.dumps(accepted)))
    dev.cfg_errors = errors
    await dev.sc.ack(msg)
    dev.changed()
