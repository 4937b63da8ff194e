"""Chat templates that run code: Jinja2 templates stored in GGUF metadata (`tokenizer.chat_template`) or in a
tokenizer_config.json are rendered by some runtimes outside a sandbox, where attribute walks such as
`().__class__.__base__.__subclasses__()` reach `os.popen` (CVE-2024-34359, llama-cpp-python).

GGUF layout per the ggml GGUF specification: magic, version, tensor count, key/value count, then typed
key/value pairs (strings are u64 length + bytes, arrays are element type + u64 count + elements)."""

from __future__ import annotations

import struct
from typing import Any

from bastion.supplychain.config_checks import chat_templates, check_keras_config, is_keras_config, parse_json_config
from bastion.supplychain.template_ast import template_problems
from bastion.supplychain.verdicts import Cursor

_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


class _GGUFError(Exception):
    pass


def is_gguf(data: Any) -> bool:
    return bytes(data[:4]) == b"GGUF" and len(data) >= 24


def check_template(template: str, where: str, cur: Cursor) -> None:
    """Report what a chat template reaches beyond its data, judged on its Jinja2 syntax tree."""
    for problem in template_problems(template):
        rule = "malformed" if problem.severity == "medium" else "template-injection"
        cur.report(rule, problem.severity, f"{where} chat template {problem.what}: rendering it outside a "
                   "sandbox can run code" if rule != "malformed" else f"{where} chat template {problem.what}",
                   subject=f"{where}: {problem.what}")


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


def check_json_template(data: Any, cur: Cursor) -> None:
    """JSON configs (tokenizer_config.json, chat_template.json, Keras configs): check every chat template."""
    if len(data) > cur.limits.max_header_bytes:
        cur.report("limit", "medium", "JSON file larger than the scanner limit was not checked for chat templates "
                   "or Keras configs")
        return
    config = parse_json_config(data, cur.limits.max_header_bytes)
    if is_keras_config(config):
        check_keras_config(config, cur)
    for where, template in chat_templates(config):
        check_template(template, where, cur)
