"""A production-shaped site loses parts while readings flow.

Three nats-server nodes (JetStream, R3, TLS with our own CA), two streaming
servers in one FT group, two listeners sharing the work on one SQLite file, twenty simulated
devices running the real firmware. While they send a reading a second: SIGKILL
the active streaming server, then one NATS node, then one listener. Every
reading a device got a PubAck for is in the database exactly once afterwards,
and every device carried on by itself (no re-provisioning, no help).

Which readings were acknowledged is read off the wire: a tap on the NATS
cluster sees each device's PubMsg (guid, reading) and the server's PubAck for
that guid.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import time

import nats
import pytest
from stanfleet.fleet.runner import FleetRunner, device_ids
from stanfleet.pb import protocol_pb2 as pb
from stanfleet.security import certs
from stanfleet.services import readings

from tests.streaming.serverproc import ServerProcess, free_port
from tests.streaming.test_cluster import jetstream_ready, three_nodes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CLUSTER = "test-cluster"
DEVICES = 20
READY = "streaming server ready"


@pytest.fixture
def tls(tmp_path) -> certs.CertPaths:
    return certs.init(str(tmp_path / "certs"), ["127.0.0.1"])


@pytest.fixture
def cluster(tmp_path, tls):
    """Three JetStream nodes; clients only over TLS."""
    yield from three_nodes(tmp_path, "site", (tls.server, tls.server_key))


class Tap:
    """Every device reading published, and every PubAck without error, by guid."""

    def __init__(self):
        self.readings: dict[str, tuple[str, bytes]] = {}  # guid -> (device, data)
        self.acked: dict[str, float] = {}  # guid -> when the PubAck passed
        self.changed = asyncio.Event()
        self.nc = None

    async def start(self, url: str, ca: str) -> "Tap":
        self.nc = await nats.connect(url, tls=certs.client_context(ca))
        await self.nc.subscribe(f"_STAN.pub.{CLUSTER}.devices.*.events", cb=self._on_pub)
        await self.nc.subscribe("_INBOX.>", cb=self._on_inbox)
        await self.nc.flush()
        return self

    async def _on_pub(self, msg) -> None:
        pm = pb.PubMsg.FromString(msg.data)
        self.readings[pm.guid] = (pm.subject.split(".")[1], pm.data)

    async def _on_inbox(self, msg) -> None:
        try:
            ack = pb.PubAck.FromString(msg.data)
        except Exception:
            return  # deliveries, heartbeats, responses: not PubAcks
        if ack.guid and not ack.error and ack.guid not in self.acked:
            self.acked[ack.guid] = time.monotonic()
            self.changed.set()

    def acked_readings(self, before: float = float("inf")) -> dict[str, tuple[str, bytes]]:
        return {g: self.readings[g] for g, t in self.acked.items()
                if t < before and g in self.readings}

    def devices_acked_since(self, t: float) -> set[str]:
        return {self.readings[g][0] for g, at in self.acked.items()
                if at > t and g in self.readings}

    async def wait_all_devices_since(self, t: float, timeout: float) -> None:
        """Until every device has had a reading acknowledged after t."""
        async def loop():
            while len(self.devices_acked_since(t)) < DEVICES:
                self.changed.clear()
                await self.changed.wait()
        try:
            await asyncio.wait_for(loop(), timeout)
        except asyncio.TimeoutError:
            missing = set(device_ids(DEVICES)) - self.devices_acked_since(t)
            raise AssertionError(f"no reading acked within {timeout}s from {sorted(missing)}")


class Listener:
    """`stanfleet listener` as a process."""

    def __init__(self, name: str, url: str, ca: str, db: str, log_path: str):
        self.args = ("listener", "--name", name, "--nats", url, "--cluster-id", CLUSTER,
                     "--ca", ca, "--db", db, "--ops-port", "0")
        self.log_path = log_path
        self.proc = None

    async def start(self) -> "Listener":
        exe = os.path.join(os.path.dirname(sys.executable), "stanfleet")
        self.log = open(self.log_path, "w")
        self.proc = await asyncio.create_subprocess_exec(exe, *self.args, stdout=self.log,
                                                         stderr=asyncio.subprocess.STDOUT)
        return self

    async def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
            await self.proc.wait()
        self.log.close()


def stored(db: str) -> list[tuple[str, str, float]]:
    if not os.path.exists(db):
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute("SELECT device, ts, temp FROM readings").fetchall()
    except sqlite3.OperationalError:  # the listener has not made the table yet
        return []
    finally:
        con.close()


def reading_key(device: str, data: bytes) -> tuple[str, str, float]:
    """As the listener stores it (its parser normalises the timestamp)."""
    r = readings.parse(data)
    return device, r.ts, r.temp


async def test_site_loses_the_active_server_a_nats_node_and_a_listener(cluster, tls, tmp_path,
                                                                       releases):
    urls = [n.url for n in cluster]
    assert all(u.startswith("tls://") for u in urls)
    await jetstream_ready(urls[0], tls=certs.client_context(tls.ca))
    db = str(tmp_path / "fleet.db")
    # Heartbeats tuned for fast failover: a killed listener is declared dead
    # after about 10 s and its queue share (and unacked readings) goes to the
    # other one. At the defaults (30 s x 10) that takes five minutes.
    servers = [ServerProcess("-ns", ",".join(urls), "--replicas", "3", "--ft_group", "site",
                             "-hbi", "2s", "-hbt", "2s", "-hbf", "3", "-tls_client_cacert", tls.ca,
                             "-dir", str(tmp_path / f"s{i}"), "-m", str(free_port()),
                             log_path=str(tmp_path / f"server{i}.log"),
                             ready_line=READY if i == 0 else "standing by")
               for i in range(2)]
    # Listeners and the tap stay on node 0, which is never killed: a service
    # takes one NATS URL (see the report), the devices' proxies take all three.
    listeners = [Listener(str(i), urls[0], tls.ca, db, str(tmp_path / f"listener{i}.log"))
                 for i in range(2)]
    with open(tls.ca_der, "rb") as f:
        ca_der = f.read()
    fleet = FleetRunner(urls, CLUSTER, tmp_path / "fleet", count=DEVICES, releases_dir=releases,
                        sending_frequency=1, ca_der=ca_der,
                        credentials=lambda _id: {"sending_frequency": 1, "buffer_size": 300})
    tap = await Tap().start(urls[0], tls.ca)
    try:
        for s in servers:
            await s.start(timeout=60)
        for listener in listeners:
            await listener.start()
        await fleet.start()
        t = time.monotonic()
        await tap.wait_all_devices_since(t, timeout=180)

        t = time.monotonic()
        await servers[0].kill()
        await servers[1].wait_line(READY, timeout=30)
        await tap.wait_all_devices_since(t, timeout=90)

        t = time.monotonic()
        cluster[2].kill()
        await tap.wait_all_devices_since(t, timeout=120)

        t = time.monotonic()
        await listeners[0].stop(signal.SIGKILL)
        await tap.wait_all_devices_since(t, timeout=90)
        end = time.monotonic()

        # Everything acked before `end` reaches the database: the killed
        # listener's unacked readings come to the other one after ack_wait.
        want = {reading_key(*r) for r in tap.acked_readings(before=end).values()}
        deadline = time.monotonic() + 180
        while not want <= set(stored(db)):
            if time.monotonic() > deadline:
                missing = sorted(want - set(stored(db)))
                raise AssertionError(f"{len(missing)} acked readings not in the database, "
                                     f"e.g. {missing[:5]} ... {missing[-5:]}")
            await asyncio.sleep(1)  # the database offers nothing to await
    finally:
        await fleet.stop()
        for listener in listeners:
            if listener.proc is not None:
                await listener.stop()
        for s in servers:
            await s.stop()
        await tap.nc.close()
    rows = stored(db)
    assert len(rows) == len(set(rows)), "a reading is in the database twice"
    assert want <= set(rows)
    print(f"{len(want)} acknowledged readings from {DEVICES} devices, all stored once")
