"""Following joblib's in-stream arrays: joblib writes raw array bytes right after each NumpyArrayWrapper BUILD.

Layout (joblib >= 0.10, `numpy_pickle.NumpyArrayWrapper`): optional one-byte padding length plus padding when the
wrapper records `numpy_array_alignment_bytes`, then `prod(shape) * itemsize` raw bytes; object arrays are instead a
nested protocol-5 pickle that the nested machine scans. Anything that cannot be followed exactly fails closed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bastion.supplychain.pickle_values import Call, Global, PickleError, SymDict

if TYPE_CHECKING:
    from bastion.supplychain.pickle_vm import PickleVM

WRAPPER = "joblib.numpy_pickle.NumpyArrayWrapper"
_KIND_SIZES = {"b": 1, "?": 1}


def dtype_layout(dtype: Any) -> tuple[int, bool]:
    """(itemsize, has_object) of a symbolic `numpy.dtype(typestr, align, copy)` call with its BUILD state."""
    if not isinstance(dtype, Call) or not dtype.is_call_of("numpy.dtype") or not isinstance(dtype.args, tuple):
        raise PickleError("joblib array has a dtype the scanner cannot follow")
    typestr = dtype.args[0] if dtype.args else None
    if not isinstance(typestr, str) or not typestr:
        raise PickleError("joblib array dtype is not a constant type string")
    state = dtype.state if isinstance(dtype.state, tuple) else ()
    flags = state[7] if len(state) > 7 and isinstance(state[7], int) else 0
    if typestr[0] == "O" or flags & 1:
        return 8, True
    if len(state) > 5 and isinstance(state[5], int) and state[5] > 0:
        return state[5], False
    digits = typestr[1:]
    if digits.isdigit() and 0 < int(digits) <= 1 << 20:
        return int(digits), False
    if typestr in _KIND_SIZES:
        return _KIND_SIZES[typestr], False
    raise PickleError(f"joblib array dtype {typestr!r} has no known item size")


def skip_array(vm: PickleVM, state: Any, pos: int) -> int:
    """Return the offset after the array data that follows a NumpyArrayWrapper BUILD at `pos`."""
    if not isinstance(state, SymDict):
        raise PickleError("NumpyArrayWrapper state is not a dict")
    shape = state.get("shape")
    if not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape):
        raise PickleError("joblib array shape is not a tuple of non-negative integers")
    itemsize, has_object = dtype_layout(state.get("dtype"))
    if has_object:
        from bastion.supplychain.pickle_vm import PickleVM

        inner = PickleVM(vm.data, vm.cur, pos, vm.end, context=vm.context, scan_nested=vm._scan_nested)
        return inner.run()
    if state.get("numpy_array_alignment_bytes") is not None:
        pad = vm.data[vm._take(pos, 1) - 1]
        pos = vm._take(pos + 1, pad)
    count = 1
    for d in shape:
        count *= d
        if count * itemsize > vm.end:
            raise PickleError("joblib array is larger than the file")
    return vm._take(pos, count * itemsize)


_MAKERS = {"copyreg.__newobj__", "copyreg.__newobj_ex__", "copyreg._reconstructor"}


def _mentions_wrapper(value: Any, depth: int = 0) -> bool:
    if isinstance(value, Global):
        return value.full == WRAPPER
    if isinstance(value, tuple) and depth < 3:
        return any(_mentions_wrapper(v, depth + 1) for v in value[:16])
    if isinstance(value, Call) and depth < 3:
        return _mentions_wrapper(value.func, depth + 1) or _mentions_wrapper(value.args, depth + 1)
    return False


def wrapper_kind(inst: Call) -> str | None:
    """"direct" when `inst` is a joblib NumpyArrayWrapper built the ordinary way, "indirect" when it may be one
    built through another allowed factory (joblib would then read array bytes we cannot place), else None."""
    func = inst.func
    args = inst.args if isinstance(inst.args, tuple) else ()
    if isinstance(func, Global) and (func.full == WRAPPER or (
            func.full in _MAKERS and args and isinstance(args[0], Global) and args[0].full == WRAPPER)):
        return "direct"
    return "indirect" if _mentions_wrapper(func) or _mentions_wrapper(args) else None
