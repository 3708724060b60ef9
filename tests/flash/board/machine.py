# The unix port's machine module plus the one call flash.sh needs from a board:
# reset() ends the process with REBOOT_EXIT, and PtyBoard starts it again,
# running boot.py and main.py as a board does after a reset.
import sys

from umachine import *  # noqa: F401,F403

REBOOT_EXIT = 75


def reset():
    sys.exit(REBOOT_EXIT)
