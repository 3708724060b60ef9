"""The smallest ELF esptool's elf2image accepts: one code section, no segments.

Enough to build a real ESP image offline (no ESP-IDF toolchain here) and
check what esptool and flash.sh make of it."""

from __future__ import annotations

import struct
from pathlib import Path

EM_XTENSA = 0x5E
EM_RISCV = 0xF3
# An internal-RAM address per chip for the .text section: a flash-mapped address
# would make esptool pad the image to a 64 KB page and expect an app descriptor.
IRAM = {"esp32": 0x40080000, "esp32s2": 0x40020000, "esp32s3": 0x40370000,
        "esp32c2": 0x4037C000, "esp32c3": 0x4037C000, "esp32c5": 0x40800000,
        "esp32c6": 0x40800000, "esp32c61": 0x40800000, "esp32h2": 0x40800000,
        "esp32p4": 0x4FF00000}
RISCV_CHIPS = ("esp32c2", "esp32c3", "esp32c5", "esp32c6", "esp32c61", "esp32h2", "esp32p4")


def tiny_elf(path: Path, chip: str) -> Path:
    """Write an ELF for ``chip`` with a 16-byte .text section; returns ``path``."""
    riscv = chip in RISCV_CHIPS
    machine = EM_RISCV if riscv else EM_XTENSA
    addr = IRAM[chip]
    text = bytes(range(16))
    shstrtab = b"\0.text\0.shstrtab\0"
    ehsize, shentsize = 0x34, 0x28
    text_off = ehsize
    str_off = text_off + len(text)
    sh_off = (str_off + len(shstrtab) + 3) & ~3
    header = struct.pack("<16sHHLLLLLHHHHHH",
                         b"\x7fELF\x01\x01\x01" + bytes(9),  # 32-bit, little-endian, v1
                         2, machine, 1, addr, 0, sh_off, 0, ehsize, 0, 0, shentsize, 3, 2)
    sections = [
        bytes(shentsize),
        # name, type PROGBITS, flags ALLOC|EXEC, addr, offset, size, link, info, align
        struct.pack("<LLLLLLLLLL", 1, 1, 6, addr, text_off, len(text), 0, 0, 4, 0),
        # .shstrtab: type STRTAB
        struct.pack("<LLLLLLLLLL", 7, 3, 0, 0, str_off, len(shstrtab), 0, 0, 1, 0),
    ]
    body = header + text + shstrtab
    body += bytes(sh_off - len(body))
    path.write_bytes(body + b"".join(sections))
    return path
