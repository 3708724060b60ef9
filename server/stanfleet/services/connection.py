"""Opening a STAN session for a command or a service.

A secured broker (docs/security-design.md) takes TLS with our CA and a user's
password; the streaming server then accepts that user's inboxes only under
`_INBOX.<user>.`, so the NATS connection gets that inbox prefix and the STAN
client (which takes its inboxes from the connection) follows it.
"""

from __future__ import annotations

import asyncio
import logging

import nats

from ..client import Client
from ..client.errors import StanError
from ..errors import CommandError
from ..security.credfile import load_credentials

log = logging.getLogger("stanfleet.connection")

# Connect requests asked (as one session) while the server is there but does
# not answer in the client's 2 s: after a NATS node dies, the streaming
# server's clients KV (R3) has no leader until JetStream elects one, seconds
# later, and the server cannot register anyone before (test_e2e_failover).
DEFAULT_CONNECT_ATTEMPTS = 8
# A publish (a release, a cfg) sent while its channel's stream elects a
# leader gets no PubAck at all: the services' own publishes are sent again,
# same guid, after PUBLISH_ACK_WAIT (client.publish's attempts).
DEFAULT_PUBLISH_ATTEMPTS = 4
PUBLISH_ACK_WAIT = 10.0  # s: JetStream answers in milliseconds; 10 s means lost


def secure_options(creds: str | None = None, ca: str | None = None,
                   tls_hostname: str | None = None) -> dict:
    """nats.connect options for a user's credentials file and our CA (PEM)."""
    opts: dict = {}
    if ca:
        from ..security.certs import client_context

        try:
            opts["tls"] = client_context(ca)
        except (OSError, ValueError) as e:
            raise CommandError(f"{ca}: not a CA certificate ({e})") from None
        if tls_hostname:
            opts["tls_hostname"] = tls_hostname
    if creds:
        user, password = load_credentials(creds)
        opts.update(user=user, password=password, inbox_prefix=f"_INBOX.{user}")
    return opts


class _TlsEofNoise(logging.Filter):
    """asyncio warns on every TLS connection nats-py closes ("returning true
    from eof_received() has no effect when using ssl"); nothing is wrong."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received()" not in record.getMessage()


logging.getLogger("asyncio").addFilter(_TlsEofNoise())


def _error_logger(client_id: str, once: bool):
    """nats-py's default prints a traceback per failed attempt; one line is
    enough. A service keeps retrying, so a refusal (bad or revoked
    credentials) is a warning, repeated only after something else happened;
    a command reports it in its CommandError."""
    last: list[str] = [""]

    async def on_error(e: Exception) -> None:
        text = str(e) or repr(e)
        if "permissions violation" in text.lower():
            # Outside the role's subjects: the broker drops it, the STAN call
            # can only time out, so say why here.
            log.warning("client=%s nats refused: %s", client_id, text)
        elif not once and _is_refusal(text) and text != last[0]:
            log.warning("client=%s nats refused the credentials: %s", client_id, text)
        else:
            log.debug("client=%s nats: %s", client_id, text)
        last[0] = text
    return on_error


def _is_refusal(text: str) -> bool:
    return "uthorization" in text or "uthentication" in text


def _refused(nats_url: str, opts: dict, e: Exception) -> str:
    text = str(e) or repr(e)
    if _is_refusal(text):
        who = opts.get("user")
        return (f"NATS at {nats_url} refused {'user ' + who if who else 'us'}: {text}"
                + ("" if who else " (give --creds FILE)"))
    hint = ""
    if "tls" not in opts and ("CERTIFICATE_VERIFY_FAILED" in text or "TLS" in text):
        hint = " (the server uses TLS: give --ca FILE)"
    return f"cannot reach NATS at {nats_url}: {text}{hint}"


async def open_session(nats_url: str | list[str], cluster_id: str, client_id: str, *,
                       once: bool = False, conn_lost_cb=None,
                       **nats_options) -> tuple[Client, object]:
    """Connect to NATS and start a STAN session. ``nats_options`` go to
    nats.connect: secure_options() for TLS and credentials.

    once=True (commands): fail fast with a CommandError; otherwise (services)
    the NATS connection keeps reconnecting for as long as it lives."""
    opts = dict(error_cb=_error_logger(client_id, once), **nats_options)
    where = ",".join(nats_url) if isinstance(nats_url, (list, tuple)) else nats_url
    if once:
        # nats-py retries even a first connect max_reconnect_attempts times.
        opts.update(connect_timeout=3, allow_reconnect=False, max_reconnect_attempts=1)
    else:
        opts.update(max_reconnect_attempts=-1, reconnect_time_wait=0.5)
    try:
        nc = await nats.connect(nats_url, **opts)
    except (OSError, nats.errors.Error, asyncio.TimeoutError) as e:
        if once:
            raise CommandError(_refused(where, opts, e)) from None
        raise
    sc = Client()
    try:
        await sc.connect(cluster_id, client_id, nats=nc, conn_lost_cb=conn_lost_cb,
                         connect_attempts=DEFAULT_CONNECT_ATTEMPTS)
    except (StanError, asyncio.TimeoutError) as e:
        await nc.close()
        if once:
            raise CommandError(f"no streaming server for cluster {cluster_id!r} at "
                               f"{where}: {e}") from None
        raise
    return sc, nc
