"""Opcodes that build plain data (numbers, text, bytes, tuples, lists, dicts, sets) for the pickle machine.

Kept apart from `pickle_vm` (which handles imports, calls and the memo); argument encodings follow the pickle
protocol definitions of PEP 307, PEP 3154 and PEP 574.
"""

from __future__ import annotations

import codecs
import re
from struct import unpack_from
from typing import Any

from bastion.supplychain.pickle_values import Blob, Opaque, PickleError, PickleTruncated, SymDict, SymSet

_BIG = 1 << 20  # strings longer than this stay views into the stream
_LONG_BYTES = 64  # LONG1/LONG4 integers longer than this are not materialised
_LONG_DIGITS = 4000  # text integers longer than this stay opaque (CPython refuses most of them anyway)
_C_SPACE = b" \t\n\v\f\r"
_FLOAT_PREFIX = re.compile(rb"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|(?i:infinity|inf|nan))")


def py_long(text: bytes, base: int) -> int | Opaque | None:
    """CPython's `PyLong_FromString(text, NULL, base)`: the C string ends at the first NUL; None when invalid."""
    text = text.split(b"\0", 1)[0]
    if len(text) > _LONG_DIGITS:
        return Opaque("long")
    try:
        return int(text, base)
    except ValueError:
        return None


def _strtol(text: bytes) -> tuple[int, int] | None:
    """C `strtol(text, &end, 0)` on a 64-bit long: (value, end index), None on overflow."""
    i, n = 0, len(text)
    while i < n and text[i] in _C_SPACE:
        i += 1
    sign = -1 if i < n and text[i] == 0x2D else 1
    i += i < n and text[i] in b"+-"
    base = 10
    if text[i:i + 2] in (b"0x", b"0X") and text[i + 2:i + 3] and text[i + 2:i + 3] in b"0123456789abcdefABCDEF":
        base, i = 16, i + 2
    elif text[i:i + 1] == b"0":
        base = 8
    digits = b"0123456789abcdef"[:base]
    start = i
    while i < n and text[i:i + 1].lower() in digits:
        i += 1
        if i - start > 64:
            return None  # far past 64 bits: strtol overflows (ERANGE)
    if i == start:
        return 0, 0  # no number: end points at the start of the string
    value = sign * int(text[start:i], base)
    return (value, i) if -(1 << 63) <= value < (1 << 63) else None


def c_int(line: bytes) -> int | bool | Opaque | None:
    """The value CPython's `load_int` gives a protocol-0 INT line (without its newline), None when it fails.

    `strtol` in base 0 first (so `017` is octal 15, a NUL ends the number, `00`/`01` are booleans), then
    `PyLong_FromString` for what strtol cannot take (see Modules/_pickle.c, load_int)."""
    if not line:
        return None
    parsed = _strtol(line)
    if parsed is not None and (parsed[1] == len(line) or line[parsed[1]] == 0):
        value = parsed[0]
        return bool(value) if len(line) == 2 and value in (0, 1) else value
    return py_long(line, 0)


def c_float(line: bytes) -> float | None:
    """The value CPython's `load_float` gives a FLOAT line: `PyOS_string_to_double` ending at NUL or newline."""
    match = _FLOAT_PREFIX.match(line)
    if not line or match is None:
        return None
    end = match.end()
    if end < len(line) and line[end] != 0:
        return None
    return float(match.group(0))


