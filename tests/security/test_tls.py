"""TLS with our own CA: certs init, a TLS-only nats-server, verified clients."""

from __future__ import annotations

import ssl
import subprocess
import sys

import nats
import pytest
from cryptography import x509
from stanfleet.broker import Broker, BrokerConfig
from stanfleet.security.certs import client_context, init


@pytest.fixture
def certs(tmp_path):
    return init(str(tmp_path / "certs"), ["localhost", "127.0.0.1"])


@pytest.fixture
def tls_broker(tmp_path, certs):
    b = Broker(BrokerConfig(tls=(certs.server, certs.server_key),
                            store_dir=str(tmp_path / "js"), log_file=str(tmp_path / "nats.log")))
    b.start()
    yield b
    b.stop()


def test_certs_init_writes_ca_in_pem_and_der_and_a_server_cert_for_the_hosts(tmp_path):
    out = subprocess.run([sys.executable, "-m", "stanfleet.cli", "certs", "init", "--dir",
                          str(tmp_path / "c"), "--host", "fleet.example", "--host", "10.1.2.3"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    d = tmp_path / "c"
    ca = x509.load_der_x509_certificate((d / "ca.der").read_bytes())
    server = x509.load_pem_x509_certificate((d / "server.pem").read_bytes())
    assert server.issuer == ca.subject
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["fleet.example"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    assert (d / "ca.key").stat().st_mode & 0o777 == 0o600
    again = subprocess.run([sys.executable, "-m", "stanfleet.cli", "certs", "init", "--dir",
                            str(d)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "already exists" in again.stderr


async def test_tls_broker_accepts_verified_clients_only(tls_broker, certs, tmp_path):
    nc = await nats.connect(tls_broker.url, tls=client_context(certs.ca),
                            tls_hostname="localhost")
    await nc.publish("x", b"1")
    await nc.flush()
    await nc.close()
    async def quiet(e):
        pass
    plain = tls_broker.url.replace("tls://", "nats://")
    with pytest.raises(Exception):  # plaintext is refused
        await nats.connect(plain, allow_reconnect=False, max_reconnect_attempts=1,
                           error_cb=quiet, connect_timeout=3)
    other = init(str(tmp_path / "other"), ["localhost"])
    with pytest.raises(Exception):  # a server our CA did not sign is refused
        await nats.connect(tls_broker.url, tls=client_context(other.ca),
                           tls_hostname="localhost", allow_reconnect=False,
                           max_reconnect_attempts=1, error_cb=quiet, connect_timeout=3)
    with pytest.raises(Exception):  # and so is a name the certificate does not carry
        await nats.connect(tls_broker.url, tls=client_context(certs.ca),
                           tls_hostname="wrong.example", allow_reconnect=False,
                           max_reconnect_attempts=1, error_cb=quiet, connect_timeout=3)
    assert isinstance(client_context(certs.ca), ssl.SSLContext)


async def test_streaming_server_embeds_a_tls_only_nats(certs, tmp_path):
    from stanfleet.client import Client

    from ..streaming.serverproc import ServerProcess, free_port

    port = free_port()
    proc = ServerProcess("-a", "127.0.0.1", "-p", str(port), "-store", "memory",
                         "--tlscert", certs.server, "--tlskey", certs.server_key,
                         "--tls_client_cacert", certs.ca, log_path=str(tmp_path / "s.log"))
    await proc.start()
    try:
        nc = await nats.connect(f"tls://127.0.0.1:{port}", tls=client_context(certs.ca))
        sc = Client()
        await sc.connect("test-cluster", "tls-client", nats=nc)
        ack = await sc.publish("devices.3F45.events", b'{"ts":"2026-11-25T10:00:00Z","temp":1}')
        assert ack.guid and not ack.error
        await sc.close()
        await nc.close()
        async def quiet(e):
            pass
        with pytest.raises(Exception):
            await nats.connect(f"nats://127.0.0.1:{port}", allow_reconnect=False,
                               max_reconnect_attempts=1, error_cb=quiet, connect_timeout=3)
    finally:
        await proc.stop()


async def test_monitoring_port_is_tls_when_the_server_has_a_certificate(tls_broker, certs):
    import aiohttp
    from stanfleet.streaming import ServerOptions, StreamingServer

    server = StreamingServer(ServerOptions(nats_url=tls_broker.url, tls_ca=certs.ca,
                                           tls_cert=certs.server, tls_key=certs.server_key,
                                           host="127.0.0.1", monitor_port=0))
    await server.start()
    try:
        url = f"https://localhost:{server.monitor_port}/streaming/serverz"
        async with aiohttp.ClientSession() as http:
            async with http.get(url, ssl=client_context(certs.ca)) as r:
                assert r.status == 200 and "cluster_id" in await r.json()
            with pytest.raises(aiohttp.ClientError):  # plaintext gets nothing
                async with http.get(url.replace("https", "http")) as r:
                    await r.read()
    finally:
        await server.stop()
