# The NATS connection handshake (nats.Client._open): INFO, the TLS upgrade
# when asked, CONNECT and PING until PONG or -ERR. Runs once per link, so
# nats.py loads it for a connect or reconnect and drops it after: as a .mpy
# file its code would take about 1.5 KB of a connected device's heap.

import nats


async def handshake(nc, s):
    import json

    line = await s.readline()
    if not line:
        raise OSError("closed before INFO")
    if not line.startswith(b"INFO "):
        raise nats.NatsError("expected INFO")
    # Not kept: only tls_required is read, and the whole INFO (server id,
    # version, connect URLs, ...) is most of a kilobyte of heap.
    info = json.loads(line[5:])
    tls = nc._c("tls") or info.get("tls_required", False)
    if tls:
        _tls_upgrade(nc, s)
    # Headers only for no_responders: a request nobody takes is answered at once.
    opts = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True,
            "protocol": 1}
    opts["lang"] = "micropython"
    opts["version"] = "0.1"
    opts["tls_required"] = bool(tls)
    if nc._c("name"):
        opts["name"] = nc._c("name")
    if nc._c("user") is not None:
        opts["user"] = nc._c("user")
        opts["pass"] = nc._c("password") or ""
    if nc._c("token") is not None:
        opts["auth_token"] = nc._c("token")
    s.write(b"CONNECT " + json.dumps(opts).encode() + b"\r\nPING\r\n")
    await s.drain()
    while True:
        line = await s.readline()
        if not line:
            raise OSError("closed during handshake")
        if line.startswith(b"PONG"):
            return
        if line.startswith(b"-ERR"):
            e = nats._err_text(line)
            if "uthoriz" in e or "uthentic" in e:
                raise nats.AuthError(e)
            raise nats.NatsError(e)
        if line.startswith(b"PING"):
            s.write(b"PONG\r\n")
            await s.drain()
        # +OK and async INFO are ignored here


def _tls_upgrade(nc, s):
    # PLATFORM-NOTES "TLS upgrade in asyncio": wrap the socket after INFO;
    # the next write drives the handshake. The context (CA, verification
    # required) is made once and shared with HTTPS downloads: tlsctx.py.
    import tlsctx

    if not nc._c("ca_der"):
        raise nats.NatsError("TLS required but no ca_der configured")
    name = nc._c("server_hostname") or nc._c("host")
    ctx = tlsctx.context(nc._c("ca_der"))
    s.s = ctx.wrap_socket(s.s, server_hostname=name, do_handshake_on_connect=False)
    s.s.setblocking(False)
