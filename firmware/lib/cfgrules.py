# Device configuration: the keys a device accepts and their rules.
#
# Shared by the firmware (which applies a config message only if it passes)
# and the CPython configuration manager (which refuses to publish one that
# would not), so both sides always agree. MicroPython and CPython alike.

# key: (type name, minimum, maximum)
RULES = {
    "sending_frequency": ("int", 1, 86400),  # seconds between readings
}
# Keys a cfg message may carry besides the settings themselves.
META_KEYS = ("ts",)


def check(key, value):
    """The value if it is valid for key, else ValueError saying why."""
    rule = RULES.get(key)
    if rule is None:
        raise ValueError("unknown key %r (known: %s)" % (key, ", ".join(sorted(RULES))))
    kind, lo, hi = rule
    # bool is an int subclass in both Pythons; true/false is never a number here.
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError("%s must be an integer %d..%d, got %r" % (key, lo, hi, value))
    if not lo <= value <= hi:
        raise ValueError("%s must be between %d and %d, got %r" % (key, lo, hi, value))
    return value


def validate(cfg):
    """(accepted, errors): the valid settings of a cfg dict, and one message per bad key."""
    accepted = {}
    errors = []
    if not isinstance(cfg, dict):
        return accepted, ["config is not a JSON object"]
    for key in cfg:
        if key in META_KEYS:
            continue
        try:
            accepted[key] = check(key, cfg[key])
        except ValueError as e:
            errors.append(str(e))
    return accepted, errors
