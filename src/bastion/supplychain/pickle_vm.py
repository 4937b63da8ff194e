"""A symbolic pickle machine: runs every opcode of protocols 0-5 without importing or calling anything.

It keeps the real stack, mark stack and memo, so `STACK_GLOBAL` names built through memo tricks resolve to what
the unpickler would import, and every `GLOBAL`/`STACK_GLOBAL`/`INST` name is judged by the policy when it is
created. `REDUCE`/`NEWOBJ`/`NEWOBJ_EX`/`OBJ`/`INST` go through `pickle_calls.resolve_call`; `BUILD`, `SETITEM(S)`,
`APPEND(S)` and `ADDITEMS` on imported objects are reported as mutations. Literal opcodes live in
`pickle_literals`, stack, memo and framing opcodes in `pickle_stack_ops`. Opcode semantics follow the reference
implementation described in PEP 307 (protocol 2), PEP 3154 (protocol 4) and PEP 574 (protocol 5).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from struct import unpack_from
from typing import Any

from bastion.supplychain.import_policy import judge
from bastion.supplychain.joblib_arrays import skip_array, wrapper_kind
from bastion.supplychain.pickle_calls import mutation_target, resolve_call
from bastion.supplychain.pickle_stack_ops import StackMemoOps
from bastion.supplychain.pickle_values import (
    BudgetSpent,
    Call,
    Global,
    Opaque,
    PickleError,
    PickleTruncated,
    SymDict,
    SymSet,
    const_str,
)
from bastion.supplychain.verdicts import Cursor


class PickleVM(StackMemoOps):
    """Run one pickle stream symbolically from `start` to its STOP opcode.

    mode "joblib" also follows the array bytes that joblib writes right after each NumpyArrayWrapper's BUILD.
    `scan_nested(payload, cursor)` scans embedded payloads (nested pickles, torch.load bytes).
    """

    def __init__(self, data: Any, cur: Cursor, start: int = 0, end: int | None = None, *, mode: str = "pickle",
                 context: str = "pickle", scan_nested: Callable[[bytes, Cursor], None] | None = None):
        self.data, self.cur, self.pos = data, cur, start
        self.end = len(data) if end is None else end
        self.mode, self.context, self._scan_nested = mode, context, scan_nested
        self.stack: list = []
        self.metastack: list[list] = []
        self.memo: dict[int, Any] = {}
        self.proto = 0
        self.frame_end = -1
        self.result: Any = None
        self.at = start
        self.stop = -1
        self.opcodes = 0
        self.arrays = 0
        self.imports = 0  # find_class calls with identifier-shaped names (a sign the bytes are meant as a pickle)


    def run(self) -> int:
        """Execute until STOP; return the offset just after it. Raises PickleError on a malformed stream."""
        table, data, limits, memo, end = _TABLE, self.data, self.cur.limits, self.memo, self.end
        max_ops, max_stack = limits.max_opcodes, limits.max_stack
        pos, count, charged, sink = self.pos, 0, 0, self.cur.sink
        try:
            while pos >= 0:
                if pos >= end:
                    raise PickleTruncated("stream ends without a STOP opcode")
                op = data[pos]
                self.at = pos
                count += 1
                # the three memo opcodes make up about half of real streams: handled inline for speed
                if op == 0x94:  # MEMOIZE
                    memo[len(memo)] = self.stack[-1]
                    pos += 1
                elif op in (0x71, 0x68) and pos + 1 < end:  # BINPUT, BINGET
                    if op == 0x71:
                        memo[data[pos + 1]] = self.stack[-1]
                    else:
                        self.stack.append(memo[data[pos + 1]])
                    pos += 2
                else:
                    handler = table[op]
                    if handler is None:
                        raise PickleError(f"invalid opcode 0x{op:02x}")
                    pos = handler(self, pos + 1)
                if count & 0xFFFF == 0:
                    sink.opcodes += count - charged
                    charged = count
                    if sink.opcodes > max_ops:
                        raise BudgetSpent(f"more than {max_ops} opcodes in the file")
                    if len(self.stack) + len(self.metastack) > max_stack or len(self.memo) > limits.max_memo:
                        raise PickleError("stack or memo larger than the scanner limit")
                    if sink.out_of_time():
                        raise BudgetSpent("scan time limit reached")
        except (IndexError, KeyError) as exc:
            raise PickleError(f"stack or memo underflow near offset {self.at} ({type(exc).__name__})") from None
        finally:
            self.opcodes = count
            sink.opcodes += count - charged
        return self.stop


    def make_global(self, module: Any, name: Any, offset: int, opcode: str) -> Any:
        """Create (and judge) the object the unpickler gets from `find_class(module, name)`."""
        mod, nm = const_str(module), const_str(name)
        if mod is not None and nm and _DOTTED.fullmatch(mod):
            self.imports += 1  # a module path import can resolve: CPython imports it before the stream breaks
        if mod is None or nm is None:
            self.cur.report("dynamic-call", "high", f"{opcode} imports a name that is computed at load time",
                            offset=offset, subject="global:dynamic", opcode=opcode)
            return Opaque("computed global")
        verdict = judge(mod, nm, min(self.proto, 3), self.context)
        glob = Global(mod, nm, verdict)
        self.cur.sink.globals.add(glob.full)
        if verdict.severity is not None:
            self.cur.report(verdict.rule, verdict.severity, verdict.reason, offset=offset,
                            subject=glob.full, opcode=opcode)
        return glob

    def annotate(self, glob: Global, **evidence: Any) -> None:
        key = (self.cur.member, glob.verdict.rule, glob.full)
        found = self.cur.sink.findings.get(key)
        if found is not None:
            for k, v in evidence.items():
                found.evidence.setdefault(k, v)

    def nested_allowed(self, key: object) -> bool:
        """Charge one nested payload to the file's budget; False (and reported) when it must not be scanned:
        the budget is spent, or the same payload was already scanned (fan-out through the memo)."""
        sink = self.cur.sink
        if key in sink.seen_payloads:
            return False
        sink.nested += 1
        spent = sink.exhausted()
        if spent is not None:
            self.cur.report("limit", "high", f"nested payloads past {spent} were not scanned",
                            subject="nested-budget")
            return False
        sink.seen_payloads.add(key)
        return True

    def scan_nested(self, payload: bytes, label: str) -> None:
        if self._scan_nested is not None:
            child = self.cur.enter(label)
            if not child.too_deep():
                self._scan_nested(payload, child)

    def _call(self, func: Any, args: Any, kind: str) -> Any:
        return resolve_call(self, func, args, kind, self.at)

    def _mutate(self, target: Any, opcode: str) -> None:
        name = mutation_target(target)
        if name is not None:
            self.cur.report("object-mutation", "high", f"{opcode} modifies the imported object {name}",
                            offset=self.at, subject=f"mutate:{name}", opcode=opcode)


    def op_reduce(self, pos: int) -> int:
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args, "REDUCE")
        return pos

    def op_append(self, pos: int) -> int:
        value = self.stack.pop()
        target = self.stack[-1]
        if type(target) is list:
            target.append(value)
        else:
            self._mutate(target, "APPEND")
        return pos

    def op_appends(self, pos: int) -> int:
        items = self._pop_mark()
        target = self.stack[-1]
        if type(target) is list:
            target.extend(items)
        else:
            self._mutate(target, "APPENDS")
        return pos

    def op_setitem(self, pos: int) -> int:
        value = self.stack.pop()
        key = self.stack.pop()
        target = self.stack[-1]
        if type(target) is SymDict:
            target.pairs.append((key, value))
        else:
            self._mutate(target, "SETITEM")
        return pos

    def op_setitems(self, pos: int) -> int:
        items = self._pop_mark()
        target = self.stack[-1]
        if type(target) is SymDict:
            target.pairs.extend(zip(items[::2], items[1::2], strict=False))
        else:
            self._mutate(target, "SETITEMS")
        return pos

    def op_additems(self, pos: int) -> int:
        items = self._pop_mark()
        target = self.stack[-1]
        if type(target) is SymSet:
            target.items.extend(items)
        else:
            self._mutate(target, "ADDITEMS")
        return pos

    def op_build(self, pos: int) -> int:
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) is not Call:
            self._mutate(inst, "BUILD")
            return pos
        if self.mode == "joblib":
            kind = wrapper_kind(inst)
            if kind == "indirect":
                raise PickleError("a NumpyArrayWrapper is built indirectly: the array layout joblib reads "
                                  "cannot be followed")
            if kind == "direct":
                if isinstance(inst.state, SymDict) and isinstance(state, SymDict):
                    state = SymDict(inst.state.pairs + state.pairs)  # joblib merges repeated BUILDs
                inst.state = state
                self.arrays += 1
                if pos < self.frame_end:
                    self.cur.report("archive-anomaly", "high", "joblib array data starts inside a pickle frame, "
                                    "so pickle and joblib read different opcodes", offset=pos)
                self.stack[-1] = Opaque("array")  # joblib replaces the wrapper by the array it reads
                return skip_array(self, state, pos)
        inst.state = state
        return pos

    def op_global(self, pos: int) -> int:
        module, pos = self._line(pos)
        name, pos = self._line(pos)
        self.stack.append(self.make_global(_utf8(module), _utf8(name), self.at, "GLOBAL"))
        return pos

    def op_stack_global(self, pos: int) -> int:
        name = self.stack.pop()
        module = self.stack.pop()
        self.stack.append(self.make_global(module, name, self.at, "STACK_GLOBAL"))
        return pos

    def op_inst(self, pos: int) -> int:
        module, pos = self._line(pos)
        name, pos = self._line(pos)
        cls = self.make_global(_utf8(module), _utf8(name), self.at, "INST")
        args = tuple(self._pop_mark())
        self.stack.append(self._call(cls, args, "INST"))
        return pos

    def op_obj(self, pos: int) -> int:
        items = self._pop_mark()
        if not items:
            raise PickleError(f"OBJ without a class at offset {self.at}")
        self.stack.append(self._call(items[0], tuple(items[1:]), "OBJ"))
        return pos

    def op_newobj(self, pos: int) -> int:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.stack.append(self._call(cls, args, "NEWOBJ"))
        return pos

    def op_newobj_ex(self, pos: int) -> int:
        self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.stack.append(self._call(cls, args, "NEWOBJ_EX"))
        return pos

    def _ext(self, pos: int, n: int, fmt: str) -> int:
        end = self._take(pos, n)
        code = unpack_from(fmt, self.data, pos)[0]
        self.cur.report("dynamic-call", "high", f"extension-registry code {code} names a callable the scanner "
                        "cannot see", offset=self.at, subject=f"ext:{code}", opcode="EXT")
        self.stack.append(Opaque(f"extension {code}"))
        return end

    def op_ext1(self, pos: int) -> int:
        return self._ext(pos, 1, "<B")

    def op_ext2(self, pos: int) -> int:
        return self._ext(pos, 2, "<H")

    def op_ext4(self, pos: int) -> int:
        return self._ext(pos, 4, "<i")



_DOTTED = re.compile(r"[^\W\d]\w*(\.[^\W\d]\w*)*")  # dotted identifiers


def _utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PickleError("module or class name is not valid UTF-8") from None


_OPCODES: dict[int, str] = {ord(k): v for k, v in {
    "(": "mark", ".": "stop", "0": "pop", "1": "pop_mark", "2": "dup", "F": "float", "I": "int", "J": "binint",
    "K": "binint1", "L": "long", "M": "binint2", "N": "none", "P": "persid", "Q": "binpersid", "R": "reduce",
    "S": "string", "T": "binstring", "U": "short_binstring", "V": "unicode", "X": "binunicode", "a": "append",
    "b": "build", "c": "global", "d": "dict", "}": "empty_dict", "e": "appends", "g": "get", "h": "binget",
    "i": "inst", "j": "long_binget", "l": "list", "]": "empty_list", "o": "obj", "p": "put", "q": "binput",
    "r": "long_binput", "s": "setitem", "t": "tuple", ")": "empty_tuple", "u": "setitems", "G": "binfloat",
    "\x80": "proto", "\x81": "newobj", "\x82": "ext1", "\x83": "ext2", "\x84": "ext4", "\x85": "tuple1",
    "\x86": "tuple2", "\x87": "tuple3", "\x88": "newtrue", "\x89": "newfalse", "\x8a": "long1", "\x8b": "long4",
    "B": "binbytes", "C": "short_binbytes", "\x8c": "short_binunicode", "\x8d": "binunicode8",
    "\x8e": "binbytes8", "\x8f": "empty_set", "\x90": "additems", "\x91": "frozenset", "\x92": "newobj_ex",
    "\x93": "stack_global", "\x94": "memoize", "\x95": "frame", "\x96": "bytearray8", "\x97": "next_buffer",
    "\x98": "readonly_buffer",
}.items()}
OPCODE_BYTES = frozenset(_OPCODES)
_TABLE: list = [None] * 256  # opcode byte -> unbound handler, shared by every machine
for _code, _name in _OPCODES.items():
    _TABLE[_code] = getattr(PickleVM, "op_" + _name)
