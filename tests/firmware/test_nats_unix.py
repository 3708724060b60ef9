"""firmware/lib/nats.py on the MicroPython unix port, against a real nats-server
(and, for the keepalive and parser details, a scripted fake server)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess

import nats as natspy
import pytest
from mpy_runner import MicroPython
from stanfleet.broker import Broker, BrokerConfig


def driver_cfg(port: int, **extra) -> str:
    cfg = {"host": "127.0.0.1", "port": port, "name": "fw-test", "reconnect_min_ms": 50,
           "reconnect_max_ms": 400, "connect_timeout": 5}
    cfg.update(extra)
    return json.dumps(cfg)


def start_broker(tmp_path, name: str, port: int = -1, conf: str | None = None) -> Broker:
    config_file = None
    if conf is not None:
        config_file = tmp_path / f"{name}.conf"
        config_file.write_text(conf)
    return Broker(BrokerConfig(port=port, store_dir=str(tmp_path / name / "js"),
                               log_file=str(tmp_path / f"{name}.log"),
                               config_file=str(config_file) if config_file else None)).start()


async def test_pub_sub_and_request_reply(broker):
    nc = await natspy.connect(broker.url)
    async def svc(msg):
        await msg.respond(b"svc:" + msg.data)

    await nc.subscribe("py.svc", cb=svc)
    sink = await nc.subscribe("py.sink")
    await nc.flush()
    async with await MicroPython.start("nats_driver.py", cfg=driver_cfg(broker.port)) as mp:
        await mp.expect("READY")
        # server -> device
        await nc.publish("fw.in", b"hello")
        assert await mp.expect("MSG") == "MSG fw.in hello -"
        await nc.publish("fw.in", b"", reply="some.reply")
        assert await mp.expect("MSG") == "MSG fw.in  some.reply"
        # device answers a request
        reply = await nc.request("fw.echo", b"abc", timeout=5)
        assert reply.data == b"echo:abc"
        # device -> server, and device requests
        mp.send("pub py.sink data1")
        await mp.expect("PUBBED")
        assert (await sink.next_msg(timeout=5)).data == b"data1"
        mp.send("req py.svc hi 5")
        assert await mp.expect("REPLY") == "REPLY svc:hi"
        mp.send("req py.svc again 5")
        assert await mp.expect("REPLY") == "REPLY svc:again"
        # nobody subscribes: nats-server says so at once (no_responders)
        mp.send("req nobody.listens x 5")
        assert await mp.expect("NATSERROR", timeout=3) == "NATSERROR no responders"
        mp.send("quit")
        await mp.expect("CLOSED")
        assert await mp.finish() == 0
    await nc.close()


async def test_large_payload_round_trip(broker):
    nc = await natspy.connect(broker.url)
    data = bytes(range(97, 123)) * 4000  # 104 kB of letters
    cfg = driver_cfg(broker.port)
    async with await MicroPython.start("nats_driver.py", cfg=cfg, heap="1m") as mp:
        await mp.expect("READY")
        reply = await nc.request("fw.echo", data, timeout=10)
        assert reply.data == b"echo:" + data
    await nc.close()


async def test_reconnect_after_broker_restart(tmp_path):
    first = start_broker(tmp_path, "first")
    port = first.port
    second = None
    try:
        async with await MicroPython.start("nats_driver.py", cfg=driver_cfg(port)) as mp:
            await mp.expect("READY")
            first.stop()
            await mp.expect("DOWN")
            second = start_broker(tmp_path, "second", port=port)
            await mp.expect("UP reconnected", timeout=30)
            # subscriptions were restored on the new server
            nc = await natspy.connect(second.url)
            await nc.publish("fw.in", b"after")
            assert await mp.expect("MSG") == "MSG fw.in after -"
            reply = await nc.request("fw.echo", b"x", timeout=5)
            assert reply.data == b"echo:x"
            # and the request inbox works again too
            async def svc(msg):
                await msg.respond(b"ok")

            await nc.subscribe("py.svc", cb=svc)
            await nc.flush()
            mp.send("req py.svc q 5")
            assert await mp.expect("REPLY") == "REPLY ok"
            await nc.close()
    finally:
        first.stop()
        if second:
            second.stop()


AUTH_CONF = 'authorization { user: "dev", password: "s3cret" }\n'


async def test_auth_failure_surfaces(tmp_path):
    b = start_broker(tmp_path, "auth", conf=AUTH_CONF)
    try:
        cfg = driver_cfg(b.port, user="dev", password="wrong")
        async with await MicroPython.start("nats_driver.py", cfg=cfg) as mp:
            line = await mp.expect("CONNECT_ERROR")
            assert line.startswith("CONNECT_ERROR AuthError")
            assert "Authorization Violation" in line
            assert await mp.finish() == 0
        cfg = driver_cfg(b.port, user="dev", password="s3cret")
        async with await MicroPython.start("nats_driver.py", cfg=cfg) as mp:
            await mp.expect("READY")
            mp.send("req fw.echo me 5")
            assert await mp.expect("REPLY") == "REPLY echo:me"
    finally:
        b.stop()


async def test_token_auth(tmp_path):
    b = start_broker(tmp_path, "token", conf='authorization { token: "t0ken" }\n')
    try:
        cfg = driver_cfg(b.port, token="t0ken")
        async with await MicroPython.start("nats_driver.py", cfg=cfg) as mp:
            await mp.expect("READY")
        cfg = driver_cfg(b.port, token="bad")
        async with await MicroPython.start("nats_driver.py", cfg=cfg) as mp:
            assert (await mp.expect("CONNECT_ERROR")).startswith("CONNECT_ERROR AuthError")
    finally:
        b.stop()


# ---- scripted fake server: keepalive, -ERR and MSG parsing ---------------------------------

INFO = {"server_id": "FAKE", "version": "2.15.1", "proto": 1, "max_payload": 1048576,
        "headers": True}


class FakeServer:
    """Accepts connections and hands each to the test as (reader, writer)."""

    def __init__(self):
        self.conns: asyncio.Queue = asyncio.Queue()
        self.server = None
        self.port = 0

    async def __aenter__(self):
        async def on_conn(r, w):
            w.write(b"INFO " + json.dumps(INFO).encode() + b"\r\n")
            await w.drain()
            await self.conns.put((r, w))

        self.server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        while not self.conns.empty():
            self.conns.get_nowait()[1].close()

    async def accept(self):
        return await asyncio.wait_for(self.conns.get(), 15)


class FakeConn:
    """One client connection to the fake server. A background task answers the
    client's PINGs (while ``answer_pings``) and queues every other line."""

    def __init__(self, r, w):
        self.r, self.w = r, w
        self.answer_pings = True
        self.lines: asyncio.Queue = asyncio.Queue()
        self.pings: asyncio.Queue = asyncio.Queue()
        self.task = asyncio.create_task(self._read())

    async def _read(self):
        while line := await self.r.readline():
            if line == b"PING\r\n":
                self.pings.put_nowait(line)
                if self.answer_pings:
                    self.send(b"PONG\r\n")
            else:
                self.lines.put_nowait(line)

    def send(self, data: bytes):
        self.w.write(data)

    async def line(self, timeout=15) -> bytes:
        return await asyncio.wait_for(self.lines.get(), timeout)

    async def ping(self, timeout=15):
        return await asyncio.wait_for(self.pings.get(), timeout)

    def close(self):
        self.task.cancel()
        self.w.close()


