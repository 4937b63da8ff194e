"""What a call inside a pickle produces, symbolically: every route to a callable is resolved and judged.

Covered routes: `getattr(obj, name)` chains, `__import__` / `importlib.import_module`, NumPy's ufunc
reconstructor, torch's layout lookup, nested deserialisers (`pickle.loads`, `torch.load`, ...) whose payload is
scanned in turn, and byte decoders (base64, zlib, bz2, lzma) so that obfuscated nested payloads are decoded first.
Calling anything that is not a statically known name is itself a finding.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

from bastion.supplychain.compression import InflateError, inflate
from bastion.supplychain.import_policy import judge_module
from bastion.supplychain.pickle_values import Blob, Call, Global, Module, Opaque, SymDict, const_bytes, const_str

if TYPE_CHECKING:
    from bastion.supplychain.pickle_vm import PickleVM

_GETATTR = {"builtins.getattr"}
_IMPORTS = {"builtins.__import__", "importlib.import_module", "importlib.__import__",
            "importlib._bootstrap._gcd_import"}
_UFUNC = {"numpy.core._ufunc_reconstruct", "numpy._core._ufunc_reconstruct"}
_LAYOUTS = {"torch.strided", "torch.sparse_coo", "torch.sparse_csr", "torch.sparse_csc", "torch.sparse_bsr",
            "torch.sparse_bsc", "torch._mkldnn", "torch.jagged"}
_NESTED = {
    "pickle.loads", "_pickle.loads", "pickle._loads", "cPickle.loads", "pickle.load", "_pickle.load",
    "pickle._load", "dill.loads", "dill._dill.loads", "cloudpickle.loads", "torch.load", "torch.serialization.load",
    "torch.storage._load_from_bytes", "joblib.load", "joblib.numpy_pickle.load", "numpy.load", "numpy.loads",
    "numpy.lib.npyio.load", "shelve.open", "torch.jit.load",
}
_DECODERS = {
    "base64.b64decode": base64.b64decode, "base64.decodebytes": base64.decodebytes,
    "base64.b32decode": base64.b32decode, "base64.b16decode": base64.b16decode,
    "base64.b85decode": base64.b85decode, "base64.a85decode": base64.a85decode,
    "base64.urlsafe_b64decode": base64.urlsafe_b64decode, "binascii.a2b_base64": binascii.a2b_base64,
    "binascii.unhexlify": binascii.unhexlify, "binascii.a2b_hex": binascii.a2b_hex,
}
_INFLATERS = {"zlib.decompress": "zlib", "bz2.decompress": "bz2", "lzma.decompress": "lzma",
              "gzip.decompress": "gzip"}


def describe(value: Any) -> str:
    """A short human name for a symbolic value."""
    if isinstance(value, Global):
        return value.full
    if isinstance(value, Module):
        return f"module {value.name}"
    if isinstance(value, Call):
        return f"result of {describe(value.func)}(...)"
    if isinstance(value, Opaque):
        return value.what
    if isinstance(value, str):
        return repr(value[:60])
    return type(value).__name__


def _args(value: Any) -> tuple:
    return value if isinstance(value, tuple) else ()


def snippet(value: Any) -> str | None:
    """The first characters of a constant text or bytes argument, for the evidence."""
    if isinstance(value, str):
        return value[:200]
    data = const_bytes(value) if isinstance(value, (bytes, bytearray, Blob, Call)) else None
    return None if data is None else repr(data[:200])


def resolve_call(vm: PickleVM, func: Any, args: Any, kind: str, offset: int) -> Any:
    """Judge one call made by the stream and return its symbolic result."""
    if not isinstance(func, Global):
        vm.cur.report("dynamic-call", "high", f"{kind} calls {describe(func)}, which is computed at load time",
                      offset=offset, subject=f"call:{describe(func)}", opcode=kind)
        return Call(func, args, kind)
    full = func.full
    argv = _args(args)
    if func.verdict is not None and func.verdict.severity is not None and argv:
        text = snippet(argv[0])
        if text is not None:
            vm.annotate(func, argument=text)
    if full in _GETATTR and len(argv) >= 2:
        return _getattr(vm, argv[0], argv[1], offset, kind)
    if full in _IMPORTS and argv:
        name = const_str(argv[0])
        if name is None:
            vm.cur.report("dynamic-call", "critical", "module name for import is computed at load time",
                          offset=offset, subject="import:dynamic", opcode=kind)
            return Opaque("module")
        verdict = judge_module(name)
        vm.cur.report(verdict.rule, "critical", f"pickle imports module {name}", offset=offset,
                      subject=f"module {name}", opcode=kind)
        return Module(name)
    if full in _UFUNC:
        if len(argv) == 2 and const_str(argv[0]) is not None and const_str(argv[1]) is not None:
            return vm.make_global(argv[0], argv[1], offset, kind)
        vm.cur.report("dynamic-call", "high", f"{full} reconstructs a computed name", offset=offset,
                      subject=f"call:{full}", opcode=kind)
        return Opaque("ufunc")
    if full == "torch.serialization._get_layout":
        name = const_str(argv[0]) if argv else None
        if name not in _LAYOUTS:
            vm.cur.report("dynamic-call", "high", f"torch layout lookup of {describe(argv[0] if argv else None)}",
                          offset=offset, subject="call:_get_layout", opcode=kind)
        return Opaque("layout")
    if full == "torch._tensor._rebuild_from_type_v2" and argv and not isinstance(argv[0], Global):
        vm.cur.report("dynamic-call", "high", f"_rebuild_from_type_v2 calls {describe(argv[0])}", offset=offset,
                      subject=f"call:{describe(argv[0])}", opcode=kind)
    if full in _NESTED:
        return _nested(vm, func, argv, offset, kind)
    if full in _DECODERS or full in _INFLATERS:
        return _decode(vm, full, argv)
    return Call(func, args, kind)


def _getattr(vm: PickleVM, obj: Any, name: Any, offset: int, kind: str) -> Any:
    attr = const_str(name)
    if attr is None:
        vm.cur.report("dynamic-call", "critical", "getattr with a computed attribute name", offset=offset,
                      subject="getattr:dynamic", opcode=kind)
        return Opaque("attribute")
    if isinstance(obj, Module):
        return vm.make_global(obj.name, attr, offset, f"{kind}(getattr)")
    if isinstance(obj, Global):
        return vm.make_global(obj.module, f"{obj.name}.{attr}", offset, f"{kind}(getattr)")
    vm.cur.report("dynamic-call", "high", f"getattr({describe(obj)}, {attr!r}) reaches an attribute of a "
                  "load-time object", offset=offset, subject=f"getattr:{attr}", opcode=kind)
    return Opaque(f"attribute {attr}")


def _nested(vm: PickleVM, func: Global, argv: tuple, offset: int, kind: str) -> Any:
    source = argv[0] if argv else None
    key = None
    if isinstance(source, Blob):  # a view into a buffer: judged before its bytes are copied
        key = ("blob", id(source.data), source.start, source.stop)
        vm.cur.sink.keepalive[id(source.data)] = source.data  # the id stays this buffer's while the key is kept
        if not vm.nested_allowed(key):
            return Call(func, tuple(argv), kind)
    payload = const_bytes(argv[0]) if argv else None
    if payload is None and argv and isinstance(argv[0], Call) and argv[0].is_call_of("_io.BytesIO", "io.BytesIO"):
        inner = _args(argv[0].args)
        payload = const_bytes(inner[0]) if inner else None
    benign = func.full == "torch.storage._load_from_bytes"
    severity = "info" if benign else "critical"
    if payload is None:
        vm.cur.report("nested-payload", "high" if benign else "critical",
                      f"{func.full} deserialises a payload computed at load time", offset=offset,
                      subject=f"nested:{func.full}", opcode=kind)
    else:
        vm.cur.report("nested-payload", severity, f"{func.full} deserialises an embedded {len(payload)}-byte "
                      "payload (scanned as a nested member)", offset=offset, subject=f"nested:{func.full}",
                      opcode=kind)
        if key is not None or vm.nested_allowed((len(payload), hash(payload))):
            vm.scan_nested(payload, f"<{func.full}@{offset}>")
    return Call(func, tuple(argv), kind)


def _decode(vm: PickleVM, full: str, argv: tuple) -> Any:
    data = const_bytes(argv[0]) if argv else None
    if data is None and argv and isinstance(argv[0], str):
        data = argv[0].encode("latin-1", "replace")
    if data is None:
        return Opaque(f"result of {full}")
    limits = vm.cur.limits
    try:
        if full in _DECODERS:
            return _DECODERS[full](data)[:limits.max_member_bytes]
        return inflate(data, _INFLATERS[full], limits.max_member_bytes, max_ratio=limits.max_ratio,
                       ratio_floor=limits.ratio_floor)
    except InflateError as exc:
        if "more than" in str(exc):
            vm.cur.report("limit", "high", f"{full} result not followed: {exc}", subject=f"inflate:{full}")
        return Opaque(f"result of {full}")
    except (ValueError, TypeError):
        return Opaque(f"result of {full}")


def mutation_target(value: Any) -> str | None:
    """The name of an imported object that an opcode would modify in place, or None for load-time objects."""
    if isinstance(value, Global):
        return value.full
    if isinstance(value, Module):
        return f"module {value.name}"
    return None


__all__ = ["resolve_call", "describe", "mutation_target", "SymDict"]
