"""Read NATS configuration files: the syntax of nats-server and nats-streaming-server.

The format (also a superset of JSON): `key: value`, `key = value` or
`key value`; blocks `{ ... }`, arrays `[ ... ]`; values separated by newlines,
commas or semicolons; `#` and `//` comments; quoted or bare strings; numbers
with size suffixes (`1KB`, `1GB`, `10MB` count in 1024s, `1K`/`1M`/`1G` in 1000s);
`true/false/yes/no/on/off`; `include "file"` (relative to the including file);
`$NAME` variables from the file or the environment. Durations such as `24h`
stay strings: their readers convert them.
"""

from __future__ import annotations

import os
import re

DEFAULT_MAX_INCLUDE_DEPTH = 10
_BOOLS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}
_SIZES = {"k": 1000, "kb": 1024, "ki": 1024, "kib": 1024, "m": 1000**2, "mb": 1024**2,
          "mi": 1024**2, "mib": 1024**2, "g": 1000**3, "gb": 1024**3, "gi": 1024**3,
          "gib": 1024**3, "t": 1000**4, "tb": 1024**4, "ti": 1024**4, "tib": 1024**4}
_NUMBER = re.compile(r"^(-?\d+(?:\.\d+)?)([a-zA-Z]*)$")
_BARE_END = set(" \t\r\n,;]}#")


class ConfError(ValueError):
    """The file cannot be read or is not valid NATS configuration."""


def load(path: str) -> dict:
    """The file at `path` as nested dicts and lists."""
    return _Parser.from_file(path, depth=0).document()


def loads(text: str, where: str = "<config>") -> dict:
    """`text` read from the file `where`: includes are relative to its folder."""
    base = os.getcwd() if where.startswith("<") else os.path.dirname(os.path.abspath(where))
    return _Parser(text, where, base, depth=0).document()


class _Parser:
    def __init__(self, text: str, where: str, base_dir: str, depth: int):
        self.text, self.where, self.base_dir, self.depth = text, where, base_dir, depth
        self.i = 0
        self.vars: dict[str, object] = {}

    @classmethod
    def from_file(cls, path: str, depth: int) -> "_Parser":
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ConfError(f"cannot read configuration file {path}: {e.strerror}") from None
        return cls(text, path, os.path.dirname(os.path.abspath(path)), depth)

    # -- errors and whitespace ---------------------------------------------------------

    def fail(self, what: str) -> ConfError:
        line = self.text.count("\n", 0, self.i) + 1
        return ConfError(f"{self.where}:{line}: {what}")

    def skip(self, newlines: bool = True) -> None:
        t = self.text
        while self.i < len(t):
            c = t[self.i]
            if c in " \t\r" or (newlines and c in "\n,;"):
                self.i += 1
            elif c == "#" or t.startswith("//", self.i):
                end = t.find("\n", self.i)
                self.i = len(t) if end < 0 else end
            else:
                return

    def peek(self) -> str:
        return self.text[self.i] if self.i < len(self.text) else ""

    # -- grammar -------------------------------------------------------------------------

    def document(self) -> dict:
        self.skip()
        if self.peek() == "{":  # a JSON document
            self.i += 1
            out = self.members("}")
        else:
            out = self.members("")
        return out

    def members(self, close: str) -> dict:
        out: dict = {}
        while True:
            self.skip()
            c = self.peek()
            if c == close:
                if close:
                    self.i += 1
                return out
            if not c:
                raise self.fail(f"missing '{close}'")
            key = self.key()
            if key == "include":
                self.skip(newlines=False)
                out.update(self.include(self.value()))
                continue
            self.skip(newlines=False)
            if self.peek() in (":", "="):
                self.i += 1
                self.skip(newlines=False)
            elif self.peek() not in ("{", "["):
                if not self.peek() or self.peek() in "\n,;}":
                    raise self.fail(f"key {key!r} has no value")
            value = self.value()
            out[key] = value
            if close == "" and self.depth == 0:
                self.vars[key] = value

    def key(self) -> str:
        c = self.peek()
        if c in "\"'":
            return self.quoted()
        start = self.i
        while self.i < len(self.text) and self.text[self.i] not in " \t\r\n:={[,;#":
            self.i += 1
        if start == self.i:
            raise self.fail(f"expected a key, found {c!r}")
        return self.text[start:self.i]

    def value(self):
        c = self.peek()
        if c == "{":
            self.i += 1
            return self.members("}")
        if c == "[":
            self.i += 1
            return self.array()
        if c in "\"'":
            return self.quoted()
        return self.bare()

    def array(self) -> list:
        out = []
        while True:
            self.skip()
            if self.peek() == "]":
                self.i += 1
                return out
            if not self.peek():
                raise self.fail("missing ']'")
            out.append(self.value())

    def quoted(self) -> str:
        q = self.text[self.i]
        self.i += 1
        buf = []
        while self.i < len(self.text):
            c = self.text[self.i]
            if c == q:
                self.i += 1
                return "".join(buf)
            if c == "\\" and q == '"' and self.i + 1 < len(self.text):
                nxt = self.text[self.i + 1]
                buf.append({"n": "\n", "t": "\t", "r": "\r"}.get(nxt, nxt))
                self.i += 2
                continue
            buf.append(c)
            self.i += 1
        raise self.fail("unterminated string")

    def bare(self):
        start = self.i
        t = self.text
        while self.i < len(t) and t[self.i] not in _BARE_END and not t.startswith("//", self.i):
            self.i += 1
        raw = t[start:self.i].strip()
        if not raw:
            raise self.fail("expected a value")
        if raw.startswith("$"):
            name = raw[1:]
            if name in self.vars:
                return self.vars[name]
            if name in os.environ:
                return _scalar(os.environ[name])
            raise self.fail(f"variable {raw} is not defined")
        return _scalar(raw)

    def include(self, name) -> dict:
        if self.depth >= DEFAULT_MAX_INCLUDE_DEPTH:
            raise self.fail("includes nested too deeply")
        path = os.path.join(self.base_dir, str(name))
        return _Parser.from_file(path, self.depth + 1).document()


def _scalar(raw: str):
    low = raw.lower()
    if low in _BOOLS:
        return _BOOLS[low]
    m = _NUMBER.match(raw)
    if m:
        num, unit = m.groups()
        if not unit:
            return float(num) if "." in num else int(num)
        scale = _SIZES.get(unit.lower())
        if scale:
            return int(float(num) * scale)
    return raw  # a duration ("24h"), a host, an URL...
