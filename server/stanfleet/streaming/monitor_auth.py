"""Who may read the monitoring endpoints.

They list every client ID and every heartbeat, subscription and ack inbox:
a map for an attacker. With a credentials store (`--security-dir`), each
request must carry HTTP basic auth of a user whose role may monitor
(DEFAULT_MONITOR_ROLES), checked against the store's bcrypt hashes; without
one, the endpoints listen on loopback only (server.py decides the host).

bcrypt at the store's cost takes about 0.1 s of CPU: checks run in a thread,
at most MAX_CONCURRENT_CHECKS at once (beyond that 503 at once, so guessing
passwords cannot starve the server), and a password that passed is
remembered by its SHA-256 until the user's hash changes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging

from aiohttp import web

log = logging.getLogger("stanfleet.streaming.monitor")

DEFAULT_MONITOR_ROLES = ("admin",)
MAX_CONCURRENT_CHECKS = 2
REALM = 'Basic realm="stanfleet monitoring", charset="UTF-8"'


class CredsChecker:
    """(user, password) -> may this user read the monitoring endpoints?"""

    def __init__(self, creds_file: str, roles=DEFAULT_MONITOR_ROLES):
        self.creds_file = creds_file
        self.roles = tuple(roles)
        self._passed: dict[str, tuple[str, bytes]] = {}  # user -> (hash, sha256 of password)
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_CHECKS)

    def _hash_of(self, user: str) -> str | None:
        try:
            with open(self.creds_file) as f:
                entry = json.load(f)["users"].get(user)
        except (OSError, ValueError, KeyError) as e:
            log.error("monitoring: credentials store unreadable: %s", e)
            return None
        if not entry or entry.get("kind") != "service" or entry.get("role") not in self.roles:
            return None
        return entry.get("hash")

    async def check(self, user: str, password: str) -> bool:
        stored = self._hash_of(user)
        if not stored:
            return False
        digest = hashlib.sha256(password.encode()).digest()
        known = self._passed.get(user)
        if known is not None and known[0] == stored:
            return hmac.compare_digest(known[1], digest)
        if self._slots.locked():
            raise web.HTTPServiceUnavailable(text="busy checking credentials; retry")
        async with self._slots:
            ok = await asyncio.to_thread(_bcrypt_ok, password, stored)
        if ok:
            self._passed[user] = (stored, digest)
        return ok


def _bcrypt_ok(password: str, stored: str) -> bool:
    import bcrypt

    try:
        return bcrypt.checkpw(password.encode(), stored.encode())
    except ValueError:
        return False


def basic_auth(checker: CredsChecker):
    """aiohttp middleware: 401 unless the request's basic auth passes checker."""

    @web.middleware
    async def guard(request: web.Request, handler):
        user, password = _credentials(request.headers.get("Authorization", ""))
        if user is None or not await checker.check(user, password):
            log.warning("monitoring: %s %s refused (user=%s)", request.remote, request.path,
                        user or "-")
            raise web.HTTPUnauthorized(headers={"WWW-Authenticate": REALM},
                                       text="authentication required")
        return await handler(request)

    return guard


def _credentials(header: str) -> tuple[str | None, str]:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or len(value) > 1024:
        return None, ""
    try:
        user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None, ""
    return (user, password) if sep else (None, "")
