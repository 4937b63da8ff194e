"""Allow-list of callables a model file may name, and a deny-list that grades everything else.

Anything a pickle (or a Keras/skops config) imports is judged here. Allowed names produce no finding; every other
name is at least ``high`` (loading imports it and usually calls it); names known to execute code, touch the file
system, the network or other processes are ``critical``. The allow-list follows the same idea as fickling's
(Sultanik and Woodruff, "Fickling", Trail of Bits 2021): safety comes from what is known to be harmless, not from a
list of known-bad names.
"""

from __future__ import annotations

import _compat_pickle
import re
from dataclasses import dataclass
from functools import lru_cache

from bastion.core.results import severity_rank

# ---- allow-list -------------------------------------------------------------------------------------------------

_TORCH_DTYPES = ["bfloat16", "bits16", "bits1x8", "bits2x4", "bits4x2", "bits8", "bool", "complex128", "complex32",
    "complex64", "float16", "float32", "float64", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2",
    "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2", "half", "float", "double", "int1", "int2", "int3",
    "int4", "int5", "int6", "int7", "int8", "int16", "int32", "int64", "qint32", "qint8", "quint2x4", "quint4x2",
    "quint8", "uint1", "uint2", "uint3", "uint4", "uint5", "uint6", "uint7", "uint8", "uint16", "uint32", "uint64",
    "per_channel_affine", "per_channel_affine_float_qparams", "per_channel_symmetric", "per_tensor_affine",
    "per_tensor_symmetric", "strided", "sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc",
    "_mkldnn", "channels_last", "contiguous_format", "preserve_format"]
_TORCH_TYPES = ["BFloat16", "Bool", "Byte", "Char", "ComplexDouble", "ComplexFloat", "Double", "Float", "Half", "Int",
    "Long", "Short"]
_TORCH_QSTORAGES = ["QInt32Storage", "QInt8Storage", "QUInt2x4Storage", "QUInt4x2Storage", "QUInt8Storage"]
_TORCH_REBUILD = ["_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
    "_rebuild_parameter_with_state", "_rebuild_qtensor", "_rebuild_sparse_tensor", "_rebuild_nested_tensor",
    "_rebuild_meta_tensor_no_storage", "_rebuild_wrapper_subclass", "_rebuild_device_tensor_from_cpu_tensor",
    "_rebuild_device_tensor_from_numpy"]

_NUMPY_SCALARS = ["bool_", "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "intc",
    "uintc", "intp", "uintp", "int_", "uint", "longlong", "ulonglong", "byte", "ubyte", "short", "ushort", "long",
    "ulong", "float16", "float32", "float64", "float128", "half", "single", "double", "longdouble", "complex64",
    "complex128", "complex256", "csingle", "cdouble", "clongdouble", "str_", "bytes_", "void", "datetime64",
    "timedelta64", "object_"]
_NUMPY_CORE = ("numpy.core", "numpy._core")

ALLOWED: frozenset[str] = frozenset(
    [f"builtins.{n}" for n in ["set", "frozenset", "bytearray", "bytes", "complex", "slice", "range", "int", "float",
        "str", "bool", "list", "dict", "tuple", "object"]]
    + ["copyreg._reconstructor", "copyreg.__newobj__", "copyreg.__newobj_ex__", "_codecs.encode"]
    + [f"collections.{n}" for n in ("OrderedDict", "defaultdict", "deque", "Counter")]
    + [f"datetime.{n}" for n in ("datetime", "date", "time", "timedelta", "timezone")]
    + ["decimal.Decimal", "fractions.Fraction", "uuid.UUID"]
    # common contents of training checkpoints: parsed command-line arguments and paths (data only, no I/O)
    + ["argparse.Namespace"]
    + [f"{m}.{n}" for m in ("pathlib", "pathlib._local") for n in ("Path", "PosixPath", "WindowsPath", "PurePath",
                                                                   "PurePosixPath", "PureWindowsPath")]
    # PyTorch tensors, storages, dtypes and layouts (what torch.load(weights_only=True) accepts by default)
    + [f"torch.{n}" for n in _TORCH_DTYPES]
    + [f"torch.{t}Storage" for t in _TORCH_TYPES] + [f"torch.{q}" for q in _TORCH_QSTORAGES]
    + [f"torch.{t}Tensor" for t in _TORCH_TYPES] + [f"torch.cuda.{t}Storage" for t in _TORCH_TYPES]
    + [f"torch.cuda.{t}Tensor" for t in _TORCH_TYPES] + [f"torch.sparse.{t}Tensor" for t in _TORCH_TYPES]
    + [f"torch.cuda.sparse.{t}Tensor" for t in _TORCH_TYPES]
    + [f"torch._utils.{n}" for n in _TORCH_REBUILD]
    + ["torch.Size", "torch.device", "torch.Tensor", "torch.nn.parameter.Parameter", "torch.nn.parameter.Buffer",
       "torch.storage.TypedStorage", "torch.storage.UntypedStorage", "torch._tensor._rebuild_from_type_v2",
       "torch.serialization._get_layout", "torch.memory_format", "torch.dtype", "torch.layout"]
    + [f"torch.jit._pickle.{n}" for n in ("build_intlist", "build_floatlist", "build_boollist", "build_tensorlist",
                                          "build_doublelist", "build_tensor_from_id", "restore_type_tag")]
    # NumPy arrays, dtypes, scalars and random generators
    + [f"{c}.multiarray.{n}" for c in _NUMPY_CORE for n in ("_reconstruct", "scalar")]
    + [f"{c}.numeric._frombuffer" for c in _NUMPY_CORE] + [f"{c}._ufunc_reconstruct" for c in _NUMPY_CORE]
    + [f"{c}._internal._convert_to_stringdtype_kwargs" for c in _NUMPY_CORE]  # NumPy 2 StringDType
    + ["numpy.ndarray", "numpy.dtype", "numpy.ma.core.MaskedArray", "numpy.ma.core._mareconstruct"]
    + [f"numpy.{n}" for n in _NUMPY_SCALARS]
    + [f"numpy.random._pickle.{n}" for n in ("__randomstate_ctor", "__generator_ctor", "__bit_generator_ctor")]
    + ["numpy.random._mt19937.MT19937", "numpy.random._pcg64.PCG64", "numpy.random._pcg64.PCG64DXSM",
       "numpy.random._philox.Philox", "numpy.random._sfc64.SFC64", "numpy.random.bit_generator.SeedSequence",
       "numpy.random.bit_generator.__pyx_unpickle_SeedSequence", "numpy.random.mtrand.RandomState",
       "numpy.random._generator.Generator"]
    + ["joblib.numpy_pickle.NumpyArrayWrapper"]
)

