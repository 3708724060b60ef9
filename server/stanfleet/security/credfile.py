"""A role's credentials file, as `stanfleet creds add-service` writes it:
JSON with `user` and `password` (mode 0600). Read by the services and, from a
site config, by the streaming server for its own NATS login."""

from __future__ import annotations

import json

from ..errors import CommandError


def load_credentials(path: str) -> tuple[str, str]:
    """(user, password); CommandError naming the file if it is not one."""
    try:
        with open(path) as f:
            data = json.load(f)
        return str(data["user"]), str(data["password"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CommandError(f"{path}: not a credentials file ({e})") from None
