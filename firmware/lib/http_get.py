# Minimal HTTP/1.1 GET over asyncio streams, for downloading release bundles.
# The body is not read here: the caller streams it from the returned stream,
# a chunk at a time, so a large bundle never sits in RAM.
#
#   status, length, stream = await http_get.get.get("https://host:8443/releases/1.2.0.bin", ca_der)
#   ... await stream.read(512) ...
#   stream.close()

import asyncio


class HttpError(Exception):
    pass


def split_url(url):
    """(tls, host, port, path) of an http:// or https:// URL."""
    if url.startswith("https://"):
        tls, rest, port = True, url[8:], 443
    elif url.startswith("http://"):
        tls, rest, port = False, url[7:], 80
    else:
        raise HttpError("unsupported URL %r" % url)
    i = rest.find("/")
    hostport, path = (rest, "/") if i < 0 else (rest[:i], rest[i:])
    if ":" in hostport:
        host, p = hostport.rsplit(":", 1)
        try:
            port = int(p)
        except ValueError:
            raise HttpError("bad port in %r" % url)
    else:
        host = hostport
    if not host:
        raise HttpError("no host in %r" % url)
    return tls, host, port, path


def _ssl_context(ca_der):
    if not ca_der:
        raise HttpError("https needs a CA certificate (ca in config.json)")
    import tlsctx  # the NATS link's context, made while the heap was whole

    return tlsctx.context(ca_der)


async def get(url, ca_der=None, timeout=15):
    """Send a GET; returns (status, content_length or None, stream) once the
    headers are read. The caller closes the stream."""
    tls, host, port, path = split_url(url)
    ssl = _ssl_context(ca_der) if tls else None
    if ssl:
        r, w = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ssl, server_hostname=host), timeout)
    else:
        r, w = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        w.write(b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                % (path.encode(), host.encode()))
        await w.drain()
        line = await asyncio.wait_for(r.readline(), timeout)
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise HttpError("not an HTTP response")
        status = int(parts[1])
        length = None
        while True:
            line = await asyncio.wait_for(r.readline(), timeout)
            if not line:
                raise HttpError("connection closed in the headers")
            if line in (b"\r\n", b"\n"):
                break
            k, _, v = line.partition(b":")
            k = k.strip().lower()
            if k == b"content-length":
                length = int(v.strip())
            elif k == b"transfer-encoding" and v.strip().lower() != b"identity":
                raise HttpError("unsupported transfer encoding")
        return status, length, r
    except BaseException:
        r.close()
        raise
