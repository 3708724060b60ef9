# What a board does after a reset: run boot.py, then main.py, from the flash
# (the current directory), each in its own globals; an exception is printed and
# the REPL (micropython -i) comes next, as on a board.
import os
import sys


def run(name):
    try:
        os.stat(name)
    except OSError:
        return
    try:
        with open(name) as f:
            code = f.read()
        exec(code, {"__name__": "__main__", "__file__": name})
    except Exception as e:  # noqa: BLE001 - a board prints any error and goes on
        sys.print_exception(e)


run("boot.py")
run("main.py")