async def handshake(fake: FakeServer) -> tuple[FakeConn, dict]:
    c = FakeConn(*await fake.accept())
    line = await c.line()
    assert line.startswith(b"CONNECT ")
    return c, json.loads(line[8:])


async def test_connect_options_keepalive_and_stale_link():
    async with FakeServer() as fake:
        cfg = driver_cfg(fake.port, user="dev", password="pw", ping_interval=0.2, max_pings_out=2)
        async with await MicroPython.start("nats_driver.py", cfg=cfg) as mp:
            c, opts = await handshake(fake)
            assert opts["verbose"] is False and opts["pedantic"] is False
            assert opts["headers"] is True and opts["no_responders"] is True
            assert opts["user"] == "dev" and opts["pass"] == "pw" and opts["name"] == "fw-test"
            assert "auth_token" not in opts
            assert await c.line() == b"SUB fw.in 1\r\n"
            assert await c.line() == b"SUB fw.echo 2\r\n"
            await mp.expect("READY")
            # the server pings: the client answers
            c.send(b"PING\r\n")
            assert await c.line() == b"PONG\r\n"
            # -ERR that does not end the connection is reported, link stays up
            c.send(b"-ERR 'Permissions Violation for Publish to \"x\"'\r\n")
            assert (await mp.expect("ERR")).startswith("ERR NatsError Permissions Violation")
            # MSG parsing: reply subject, payload split over writes, empty payload
            c.send(b"MSG fw.in 1 r.1 5\r\nhel")
            await c.w.drain()
            c.send(b"lo\r\nMSG fw.in 1 0\r\n\r\n")
            assert await mp.expect("MSG") == "MSG fw.in hello r.1"
            assert await mp.expect("MSG") == "MSG fw.in  -"
            # HMSG: the headers are skipped, with and without a reply subject
            hdr = b"NATS/1.0\r\nK: v\r\n\r\n"
            c.send(b"HMSG fw.in 1 r.2 %d %d\r\n%sdata\r\n" % (len(hdr), len(hdr) + 4, hdr))
            c.send(b"HMSG fw.in 1 %d %d\r\n%s\r\n" % (len(hdr), len(hdr), hdr))
            assert await mp.expect("MSG") == "MSG fw.in data r.2"
            assert await mp.expect("MSG") == "MSG fw.in  -"
            # our keepalive PINGs go unanswered: after max_pings_out the link is dead
            c.answer_pings = False
            await mp.expect("DOWN stale")
            # reconnect restores both subscriptions (in any order) on the new link
            c2, _ = await handshake(fake)
            assert {await c2.line(), await c2.line()} == {b"SUB fw.in 1\r\n", b"SUB fw.echo 2\r\n"}
            await mp.expect("UP reconnected")
            c.close()
            c2.close()


