# SHA-512 (FIPS 180-4) in plain Python, for ports whose hashlib has no sha512
# (the ESP32 and unix MicroPython ports have only sha256/sha1/md5). Runs
# unchanged on MicroPython and CPython; ed25519.py uses it when hashlib.sha512
# is missing. The same interface as hashlib's, minus copy() and hexdigest():
#
#   h = sha512(b"abc"); h.update(b"def"); h.digest()   # 64 bytes
#
# 64-bit words are big ints on every MicroPython port, so this is slow: about
# 0.23 ms per 128-byte block on the unix port (x86-64; 0.06 ms on CPython), far
# more on an ESP32. Hash short messages with it (an Ed25519-signed manifest
# carrying the image's SHA-256), not whole firmware images. The message
# schedule is a ring of 16 words and the round constants are unpacked 16 at a
# time, so hashing holds about 2 KB of heap beyond the caller's data.

import struct
from binascii import unhexlify

# Round constants: the first 64 bits of the fractional parts of the cube roots
# of the first 80 primes (FIPS 180-4, 4.2.3), as 640 big-endian bytes: 80 big
# ints would hold 4.5 KB of heap, these 640 bytes (+ 16 ints during a block).
_K = unhexlify(
    "428a2f98d728ae227137449123ef65cdb5c0fbcfec4d3b2fe9b5dba58189dbbc"
    "3956c25bf348b53859f111f1b605d019923f82a4af194f9bab1c5ed5da6d8118"
    "d807aa98a303024212835b0145706fbe243185be4ee4b28c550c7dc3d5ffb4e2"
    "72be5d74f27b896f80deb1fe3b1696b19bdc06a725c71235c19bf174cf692694"
    "e49b69c19ef14ad2efbe4786384f25e30fc19dc68b8cd5b5240ca1cc77ac9c65"
    "2de92c6f592b02754a7484aa6ea6e4835cb0a9dcbd41fbd476f988da831153b5"
    "983e5152ee66dfaba831c66d2db43210b00327c898fb213fbf597fc7beef0ee4"
    "c6e00bf33da88fc2d5a79147930aa72506ca6351e003826f142929670a0e6e70"
    "27b70a8546d22ffc2e1b21385c26c9264d2c6dfc5ac42aed53380d139d95b3df"
    "650a73548baf63de766a0abb3c77b2a881c2c92e47edaee692722c851482353b"
    "a2bfe8a14cf10364a81a664bbc423001c24b8b70d0f89791c76c51a30654be30"
    "d192e819d6ef5218d69906245565a910f40e35855771202a106aa07032bbd1b8"
    "19a4c116b8d2d0c81e376c085141ab532748774cdf8eeb9934b0bcb5e19b48a8"
    "391c0cb3c5c95a634ed8aa4ae3418acb5b9cca4f7763e373682e6ff3d6b2b8a3"
    "748f82ee5defb2fc78a5636f43172f6084c87814a1f0ab728cc702081a6439ec"
    "90befffa23631e28a4506cebde82bde9bef9a3f7b2c67915c67178f2e372532b"
    "ca273eceea26619cd186b8c721c0c207eada7dd6cde0eb1ef57d4f7fee6ed178"
    "06f067aa72176fba0a637dc5a2c898a6113f9804bef90dae1b710b35131c471b"
    "28db77f523047d8432caab7b40c724933c9ebe0a15c9bebc431d67c49c100d4c"
    "4cc5d4becb3e42b6597f299cfc657e2a5fcb6fab3ad6faec6c44198c4a475817"
)

_M = 0xFFFFFFFFFFFFFFFF


def _compress(h, block):
    w = list(struct.unpack(">16Q", block))
    m = _M
    a, b, c, d, e, f, g, hh = h
    for j in range(0, 640, 128):
        k = struct.unpack_from(">16Q", _K, j)  # the constants of these 16 rounds
        for i in range(16):
            if j:
                # w[t] = s1(w[t-2]) + w[t-7] + s0(w[t-15]) + w[t-16], in a ring of 16
                x = w[(i + 1) & 15]
                y = w[(i + 14) & 15]
                x2 = x | x << 64  # rotr(x, n) == (x2 >> n) & m
                y2 = y | y << 64
                w[i] = (w[i] + w[(i + 9) & 15]
                        + (((x2 >> 1) ^ (x2 >> 8)) & m ^ (x >> 7))
                        + (((y2 >> 19) ^ (y2 >> 61)) & m ^ (y >> 6))) & m
            e2 = e | e << 64
            a2 = a | a << 64
            t1 = (hh + (((e2 >> 14) ^ (e2 >> 18) ^ (e2 >> 41)) & m)
                  + (g ^ (e & (f ^ g))) + k[i] + w[i])
            t2 = (((a2 >> 28) ^ (a2 >> 34) ^ (a2 >> 39)) & m) + ((a & b) | (c & (a | b)))
            hh = g
            g = f
            f = e
            e = (d + t1) & m
            d = c
            c = b
            b = a
            a = (t1 + t2) & m
    return [(x + y) & m for x, y in zip(h, (a, b, c, d, e, f, g, hh))]


class sha512:
    digest_size = 64
    block_size = 128

    def __init__(self, data=b""):
        # the first 64 bits of the fractional parts of the square roots of the
        # first 8 primes (FIPS 180-4, 5.3.5)
        self._h = [
            0x6A09E667F3BCC908, 0xBB67AE8584CAA73B, 0x3C6EF372FE94F82B, 0xA54FF53A5F1D36F1,
            0x510E527FADE682D1, 0x9B05688C2B3E6C1F, 0x1F83D9ABFB41BD6B, 0x5BE0CD19137E2179,
        ]
        self._buf = b""
        self._n = 0
        if data:
            self.update(data)

    def update(self, data):
        self._n += len(data)
        buf = self._buf
        if buf:
            take = 128 - len(buf)
            buf += bytes(data[:take])
            data = memoryview(data)[take:]
            if len(buf) < 128:
                self._buf = buf
                return
            self._h = _compress(self._h, buf)
        mv = memoryview(data)
        n = len(mv) & ~127
        for i in range(0, n, 128):
            self._h = _compress(self._h, mv[i:i + 128])
        self._buf = bytes(mv[n:])

    def digest(self):
        # padding: 0x80, zeros to 112 mod 128, then the bit length as 128 bits
        n = self._n
        tail = self._buf + b"\x80" + bytes((111 - n) & 127) + struct.pack(">QQ", n >> 61, (n << 3) & _M)
        h = self._h
        for i in range(0, len(tail), 128):
            h = _compress(h, tail[i:i + 128])
        return struct.pack(">8Q", *h)
