#!/usr/bin/env bash
# flash.sh: put MicroPython and the stanfleet app on ESP32 boards over USB.
# See --help; the README's "Flash a board" section walks through it.
set -euo pipefail

PROG=flash.sh
MARKER='stanfleet: connected'   # printed by the firmware once its STAN session is up
DEFAULT_TIMEOUT=90
DEFAULT_BAUD=460800

# Where a MicroPython image goes in flash. The downloads from micropython.org are
# merged images that begin with the second-stage bootloader, so the offset is the
# chip's bootloader offset: esptool's BOOTLOADER_FLASH_OFFSET per target (checked
# against esptool by tests/flash), and what micropython.org's download pages say.
declare -A OFFSET=(
    [esp32]=0x1000  [esp32s2]=0x1000
    [esp32s3]=0x0   [esp32c2]=0x0  [esp32c3]=0x0 [esp32c6]=0x0 [esp32c61]=0x0 [esp32h2]=0x0
    [esp32c5]=0x2000 [esp32p4]=0x2000
)

usage() {
    cat <<'EOF'
Usage: flash.sh --port PORT --device-id HEX --nats URL [--nats URL ...]
                (--bundle FILE | --version X) [options]
       flash.sh --batch devices.csv --nats URL (--bundle FILE | --version X) [options]

Provision an ESP32 board: optionally write MicroPython, copy the stanfleet app
and this device's settings, reset it, and wait until it reports its STAN
session ("stanfleet: connected" on the serial console).

  --port PORT          serial port of the board (/dev/ttyUSB0, /dev/ttyACM0)
  --device-id HEX      device ID, hex digits (3F45); upper-cased
  --nats URL           NATS URL the device connects to; repeat for a cluster
  --bundle FILE        app bundle (stanfleet-data/releases/1.2.0.bin)
  --version X          same as --bundle stanfleet-data/releases/X.bin
  --wifi SSID          WiFi network
  --wifi-pass PASS     WiFi password
  --creds FILE         JSON {"user", "password"} from 'stanfleet creds add-device';
                       {id} in FILE stands for the device ID (for --batch)
  --ca FILE            CA certificate for TLS (PEM or DER)
  --release-key HEX    ed25519 public key: the device installs only releases it signed
  --release-key-file F the same, from the .pub file of 'stanfleet release keygen'
  --cluster-id ID      STAN cluster ID (default: provision's, test-cluster)
  --firmware FILE      MicroPython image (ESP32_GENERIC-<ver>.bin from micropython.org)
                       to write first; without it the board must already run MicroPython
  --chip NAME          expected chip (esp32, esp32s3, ...); detected when not given
  --erase              erase the whole flash before writing --firmware
  --baud N             esptool baud rate (default 460800)
  --timeout S          seconds to wait for the REPL and for the connected line (default 90)
  --batch FILE         CSV with device_id,port[,wifi,wifi_pass]: one board per row,
                       in turn; prints a summary, exits 1 if any failed
  --dry-run            print every command instead of running it (passwords masked)
  -h, --help           this help

Environment: FLASH_MPREMOTE_RESUME=1 (or --resume) makes mpremote attach without
a soft reset; needed for the MicroPython unix port behind a pty, which exits
where a board soft-resets. ESPTOOL, MPREMOTE, STANFLEET, PYTHON name the tools
(default: esptool, mpremote, stanfleet, python3 from PATH).
EOF
}

die() { echo "$PROG: $*" >&2; exit 1; }
usage_error() { echo "$PROG: $* (see --help)" >&2; exit 2; }
say() { echo "$PROG: $*"; }

# ---- options -------------------------------------------------------------

PORT='' DEVICE_ID='' WIFI='' WIFI_PASS='' BUNDLE='' VERSION='' CREDS='' CA='' CLUSTER_ID=''
RELEASE_KEY='' RELEASE_KEY_FILE=''
FIRMWARE='' CHIP='' ERASE=0 DRY_RUN=0 BATCH='' BAUD=$DEFAULT_BAUD TIMEOUT=$DEFAULT_TIMEOUT
RESUME=${FLASH_MPREMOTE_RESUME:-0}
NATS=()
COMMON_ARGS=()   # options every board of a batch shares, passed on to each run

need_value() { [ "$2" -ge 2 ] || usage_error "$1 needs a value"; }

parse_args() {
    while [ $# -gt 0 ]; do
        local opt=$1
        case $opt in
            -h|--help) usage; exit 0 ;;
            --erase) ERASE=1; COMMON_ARGS+=("$opt"); shift; continue ;;
            --dry-run) DRY_RUN=1; COMMON_ARGS+=("$opt"); shift; continue ;;
            --resume) RESUME=1; COMMON_ARGS+=("$opt"); shift; continue ;;
            --port|--device-id|--batch|--wifi|--wifi-pass|--nats|--bundle|--version|--creds|--ca|\
            --release-key|--release-key-file|--cluster-id|--firmware|--chip|--baud|--timeout)
                need_value "$opt" $# ;;
            *) usage_error "unknown option $opt" ;;
        esac
        local val=$2
        case $opt in
            --port) PORT=$val ;;
            --device-id) DEVICE_ID=$val ;;
            --batch) BATCH=$val ;;
            --nats) NATS+=("$val"); COMMON_ARGS+=("$opt" "$val") ;;
            --wifi) WIFI=$val; COMMON_ARGS+=("$opt" "$val") ;;
            --wifi-pass) WIFI_PASS=$val; COMMON_ARGS+=("$opt" "$val") ;;
            --bundle) BUNDLE=$val; COMMON_ARGS+=("$opt" "$val") ;;
            --version) VERSION=$val; COMMON_ARGS+=("$opt" "$val") ;;
            --creds) CREDS=$val; COMMON_ARGS+=("$opt" "$val") ;;
            --ca) CA=$val; COMMON_ARGS+=("$opt" "$val") ;;
            --release-key) RELEASE_KEY=$val; COMMON_ARGS+=("$opt" "$val") ;;
            --release-key-file) RELEASE_KEY_FILE=$val; COMMON_ARGS+=("$opt" "$val") ;;
            --cluster-id) CLUSTER_ID=$val; COMMON_ARGS+=("$opt" "$val") ;;
            --firmware) FIRMWARE=$val; COMMON_ARGS+=("$opt" "$val") ;;
            --chip) CHIP=$val; COMMON_ARGS+=("$opt" "$val") ;;
            --baud) BAUD=$val; COMMON_ARGS+=("$opt" "$val") ;;
            --timeout) TIMEOUT=$val; COMMON_ARGS+=("$opt" "$val") ;;
        esac
        shift 2
    done
}

