# Heap use of the firmware stack: import pb+nats+stan, connect, publish once.
# Run compiled (.mpy) with -m so that no source is parsed on the heap.
# argv[1]: path of a JSON file {"nats": {...}, "stan": {...}}.
# Prints HEAP <stage> <bytes allocated after the stage> and the highest value seen.
import gc
import sys

gc.collect()
_peak = [gc.mem_alloc()]


def mark(stage):
    a = gc.mem_alloc()
    if a > _peak[0]:
        _peak[0] = a
    print("HEAP", stage, a)


mark("start")
import json  # noqa: E402

with open(sys.argv[1]) as f:
    CFG = json.load(f)
del json
gc.collect()
mark("config")
import asyncio  # noqa: E402

gc.collect()
mark("asyncio")
import nats  # noqa: E402
import stan  # noqa: E402

mark("imported")
gc.collect()
mark("imported_gc")


async def sample():
    # between awaits of the other tasks: the highest allocation seen
    while True:
        a = gc.mem_alloc()
        if a > _peak[0]:
            _peak[0] = a
        await asyncio.sleep(0)


async def main():
    t = asyncio.create_task(sample())
    c = CFG["nats"]
    c["log"] = lambda s: None
    nc = nats.Client(c)
    await nc.connect()
    mark("nats_connected")
    s = CFG["stan"]
    s["log"] = lambda s: None
    sc = stan.Stan(nc, s)
    await sc.connect()
    mark("stan_connected")
    await sc.publish("heap.ch", b"x" * 64)
    mark("published")
    gc.collect()
    mark("published_gc")
    t.cancel()
    await sc.close()
    await nc.close()
    print("PEAK", _peak[0])
    print("DONE")


asyncio.run(main())
