# The device's two configuration files (docs/device.md):
#   config.json    provisioning, written by flash.sh / the simulator, read-only here
#   settings.json  config accepted from devices.<ID>.cfg, so it survives a reboot

import json
import os

import cfgrules

CONFIG = "config.json"
SETTINGS = "settings.json"
DEFAULTS = {"sending_frequency": 3}


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


def save_settings(settings):
    tmp = SETTINGS + ".new"
    with open(tmp, "w") as f:
        json.dump(settings, f)
    os.rename(tmp, SETTINGS)  # a power cut leaves the old file or the new one
