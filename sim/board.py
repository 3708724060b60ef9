# The simulated board's power-on: what the ESP32's MicroPython does at boot.
# It runs the device's own boot.py and main.py from its flash directory, with
# the stand-in hardware modules of this folder found first on sys.path.
#
#   SIM_FLASH=<flash dir> SIM_UID=<hex id> micropython -X heapsize=... sim/board.py
#
# machine.reset() ends the process with REBOOT_EXIT; the fleet runner starts
# it again, which is the reboot.
import os
import sys

_sim = sys.path[0]  # this file's folder: the stand-ins
flash = os.getenv("SIM_FLASH")
if not flash:
    print("board: SIM_FLASH is not set")
    sys.exit(2)
os.chdir(flash)
# The board's own search path ('' is the flash root), after the stand-ins.
while sys.path:
    sys.path.pop()
sys.path.append(_sim)
sys.path.append("")
sys.path.append(".frozen")


def _trace_heap():
    # SIM_HEAP_TRACE=1 (bench/firmware_heap.py): sample the heap in a thread
    # and print each new high-water mark of gc.mem_alloc(). A collection every
    # 4 KB of allocation keeps mem_alloc() close to the live data until the
    # firmware sets its own threshold at boot (app/device.py, gc_threshold);
    # without one the heap simply fills up before the first collection.
    import _thread
    import gc
    import time

    gc.threshold(4096)
    gc.collect()
    print("[heap] total=%d" % (gc.mem_free() + gc.mem_alloc()))

    def sample():
        peak = 0
        while True:
            a = gc.mem_alloc()
            if a > peak + 256:
                peak = a
                print("[heap] peak=%d" % peak)
            time.sleep_ms(1)

    _thread.start_new_thread(sample, ())


if os.getenv("SIM_HEAP_TRACE"):
    _trace_heap()


def _run(name):
    try:
        with open(name) as f:
            src = f.read()
    except OSError:
        return
    g = {"__name__": "__main__", "__file__": name}
    exec(src, g)


if os.getenv("SIM_TLS_POLL") != "0":
    # TLS sockets an idle device sleeps on (tls_poll.py). SIM_TLS_POLL=0
    # leaves them out where the firmware's own heap is measured: a board's
    # sockets need no such layer (bench/firmware_heap.py).
    import tls_poll

    tls_poll.install()

import esp32  # noqa: E402 - the stand-in, found on the path set above

esp32.bootloader()
if not esp32.image_boots():
    print("[rom] the image in the boot partition crashes; resetting")
    sys.exit(75)
_run("boot.py")
_run("main.py")