# Cython / scikit-learn class names: CamelCase (optionally _-prefixed), or Cython's generated unpickle helpers.
_CLASS_NAME = re.compile(r"_*[A-Z][A-Za-z0-9_]*")
_PYX_UNPICKLE = re.compile(r"__pyx_unpickle_[A-Z][A-Za-z0-9_]*")
_SKLEARN_UNSAFE = re.compile(
    r"sklearn\.(externals|datasets|conftest|_build_utils|utils\._testing)(\.|$)|\.tests?(\.|$)")
_SPARSE = re.compile(r"(csr|csc|coo|bsr|dia|dok|lil)_(matrix|array)")
_NUMPY_DTYPE_CLASS = re.compile(r"[A-Z][A-Za-z0-9]*DType")


def _allowed_by_pattern(module: str, name: str) -> bool:
    """Class-shaped names inside packages whose classes only store data when constructed and unpickled."""
    if "." in name:
        return False
    if module.startswith("sklearn.") and not _SKLEARN_UNSAFE.search(module):
        return bool(_CLASS_NAME.fullmatch(name) or _PYX_UNPICKLE.fullmatch(name) or name == "newObj")
    if module.startswith("torch.nn.modules.") and "._" not in module:
        return bool(_CLASS_NAME.fullmatch(name))
    if module == "scipy.sparse" or module.startswith("scipy.sparse._"):
        return bool(_SPARSE.fullmatch(name))
    if module == "numpy.dtypes":
        return bool(_NUMPY_DTYPE_CLASS.fullmatch(name))
    return module == "numpy" and _is_numpy_ufunc(name)


def _is_numpy_ufunc(name: str) -> bool:
    """True when `numpy.<name>` is a ufunc (looked up in the module dict: no lazy import is triggered)."""
    import numpy

    return isinstance(vars(numpy).get(name), numpy.ufunc)


# ---- deny-list ---------------------------------------------------------------------------------------------------

_CRITICAL_MODULES = ["os", "posix", "nt", "subprocess", "_posixsubprocess", "pty", "sys", "shutil", "socket",
    "_socket", "runpy", "importlib", "imp", "pkgutil", "zipimport", "pip", "ensurepip", "setuptools", "distutils",
    "venv", "code", "codeop", "pdb", "bdb", "profile", "cProfile", "timeit", "trace", "pydoc", "webbrowser", "ctypes",
    "_ctypes", "cffi", "multiprocessing", "concurrent", "asyncio", "threading", "_thread", "signal", "marshal",
    "pickle", "_pickle", "cPickle", "dill", "cloudpickle", "shelve", "commands", "popen2", "telnetlib", "ftplib",
    "smtplib", "http", "urllib", "urllib2", "urllib3", "requests", "httpx", "aiohttp", "paramiko", "types", "_io",
    "io", "tempfile", "glob", "sqlite3", "platform", "builtins", "__builtin__", "__builtins__", "torch.hub",
    "torch.utils.cpp_extension", "torch.ops", "torch._C", "torch.classes", "numpy.testing", "numpy.f2py",
    "numpy.distutils", "numpy.ctypeslib"]
_HIGH_MODULES = ["operator", "_operator", "functools", "itertools", "inspect", "gc", "ast", "weakref", "copy", "abc",
    "__main__"]