class LiteralOps:
    """Mixin for PickleVM: needs `data`, `end`, `stack`, `metastack`, `at` and `cur` on the instance."""

    data: Any
    end: int
    stack: list
    metastack: list
    at: int
    cur: Any

    def _take(self, pos: int, n: int) -> int:
        end = pos + n
        if n < 0 or end > self.end:
            raise PickleTruncated(f"argument at offset {pos} runs past the end of the stream")
        return end

    def _line(self, pos: int) -> tuple[bytes, int]:
        stop = min(self.end, pos + self.cur.limits.max_line)
        i = self.data.find(b"\n", pos, stop)
        if i < 0:
            raise (PickleTruncated if stop == self.end else PickleError)(f"unterminated text argument at offset {pos}")
        return bytes(self.data[pos:i]), i + 1

    def _pop_mark(self) -> list:
        items = self.stack
        if not self.metastack:
            raise PickleError(f"no MARK for the opcode at offset {self.at}")
        self.stack = self.metastack.pop()
        return items

    def _text(self, pos: int, n: int, encoding: str) -> int:
        end = self._take(pos, n)
        if n > _BIG:
            self.stack.append(Blob(self.data, pos, end, True))
            return end
        try:
            self.stack.append(bytes(self.data[pos:end]).decode(encoding, "surrogatepass"))
        except UnicodeDecodeError:
            raise PickleError(f"invalid {encoding} text at offset {pos}") from None
        return end

    def _bytes(self, pos: int, n: int) -> int:
        end = self._take(pos, n)
        self.stack.append(Blob(self.data, pos, end, False) if n > _BIG else bytes(self.data[pos:end]))
        return end

    def op_float(self, pos: int) -> int:
        line, pos = self._line(pos)
        value = c_float(line)
        if value is None:
            raise PickleError(f"bad FLOAT at offset {self.at}")
        self.stack.append(value)
        return pos

    def op_int(self, pos: int) -> int:
        line, pos = self._line(pos)
        value = c_int(line)
        if value is None:
            raise PickleError(f"bad INT at offset {self.at}")
        self.stack.append(value)
        return pos

    def op_long(self, pos: int) -> int:
        line, pos = self._line(pos)
        value = py_long(line[:-1] if line.endswith(b"L") else line, 0)
        if value is None:
            raise PickleError(f"bad LONG at offset {self.at}")
        self.stack.append(value)
        return pos

    def op_binint(self, pos: int) -> int:
        self.stack.append(unpack_from("<i", self.data, self._take(pos, 4) - 4)[0])
        return pos + 4

    def op_binint1(self, pos: int) -> int:
        self.stack.append(self.data[self._take(pos, 1) - 1])
        return pos + 1

    def op_binint2(self, pos: int) -> int:
        self.stack.append(unpack_from("<H", self.data, self._take(pos, 2) - 2)[0])
        return pos + 2

    def _long(self, pos: int, n: int) -> int:
        end = self._take(pos, n)
        self.stack.append(int.from_bytes(self.data[pos:end], "little", signed=True) if n <= _LONG_BYTES
                          else Opaque("long"))
        return end

    def op_long1(self, pos: int) -> int:
        return self._long(pos + 1, self.data[self._take(pos, 1) - 1])

    def op_long4(self, pos: int) -> int:
        n = unpack_from("<i", self.data, self._take(pos, 4) - 4)[0]
        if n < 0:
            raise PickleError("LONG4 with a negative length")
        return self._long(pos + 4, n)

    def op_none(self, pos: int) -> int:
        self.stack.append(None)
        return pos

    def op_newtrue(self, pos: int) -> int:
        self.stack.append(True)
        return pos

    def op_newfalse(self, pos: int) -> int:
        self.stack.append(False)
        return pos

    def op_string(self, pos: int) -> int:
        line, pos = self._line(pos)
        if len(line) < 2 or line[0] != line[-1] or line[:1] not in (b"'", b'"'):
            raise PickleError(f"STRING argument is not quoted at offset {self.at}")
        try:
            self.stack.append(codecs.escape_decode(line[1:-1])[0].decode("latin-1"))
        except ValueError:
            raise PickleError(f"bad STRING escape at offset {self.at}") from None
        return pos

    def op_binstring(self, pos: int) -> int:
        n = unpack_from("<i", self.data, self._take(pos, 4) - 4)[0]
        return self._text(pos + 4, n, "latin-1")

    def op_short_binstring(self, pos: int) -> int:
        return self._text(pos + 1, self.data[self._take(pos, 1) - 1], "latin-1")

    def op_unicode(self, pos: int) -> int:
        line, pos = self._line(pos)
        try:
            self.stack.append(line.decode("raw-unicode-escape"))
        except UnicodeDecodeError:
            raise PickleError(f"bad UNICODE at offset {self.at}") from None
        return pos

    def op_binunicode(self, pos: int) -> int:
        return self._text(pos + 4, unpack_from("<I", self.data, self._take(pos, 4) - 4)[0], "utf-8")

    def op_short_binunicode(self, pos: int) -> int:
        return self._text(pos + 1, self.data[self._take(pos, 1) - 1], "utf-8")

    def op_binunicode8(self, pos: int) -> int:
        return self._text(pos + 8, unpack_from("<Q", self.data, self._take(pos, 8) - 8)[0], "utf-8")

    def op_binbytes(self, pos: int) -> int:
        return self._bytes(pos + 4, unpack_from("<I", self.data, self._take(pos, 4) - 4)[0])

    def op_short_binbytes(self, pos: int) -> int:
        return self._bytes(pos + 1, self.data[self._take(pos, 1) - 1])

    def op_binbytes8(self, pos: int) -> int:
        return self._bytes(pos + 8, unpack_from("<Q", self.data, self._take(pos, 8) - 8)[0])

    def op_bytearray8(self, pos: int) -> int:
        return self._bytes(pos + 8, unpack_from("<Q", self.data, self._take(pos, 8) - 8)[0])

    def op_binfloat(self, pos: int) -> int:
        self.stack.append(unpack_from(">d", self.data, self._take(pos, 8) - 8)[0])
        return pos + 8

    def op_dict(self, pos: int) -> int:
        items = self._pop_mark()
        self.stack.append(SymDict(list(zip(items[::2], items[1::2], strict=False))))
        return pos

    def op_empty_dict(self, pos: int) -> int:
        self.stack.append(SymDict())
        return pos

    def op_list(self, pos: int) -> int:
        items = self._pop_mark()
        self.stack.append(items)
        return pos

    def op_empty_list(self, pos: int) -> int:
        self.stack.append([])
        return pos

    def op_tuple(self, pos: int) -> int:
        items = self._pop_mark()
        self.stack.append(tuple(items))
        return pos

    def op_empty_tuple(self, pos: int) -> int:
        self.stack.append(())
        return pos

    def op_tuple1(self, pos: int) -> int:
        self.stack[-1] = (self.stack[-1],)
        return pos

    def op_tuple2(self, pos: int) -> int:
        b = self.stack.pop()
        self.stack[-1] = (self.stack[-1], b)
        return pos

    def op_tuple3(self, pos: int) -> int:
        c = self.stack.pop()
        b = self.stack.pop()
        self.stack[-1] = (self.stack[-1], b, c)
        return pos

    def op_empty_set(self, pos: int) -> int:
        self.stack.append(SymSet())
        return pos

    def op_frozenset(self, pos: int) -> int:
        items = self._pop_mark()
        self.stack.append(SymSet(items))
        return pos
