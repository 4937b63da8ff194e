"""Stack, mark, memo and framing opcodes of the symbolic pickle machine (a mixin of `pickle_vm.PickleVM`).

They move values between the stack, the mark stack and the memo exactly as the unpickler does (PEP 307, PEP 3154,
PEP 574), so that names built through memo tricks resolve to what would be imported; nothing here imports or
calls anything.
"""

from __future__ import annotations

from struct import unpack_from
from typing import Any

from bastion.supplychain.pickle_literals import LiteralOps, py_long
from bastion.supplychain.pickle_values import Opaque, PickleError


class StackMemoOps(LiteralOps):
    """Mixin for PickleVM: needs `memo`, `proto`, `frame_end`, `result` and `stop` besides LiteralOps' state."""

    memo: dict[int, Any]
    proto: int
    frame_end: int
    result: Any
    stop: int

    def op_mark(self, pos: int) -> int:
        self.metastack.append(self.stack)
        self.stack = []
        return pos

    def op_stop(self, pos: int) -> int:
        self.result = self.stack.pop()
        self.stop = pos
        return -1

    def op_pop(self, pos: int) -> int:
        if self.stack:
            self.stack.pop()
        else:
            self._pop_mark()
        return pos

    def op_pop_mark(self, pos: int) -> int:
        self._pop_mark()
        return pos

    def op_dup(self, pos: int) -> int:
        self.stack.append(self.stack[-1])
        return pos

    def op_persid(self, pos: int) -> int:
        _, pos = self._line(pos)
        self.stack.append(Opaque("persistent id"))
        return pos

    def op_binpersid(self, pos: int) -> int:
        self.stack[-1] = Opaque("persistent id")
        return pos

    def _get(self, key: int) -> None:
        if key not in self.memo:
            raise PickleError(f"memo entry {key} read before it was written (offset {self.at})")
        self.stack.append(self.memo[key])

    def op_get(self, pos: int) -> int:
        line, pos = self._line(pos)
        key = py_long(line, 10) if line else None
        if type(key) is not int:
            raise PickleError(f"bad GET index at offset {self.at}")
        self._get(key)
        return pos

    def op_binget(self, pos: int) -> int:
        self._get(self.data[self._take(pos, 1) - 1])
        return pos + 1

    def op_long_binget(self, pos: int) -> int:
        self._get(unpack_from("<I", self.data, self._take(pos, 4) - 4)[0])
        return pos + 4

    def _put(self, key: int) -> None:
        if key < 0:
            raise PickleError("negative memo index")
        if not self.stack:
            raise PickleError(f"memo write with an empty stack at offset {self.at}")
        self.memo[key] = self.stack[-1]

    def op_put(self, pos: int) -> int:
        line, pos = self._line(pos)
        key = py_long(line, 10) if line else None
        if type(key) is not int:
            raise PickleError(f"bad PUT index at offset {self.at}")
        self._put(key)
        return pos

    def op_binput(self, pos: int) -> int:
        self._put(self.data[self._take(pos, 1) - 1])
        return pos + 1

    def op_long_binput(self, pos: int) -> int:
        self._put(unpack_from("<I", self.data, self._take(pos, 4) - 4)[0])
        return pos + 4

    def op_memoize(self, pos: int) -> int:
        self._put(len(self.memo))
        return pos

    def op_proto(self, pos: int) -> int:
        proto = self.data[self._take(pos, 1) - 1]
        if proto > 5:
            raise PickleError(f"unsupported pickle protocol {proto}")
        self.proto = proto
        return pos + 1

    def op_frame(self, pos: int) -> int:
        n = unpack_from("<Q", self.data, self._take(pos, 8) - 8)[0]
        self._take(pos + 8, n)
        self.frame_end = pos + 8 + n
        return pos + 8

    def op_next_buffer(self, pos: int) -> int:
        self.stack.append(Opaque("out-of-band buffer"))
        return pos

    def op_readonly_buffer(self, pos: int) -> int:
        if not self.stack:
            raise PickleError(f"READONLY_BUFFER with an empty stack at offset {self.at}")
        return pos
