# Minimal NATS client for MicroPython asyncio (ESP32 and the unix port).
#
# Layering follows mqtt_as: the protocol code never handles network failure
# itself. Every OSError/EOFError on the link ends in _lost(), and one task
# (_keeper) turns that into a reconnect with capped exponential backoff and
# jitter. Only connect() raises to the application.
#
# All socket writes go through one writer task. Callers append whole frames to
# an output buffer (publish() is synchronous and never blocks), so a cancelled
# caller can never leave half a frame on the wire, and no two tasks ever drain
# the same stream. The buffer survives a reconnect and is sent after CONNECT
# and the restored SUBs, like nats.go's reconnect buffer; it is bounded by
# cfg["max_pending"].
#
# Subjects may be str or bytes: MicroPython's bytearray takes either without a copy.
#
# Message callbacks are called from the reader task as cb(msg). A plain
# function must not block; a coroutine function is started as a task.

import asyncio
import gc

from micropython import const

DEFAULTS = {
    "host": "127.0.0.1",
    "port": 4222,
    "user": None,
    "password": None,
    "token": None,
    "name": None,
    "inbox_prefix": "_INBOX",  # _INBOX.<user> where the broker allows a user only its own inboxes
    "tls": False,  # True: require TLS; also upgraded when the server says tls_required
    "ca_der": None,  # path of the CA certificate in DER form; required for TLS
    "server_hostname": None,  # name checked against the certificate; default: host
    "connect_timeout": 5,  # s, open + INFO + CONNECT/PING..PONG
    "ping_interval": 30,  # s between our PINGs
    "max_pings_out": 2,  # unanswered PINGs before the link is declared dead
    "reconnect_min_ms": 250,
    "reconnect_max_ms": 30000,
    "max_pending": 32768,  # bytes buffered for the writer (also across a reconnect)
    "log": None,  # callable(str); default print
    "on_error": None,  # callable(NatsError): -ERR from the server, auth failures on reconnect
    "on_connected": None,  # callable(reconnected: bool), after subscriptions are restored
    "on_disconnected": None,  # callable(reason: str)
}

_ST_DOWN = const(0)
_ST_UP = const(1)
_ST_CLOSED = const(2)
_KEEP_OUT = const(1024)


def _close(stream):
    # MicroPython's asyncio Stream.close() does nothing (wait_closed() closes):
    # close the socket itself, so a TLS link's buffers are freed now, not
    # whenever a collection finds the socket unreferenced.
    try:
        stream.s.close()
    except OSError:
        pass


class NatsError(Exception):
    pass


class AuthError(NatsError):
    pass


class Msg:
    def __init__(self, subject, reply, data, sid):
        self.subject = subject
        self.reply = reply
        self.data = data
        self.sid = sid


class Sub:
    def __init__(self, sid, subject, queue, cb):
        self.sid = sid
        self.subject = subject
        self.queue = queue
        self.cb = cb


def _rand_hex(n):
    try:
        from os import urandom

        b = urandom(n)
    except (ImportError, AttributeError):
        from random import getrandbits

        b = bytes(getrandbits(8) for _ in range(n))
    from binascii import hexlify

    return hexlify(b).decode()


def new_inbox(prefix="_INBOX"):
    return prefix + "." + _rand_hex(11)


