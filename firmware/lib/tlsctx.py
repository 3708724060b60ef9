# One TLS client context per CA file, shared by the NATS link and HTTPS
# downloads.
#
# Creating a context takes one contiguous block of about 3 KB of heap
# (mbedTLS config, entropy and DRBG state) on the unix port. Made at the first
# NATS connect, while the heap is still whole, it is there when a release is
# downloaded; made then, on a heap fragmented by hours of readings, it can
# fail with 22 KB free (MemoryError: allocating 3048 bytes). Reconnects reuse
# it too instead of churning the heap.
#
# PLATFORM-NOTES: MicroPython wants the CA in DER form and does not verify
# unless told to.

_ctx = {}


def context(ca_der):
    c = _ctx.get(ca_der)
    if c is None:
        import ssl

        c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        c.verify_mode = ssl.CERT_REQUIRED
        with open(ca_der, "rb") as f:
            c.load_verify_locations(cadata=f.read())
        _ctx[ca_der] = c
    return c
