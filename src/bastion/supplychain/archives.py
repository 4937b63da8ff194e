"""ZIP and tar readers written for hostile input: bounded, no extraction, and every disagreement between the
central directory and the local headers (the tricks that make scanners and loaders read different members) is
reported. Layout per PKWARE APPNOTE 6.3.10 (ZIP, ZIP64) and POSIX.1-2001 pax / ustar (tar)."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any

from bastion.supplychain.compression import InflateError, inflate
from bastion.supplychain.verdicts import Cursor

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
    members, pos, cd_stop = [], cd_start, cd_start + cd_size
    while pos + 46 <= cd_stop:  # by size, as Python's zipfile reads it (miniz counts entries instead)
        if data[pos:pos + 4] != _CDH:
            raise ArchiveError(f"bad central directory entry at offset {pos}")
        (flags, method, crc, csize, usize, name_len, extra_len, comment, offset) = _cd_fields(data, pos)
        raw_name = bytes(data[pos + 46:pos + 46 + name_len])
        extra = bytes(data[pos + 46 + name_len:pos + 46 + name_len + extra_len])
        usize, csize, offset = _zip64_extra(extra, usize, csize, offset)
        name = raw_name.decode("utf-8" if flags & 0x800 else "cp437", "replace")
        members.append(ZipMember(name, method, flags, csize, usize, crc, prefix + offset))
        pos += 46 + name_len + extra_len + comment
        if len(members) > cur.limits.max_members:
            raise ArchiveError(f"more than {cur.limits.max_members} members")
    if len(members) != total:
        cur.report("archive-anomaly", "high", f"the end record counts {total} members but the central directory "
                   f"holds {len(members)}: zipfile and PyTorch's reader see different members (all were scanned)",
                   subject="member-count")
    if check:
        for m in members:
            _check_local(data, m, cur)
        _check_names(members, cur)
        _check_overlap(members, cur)
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


def _check_overlap(members: list[ZipMember], cur: Cursor) -> None:
    """Members sharing compressed bytes: the overlapping-file zip bomb, and a way to show readers different data."""
    spans = sorted((m.data, m.data + m.csize, m.name) for m in members if m.data >= 0 and m.csize > 0)
    for (_, end, name), (start, _, other) in zip(spans, spans[1:], strict=False):
        if start < end:
            cur.report("archive-anomaly", "high", f"members {name!r} and {other!r} share compressed bytes "
                       "(an overlapping-member zip bomb or a disguised member)", subject="overlap")
            return


def _check_names(members: list[ZipMember], cur: Cursor) -> None:
    seen: set[str] = set()
    folded: set[str] = set()
    for m in members:
        n = m.name
        if n in seen:
            cur.report("archive-anomaly", "medium", f"member name {n!r} appears more than once: loaders "
                       "disagree on which copy they read (all copies were scanned)", subject=f"dup:{n}")
        elif n.lower() in folded:
            cur.report("archive-anomaly", "medium", f"member names differ only in case ({n!r}): PyTorch's reader "
                       "matches names case-insensitively, zipfile does not (all copies were scanned)",
                       subject=f"case:{n.lower()}")
        seen.add(n)
        folded.add(n.lower())
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
        ratio, floor = cur.limits.max_ratio, cur.limits.ratio_floor
        if m.usize > floor and m.usize > ratio * max(m.csize, 1):
            raise ArchiveError(f"member {m.name!r} declares {m.usize} bytes from {m.csize}, more than {ratio}:1 "
                               "(a decompression bomb); not inflated")
        try:
            out = inflate(data, "deflate" if m.method == 8 else "bz2", limit, m.data, m.data + m.csize,
                          max_ratio=cur.limits.max_ratio, ratio_floor=cur.limits.ratio_floor)
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


_TAR_REGULAR = (b"0", b"\x00", b"7", b"S")  # tarfile.REGULAR_TYPES
_TAR_LINKS = (b"1", b"2")
# tarfile.SUPPORTED_TYPES that are neither files nor links; any other typeflag is read as a regular file
_TAR_SPECIAL = (b"3", b"4", b"5", b"6", b"L", b"K", b"x", b"g", b"X")


def is_tar(data: Any) -> bool:
    """True when the first 512 bytes form a header tarfile accepts (its checksum, signed or unsigned)."""
    if len(data) < 512:
        return False
    block = bytes(data[:512])
    return block.count(0) != 512 and _checksum_ok(block)


def _checksum_ok(block: bytes) -> bool:
    """tarfile accepts the sum of the header bytes taken unsigned or signed (old tars summed signed chars)."""
    try:
        stored = _octal(block[148:156])
    except ArchiveError:
        return False
    unsigned = 256 + sum(block[:148]) + sum(block[156:])
    signed = 256 + sum(struct.unpack_from("148b8x356b", block))
    return stored in (unsigned, signed)


def _octal(field: bytes) -> int:
    """tarfile's `nti`: base-256 when the first byte is 0o200 or 0o377, else octal text up to the first NUL."""
    if field[:1] in (b"\x80", b"\xff"):
        value = int.from_bytes(field[1:], "big")
        return value - (256 ** (len(field) - 1)) if field[:1] == b"\xff" else value
    text = field.split(b"\x00", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise ArchiveError("bad number in tar header") from None


def read_tar(data: Any, cur: Cursor) -> list[TarMember]:
    """Walk tar headers as tarfile does (ustar, pax 'x', GNU 'L'/'K'); raise ArchiveError on a broken header."""
    try:
        return _read_tar(data, cur)
    except (struct.error, ValueError, OverflowError) as exc:
        raise ArchiveError(f"tar structure cannot be read ({exc})") from None


def _read_tar(data: Any, cur: Cursor) -> list[TarMember]:
    members: list[TarMember] = []
    pos, long_name, pax = 0, None, {}
    while pos + 512 <= len(data):
        block = bytes(data[pos:pos + 512])
        if block.count(0) == 512:
            break
        if not _checksum_ok(block):
            raise ArchiveError(f"bad tar header checksum at offset {pos}")
        size = _octal(block[124:136])
        kind = block[156:157]
        name = block[:100].split(b"\x00")[0]
        prefix = block[345:500].split(b"\x00")[0]
        if prefix and kind not in (b"L", b"K", b"S"):
            name = prefix + b"/" + name
        if kind not in _TAR_SPECIAL and b"size" in pax:
            size = int(pax[b"size"]) if pax[b"size"].isdigit() else size
        if size < 0:
            raise ArchiveError(f"negative member size at offset {pos}")
        body = pos + 512
        if body + size > len(data):
            raise ArchiveError(f"tar member at offset {pos} runs past the end of the file")
        if kind == b"L":
            long_name = bytes(data[body:body + min(size, 1 << 16)]).split(b"\x00")[0]
        elif kind in (b"x", b"X"):
            pax = _pax_records(bytes(data[body:body + min(size, 1 << 20)]))
        elif kind not in (b"g", b"K"):
            final = (pax.get(b"path") or long_name or name).decode("utf-8", "replace")
            long_name, pax = None, {}
            tkind = "link" if kind in _TAR_LINKS else "other" if kind in _TAR_SPECIAL else "file"
            if tkind == "file" and kind not in _TAR_REGULAR:
                cur.report("archive-anomaly", "medium", f"tar member {final!r} has the unknown type {kind!r}, "
                           "which tarfile reads as a regular file", subject=f"tartype:{final}")
            members.append(TarMember(final, body, size, tkind))
            if len(members) > cur.limits.max_members:
                raise ArchiveError(f"more than {cur.limits.max_members} tar members")
        pos = body + (size + 511) // 512 * 512
    return members


def _pax_records(text: bytes) -> dict[bytes, bytes]:
    """pax extended header records, `<length> <key>=<value>\\n` (POSIX.1-2001)."""
    records, pos = {}, 0
    while pos < len(text):
        length, _, _ = text[pos:pos + 32].partition(b" ")
        if not length.isdigit() or int(length) <= 0:
            break
        record = text[pos:pos + int(length)]
        key, _, value = record.partition(b" ")[2].partition(b"=")
        records[key] = value[:-1] if value.endswith(b"\n") else value
        pos += int(length)
    return records
