# The simulator's TLS sockets: the port's own (mbedTLS, as on the board),
# made pollable by file descriptor so that an idle device sleeps.
#
# On the unix port, select.poll can block only on file descriptors. A TLS
# socket has none (its ioctl refuses MP_STREAM_GET_FILENO), so every
# asyncio wait that involves it becomes a loop: sleep 1 ms, ask the socket,
# again. A connected device idling between readings woke about 330 times a
# second, and 200 simulated devices kept both cores of a 2-core machine busy
# doing nothing (`stanfleet up --devices 200`: listener subscribes timed
# out). The ESP32 has no such loop: its sockets wake the event loop.
#
# install() (board.py, at power-on) makes ssl.SSLContext.wrap_socket return
# a socket that reports the TCP socket's descriptor whenever waiting on it is
# the same as waiting on TLS: the handshake is over and mbedTLS holds no
# decrypted bytes the reader has not taken. It cannot ask mbedTLS about
# those bytes, so it counts them as there after any read that filled what
# was asked (a full line, all n bytes); only a read that stopped short (it
# would block) shows that nothing is left. Until then the socket is polled
# as before. The firmware and the frozen `ssl` module are unchanged.
import io
import select

from micropython import const

_POLL = const(3)
_CLOSE = const(4)
_GET_FILENO = const(10)
_EINVAL = const(22)
_RD = const(1)  # MP_STREAM_POLL_RD, select.POLLIN


def install():
    import ssl  # the port's, from its frozen modules

    wrap = ssl.SSLContext.wrap_socket

    def wrap_socket(self, sock, *args, **kw):
        return _Socket(wrap(self, sock, *args, **kw), sock.fileno())

    ssl.SSLContext.wrap_socket = wrap_socket


class _Socket(io.IOBase):
    def __init__(self, s, fd):
        self._s = s
        self._fd = fd
        self._talked = False  # a read has returned data: the handshake is over
        self._more = True  # mbedTLS may hold decrypted bytes not taken yet
        self._p = None  # a poller of what POLL asks about (_polled)
        self._p_talked = False  # what _talked was when _p was made

    def _took(self, data, full):
        # full: the read filled what it asked for, so more may be waiting
        if data:
            self._talked = True
        self._more = bool(data) and full
        return data

    def read(self, n=-1):
        d = self._s.read(n) if n >= 0 else self._s.read()
        return self._took(d, d is not None and (n < 0 or len(d) == n))

    def readinto(self, buf, n=-1):
        n = len(buf) if n < 0 else n
        got = self._s.readinto(buf, n)
        self._took(got, got == n)
        return got

    def readline(self):
        line = self._s.readline()
        return self._took(line, line is not None and line[-1:] == b"\n")

    def write(self, buf):
        return self._s.write(buf)

    def setblocking(self, flag):
        self._s.setblocking(flag)

    def close(self):
        self._s.close()

    def _polled(self, arg):
        # The events ready now: during the handshake of the TLS socket (mbedTLS
        # knows which way it is waiting), then of the descriptor alone.
        on = self._fd if self._talked else self._s
        if self._p is None or self._p_talked != self._talked:
            self._p = select.poll()
            self._p.register(on, arg)
            self._p_talked = self._talked
        else:
            self._p.modify(on, arg)
        r = self._p.poll(0)
        return r[0][1] if r else 0

    def ioctl(self, request, arg):
        if request == _GET_FILENO:
            # Asked when asyncio starts waiting on the socket: a descriptor
            # means a poll that blocks; an error, the 1 ms loop of POLLs.
            return self._fd if self._talked and not self._more else -_EINVAL
        if request == _POLL:
            pending = _RD if self._talked and self._more and arg & _RD else 0
            return pending | self._polled(arg)
        if request == _CLOSE:
            self._s.close()
            return 0
        return -_EINVAL
