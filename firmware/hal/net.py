# Network bring-up. On a board: WiFi station mode from config.json's "wifi".
# Without a "wifi" entry (the simulator, a wired board) the network is assumed.

import asyncio


async def up(cfg, log, timeout_s=30):
    w = cfg.get("wifi")
    if not w:
        return True
    import network

    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if not wlan.isconnected():
        log("stanfleet: wifi connecting ssid=%s" % w.get("ssid"))
        wlan.connect(w.get("ssid"), w.get("password"))
    # The station keeps retrying by itself; this bounds only the first wait.
    for _ in range(timeout_s * 10):
        if wlan.isconnected():
            log("stanfleet: wifi up ip=%s" % wlan.ifconfig()[0])
            return True
        await asyncio.sleep_ms(100)
    log("stanfleet: wifi not up after %ds, going on (readings are buffered)" % timeout_s)
    return False
