"""Heap budget of the firmware stack on the unix port: pb + nats + stan compiled
with mpy-cross, connect to NATS and STAN, publish one message with PubAck."""

from __future__ import annotations

import json
from urllib.parse import urlparse

from mpy_runner import MicroPython, compile_mpy

# The smallest -X heapsize that works is measured below and must stay under this.
HEAP_BUDGET_KB = 64


def heap_cfg(stan_server, client_id: str) -> str:
    url = urlparse(stan_server.nats_url)
    return json.dumps({"nats": {"host": url.hostname, "port": url.port},
                       "stan": {"cluster_id": stan_server.cluster_id, "client_id": client_id}})


async def run(stan_server, lib, heap_kb: int, n: int) -> MicroPython | None:
    """The finished driver when it completed in ``heap_kb``, else None (MemoryError)."""
    async with await MicroPython.start("heap_driver", cfg=heap_cfg(stan_server, f"heap-{n}"),
                                       heap=f"{heap_kb}k", lib=lib, module=True) as mp:
        try:
            await mp.expect("DONE")
        except AssertionError:
            assert any("MemoryError" in x for x in mp.lines), "\n".join(mp.lines)
            return None
        assert await mp.finish() == 0
        return mp


async def test_publish_heap_budget(stan_server, tmp_path):
    lib = compile_mpy(tmp_path / "mpy", drivers=("heap_driver",))
    mp = await run(stan_server, lib, 128, 0)
    assert mp is not None
    stages = {ln.split()[1]: int(ln.split()[2]) for ln in mp.lines if ln.startswith("HEAP ")}
    peak = int(next(ln for ln in mp.lines if ln.startswith("PEAK")).split()[1])
    # smallest heap (1 KB steps) in which the whole sequence still completes
    lo, hi, n = 24, 128, 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        n += 1
        if await run(stan_server, lib, mid, n):
            hi = mid
        else:
            lo = mid
    print(f"heap: stages={stages} sampled_peak={peak} smallest_working_heap={hi}k")
    assert stages["imported_gc"] > stages["asyncio"]
    assert hi <= HEAP_BUDGET_KB
