"""Symbolic values of the pickle machine: nothing here is ever imported, called or constructed for real."""

from __future__ import annotations

from typing import Any


class PickleError(Exception):
    """The stream cannot be followed (the real unpickler would stop too, or behave in a way we cannot model)."""


class BudgetSpent(PickleError):
    """The file's work budget (time, opcodes) ran out before the stream ended."""


class PickleTruncated(PickleError):
    """The stream ends (or the scanned window ends) in the middle of an opcode or before STOP."""


class Global:
    """A name the unpickler imports (`find_class(module, name)`)."""

    __slots__ = ("module", "name", "verdict")

    def __init__(self, module: str, name: str, verdict: Any = None):
        self.module, self.name, self.verdict = module, name, verdict

    @property
    def full(self) -> str:
        return f"{self.module}.{self.name}"

    def __repr__(self) -> str:
        return f"Global({self.full})"


class Module:
    """A module object obtained by `__import__` / `importlib.import_module` inside the pickle."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


class Call:
    """The result of calling `func` (REDUCE, NEWOBJ, OBJ, INST); BUILD attaches `state`."""

    __slots__ = ("func", "args", "kind", "state")

    def __init__(self, func: Any, args: Any, kind: str):
        self.func, self.args, self.kind, self.state = func, args, kind, None

    def is_call_of(self, *names: str) -> bool:
        return isinstance(self.func, Global) and self.func.full in names


class Opaque:
    """A value the machine does not model (persistent ids, out-of-band buffers, extension codes, big ints)."""

    __slots__ = ("what",)

    def __init__(self, what: str):
        self.what = what


class Blob:
    """A large byte or text string kept as a view into the stream instead of a copy."""

    __slots__ = ("data", "start", "stop", "text")

    def __init__(self, data: Any, start: int, stop: int, text: bool):
        self.data, self.start, self.stop, self.text = data, start, stop, text

    def tobytes(self) -> bytes:
        return bytes(self.data[self.start:self.stop])


class SymDict:
    """A dict built by the pickle: keys need not be hashable symbolically, so it keeps (key, value) pairs."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list | None = None):
        self.pairs = pairs if pairs is not None else []

    def get(self, key: str, default: Any = None) -> Any:
        for k, v in reversed(self.pairs):
            if type(k) is str and k == key:
                return v
        return default


class SymSet:
    """A set or frozenset built by the pickle (items kept in a list)."""

    __slots__ = ("items",)

    def __init__(self, items: list | None = None):
        self.items = items if items is not None else []


def const_bytes(value: Any) -> bytes | None:
    """The constant bytes a value stands for (bytes, bytearray, big Blob, `_codecs.encode(str, 'latin1')`)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, Blob):
        return value.tobytes()
    if isinstance(value, Call) and isinstance(value.func, Global) and value.func.full in (
            "_codecs.encode", "codecs.encode"):
        args = value.args if isinstance(value.args, tuple) else ()
        if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1", "iso-8859-1"):
            try:
                return args[0].encode("latin-1")
            except UnicodeEncodeError:
                return None
    if isinstance(value, Call) and value.is_call_of("builtins.bytes", "builtins.bytearray", "_io.BytesIO",
                                                   "io.BytesIO") and isinstance(value.args, tuple) and value.args:
        return const_bytes(value.args[0])
    return None


def const_str(value: Any) -> str | None:
    """The constant text a value stands for, or None when it is computed."""
    return value if type(value) is str else None
