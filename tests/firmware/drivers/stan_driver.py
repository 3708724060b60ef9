# MicroPython driver for firmware/lib/stan.py, steered line by line from the test.
# argv[1]: path of a JSON file: {"nats": {...nats cfg...}, "stan": {...stan cfg...}}
# stdin commands:
#   pub <channel> <data>
#   sub <channel> <durable|-> <ack_wait> <max_inflight> <auto|manual> <new|first>
#   ack <seq>              ack a held message (manual mode: messages are held, not acked)
#   unsub <channel> <close|delete>   end the subscription on <channel>
#   close | quit           close prints SCLOSED left=<NATS subscriptions the session left behind>
# Prints SMSG <channel> <seq> <data> <redelivered> for each delivered message.
import asyncio
import json
import sys

import nats
import pb
import stan


def out(*a):
    print(*a)


async def main():
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    ncfg = cfg["nats"]
    ncfg["log"] = lambda s: None
    nc = nats.Client(ncfg)
    scfg = cfg["stan"]
    scfg["log"] = lambda s: out("SLOG", s)
    scfg["on_session"] = lambda renewed: out("SESSION", "renewed" if renewed else "first")
    scfg["on_session_lost"] = lambda why: out("LOST", why)
    await nc.connect()
    sc = stan.Stan(nc, scfg)
    try:
        await sc.connect()
    except Exception as e:
        out("CONNECT_ERROR", type(e).__name__, e)
        await nc.close()
        return
    out("CONNECTED")
    held = {}
    subs = {}

    def on_msg(m):
        out("SMSG", m.subject, m.sequence, m.data.decode(), m.redelivered)
        held[m.sequence] = m

    stdin = asyncio.StreamReader(sys.stdin)
    while True:
        p = (await stdin.readline()).decode().split()
        if not p or p[0] == "quit":
            break
        cmd = p[0]
        try:
            if cmd == "pub":
                out("PUBACK", await sc.publish(p[1], p[2].encode()))
            elif cmd == "sub":
                subs[p[1]] = await sc.subscribe(
                    p[1], on_msg, durable=None if p[2] == "-" else p[2], ack_wait=int(p[3]),
                    max_inflight=int(p[4]), manual_acks=p[5] == "manual",
                    start=pb.FIRST if p[6] == "first" else pb.NEW_ONLY)
                out("SUBBED")
            elif cmd == "ack":
                await sc.ack(held.pop(int(p[1])))
                await nc.flush()
                out("ACKED", p[1])
            elif cmd == "unsub":
                await sc.unsubscribe(subs.pop(p[1]), close=p[2] == "close")
                out("UNSUBBED")
            elif cmd == "close":
                await sc.close()
                # The NATS client's own request inbox is its, not the session's.
                left = [s for s in nc._subs.values()
                        if not (nc._resp_prefix and s.subject.startswith(nc._resp_prefix))]
                out("SCLOSED", "left=%d" % len(left))
        except Exception as e:
            out("ERROR", cmd, type(e).__name__, e)
    await nc.close()
    out("CLOSED")


asyncio.run(main())
