# Runs after boot.py: start the app from the selected slot. Any crash,
# including a slot that fails to import, resets the board, which counts as a
# failed boot of a trial slot; Ctrl-C at the REPL stops here instead.
import sys

try:
    from app import device

    device.main()
except (KeyboardInterrupt, SystemExit):  # Ctrl-C; the simulator's reset
    raise
except BaseException as e:
    print("stanfleet: crash error=%r" % (e,))
    sys.print_exception(e)
    import time

    import machine

    time.sleep(2)  # a crash loop should not spin the board flat out

    machine.reset()
