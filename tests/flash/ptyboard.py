"""A MicroPython board on a serial port, played by the unix port behind a pty.

``PtyBoard.port`` is a /dev/pts/N path that mpremote, pyserial and flash.sh
open as they would /dev/ttyUSB0. Behind it, a thread copies bytes to and from a
``micropython -i bootrun.py`` child on a second pty, with a temporary directory
as its current directory: the board's flash. When the child exits (soft reset
at an empty raw REPL line, or ``machine.reset()``), the thread starts it again,
and the new child runs boot.py and main.py from the flash, like a board after a
reset. The unix port exits where a board soft-resets, so mpremote must be given
``resume`` (flash.sh: FLASH_MPREMOTE_RESUME=1).
"""

from __future__ import annotations

import errno
import os
import select
import subprocess
import sys
import threading
import tty
from pathlib import Path

HERE = Path(__file__).resolve().parent
BOARD = HERE / "board"


def micropython_binary() -> str:
    here = Path(sys.executable).parent / "micropython"
    return str(here) if here.exists() else "micropython"


class PtyBoard:
    """``boot`` is the script each (re)start runs before the REPL: by default
    board/bootrun.py, with board/machine.py; the project's sim/board.py, given
    ``env`` with SIM_FLASH, runs the real firmware on its stand-in hardware."""

    def __init__(self, flash: Path, heap: str = "256k", boot: Path = BOARD / "bootrun.py",
                 env: dict[str, str] | None = None):
        self.flash = Path(flash)
        self.heap = heap
        self.boot = Path(boot)
        self.env = dict(os.environ, MICROPYPATH=f"{self.boot.parent}:.frozen", **(env or {}))
        self.boots = 0
        self.exit_codes: list[int] = []
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        # The port's master side is ours; we keep a slave fd open too, so the
        # master never sees a hang-up between two clients of the port.
        self._port_master, self._port_slave = os.openpty()
        tty.setraw(self._port_slave)  # no echo or line editing: a UART is a byte pipe
        self.port = os.ttyname(self._port_slave)
        self._child: subprocess.Popen | None = None
        self._child_master = -1
        self._thread = threading.Thread(target=self._pump, name="ptyboard", daemon=True)

    def __enter__(self) -> "PtyBoard":
        self._spawn()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=10)
        self._kill_child()
        for fd in (self._port_master, self._port_slave, self._wake_r, self._wake_w):
            os.close(fd)

    def _spawn(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # a UART adds no \r before \n; mpremote matches exact bytes
        self._child = subprocess.Popen(
            [micropython_binary(), "-X", f"heapsize={self.heap}", "-i", str(self.boot)],
            stdin=slave, stdout=slave, stderr=slave, cwd=self.flash, env=self.env,
            start_new_session=True, close_fds=True,
        )
        os.close(slave)
        self._child_master = master
        self.boots += 1

    def _kill_child(self) -> None:
        if self._child is not None and self._child.poll() is None:
            self._child.kill()
            self._child.wait()
        if self._child_master >= 0:
            os.close(self._child_master)
            self._child_master = -1

    def _child_exited(self) -> None:
        """The child's pty hung up: it exited. Reap it and boot again."""
        code = self._child.wait()
        self.exit_codes.append(code)
        os.close(self._child_master)
        self._child_master = -1
        self._spawn()

    def _pump(self) -> None:
        while not self._stop.is_set():
            fds = [self._port_master, self._child_master, self._wake_r]
            readable, _, _ = select.select(fds, [], [])
            if self._port_master in readable:
                data = os.read(self._port_master, 4096)
                os.write(self._child_master, data)
            if self._child_master in readable:
                try:
                    data = os.read(self._child_master, 4096)
                except OSError as e:  # EIO: the child closed its pty
                    if e.errno != errno.EIO:
                        raise
                    data = b""
                if data:
                    os.write(self._port_master, data)
                elif not self._stop.is_set():
                    self._child_exited()