async def test_connection_refused_raises_from_connect():
    async with FakeServer() as fake:
        port = fake.port
    async with await MicroPython.start("nats_driver.py", cfg=driver_cfg(port)) as mp:
        line = await mp.expect("CONNECT_ERROR")
        assert "OSError" in line or "EOFError" in line
        assert await mp.finish() == 0


# ---- TLS ------------------------------------------------------------------------------------

def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}", cwd=d)
    openssl("x509", "-in", f"{name}.pem", "-outform", "DER", "-out", f"{name}.der", cwd=d)


@pytest.fixture
def tls_files(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    d = tmp_path
    make_ca(d, "ca")
    make_ca(d, "otherca")
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=localhost", cwd=d)
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=d)
    return d


async def test_tls_verified_connection(tmp_path, tls_files):
    d = tls_files
    conf = f'tls {{\n  cert_file: "{d / "server.pem"}"\n  key_file: "{d / "server.key"}"\n}}\n'
    b = start_broker(tmp_path, "tls", conf=conf)
    try:
        good = driver_cfg(b.port, ca_der=str(d / "ca.der"), server_hostname="localhost")
        async with await MicroPython.start("nats_driver.py", cfg=good) as mp:
            await mp.expect("READY")
            mp.send("req fw.echo secure 5")
            assert await mp.expect("REPLY") == "REPLY echo:secure"
            mp.send("quit")
            await mp.expect("CLOSED")
        # the certificate of another CA is refused
        bad_ca = driver_cfg(b.port, ca_der=str(d / "otherca.der"), server_hostname="localhost")
        async with await MicroPython.start("nats_driver.py", cfg=bad_ca) as mp:
            await mp.expect("CONNECT_ERROR")
        # and so is a name the certificate does not carry
        bad_name = driver_cfg(b.port, ca_der=str(d / "ca.der"), server_hostname="evil.example")
        async with await MicroPython.start("nats_driver.py", cfg=bad_name) as mp:
            await mp.expect("CONNECT_ERROR")
        # no CA configured: refuse rather than connect unverified
        async with await MicroPython.start("nats_driver.py", cfg=driver_cfg(b.port)) as mp:
            line = await mp.expect("CONNECT_ERROR")
            assert "ca_der" in line
    finally:
        b.stop()
