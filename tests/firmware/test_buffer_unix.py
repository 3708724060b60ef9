"""The offline buffer across a planned reboot (firmware/app/buffer.py), on the
MicroPython unix port: what one boot saves the next takes back, guids
included, once; a smaller buffer keeps the newest; a cut-short file is dropped."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from mpy_runner import ROOT, micropython_binary

SCRIPT = """
import json, os
from app.buffer import Buffer, SAVED

def state(b):
    return [len(b), b.dropped, [list(b.ring[b._pos(i):b._pos(i) + 10]) for i in range(len(b))]]

a = Buffer(5)
for i in range(4):
    a.push(1764583200 + i, 2100 + i)
a.set_guid(7)  # the oldest was sent once, under guid 7
a.save("0badcafer", 9)
same = Buffer(5)
got = same.restore()
out = {"restored": list(got), "head": list(same.head()), "n": len(same),
       "ev": same.ev.is_set(), "again": same.restore(), "file_left": SAVED in os.listdir()}
a.save("0badcafer", 9)
small = Buffer(2)
small.restore()
out["small"] = [len(small), small.dropped, list(small.head())]
with open(SAVED, "wb") as f:
    f.write(b"short")
out["short"] = Buffer(5).restore()
out["short_left"] = SAVED in os.listdir()
Buffer(5).save("0badcafer", 1)  # nothing buffered: nothing written
out["empty_left"] = SAVED in os.listdir()
print(json.dumps(out))
"""


def test_buffer_survives_a_planned_reboot_once(tmp_path: Path):
    env = dict(os.environ, MICROPYPATH=".frozen:" + str(ROOT / "firmware"))
    r = subprocess.run([micropython_binary(), "-c", SCRIPT], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["restored"] == ["0badcafer", 9]  # the guids go on from there
    assert out["head"] == [1764583200, 2100, 7] and out["n"] == 4 and out["ev"]
    assert out["again"] is None and not out["file_left"]  # never replayed twice
    assert out["small"] == [2, 2, [1764583202, 2102, 0]]  # the newest two, the rest counted
    assert out["short"] is None and not out["short_left"]
    assert not out["empty_left"]