class Client:
    def __init__(self, cfg):
        # The caller's dict, DEFAULTS looked up (_c): a copy with every
        # default is 200 bytes of heap for as long as the client lives.
        self.cfg = cfg
        self._log = self._c("log") or print
        self._state = _ST_DOWN
        self._stream = None
        self._tasks = ()  # reader and writer of the current link (_keep pings)
        self._keeper = None
        self._out = bytearray()
        self._wev = asyncio.Event()  # writer has something to send
        self._up = asyncio.Event()
        self._lost_ev = asyncio.Event()
        self._lost_reason = None
        self._pings_out = 0
        self._pongs = []  # one entry per PING in flight: None (keepalive) or a flush() Event
        self._subs = {}
        self._sid = 0
        self._resp_prefix = None  # request/reply inbox, "<inbox_prefix>.<rand>."
        self._resp = {}  # token -> [Event, Msg]
        self._token = 0
        self.last_error = None
        self.reconnects = 0

    def _c(self, key):
        return self.cfg.get(key, DEFAULTS[key])

    # ---- public API ----------------------------------------------------------

    @property
    def connected(self):
        return self._state == _ST_UP

    def new_inbox(self):
        return new_inbox(self._c("inbox_prefix"))

    async def connect(self):
        """First connection. Raises OSError, AuthError or asyncio.TimeoutError."""
        await self._open()
        self._keeper = asyncio.create_task(self._keep())

    def publish(self, subject, data=b"", reply=None):
        """Queue a PUB. Never blocks; raises NatsError if the buffer is full or closed."""
        if self._state == _ST_CLOSED:
            raise NatsError("closed")
        n = len(data)
        o = self._out
        if len(o) + n + len(subject) + 40 > self._c("max_pending") and o:
            raise NatsError("pending buffer full")
        o += b"PUB "
        o += subject
        if reply:
            o += b" "
            o += reply
        o += b" %d\r\n" % n
        o += data
        o += b"\r\n"
        self._wev.set()

    def subscribe(self, subject, cb, queue=None):
        """Subscribe now, or when the link is next up: _open() (re)sends all SUBs."""
        self._sid += 1
        s = Sub(self._sid, subject, queue, cb)
        self._subs[s.sid] = s
        if self._state == _ST_UP:
            self._sub_frame(s, self._out)
            self._wev.set()
        return s

    def unsubscribe(self, sub):
        # While the link is down there is nothing to undo on the server.
        if self._subs.pop(sub.sid, None) is not None and self._state == _ST_UP:
            self._out += b"UNSUB %d\r\n" % sub.sid
            self._wev.set()

    async def flush(self, timeout=5):
        """Round trip to the server (PING/PONG): everything sent before has been processed."""
        ev = asyncio.Event()
        await asyncio.wait_for(self._up.wait(), timeout)
        self._pongs.append(ev)
        self._out += b"PING\r\n"
        self._wev.set()
        await asyncio.wait_for(ev.wait(), timeout)

    async def request(self, subject, data=b"", timeout=5):
        """Publish with a reply subject; returns the first reply (a Msg).
        Raises asyncio.TimeoutError, or NatsError("no responders") when
        nobody subscribes there (nats-server says so at once)."""
        if self._resp_prefix is None:
            self._resp_prefix = self.new_inbox() + "."
            self.subscribe(self._resp_prefix + "*", self._on_resp)
        self._token += 1
        tok = "%x" % self._token
        w = [asyncio.Event(), None]
        self._resp[tok] = w
        try:
            self.publish(subject, data, self._resp_prefix + tok)
            await asyncio.wait_for(w[0].wait(), timeout)
            if w[1].data is None:
                raise NatsError("no responders")
            return w[1]
        finally:
            self._resp.pop(tok, None)

    async def wait_connected(self, timeout=None):
        if timeout is None:
            await self._up.wait()
        else:
            await asyncio.wait_for(self._up.wait(), timeout)

    async def close(self):
        if self._state == _ST_CLOSED:
            return
        if self._state == _ST_UP:
            try:
                await self.flush(2)
            except Exception:  # closing anyway
                pass
        self._state = _ST_CLOSED
        if self._keeper:
            self._keeper.cancel()
        self._teardown()
        self._out = bytearray()
        # Emptied in place: MicroPython's gc is conservative, and a stale word
        # somewhere that still points at this dict kept every subscriber (the
        # STAN session and, through it, the code of stan and pb) alive after
        # close (app/device.py frees them before an install).
        self._subs.clear()
        self._resp.clear()

    # ---- connection ------------------------------------------------------------

    async def _open(self):
        # One attempt: TCP, INFO, optional TLS, CONNECT + PING, wait for PONG or -ERR.
        t = self._c("connect_timeout")
        # MicroPython's open_connection returns the same Stream as reader and writer
        s = (await asyncio.wait_for(asyncio.open_connection(self._c("host"), self._c("port")), t))[0]
        # The handshake's code (INFO, TLS, CONNECT) runs once per link: it
        # is loaded for it and dropped after, not kept on a connected heap.
        import nats_hello

        try:
            await asyncio.wait_for(nats_hello.handshake(self, s), t)
        except BaseException:  # close the socket on any failure, timeouts included
            _close(s)
            raise
        finally:
            nats_hello = None
            _drop("nats_hello")
        self._stream = s
        self._pings_out = 0
        self._lost_ev.clear()
        gc.collect()  # the handshake's JSON and line buffers are garbage now
        # Restore subscriptions before anything buffered while we were away.
        hdr = bytearray()
        for sub in self._subs.values():
            self._sub_frame(sub, hdr)
        self._out[0:0] = hdr
        self._state = _ST_UP
        self._tasks = (
            asyncio.create_task(self._reader(s)),
            asyncio.create_task(self._writer(s)),
        )
        self._wev.set()
        self._up.set()
        self._log("nats event=connected host=%s port=%d reconnects=%d"
                  % (self._c("host"), self._c("port"), self.reconnects))
        cb = self._c("on_connected")
        if cb:
            cb(self._keeper is not None)  # True: a reconnect

    def _lost(self, reason):
        # The one place a link failure is recorded; _keep() does the rest.
        if self._state == _ST_UP:
            self._state = _ST_DOWN
            self._up.clear()
            self._lost_reason = reason
            self._lost_ev.set()

    def _teardown(self):
        # PINGs written to the dead link get no PONG; flush() callers time out.
        self._pongs = []
        for t in self._tasks:
            t.cancel()
        self._tasks = ()
        if self._stream is not None:
            _close(self._stream)
            self._stream = None

    async def _keep(self):
        from random import getrandbits

        while True:
            # One task pings the link while it is up and reconnects it once
            # lost: a task less per link than a pinger of its own.
            try:
                await asyncio.wait_for(self._lost_ev.wait(), self._c("ping_interval"))
            except asyncio.TimeoutError:
                self._ping()
                continue
            self._teardown()
            self._log("nats event=disconnected reason=%s" % self._lost_reason)
            cb = self._c("on_disconnected")
            if cb:
                cb(self._lost_reason)
            delay = self._c("reconnect_min_ms")
            while True:
                # full jitter on top of half the delay avoids a herd of devices in step
                await asyncio.sleep_ms(delay // 2 + getrandbits(16) % (delay // 2 + 1))
                try:
                    await self._open()
                    self.reconnects += 1
                    break
                except (OSError, EOFError, asyncio.TimeoutError, NatsError, ValueError) as e:
                    self.last_error = e
                    self._log("nats event=reconnect_failed error=%r delay_ms=%d" % (e, delay))
                    if isinstance(e, NatsError) and self._c("on_error"):
                        self._c("on_error")(e)
                delay = min(delay * 2, self._c("reconnect_max_ms"))

    # ---- link tasks --------------------------------------------------------------

    async def _writer(self, s):
        o = None
        try:
            while True:
                await self._wev.wait()
                self._wev.clear()
                o = self._out
                if not o:
                    continue
                # Stream.write copies what the socket does not take at once,
                # so the buffer can be emptied before drain() yields.
                s.write(o)
                if len(o) > _KEEP_OUT:
                    self._out = bytearray()  # let a large buffer go rather than keep its capacity
                else:
                    o[0 : len(o)] = b""
                await s.drain()
        except (OSError, EOFError) as e:
            self._lost("write:%r" % e)

    async def _reader(self, s):
        try:
            while True:
                line = await s.readline()
                if not line:
                    raise EOFError
                if line.startswith(b"MSG ") or line.startswith(b"HMSG "):
                    await self._on_msg(s, line)
                elif line.startswith(b"PING"):
                    self._out += b"PONG\r\n"
                    self._wev.set()
                elif line.startswith(b"PONG"):
                    self._pings_out = 0
                    q = self._pongs
                    if q:
                        ev = q.pop(0)
                        if ev is not None:
                            ev.set()
                elif line.startswith(b"-ERR"):
                    self._on_err(_err_text(line))
                # +OK, INFO: nothing to do (verbose is off; cluster INFO updates unused)
        except (OSError, EOFError) as e:
            self._lost("read:%r" % e)

    async def _on_msg(self, s, line):
        # MSG <subject> <sid> [reply-to] <#bytes>
        # HMSG <subject> <sid> [reply-to] <#header bytes> <#bytes>: the headers
        # are skipped; a "503" status (no responders) comes as data None.
        p = line.split()
        n = int(p[-1])
        data = await s.readexactly(n) if n else b""
        await s.readexactly(2)
        reply = len(p) == 5
        if p[0] == b"HMSG":
            h = int(p[-2])
            reply = len(p) == 6
            data = None if data.startswith(b"NATS/1.0 503") else data[h:]
        sub = self._subs.get(int(p[2]))
        if sub is None:
            return  # unsubscribed meanwhile
        m = Msg(p[1].decode(), p[3].decode() if reply else None, data, sub.sid)
        try:
            r = sub.cb(m)
            if r is not None:
                asyncio.create_task(r)
        except Exception as e:  # a faulty callback must not kill the link
            self._log("nats event=callback_error subject=%s error=%r" % (m.subject, e))

    def _on_err(self, text):
        e = AuthError(text) if ("uthoriz" in text or "uthentic" in text) else NatsError(text)
        self.last_error = e
        self._log("nats event=server_error error=%s" % text)
        cb = self._c("on_error")
        if cb:
            cb(e)

    def _ping(self):
        if self._state != _ST_UP:
            return
        if self._pings_out >= self._c("max_pings_out"):
            self._lost("stale")
        else:
            self._pings_out += 1
            self._pongs.append(None)
            self._out += b"PING\r\n"
            self._wev.set()

    # ---- helpers -------------------------------------------------------------------

    def _on_resp(self, m):
        w = self._resp.get(m.subject[len(self._resp_prefix) :])
        if w is not None and w[1] is None:
            w[1] = m
            w[0].set()

    @staticmethod
    def _sub_frame(s, o):
        o += b"SUB "
        o += s.subject
        if s.queue:
            o += b" "
            o += s.queue
        o += b" %d\r\n" % s.sid


def _drop(name):
    import sys

    sys.modules.pop(name, None)


def _err_text(line):
    # -ERR 'Authorization Violation'
    return line[4:].strip().strip(b"'").decode()