_CRITICAL_NAMES = frozenset(
    ["builtins.eval", "builtins.exec", "builtins.compile", "builtins.__import__", "builtins.open",
        "builtins.breakpoint", "builtins.input", "builtins.exit", "builtins.quit", "builtins.__build_class__",
        "builtins.memoryview", "torch.load", "torch.serialization.load", "torch.storage._load_from_bytes",
        "torch.jit.load", "torch.package", "numpy.load", "numpy.loads", "numpy.fromfile", "numpy.memmap",
        "numpy.lib.npyio.load", "numpy.save", "numpy.savez", "numpy.tofile", "joblib.load",
        "joblib.numpy_pickle.load", "joblib.dump", "keras.models.load_model", "keras.saving.load_model",
        "keras.utils.get_file", "tensorflow.keras.utils.get_file"]
)
_HIGH_NAMES = frozenset(
    ["builtins.getattr", "builtins.setattr", "builtins.delattr", "builtins.globals", "builtins.locals",
        "builtins.vars", "builtins.type", "builtins.super", "builtins.classmethod", "builtins.staticmethod",
        "builtins.property", "builtins.help", "builtins.print", "builtins.dir", "builtins.hasattr", "builtins.map",
        "builtins.filter", "builtins.apply", "builtins.execfile", "builtins.reload", "builtins.file"]
)
# Names that, anywhere in a dotted path, mean the path reaches code execution (e.g. torch.serialization.os.system).
_DANGEROUS_PARTS = frozenset(
    ["os", "posix", "nt", "subprocess", "system", "popen", "spawnl", "spawnv", "execv", "execve", "execl", "eval",
        "exec", "compile", "__import__", "__builtins__", "builtins", "__builtin__", "sys", "modules", "getattr",
        "__globals__", "__code__", "__reduce__", "__subclasses__", "import_module", "run_path", "run_module",
        "_run_code", "loads", "load", "marshal", "pickle", "runpy", "pty"]
)


@dataclass(frozen=True)
class Verdict:
    """The judgement of one imported name: severity None means allowed."""

    severity: str | None
    rule: str
    reason: str


ALLOW = Verdict(None, "allowed", "on the allow-list")


def canonical(module: str, name: str, proto: int = 4) -> tuple[str, str]:
    """The (module, name) an unpickler really imports: Python 2 names are mapped for protocols below 3."""
    if proto < 3:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            return _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return module, name


@lru_cache(maxsize=16384)
def judge(module: str, name: str, proto: int = 4, context: str = "pickle") -> Verdict:
    """Judge the callable or class `module.name` as an unpickler (protocol `proto`) would resolve it.

    `context` "torchscript" also allows TorchScript's own `__torch__.*` classes, which torch.jit.load resolves
    in C++ without importing Python code.
    """
    mod, nm = canonical(module, name, proto)
    full = f"{mod}.{nm}"
    if full in ALLOWED or _allowed_by_pattern(mod, nm):
        return ALLOW
    if context == "torchscript" and (mod == "__torch__" or mod.startswith("__torch__.")):
        return ALLOW
    worst = max(_deny(mod, nm), _deny(module, name), key=lambda v: severity_rank(v.severity or "info"))
    return worst




def _deny(module: str, name: str) -> Verdict:
    full = f"{module}.{name}"
    if full in _CRITICAL_NAMES:
        return Verdict("critical", "unsafe-global", f"{full} executes code or reads files when called")
    if full in _HIGH_NAMES:
        return Verdict("high", "unsafe-global", f"{full} reaches arbitrary attributes or objects")
    parts = full.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in _CRITICAL_SET:
            return Verdict("critical", "unsafe-global", f"{full} belongs to {prefix}, which can run code, "
                                                         "spawn processes or touch files and the network")
        if prefix in _HIGH_SET:
            return Verdict("high", "unsafe-global", f"{full} belongs to {prefix}, which can call or reach "
                                                     "arbitrary objects")
    if any(p in _DANGEROUS_PARTS for p in parts):
        return Verdict("critical", "unsafe-global", f"{full} reaches a code-execution primitive through its path")
    return Verdict("high", "unknown-global", f"{full} is not on the allow-list: loading imports it, and may call it")


_CRITICAL_SET = frozenset(_CRITICAL_MODULES)
_HIGH_SET = frozenset(_HIGH_MODULES)


def judge_module(module: str) -> Verdict:
    """Judge importing a whole module by name (the result of `__import__` or `importlib.import_module`)."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in _CRITICAL_SET or prefix in _HIGH_SET:
            return Verdict("critical", "unsafe-global", f"imports module {module}")
    return Verdict("high", "unknown-global", f"imports module {module}, which is not on the allow-list")


def severity_max(a: str | None, b: str | None) -> str | None:
    """The worse of two severities (None counts as allowed)."""
    if a is None:
        return b
    if b is None:
        return a
    return a if severity_rank(a) >= severity_rank(b) else b