# ---- checks: everything that can fail before a board is touched -------------

ESPTOOL=${ESPTOOL:-esptool}
MPREMOTE=${MPREMOTE:-mpremote}
STANFLEET=${STANFLEET:-stanfleet}
PYTHON=${PYTHON:-python3}

need_tool() {
    command -v "$1" >/dev/null 2>&1 || die "$1 not found in PATH ($2)"
}

check_tools() {
    local hint="pip install esptool mpremote, or activate the project's .venv: . .venv/bin/activate"
    need_tool "$PYTHON" "install Python 3"
    need_tool "$MPREMOTE" "$hint"
    need_tool "$STANFLEET" "pip install -e . in the stanfleet checkout, or . .venv/bin/activate"
    if [ -n "$FIRMWARE" ]; then need_tool "$ESPTOOL" "$hint"; fi
    "$PYTHON" -c 'import serial' 2>/dev/null ||
        die "$PYTHON cannot import pyserial (pip install pyserial; it comes with esptool and mpremote)"
}

check_common() {
    [ ${#NATS[@]} -gt 0 ] || usage_error "--nats URL is required"
    [[ $TIMEOUT =~ ^[0-9]+$ && $TIMEOUT -gt 0 ]] || usage_error "--timeout must be a positive whole number of seconds"
    [[ $BAUD =~ ^[0-9]+$ ]] || usage_error "--baud must be a number"
    if [ -n "$VERSION" ] && [ -n "$BUNDLE" ]; then usage_error "give --bundle or --version, not both"; fi
    if [ -n "$VERSION" ]; then BUNDLE=stanfleet-data/releases/$VERSION.bin; fi
    [ -n "$BUNDLE" ] || usage_error "give the app bundle: --bundle FILE or --version X"
    [ -f "$BUNDLE" ] || die "bundle $BUNDLE not found (stanfleet release build X writes stanfleet-data/releases/X.bin)"
    if [ -n "$FIRMWARE" ] && [ ! -f "$FIRMWARE" ]; then
        die "MicroPython image $FIRMWARE not found (download ESP32_GENERIC-<version>.bin from micropython.org/download)"
    fi
    if [ -n "$CA" ] && [ ! -f "$CA" ]; then die "CA certificate $CA not found"; fi
    if [ -n "$RELEASE_KEY_FILE" ] && [ ! -f "$RELEASE_KEY_FILE" ]; then
        die "release key file $RELEASE_KEY_FILE not found (stanfleet release keygen writes it)"
    fi
    if [ -n "$CHIP" ] && [ -z "${OFFSET[$CHIP]:-}" ]; then
        usage_error "--chip $CHIP is not an ESP32 chip MicroPython runs on (one of: $(chip_names))"
    fi
    if [ "$ERASE" = 1 ] && [ -z "$FIRMWARE" ]; then
        usage_error "--erase also erases MicroPython: give --firmware too"
    fi
    if [ -n "$WIFI_PASS" ] && [ -z "$WIFI" ]; then usage_error "--wifi-pass without --wifi"; fi
    return 0
}

check_board_args() {
    [ -n "$PORT" ] || usage_error "--port is required (the board's serial port, e.g. /dev/ttyUSB0)"
    [ -n "$DEVICE_ID" ] || usage_error "--device-id is required (hex, e.g. 3F45)"
    [[ $DEVICE_ID =~ ^[0-9A-Fa-f]{1,32}$ ]] ||
        usage_error "device ID '$DEVICE_ID' is not hex (digits 0-9 and A-F, e.g. 3F45)"
    DEVICE_ID=${DEVICE_ID^^}
    CREDS=${CREDS//\{id\}/$DEVICE_ID}
    [ -e "$PORT" ] || die "port $PORT does not exist (is the board plugged in? ls /dev/ttyUSB* /dev/ttyACM*)"
    [ -r "$PORT" ] && [ -w "$PORT" ] ||
        die "no permission to use $PORT (add yourself to its group: sudo usermod -aG dialout \$USER, then log in again)"
}

chip_names() { printf '%s\n' "${!OFFSET[@]}" | sort | tr '\n' ' ' | sed 's/ $//'; }

# "ESP32-S3" -> esp32s3
chip_key() { local c=${1,,}; echo "${c//-/}"; }

# ---- running commands ------------------------------------------------------

# Print a command as a shell line, every secret replaced by ****.
show() {
    local out='+' mask=0 arg
    for arg in "$@"; do
        if [ $mask = 1 ]; then out+=' ****'; mask=0; continue; fi
        out+=" $(printf '%q' "$arg")"
        case $arg in --password|--wifi-pass|--pass) mask=1 ;; esac
    done
    echo "$out"
}

run() {
    show "$@"
    if [ "$DRY_RUN" = 0 ]; then "$@"; fi
}

# ---- serial console: wait for the REPL, reset, watch for the connected line ----

# One process holds the port from the reset to the connected line, so nothing the
# board prints in between is lost. A native-USB port vanishes while the board
# resets; it is reopened until the deadline.
SERIAL_CONSOLE=$(cat <<'PY'
import sys, time
import serial

mode, port, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
marker = sys.argv[4].encode() if len(sys.argv) > 4 else b""
deadline = time.monotonic() + timeout

def open_port():
    while True:
        try:
            return serial.Serial(port, 115200, timeout=0.2)
        except (serial.SerialException, OSError):
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)

def lines(s, poke=b""):
    """Yield each line the board prints until the deadline; write poke every second."""
    buf, last_poke = b"", 0.0
    while time.monotonic() < deadline:
        try:
            if poke and time.monotonic() - last_poke > 1:
                s.write(poke)
                last_poke = time.monotonic()
            buf += s.read(256)
        except (serial.SerialException, OSError):
            s.close()
            s = open_port()
            if s is None:
                return
            continue
        *done, buf = buf.split(b"\n")
        for line in done:
            yield line.rstrip(b"\r")
        if buf.startswith(b">>> "):   # a prompt ends no line
            yield buf
            buf = b""

s = open_port()
if s is None:
    sys.exit(f"flash.sh: cannot open {port} within {timeout:.0f}s")
if mode == "repl":
    for line in lines(s, poke=b"\r\x03"):
        if line.startswith(b">>>"):
            sys.exit(0)
    sys.exit(f"flash.sh: no MicroPython REPL on {port} within {timeout:.0f}s "
             "(is MicroPython on it? give --firmware)")
# Stop whatever runs, leave raw REPL if in it, and reset like the reset button.
s.write(b"\r\x03\x03\x02")
s.write(b"import machine; machine.reset()\r")
for line in lines(s):
    print("  | " + line.decode("utf-8", "replace"), flush=True)
    if marker in line:
        sys.exit(0)
sys.exit(f"flash.sh: the board on {port} did not print '{marker.decode()}' within "
         f"{timeout:.0f}s: check WiFi, the NATS URL and credentials in the log above")
PY
)

serial_console() {
    local mode=$1; shift
    show serial-console "$mode" "$@"
    if [ "$DRY_RUN" = 0 ]; then "$PYTHON" -c "$SERIAL_CONSOLE" "$mode" "$@"; fi
}

# ---- steps -------------------------------------------------------------------

# The chip a MicroPython image is built for, from its bootloader header.
image_chip() {
    local info
    info=$("$ESPTOOL" image-info "$FIRMWARE" 2>&1) ||
        die "$FIRMWARE is not an ESP image: $(tail -n 1 <<<"$info")"
    [[ $info =~ Detected\ image\ type:\ ([A-Za-z0-9-]+) ]] ||
        die "esptool image-info did not name the chip of $FIRMWARE"
    chip_key "${BASH_REMATCH[1]}"
}

# The chip on the port, from esptool's connect banner (v5 "Connected to ESP32-S3
# on ...", v4 "Detecting chip type... ESP32-S3").
board_chip() {
    local out
    out=$("$ESPTOOL" --port "$PORT" read-mac 2>&1) ||
        die "esptool cannot talk to the board on $PORT: $(grep -m1 -i error <<<"$out" || tail -n 1 <<<"$out")"
    if [[ $out =~ Connected\ to\ ([A-Za-z0-9-]+)\ on ]] || [[ $out =~ Detecting\ chip\ type\.\.\.\ ([A-Za-z0-9-]+) ]]; then
        chip_key "${BASH_REMATCH[1]}"
    else
        die "could not tell the chip on $PORT from esptool's output"
    fi
}

write_firmware() {
    local img_chip chip
    img_chip=$(image_chip)
    [ -n "${OFFSET[$img_chip]:-}" ] || die "$FIRMWARE is for $img_chip, not an ESP32 chip MicroPython runs on"
    show "$ESPTOOL" --port "$PORT" read-mac
    if [ "$DRY_RUN" = 1 ]; then
        chip=${CHIP:-$img_chip}
    else
        chip=$(board_chip)
        [ -n "${OFFSET[$chip]:-}" ] || die "the board on $PORT is $chip, not an ESP32 (supported: $(chip_names))"
        if [ -n "$CHIP" ] && [ "$CHIP" != "$chip" ]; then die "the board on $PORT is $chip, not $CHIP"; fi
    fi
    [ "$chip" = "$img_chip" ] || die "$FIRMWARE is built for $img_chip but the board is $chip"
    say "device=$DEVICE_ID port=$PORT chip=$chip writing $FIRMWARE at ${OFFSET[$chip]}"
    if [ "$ERASE" = 1 ]; then run "$ESPTOOL" --port "$PORT" --chip "$chip" erase-flash; fi
    run "$ESPTOOL" --port "$PORT" --chip "$chip" --baud "$BAUD" write-flash -z "${OFFSET[$chip]}" "$FIRMWARE"
}

# The file goes to provision as it is, so the password is never on a command line;
# it is only checked here, to fail before a board is touched.
check_creds() {
    [ -n "$CREDS" ] || return 0
    [ -f "$CREDS" ] || die "credentials file $CREDS not found (stanfleet creds add-device $DEVICE_ID)"
    "$PYTHON" -c '
import json, sys
d = json.load(open(sys.argv[1]))
assert isinstance(d.get("user"), str) and isinstance(d.get("password"), str)' "$CREDS" 2>/dev/null ||
        die "credentials file $CREDS is not JSON with \"user\" and \"password\" strings"
}

provision() {
    local out=$1 url
    local cmd=("$STANFLEET" provision --out "$out" --bundle "$BUNDLE" --device-id "$DEVICE_ID")
    for url in "${NATS[@]}"; do cmd+=(--nats "$url"); done
    if [ -n "$WIFI" ]; then cmd+=(--wifi-ssid "$WIFI" --wifi-pass "$WIFI_PASS"); fi
    if [ -n "$CREDS" ]; then cmd+=(--creds "$CREDS"); fi
    if [ -n "$CA" ]; then cmd+=(--ca "$CA"); fi
    if [ -n "$RELEASE_KEY" ]; then cmd+=(--release-key "$RELEASE_KEY"); fi
    if [ -n "$RELEASE_KEY_FILE" ]; then cmd+=(--release-key-file "$RELEASE_KEY_FILE"); fi
    if [ -n "$CLUSTER_ID" ]; then cmd+=(--cluster-id "$CLUSTER_ID"); fi
    run "${cmd[@]}" || die "stanfleet provision failed"
}

# Remove what an earlier provisioning left that would outlive this one: the slot
# state (boot would keep an old active slot) and the slots themselves.
CLEAN_FLASH='import os
def rm(p):
    try:
        if os.stat(p)[0] & 0x4000:
            for n in os.listdir(p):
                rm(p + "/" + n)
            os.rmdir(p)
        else:
            os.remove(p)
    except OSError:
        pass
rm("ota.json")
rm("slots")'

copy_tree() {
    local tree=$1 entries=()
    local connect=("$MPREMOTE" connect "$PORT")
    if [ "$RESUME" = 1 ]; then connect+=(resume); fi
    if [ "$DRY_RUN" = 1 ]; then
        entries=('<each entry of the provisioned tree>')
    else
        mapfile -t entries < <(cd "$tree" && ls -A)
        [ ${#entries[@]} -gt 0 ] || die "stanfleet provision wrote nothing to $tree"
    fi
    say "device=$DEVICE_ID port=$PORT copying ${entries[*]}"
    # ':.' is the current directory on the device: '/' on a board, the flash
    # directory on the unix port (which cannot stat '', what ':' means).
    (cd "$tree" && run "${connect[@]}" exec "$CLEAN_FLASH" + fs cp -r "${entries[@]}" :.) ||
        die "copying to the board on $PORT failed"
}

flash_one() {
    check_board_args
    check_creds
    local tree
    tree=$(mktemp -d "${TMPDIR:-/tmp}/stanfleet-flash.XXXXXX")
    # shellcheck disable=SC2064  # expand now: the path is local
    trap "rm -rf '$tree'" EXIT
    if [ -n "$FIRMWARE" ]; then write_firmware; fi
    # Before mpremote, which waits without end for a REPL that never answers.
    serial_console repl "$PORT" "$TIMEOUT"
    provision "$tree"
    copy_tree "$tree"
    say "device=$DEVICE_ID port=$PORT resetting; waiting up to ${TIMEOUT}s for '$MARKER'"
    serial_console reset-watch "$PORT" "$TIMEOUT" "$MARKER"
    if [ "$DRY_RUN" = 1 ]; then say "dry run: nothing was done"; return; fi
    say "device=$DEVICE_ID port=$PORT connected"
}

# ---- batch -------------------------------------------------------------------

flash_batch() {
    [ -f "$BATCH" ] || die "batch file $BATCH not found"
    local ok=() failed=() id port wifi wifi_pass rest rc line=0
    while IFS=, read -r id port wifi wifi_pass rest || [ -n "$id" ]; do
        line=$((line + 1))
        id=${id//[[:space:]]/} port=${port//[[:space:]]/}
        wifi_pass=${wifi_pass%$'\r'}
        if [ -z "$id" ] || [[ $id == \#* ]]; then continue; fi
        if [ "$line" = 1 ] && [ "$id" = device_id ]; then continue; fi
        local args=("${COMMON_ARGS[@]}" --device-id "$id" --port "$port")
        if [ -n "$wifi" ]; then args+=(--wifi "$wifi" --wifi-pass "$wifi_pass"); fi
        say "---- device $id on $port"
        rc=0
        "$BASH" "$0" "${args[@]}" </dev/null || rc=$?
        if [ $rc = 0 ]; then ok+=("$id $port"); else failed+=("$id $port (exit $rc)"); fi
    done <"$BATCH"
    say "batch: ${#ok[@]} ok, ${#failed[@]} failed"
    local entry
    for entry in "${ok[@]}"; do echo "  ok      $entry"; done
    for entry in "${failed[@]}"; do echo "  FAILED  $entry"; done
    [ ${#failed[@]} = 0 ]
}

main() {
    parse_args "$@"
    [ $# -gt 0 ] || { usage; exit 2; }
    check_common
    check_tools
    if [ -n "$BATCH" ]; then
        if [ -n "$PORT" ] || [ -n "$DEVICE_ID" ]; then usage_error "--batch takes ports and IDs from the file"; fi
        flash_batch
    else
        flash_one
    fi
}

main "$@"
