"""The fleet database file, private to its owner.

fleet.db holds every reading and what devices sent that was refused: no
other user of the machine has any business reading it. The file is created
0600 (SQLite gives its -wal and -shm files the database's mode), a directory
made for it 0700, and a database left more open by an older version is
tightened when it is opened again.
"""

from __future__ import annotations

import os
import sqlite3

FILE_MODE = 0o600
DIR_MODE = 0o700
SIDE_FILES = ("", "-wal", "-shm", "-journal")


def private_file(path: str) -> None:
    """Create ``path`` 0600 if missing (and its directory 0700); tighten it if open."""
    parent = os.path.dirname(path)
    if parent and not os.path.isdir(parent):
        os.makedirs(parent, mode=DIR_MODE, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE))
    for suffix in SIDE_FILES:
        try:
            if os.stat(path + suffix).st_mode & 0o077:
                os.chmod(path + suffix, FILE_MODE)
        except FileNotFoundError:
            pass


def connect(path: str, check_same_thread: bool = True) -> sqlite3.Connection:
    """A connection in WAL mode (several processes share the file: readers and
    one writer proceed together; the busy timeout makes writers queue)."""
    private_file(path)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None,
                           check_same_thread=check_same_thread)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn
