"""Compressed streams (gzip, bz2, xz, lzma-alone, zlib, lz4 frame) recognised by magic bytes and inflated with
a hard output bound, so a decompression bomb costs at most the limit."""

from __future__ import annotations

import bz2
import lzma
import zlib
from typing import Any

_CHUNK = 1 << 16  # compressed bytes fed at a time
_STEP = 1 << 22  # decompressed bytes produced at a time (the bounds are checked between steps)


class InflateError(Exception):
    """The stream is corrupt, unsupported, or larger than the bound."""


def compression_of(head: bytes) -> str | None:
    """The compression format a stream starts with, or None."""
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] == b"ZF0x":  # joblib <= 0.9.3 "z-file": b"ZF" + 19-character hex length + zlib data
        return "zfile"
    if head[:3] == b"BZh" and head[3:4] in b"123456789" and len(head) > 3:
        return "bz2"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if head[:4] == b"\x04\x22\x4d\x18":
        return "lz4"
    if head[:3] == b"]\x00\x00" and len(head) >= 13:  # lzma-alone as written by joblib's "lzma" compressor
        return "lzma"
    if len(head) >= 2 and head[0] == 0x78 and (head[0] * 256 + head[1]) % 31 == 0:
        return "zlib"
    return None


def _decompressor(kind: str) -> Any:
    if kind == "gzip":
        return zlib.decompressobj(47)
    if kind == "zlib":
        return zlib.decompressobj(15)
    if kind == "deflate":
        return zlib.decompressobj(-15)
    if kind == "bz2":
        return bz2.BZ2Decompressor()
    if kind in ("xz", "lzma"):
        return lzma.LZMADecompressor()
    raise InflateError(f"{kind} streams cannot be decompressed by the scanner")


def inflate(data: Any, kind: str, limit: int, start: int = 0, stop: int | None = None, *,
            max_ratio: int = 0, ratio_floor: int = 16 << 20) -> bytes:
    """Decompress `data[start:stop]` (all concatenated members for gzip/bz2/xz) into at most `limit` bytes.

    With `max_ratio`, a stream that has produced more than `ratio_floor` bytes at more than `max_ratio` bytes
    out per byte in is stopped there (a decompression bomb), long before it reaches gigabytes."""
    stop = len(data) if stop is None else stop
    if kind == "zfile":
        start += 21 + (data[start + 21:start + 22] == b" ")
        kind = "zlib"
    out = bytearray()
    pos, feed = start, b""
    dec = _decompressor(kind)
    try:
        while True:
            if not feed and pos < stop and getattr(dec, "needs_input", True):
                feed = bytes(data[pos:min(stop, pos + _CHUNK)])
                pos += len(feed)
            out += dec.decompress(feed, min(limit - len(out) + 1, _STEP))
            feed = getattr(dec, "unconsumed_tail", b"")
            if len(out) > limit:
                raise InflateError(f"decompresses to more than {limit} bytes")
            consumed = pos - start - len(feed)
            if max_ratio and len(out) > ratio_floor and len(out) > max_ratio * consumed:
                raise InflateError(f"decompresses at more than {max_ratio}:1 (a decompression bomb); stopped "
                                   f"after {len(out)} bytes")
            if dec.eof:
                feed = dec.unused_data
                rest_is_padding = not feed.strip(b"\x00") and (pos >= stop or not bytes(data[pos:stop]).strip(b"\x00"))
                if kind not in ("gzip", "bz2", "xz") or rest_is_padding:
                    return bytes(out)
                dec = _decompressor(kind)
            elif not feed and pos >= stop and getattr(dec, "needs_input", True):
                more = dec.decompress(b"", min(limit - len(out) + 1, _STEP))  # output held back at a step boundary
                if not more:
                    raise InflateError("compressed stream is truncated")
                out += more
    except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error) as exc:
        raise InflateError(f"corrupt {kind} stream ({exc})") from None


def head_of(data: Any, kind: str, n: int = 4096, start: int = 0, stop: int | None = None) -> bytes:
    """The first `n` decompressed bytes (for format detection), or b'' if the stream is unreadable."""
    stop = len(data) if stop is None else stop
    if kind == "zfile":
        start, kind = start + 21 + (data[start + 21:start + 22] == b" "), "zlib"
    try:
        dec = _decompressor(kind)
        return dec.decompress(bytes(data[start:min(stop, start + 65536)]), n)
    except (InflateError, OSError, EOFError, ValueError, lzma.LZMAError, zlib.error):
        return b""
