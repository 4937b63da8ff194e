"""Chat templates that run code: Jinja2 templates stored in GGUF metadata (`tokenizer.chat_template`) or in a
tokenizer_config.json are rendered by some runtimes outside a sandbox, where attribute walks such as
`().__class__.__base__.__subclasses__()` reach `os.popen` (CVE-2024-34359, llama-cpp-python).

GGUF layout per the ggml GGUF specification: magic, version, tensor count, key/value count, then typed
key/value pairs (strings are u64 length + bytes, arrays are element type + u64 count + elements)."""

from __future__ import annotations

import json
import re
import struct
from typing import Any

from bastion.supplychain.findings import Cursor

_SSTI = re.compile(r"__(class|mro|base|bases|subclasses|globals|builtins|import|init|getattribute|code|reduce)__"
                   r"|\b(os|subprocess|sys)\s*\.|\b(popen|system|eval|exec|__import__)\s*\(")
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


class _GGUFError(Exception):
    pass


def is_gguf(data: Any) -> bool:
    return bytes(data[:4]) == b"GGUF" and len(data) >= 24


def check_template(template: str, where: str, cur: Cursor) -> None:
    """Report a chat template that walks Python internals or names process/eval helpers."""
    hit = _SSTI.search(template)
    if hit:
        cur.report("template-injection", "critical", f"{where} chat template reaches Python internals "
                   f"({hit.group(0).strip()!r}): rendering it outside a sandbox runs code", subject=where)


def check_gguf(data: Any, cur: Cursor) -> None:
    """Walk the GGUF key/value metadata and check every chat template."""
    try:
        version, _, kv_count = struct.unpack_from("<IQQ", data, 4)
        if version not in (1, 2, 3) or kv_count > cur.limits.max_members:
            raise _GGUFError(f"unsupported version {version} or {kv_count} metadata entries")
        pos = 24
        for _ in range(kv_count):
            key, pos = _string(data, pos, cur)
            vtype = struct.unpack_from("<I", data, pos)[0]
            value, pos = _value(data, pos + 4, vtype, cur, 0)
            if key.startswith("tokenizer.chat_template") and isinstance(value, str):
                check_template(value, f"GGUF {key}", cur)
    except (_GGUFError, struct.error, UnicodeDecodeError) as exc:
        cur.report("malformed", "high", f"GGUF metadata cannot be read: {exc}")


def _string(data: Any, pos: int, cur: Cursor) -> tuple[str, int]:
    n = struct.unpack_from("<Q", data, pos)[0]
    if n > cur.limits.max_header_bytes or pos + 8 + n > len(data):
        raise _GGUFError("string runs past the end of the file")
    return bytes(data[pos + 8:pos + 8 + n]).decode("utf-8", "replace"), pos + 8 + n


def _value(data: Any, pos: int, vtype: int, cur: Cursor, depth: int) -> tuple[Any, int]:
    if vtype in _FIXED:
        return None, pos + _FIXED[vtype]
    if vtype == 8:
        return _string(data, pos, cur)
    if vtype == 9 and depth < 4:
        etype, count = struct.unpack_from("<IQ", data, pos)
        pos += 12
        if etype in _FIXED:
            end = pos + count * _FIXED[etype]
            if end > len(data):
                raise _GGUFError("array runs past the end of the file")
            return None, end
        if count > len(data):
            raise _GGUFError("array count larger than the file")
        for _ in range(count):
            _, pos = _value(data, pos, etype, cur, depth + 1)
        return None, pos
    raise _GGUFError(f"unknown metadata type {vtype}")


def check_json_template(raw: bytes, cur: Cursor) -> None:
    """tokenizer_config.json-style files: check their chat_template (a string or a list of named templates)."""
    try:
        config = json.loads(raw)
    except (ValueError, RecursionError):
        return
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, str):
        check_template(template, "tokenizer config", cur)
    elif isinstance(template, list):
        for item in template:
            if isinstance(item, dict) and isinstance(item.get("template"), str):
                check_template(item["template"], f"tokenizer config {item.get('name', '?')}", cur)
