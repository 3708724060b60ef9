# Driver for tests/sim/test_tls_poll.py, run on the MicroPython unix port: a
# TLS client as the firmware makes one (nats_hello.py), printing each line it
# reads. argv: SIM_DIR PORT CA_DER [plain]; "plain" leaves out tls_poll.
import sys

sim, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if sys.argv[4:] != ["plain"]:
    sys.path.insert(0, sim)
    import tls_poll

    tls_poll.install()

import asyncio  # noqa: E402
import ssl  # noqa: E402


async def main():
    s = (await asyncio.open_connection("127.0.0.1", port))[0]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    with open(ca, "rb") as f:
        ctx.load_verify_locations(cadata=f.read())
    s.s = ctx.wrap_socket(s.s, server_hostname="127.0.0.1", do_handshake_on_connect=False)
    s.s.setblocking(False)
    s.write(b"hello\n")
    await s.drain()
    while True:
        line = await s.readline()
        if not line:
            print("EOF")
            return
        print("GOT", line.decode().strip())


asyncio.run(main())
