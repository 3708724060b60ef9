# Ed25519 signature verification (RFC 8032, section 5.1.7), written from the
# RFC. Runs unchanged on MicroPython (ESP32 and unix ports) and CPython.
#
#   import ed25519
#   ok = ed25519.verify(public_key, message, signature)   # True or False
#   ed25519.prepare(public_key)   # optional: make verify()'s tables now
#
# public_key is 32 bytes, signature 64 bytes, message any bytes-like object.
# verify() returns False, never raises, for wrong lengths, a public key that
# is not a canonical encoding of a curve point, S >= L, a non-canonical R, a
# wrong key or a tampered message or signature. The check is the cofactorless
# one that OpenSSL (and so the `cryptography` package) does: encode([S]B -
# [k]A) and compare it with R byte for byte, k = SHA-512(R || A || M) mod L.
# Verifying only: there is no signing here and nothing is secret, so nothing
# needs to run in constant time.
#
# SHA-512 comes from hashlib when the port has it, else from sha512.py (pure
# Python; the ESP32 and unix MicroPython ports have no hashlib.sha512). The
# message is hashed once, so sign a short manifest (carrying the image's
# SHA-256) rather than a whole firmware image.
#
# How: field elements are ints mod p = 2^255 - 19, reduced after every
# product (about 1 us per product and reduction on the unix port). Points are
# in extended coordinates (X:Y:Z:T), x = X/Z, y = Y/Z, xy = T/Z
# (Hisil-Wong-Carter-Dawson 2008, a = -1; complete formulas), with T carried as
# the pending product E*H so that doublings never compute it. [S]B - [k]A is
# one interleaved (Straus-Shamir) double-scalar multiplication over width-5
# NAFs of both scalars, with tables of the odd multiples 1..15 of B and of -A:
# about 253 doublings and 85 additions. The tables are kept as bytes (2 x 1 KB;
# 64 big ints would hold about 7 KB) and read back one coordinate at a time.
#
# Measured for one verify of a 100-byte message (bench/ed25519_verify.py, x86-64):
#   CPython 3.11, hashlib.sha512                     1.2 ms
#   CPython 3.11, the pure sha512.py                 1.35 ms
#   MicroPython 1.29 unix port, .mpy, pure SHA-512   4.7 ms
#   unix port heap: importing sha512.mpy + ed25519.mpy holds 8.6 KB; a verify
#   adds about 5 KB of live data (tables, NAFs, SHA-512 state); the smallest
#   -X heapsize that imports both and completes a verify is 19k.
# Not measured on an ESP32; as a rough guide MicroPython there runs big-int
# code some 30-60x slower than this machine, i.e. a few hundred ms per verify.
# Needs a port with big ints (MPZ) and 3-argument pow(), as ESP32 builds have.

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


try:
    from hashlib import sha512 as _sha512
except ImportError:  # MicroPython: no sha512 in hashlib
    from sha512 import sha512 as _sha512

_P = const(0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFED)  # 2^255 - 19
_L = const(0x1000000000000000000000000000000014DEF9DEA2F79CD65812631A5CF5D3ED)  # group order
_D = const(0x52036CEE2B6FFE738CC740797779E89800700A4D4141D8AB75EB4DCA135978A3)  # -121665/121666
_D2 = const(0x2406D9DC56DFFCE7198E80F2EEF3D13000E0149A8283B156EBD69B9426B2F159)  # 2d
_SQRTM1 = const(0x2B8324804FC1DF0B2B4D00993DFBD7A72F431806AD2FE478C4EE1B274A0EA0B0)  # 2^((p-1)/4)
# the base point B (y = 4/5, x even)
_BX = const(0x216936D3CD6E53FEC0A4E231FDD6DC5C692CC7609525A7B2C9562D608F25D51A)
_BY = const(0x6666666666666666666666666666666666666666666666666666666666666658)
_Y_MASK = const(0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF)  # 2^255 - 1
_SQRT_EXP = const(0x0FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFD)  # (p - 5) / 8
_INV_EXP = const(0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEB)  # p - 2


def _decode_point(b):
    """(x, y) of a 32-byte point encoding (RFC 8032, 5.1.3), or None."""
    y = int.from_bytes(b, "little")
    sign = y >> 255
    y &= _Y_MASK
    if y >= _P:
        return None
    # x^2 = u / v; candidate root x = u v^3 (u v^7)^((p - 5) / 8)
    yy = y * y % _P
    u = (yy - 1) % _P
    v = (_D * yy + 1) % _P
    v3 = v * v % _P * v % _P
    x = u * v3 % _P * pow(u * v3 % _P * v3 % _P * v % _P, _SQRT_EXP, _P) % _P
    vxx = v * x % _P * x % _P
    if vxx != u:
        if vxx != _P - u:
            return None  # u / v is not a square: not on the curve
        x = x * _SQRTM1 % _P
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return x, y


def _dbl(X, Y, Z):
    """2(X:Y:Z); returns (X, Y, Z, E, H) with T = E*H (dbl-2008-hwcd, signs folded)."""
    a = X * X % _P
    b = Y * Y % _P
    h = a + b
    e = h - (X + Y) * (X + Y) % _P
    g = a - b
    f = 2 * Z * Z % _P + g
    return e * f % _P, g * h % _P, f * g % _P, e, h


