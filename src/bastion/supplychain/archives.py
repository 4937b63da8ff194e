"""ZIP and tar readers written for hostile input: bounded, no extraction, and every disagreement between the
central directory and the local headers (the tricks that make scanners and loaders read different members) is
reported. Layout per PKWARE APPNOTE 6.3.10 (ZIP, ZIP64) and POSIX.1-2001 pax / ustar (tar)."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any

from bastion.supplychain.compression import InflateError, inflate
from bastion.supplychain.findings import Cursor

_EOCD = b"PK\x05\x06"
_CDH = b"PK\x01\x02"
_LFH = b"PK\x03\x04"


class ArchiveError(Exception):
    """The archive structure itself cannot be read."""


@dataclass
class ZipMember:
    name: str
    method: int
    flags: int
    csize: int
    usize: int
    crc: int
    header: int  # absolute offset of the local header
    data: int = -1  # absolute offset of the member data (after the local header)


@dataclass
class ZipDirectory:
    members: list[ZipMember]
    prefix: int  # bytes before the archive proper (a sign of a polyglot when > 0)
    end: int  # offset just after the end-of-central-directory record


def find_eocd(data: Any) -> int:
    """Offset of the end-of-central-directory record, or -1."""
    size = len(data)
    lo = max(0, size - 22 - 65535)
    return data.rfind(_EOCD, lo, size)


def read_zip(data: Any, cur: Cursor, check: bool = True) -> ZipDirectory:
    """Parse the central directory and local headers; report tricks; raise ArchiveError if unreadable.

    `check=False` reads the directory only (names, for format detection)."""
    try:
        return _read_zip(data, cur, check)
    except struct.error as exc:
        raise ArchiveError(f"ZIP structure runs past the end of the file ({exc})") from None


def _read_zip(data: Any, cur: Cursor, check: bool) -> ZipDirectory:
    eocd = find_eocd(data)
    if eocd < 0 or eocd + 22 > len(data):
        raise ArchiveError("no end-of-central-directory record")
    _, _, _, total, cd_size, cd_offset, comment_len = struct.unpack_from("<HHHHIIH", data, eocd + 4)
    cd_end = eocd
    if eocd >= 20 and data[eocd - 20:eocd - 16] == b"PK\x06\x07":
        total, cd_size, cd_offset, cd_end = _zip64(data, eocd)
    elif total == 0xFFFF or cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF:
        raise ArchiveError("ZIP64 locator missing")
    cd_start = cd_end - cd_size
    prefix = cd_start - cd_offset
    if cd_start < 0 or prefix < 0:
        raise ArchiveError("central directory lies outside the file")
    if total > cur.limits.max_members:
        raise ArchiveError(f"{total} members (limit {cur.limits.max_members})")
    members, pos = [], cd_start
    for _ in range(total):
        if data[pos:pos + 4] != _CDH:
            raise ArchiveError(f"bad central directory entry at offset {pos}")
        (flags, method, crc, csize, usize, name_len, extra_len, comment, offset) = _cd_fields(data, pos)
        raw_name = bytes(data[pos + 46:pos + 46 + name_len])
        extra = bytes(data[pos + 46 + name_len:pos + 46 + name_len + extra_len])
        usize, csize, offset = _zip64_extra(extra, usize, csize, offset)
        name = raw_name.decode("utf-8" if flags & 0x800 else "cp437", "replace")
        members.append(ZipMember(name, method, flags, csize, usize, crc, prefix + offset))
        pos += 46 + name_len + extra_len + comment
    if check:
        for m in members:
            _check_local(data, m, cur)
        _check_names(members, cur)
    return ZipDirectory(members, prefix, eocd + 22 + comment_len)


def _cd_fields(data: Any, pos: int) -> tuple:
    f = struct.unpack_from("<4sHHHHHHIIIHHHHHII", data, pos)
    return f[3], f[4], f[7], f[8], f[9], f[10], f[11], f[12], f[16]


def _zip64(data: Any, eocd: int) -> tuple[int, int, int, int]:
    rec = eocd - 20 - 56
    if rec < 0 or data[rec:rec + 4] != b"PK\x06\x06":
        raise ArchiveError("ZIP64 end record missing")
    total, cd_size, cd_offset = struct.unpack_from("<QQQ", data, rec + 32)
    return total, cd_size, cd_offset, rec


def _zip64_extra(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4:pos + 4 + size]
        if tag == 1:
            vals = [struct.unpack_from("<Q", body, i)[0] for i in range(0, len(body) - 7, 8)]
            if usize == 0xFFFFFFFF and vals:
                usize = vals.pop(0)
            if csize == 0xFFFFFFFF and vals:
                csize = vals.pop(0)
            if offset == 0xFFFFFFFF and vals:
                offset = vals.pop(0)
        pos += 4 + size
    return usize, csize, offset


def _check_local(data: Any, m: ZipMember, cur: Cursor) -> None:
    h = m.header
    if h < 0 or h + 30 > len(data) or data[h:h + 4] != _LFH:
        cur.report("archive-anomaly", "high", f"member {m.name!r} has no local header where the directory "
                   "says", subject=f"nolocal:{m.name}")
        return
    flags, method, _, _, _, _, _, name_len, extra_len = struct.unpack_from("<HHHHIIIHH", data, h + 6)
    local = bytes(data[h + 30:h + 30 + name_len]).decode("utf-8" if flags & 0x800 else "cp437", "replace")
    m.data = h + 30 + name_len + extra_len
    if local != m.name:
        cur.report("archive-anomaly", "medium", f"member name {m.name!r} differs from its local header name "
                   f"{local!r}: tools disagree on what the member is", subject=f"name:{m.name}")
    if method != m.method:
        cur.report("archive-anomaly", "medium", f"member {m.name!r} has different compression methods in the "
                   "directory and the local header", subject=f"method:{m.name}")
    if (flags | m.flags) & 0x41:
        cur.report("archive-anomaly", "medium", f"member {m.name!r} is flagged as encrypted; PyTorch ignores "
                   "the flag while zipfile-based scanners skip the member", subject=f"flags:{m.name}")


def _check_names(members: list[ZipMember], cur: Cursor) -> None:
    seen: set[str] = set()
    for m in members:
        n = m.name
        if n in seen:
            cur.report("archive-anomaly", "medium", f"member name {n!r} appears more than once: loaders "
                       "disagree on which copy they read (all copies were scanned)", subject=f"dup:{n}")
        seen.add(n)
        parts = n.replace("\\", "/").split("/")
        if n.startswith(("/", "\\")) or ".." in parts or "\x00" in n or (len(n) > 1 and n[1] == ":"):
            cur.report("archive-anomaly", "medium", f"member name {n!r} escapes the archive folder when "
                       "extracted", subject=f"path:{n}")


def read_member(data: Any, m: ZipMember, cur: Cursor, limit: int | None = None) -> bytes:
    """The member's bytes (stored, deflate, bz2); ArchiveError when it cannot be read."""
    limit = cur.limits.max_member_bytes if limit is None else limit
    if m.data < 0 or m.data + m.csize > len(data):
        raise ArchiveError(f"member {m.name!r} runs past the end of the file")
    if m.method == 0:
        if m.csize > limit:
            raise ArchiveError(f"member {m.name!r} is larger than {limit} bytes")
        out = bytes(data[m.data:m.data + m.csize])
    elif m.method in (8, 12):
        try:
            out = inflate(data, "deflate" if m.method == 8 else "bz2", limit, m.data, m.data + m.csize)
        except InflateError as exc:
            raise ArchiveError(f"member {m.name!r}: {exc}") from None
        cur.sink.inflated += len(out)
        if cur.sink.inflated > cur.limits.max_total_inflated:
            raise ArchiveError("total decompressed size passes the limit")
    else:
        raise ArchiveError(f"member {m.name!r} uses compression method {m.method}, which loaders cannot read")
    if zlib.crc32(out) != m.crc:
        cur.report("archive-anomaly", "low", f"member {m.name!r} fails its CRC check", subject=f"crc:{m.name}")
    return out


