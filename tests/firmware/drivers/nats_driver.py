# MicroPython driver for firmware/lib/nats.py, steered line by line from the test.
# argv[1]: path of a JSON file: object merged into nats.DEFAULTS.
# It subscribes "fw.in" (prints MSG) and "fw.echo" (answers "echo:<data>"),
# then obeys stdin commands:
#   pub <subject> <data> | req <subject> <data> <timeout_s> | quit
import asyncio
import json
import sys

import nats


def out(*a):
    print(*a)


async def announce(nc, again):
    # flush first: the restored SUBs have reached the server when the test hears UP
    await nc.flush()
    out("UP", "reconnected" if again else "first")


async def main():
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    cfg["log"] = lambda s: None
    nc = nats.Client(cfg)
    cfg = nc.cfg
    cfg["on_connected"] = lambda again: asyncio.create_task(announce(nc, again))
    cfg["on_disconnected"] = lambda why: out("DOWN", why)
    cfg["on_error"] = lambda e: out("ERR", type(e).__name__, e)
    try:
        await nc.connect()
    except nats.AuthError as e:
        out("CONNECT_ERROR AuthError", e)
        return
    except Exception as e:
        out("CONNECT_ERROR", type(e).__name__, e)
        return

    def on_in(m):
        out("MSG", m.subject, m.data.decode(), m.reply or "-")

    def on_echo(m):
        nc.publish(m.reply, b"echo:" + m.data)

    nc.subscribe("fw.in", on_in)
    nc.subscribe("fw.echo", on_echo)
    await nc.flush()
    out("READY")
    stdin = asyncio.StreamReader(sys.stdin)
    while True:
        line = await stdin.readline()
        p = line.decode().split()
        if not p or p[0] == "quit":
            break
        if p[0] == "pub":
            nc.publish(p[1], p[2].encode())
            await nc.flush()
            out("PUBBED")
        elif p[0] == "req":
            try:
                m = await nc.request(p[1], p[2].encode(), float(p[3]))
                out("REPLY", m.data.decode())
            except asyncio.TimeoutError:
                out("TIMEOUT")
            except nats.NatsError as e:
                out("NATSERROR", e)
    await nc.close()
    out("CLOSED")


asyncio.run(main())
