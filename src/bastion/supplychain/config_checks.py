"""Checks of the JSON configs that name code: Keras model configs (.keras zip, legacy .h5 `model_config`
attribute, bare config.json) and skops schemas.

Keras: Lambda layers carry marshalled Python bytecode (CVE-2024-3660); a config may name any module and function
through "module"/"class_name"/"registered_name" (CVE-2025-1550) or reach Keras' own file helpers (CVE-2025-8747).
skops: every `__module__`/`__class__` pair is a type the loader imports, judged by the same allow-list as pickles.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from bastion.supplychain.import_policy import judge
from bastion.supplychain.verdicts import Cursor

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_KERAS_ROOTS = ("keras", "tf_keras", "keras_hub", "keras_nlp", "keras_cv", "tensorflow.keras",
                "tensorflow.python.keras")
_KERAS_BAD_NAMES = frozenset({"get_file", "load_model", "load_weights", "enable_unsafe_deserialization",
                              "deserialize_keras_object", "register_keras_serializable"})
_KERAS_FUNCTION_MODULES = ("activations", "losses", "metrics", "initializers", "regularizers", "constraints", "ops",
                           "optimizers.schedules")
_CODE_MARKERS = (b"system", b"popen", b"subprocess", b"exec", b"eval", b"__import__", b"socket", b"builtins")


def is_h5(data: Any) -> bool:
    """HDF5 signature at offset 0 or at a power-of-two user-block offset (512, 1024, ...)."""
    offsets = [0] + [512 << i for i in range(8)]
    return any(bytes(data[o:o + 8]) == HDF5_MAGIC for o in offsets if o + 8 <= len(data))


def check_h5(data: Any, cur: Cursor) -> None:
    """Find the Keras JSON configs stored as HDF5 attributes (model_config, training_config) and check them."""
    found, pos, end = 0, 0, len(data)
    decoder = json.JSONDecoder()
    hits = {p: data.find(p, 0, end) for p in _JSON_STARTS}  # next hit of each pattern, updated lazily
    attempts = 0
    while attempts < cur.limits.max_json_candidates:
        for p, hit in hits.items():
            if 0 <= hit < pos:
                hits[p] = data.find(p, pos, end)
        live = [h for h in hits.values() if h >= 0]
        if not live:
            break
        start = min(live)
        attempts += 1
        parsed = _decode_at(data, start, decoder, cur.limits.max_header_bytes)
        if parsed is None:
            pos = start + 1
            continue
        config, raw, length = parsed
        found += 1
        check_keras_config(config, cur, offset=start)
        pos = start + max(1, len(raw[:length].encode("utf-8", "replace")))
    if found == 0 and (attempts or data.find(b"model_config") >= 0):
        cur.report("malformed", "high", "HDF5 file holds a Keras config that cannot be read")
    elif attempts >= cur.limits.max_json_candidates:
        cur.report("limit", "high", f"more than {attempts} Keras config candidates; the rest were not checked")


_JSON_STARTS = (b'{"class_name"', b'{"module"', b'{"loss"')


def _decode_at(data: Any, start: int, decoder: json.JSONDecoder, limit: int) -> tuple[Any, str, int] | None:
    """Decode the JSON value at `start`, reading a 1 MiB window first and the full limit only if needed."""
    window = min(limit, 1 << 20)
    while True:
        stop = min(len(data), start + window)
        raw = bytes(data[start:stop]).decode("utf-8", "replace")
        try:
            config, length = decoder.raw_decode(raw)
            return config, raw, length
        except RecursionError:
            return None
        except ValueError as exc:
            truncated = getattr(exc, "pos", 0) >= len(raw) - 1 and stop < len(data)
            if not truncated or window >= limit:
                return None
            window = limit


_ALL_TEMPLATES = "\0chat_templates"  # where `parse_json_config` keeps every value of a repeated chat_template key


def _keep_repeats(pairs: list[tuple[str, Any]]) -> dict:
    """JSON object hook: Python keeps the last of repeated keys, other parsers the first; keep all templates."""
    out: dict = {}
    for key, value in pairs:
        if key == "chat_template":
            out.setdefault(_ALL_TEMPLATES, []).append(value)
        out[key] = value
    return out


def parse_json_config(data: Any, limit: int) -> Any:
    """The JSON value of a whole config file (escapes decoded, no byte cut-off up to `limit`), or None."""
    if len(data) > limit:
        return None
    try:
        return json.loads(bytes(data), object_pairs_hook=_keep_repeats)
    except (ValueError, RecursionError):
        return None


def is_keras_config(config: Any) -> bool:
    """A Keras model config: `class_name` naming the model class and its `config` (not just a key name)."""
    return (isinstance(config, dict) and isinstance(config.get("class_name"), str)
            and isinstance(config.get("config"), (dict, list)))


def chat_templates(config: Any) -> list[tuple[str, str]]:
    """(name, template) for every chat template a tokenizer config holds (a string or a list of named ones)."""
    if not isinstance(config, dict):
        return []
    out = []
    for value in config.get(_ALL_TEMPLATES, []):
        if isinstance(value, str):
            out.append(("tokenizer config", value))
        elif isinstance(value, list):
            out += [(f"tokenizer config {item.get('name', '?')}", item["template"]) for item in value
                    if isinstance(item, dict) and isinstance(item.get("template"), str)]
    return out


def check_keras_json(raw: bytes, cur: Cursor) -> None:
    """Check a Keras config.json given as bytes (fails closed when it is not JSON)."""
    if len(raw) > cur.limits.max_header_bytes:
        cur.report("limit", "high", "Keras config is larger than the scanner limit")
        return
    try:
        config = json.loads(raw)
    except (ValueError, RecursionError):
        cur.report("malformed", "high", "Keras config.json is not valid JSON")
        return
    check_keras_config(config, cur)


def check_keras_config(config: Any, cur: Cursor, offset: int | None = None) -> None:
    """Walk every dict of the config: Lambda layers, module references, functions, custom objects."""
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        stack.extend(node.values())
        cls = node.get("class_name")
        if cls in ("Lambda", "__lambda__", "TFOpLambda"):
            _lambda(node, cls, cur, offset)
        module = node.get("module")
        if isinstance(module, str) and module:
            _module_ref(module, node, cur, offset)
        registered = node.get("registered_name")
        if isinstance(registered, str) and ">" in registered:
            cur.report("keras-module", "low", f"custom object {registered!r} must be registered by user code",
                       offset=offset, subject=f"custom:{registered}")
        if node.get("function_type") == "lambda" or cls == "__lambda__":
            _lambda(node, "lambda function", cur, offset)


def _lambda(node: dict, what: str, cur: Cursor, offset: int | None) -> None:
    if what == "TFOpLambda":
        fn = (node.get("config") or {}).get("function", "") if isinstance(node.get("config"), dict) else ""
        severity = "high" if str(fn).startswith(("io.", "compat.v1.io", "py_function", "numpy_function")) else "medium"
        cur.report("keras-lambda", severity, f"TFOpLambda layer calls tf.{fn}", offset=offset,
                   subject=f"tfop:{fn}")
        return
    code = _lambda_code(node)
    markers = sorted({m.decode() for m in _CODE_MARKERS if m in code})
    severity = "critical" if markers else "high"
    extra = f" (bytecode names {', '.join(markers)})" if markers else ""
    cur.report("keras-lambda", severity, f"Keras {what} layer runs Python bytecode when loaded{extra}",
               offset=offset, subject=f"lambda:{node.get('name') or (node.get('config') or {}).get('name', '?')}"
               if isinstance(node.get("config", {}), dict) else "lambda")


def _lambda_code(node: Any) -> bytes:
    """Base64-decoded strings found under the node (marshalled code is never unmarshalled)."""
    out, stack, budget = [], [node], 10_000
    while stack and budget:
        budget -= 1
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and len(item) >= 8:
            try:
                out.append(base64.b64decode(item, validate=False)[:1 << 20])
            except (binascii.Error, ValueError):
                out.append(item.encode("utf-8", "replace")[:1 << 20])
    return b"".join(out)


def _module_ref(module: str, node: dict, cur: Cursor, offset: int | None) -> None:
    cls = node.get("class_name")
    name = node.get("config") if cls == "function" and isinstance(node.get("config"), str) else cls
    name = name if isinstance(name, str) else "?"
    root = next((r for r in _KERAS_ROOTS if module == r or module.startswith(r + ".")), None)
    if root is not None:
        sub = module[len(root) + 1:]
        if cls != "function" and name not in _KERAS_BAD_NAMES:
            return  # Keras' own layer, model, optimizer, loss ... classes
        if cls == "function" and name not in _KERAS_BAD_NAMES and any(
                sub == f or sub.startswith((f + ".", "src." + f)) for f in _KERAS_FUNCTION_MODULES):
            return
        cur.report("keras-module", "high", f"Keras config calls {module}.{name}, a Keras helper outside the "
                   "layer, loss and activation namespaces (it can fetch or load files)", offset=offset,
                   subject=f"{module}.{name}")
        return
    verdict = judge(module, name)
    if verdict.severity is None:
        return
    severity = "critical" if verdict.severity == "critical" else "high"
    cur.report("keras-module", severity, f"Keras config: {verdict.reason}",
               offset=offset, subject=f"{module}.{name}")


def check_skops_schema(raw: bytes, cur: Cursor) -> None:
    """Judge every type and function a skops schema.json asks the loader to import."""
    try:
        schema = json.loads(raw)
    except (ValueError, RecursionError):
        cur.report("malformed", "high", "skops schema.json is not valid JSON")
        return
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
        module, cls = node.get("__module__"), node.get("__class__")
        if isinstance(module, str) and isinstance(cls, str):
            verdict = judge(module, cls)
            if verdict.severity is not None:
                loader = node.get("__loader__", "?")
                # skops itself refuses types that are not trusted explicitly, so unknown types are medium
                severity = "medium" if verdict.rule == "unknown-global" else verdict.severity
                cur.report(verdict.rule, severity, f"skops {loader}: {verdict.reason}", subject=f"{module}.{cls}")
