"""The seed's whole story in one test, with the real services and commands:

readings flow from simulated devices into the listener's database; the
listener restarts and misses nothing; `stanfleet config set` changes a
device's frequency and `config show` sees it applied; `stanfleet release
publish` rolls a release out to every device, one of which fails to install
(a flash fault) and gets the release redelivered until the fault is fixed;
`stanfleet release status` then shows every device on the new version.
"""

from __future__ import annotations

import asyncio

from conftest import GOOD, stanfleet
from stanfleet.services.listener import Listener, ListenerConfig
from stanfleet.services.readings_db import ReadingsDB

from tests.waiting import eventually

DEVICES = ("A0000001", "A0000002", "A0000003")
FAULTY = "A0000003"


class RunningListener:
    def __init__(self, stan, db: str):
        self.listener = Listener(ListenerConfig(nats_url=stan.nats_url,
                                                cluster_id=stan.cluster_id, name="story",
                                                db_path=db))
        self.task = None

    async def start(self) -> "RunningListener":
        self.task = asyncio.create_task(self.listener.run())
        await asyncio.wait_for(self.listener.ready.wait(), 30)
        return self

    async def stop(self) -> None:
        await self.listener.stop()
        await asyncio.wait_for(self.task, 30)


def stored(db_path: str) -> dict[str, list[int]]:
    db = ReadingsDB(db_path)
    try:
        return {d: [r[0] for r in db.readings(d)] for d in DEVICES}
    finally:
        db.close()


async def test_the_seed_story(stan_server, make_fleet, backend, releases, tmp_path):
    db = str(tmp_path / "fleet.db")
    listener = await RunningListener(stan_server, db).start()
    fleet = await make_fleet(*DEVICES, config={"sending_frequency": 1, "release_ack_wait": 2})
    for d in DEVICES:
        await fleet.expect(d, "stanfleet: connected")

    # 1. Readings flow into the database.
    async def each_has(n):
        return all(len(s) >= n for s in stored(db).values())
    await eventually(lambda: each_has(2), timeout=30)

    # 2. The listener stops while devices go on; restarted, it misses nothing.
    await listener.stop()
    before = stored(db)
    watch = await backend.collect(f"devices.{DEVICES[0]}.events")
    await watch.count(3)  # the device published three readings meanwhile
    listener = await RunningListener(stan_server, db).start()
    await eventually(lambda: each_has(max(len(s) for s in before.values()) + 3), timeout=30)
    for d, seqs in stored(db).items():
        assert seqs == list(range(1, len(seqs) + 1)), f"{d}: gap or duplicate in {seqs}"

    # 3. The configuration manager changes one device's frequency.
    target = DEVICES[1]
    mark = fleet.mark(target)
    rc, out = await stanfleet(stan_server, "config", "set", target, "sending_frequency=2",
                              "--db", db)
    assert rc == 0, out
    await fleet.expect(target, 'cfg applied seq=1 {"sending_frequency": 2}', since=mark)
    status = await backend.collect(f"devices.{target}.status", start_at="last_received")
    await status.wait_for(lambda c: c.json and c.json[-1]["config"]["sending_frequency"] == 2)
    rc, out = await stanfleet(stan_server, "config", "show", target, "--db", db)
    assert rc == 0, out
    row = next(ln for ln in out.splitlines() if ln.startswith(target))
    assert row.split()[2:5] == ["2", "2", "ok"], out

    # 4. A release rolls out; one device has a flash fault and fails to install.
    slot_b = fleet.devices[FAULTY].flash_dir / "slots" / "b"
    slot_b.parent.mkdir(exist_ok=True)
    slot_b.write_text("a file where the slot directory should be: writes fail")
    rc, out = await stanfleet(stan_server, "release", "publish", GOOD, "--releases",
                              str(releases), "--url-base", backend.url_base, "--db", db)
    assert rc == 0, out
    for d in DEVICES:
        if d != FAULTY:
            await fleet.expect(d, f"stanfleet: connected client=device-{d} version={GOOD}",
                               timeout=60)
    for _ in range(2):  # redelivered after ack_wait, failing each time
        mark = fleet.mark(FAULTY)
        await fleet.expect(FAULTY, f"ota state=failed version={GOOD}", since=mark, timeout=30)
    # The device logs the failure before its status message reaches the
    # database (STAN, then the release manager): read until it is there.
    last = ""

    async def failure_recorded() -> bool:
        nonlocal last
        rc, last = await stanfleet(stan_server, "release", "status", GOOD, "--releases",
                                   str(releases), "--db", db)
        assert rc == 0, last
        return any(ln.startswith(FAULTY) and "failed" in ln and "I/O error" in ln
                   for ln in last.splitlines())
    await eventually(failure_recorded, timeout=30)
    assert f"2/{len(DEVICES)} installed" in last, last

    # The fault is fixed; the next redelivery installs.
    slot_b.unlink()
    await fleet.expect(FAULTY, f"stanfleet: connected client=device-{FAULTY} version={GOOD}",
                       timeout=60)
    for d in DEVICES:
        await fleet.expect(d, f"release acked seq=1 {GOOD} is not newer", timeout=30)
    rc, out = await stanfleet(stan_server, "release", "status", GOOD, "--releases",
                              str(releases), "--db", db)
    assert rc == 0, out
    assert f"{len(DEVICES)}/{len(DEVICES)} installed" in out, out

    # Readings went on through all of it, still with no gap or duplicate.
    await listener.stop()
    for d, seqs in stored(db).items():
        assert seqs == list(range(1, len(seqs) + 1)), f"{d}: gap or duplicate"