def member_head(data: Any, m: ZipMember, cur: Cursor, n: int = 64) -> bytes:
    """The first bytes of a member, for format detection (b'' if unreadable)."""
    if m.method == 0:
        return bytes(data[m.data:m.data + min(n, m.csize)]) if m.data >= 0 else b""
    try:
        return read_member(data, m, cur, limit=max(n, min(m.usize, 1 << 16)))[:n]
    except ArchiveError:
        return b""


# ---- tar ---------------------------------------------------------------------------------------------------------

@dataclass
class TarMember:
    name: str
    offset: int
    size: int
    kind: str  # "file", "link", "other"


def is_tar(data: Any) -> bool:
    """True when the first 512 bytes form a tar header with a valid checksum."""
    if len(data) < 512:
        return False
    block = bytes(data[:512])
    return _checksum_ok(block) and (block[257:262] == b"ustar" or block[156:157] in b"0\x0012345")


def _checksum_ok(block: bytes) -> bool:
    try:
        stored = int(block[148:156].replace(b"\x00", b" ").strip() or b"-1", 8)
    except ValueError:
        return False
    return stored == sum(block[:148]) + 8 * 32 + sum(block[156:])


def _octal(field: bytes) -> int:
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    text = field.replace(b"\x00", b" ").strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise ArchiveError("bad number in tar header") from None


def read_tar(data: Any, cur: Cursor) -> list[TarMember]:
    """Walk tar headers (ustar, pax 'x', GNU 'L' long names); raise ArchiveError on a broken header."""
    try:
        return _read_tar(data, cur)
    except (struct.error, ValueError, OverflowError) as exc:
        raise ArchiveError(f"tar structure cannot be read ({exc})") from None


def _read_tar(data: Any, cur: Cursor) -> list[TarMember]:
    members: list[TarMember] = []
    pos, long_name = 0, None
    while pos + 512 <= len(data):
        block = bytes(data[pos:pos + 512])
        if block == b"\x00" * 512:
            break
        if not _checksum_ok(block):
            raise ArchiveError(f"bad tar header checksum at offset {pos}")
        size = _octal(block[124:136])
        kind = block[156:157]
        name = block[:100].split(b"\x00")[0]
        if block[257:262] == b"ustar" and block[345:500].strip(b"\x00"):
            name = block[345:500].split(b"\x00")[0] + b"/" + name
        body = pos + 512
        if body + size > len(data):
            raise ArchiveError(f"tar member at offset {pos} runs past the end of the file")
        if kind in (b"L", b"x"):
            text = bytes(data[body:body + min(size, 1 << 16)])
            long_name = text.split(b"\x00")[0] if kind == b"L" else _pax_path(text)
        elif kind != b"g":
            final = (long_name or name).decode("utf-8", "replace")
            long_name = None
            tkind = "file" if kind in (b"0", b"\x00", b"7") else "link" if kind in (b"1", b"2") else "other"
            members.append(TarMember(final, body, size, tkind))
            if len(members) > cur.limits.max_members:
                raise ArchiveError(f"more than {cur.limits.max_members} tar members")
        pos = body + (size + 511) // 512 * 512
    return members


def _pax_path(text: bytes) -> bytes | None:
    for record in text.split(b"\n"):
        _, _, kv = record.partition(b" ")
        key, _, value = kv.partition(b"=")
        if key == b"path":
            return value
    return None