def _add(X, Y, Z, E, H, tab, i, neg):
    """(X:Y:Z:E*H) + q, or - q when neg, q the cached point (Y-X, Y+X, 2dT, 2Z)
    at ``tab[i:i + 128]`` (add-2008-hwcd-3); returns (X, Y, Z, E, H)."""
    q0 = int.from_bytes(tab[i:i + 32], "little")
    q1 = int.from_bytes(tab[i + 32:i + 64], "little")
    if neg:
        a = (Y - X) * q1 % _P
        b = (Y + X) * q0 % _P
        c = -(E * H % _P) * int.from_bytes(tab[i + 64:i + 96], "little") % _P
    else:
        a = (Y - X) * q0 % _P
        b = (Y + X) * q1 % _P
        c = E * H % _P * int.from_bytes(tab[i + 64:i + 96], "little") % _P
    d = Z * int.from_bytes(tab[i + 96:i + 128], "little") % _P
    e = b - a
    f = d - c
    g = d + c
    h = b + a
    return e * f % _P, g * h % _P, f * g % _P, e, h


def _put(tab, i, X, Y, Z, E, H):
    """Store (X:Y:Z:E*H) in cached form (Y-X, Y+X, 2dT, 2Z) at tab[i:i + 128]."""
    tab[i:i + 32] = ((Y - X) % _P).to_bytes(32, "little")
    tab[i + 32:i + 64] = ((Y + X) % _P).to_bytes(32, "little")
    tab[i + 64:i + 96] = (E * H % _P * _D2 % _P).to_bytes(32, "little")
    tab[i + 96:i + 128] = (2 * Z % _P).to_bytes(32, "little")


def _table(x, y):
    """The odd multiples 1, 3, ..., 15 of the affine point (x, y) in cached
    form, 128 bytes each: 1 KB, where 32 big ints would hold about 3.5 KB."""
    tab = bytearray(1152)  # the 8 multiples, then 2(x, y) as scratch
    _put(tab, 1024, *_dbl(x, y, 1))
    p = (x, y, 1, x, y)
    _put(tab, 0, *p)
    for i in range(128, 1024, 128):
        p = _add(*p, tab, 1024, False)
        _put(tab, i, *p)
    return memoryview(tab)


def _naf5(k):
    """Width-5 NAF of k as a bytearray, least significant first: each byte is
    0 or an odd digit in -15..15 stored mod 256."""
    out = bytearray(256)
    i = 0
    while k:
        if k & 1:
            d = k & 31
            if d > 16:
                d -= 32
            k -= d
            out[i] = d & 255
        k >>= 1
        i += 1
    return out


def _encode(X, Y, Z):
    zi = pow(Z, _INV_EXP, _P)
    x = X * zi % _P
    y = Y * zi % _P
    return (y | (x & 1) << 255).to_bytes(32, "little")


# The tables of prepare()'s key: (public_key, (table of B, table of -A)).
_prepared = [None, None]


def prepare(public_key):
    """Make the tables that verify() needs for ``public_key`` now and keep
    them for it: two blocks of 1,152 bytes, which a caller can take while its
    heap is still in one piece rather than in the middle of an install.
    Returns False if the key is not a valid point (verify() would return False)."""
    _prepared[0] = _prepared[1] = None
    tabs = _tables(bytes(public_key))
    if tabs is None:
        return False
    _prepared[0], _prepared[1] = bytes(public_key), tabs
    return True


def _tables(public_key):
    if _prepared[0] == public_key:
        return _prepared[1]
    a = _decode_point(public_key)
    if a is None:
        return None
    return _table(_BX, _BY), _table(_P - a[0], a[1])


def verify(public_key, message, signature):
    """True if ``signature`` (64 bytes) is a valid Ed25519 signature of
    ``message`` by ``public_key`` (32 bytes), else False."""
    try:
        if len(public_key) != 32 or len(signature) != 64:
            return False
        public_key = bytes(public_key)
        r = bytes(signature[:32])
        s = int.from_bytes(bytes(signature[32:]), "little")
        if s >= _L:
            return False
        tabs = _tables(public_key)
        if tabs is None:
            return False
        h = _sha512(r)
        h.update(public_key)
        h.update(message)
        k = int.from_bytes(h.digest(), "little") % _L
    except (TypeError, ValueError):
        return False
    h = None
    # [S]B + [k](-A), then compare its encoding with R
    ns = _naf5(s)
    s = None
    nk = _naf5(k)
    k = None
    tb, ta = tabs
    tabs = None
    i = 255
    while i >= 0 and not ns[i] and not nk[i]:
        i -= 1
    X, Y, Z, E, H = 0, 1, 1, 0, 1  # the neutral point
    while i >= 0:
        X, Y, Z, E, H = _dbl(X, Y, Z)
        d = ns[i]
        if d:
            if d < 128:
                X, Y, Z, E, H = _add(X, Y, Z, E, H, tb, (d >> 1) << 7, False)
            else:
                X, Y, Z, E, H = _add(X, Y, Z, E, H, tb, (256 - d) >> 1 << 7, True)
        d = nk[i]
        if d:
            if d < 128:
                X, Y, Z, E, H = _add(X, Y, Z, E, H, ta, (d >> 1) << 7, False)
            else:
                X, Y, Z, E, H = _add(X, Y, Z, E, H, ta, (256 - d) >> 1 << 7, True)
        i -= 1
    return _encode(X, Y, Z) == r
