"""The only place in Bastion that unpickles: after a clean scan, with the user's explicit trust, and even then
through loaders that only resolve allow-listed names (torch's weights-only unpickler, or a restricted
`find_class`)."""

from __future__ import annotations

import importlib
import io
import pickle
from pathlib import Path
from typing import Any

from bastion.core.errors import ModelLoadError
from bastion.supplychain.compression import InflateError, compression_of, inflate
from bastion.supplychain.detect import PICKLE_FORMATS
from bastion.supplychain.file_scan import scan_path
from bastion.supplychain.import_policy import judge
from bastion.supplychain.limits import DEFAULT_LIMITS
from bastion.supplychain.scan_report import ScanReport


def _refusal(path: Path, report: ScanReport) -> str:
    worst = report.worst_finding()
    if worst is None:
        return f"refusing to load {path.name}: {report.errors[0]}"
    where = worst.evidence.get("member") or path.name
    return (f"refusing to load {path.name}: {worst.severity} finding '{worst.title.split(' (')[0]}' in {where}; "
            "only files with a clean scan can be loaded, and only with --trust")


def load_pickled(path: str | Path, trust: bool) -> Any:
    """Scan, then load a pickle-based model (PyTorch zip/legacy, joblib, pickle) when clean and trusted."""
    p = Path(path)
    report = scan_path(p)
    if p.is_dir() or not report.files:
        raise ModelLoadError(f"{p} is not a model file")
    fmt = report.files[0].format
    if fmt not in PICKLE_FORMATS:
        raise ModelLoadError(f"{p.name} is a {fmt} file, not a pickle-based model; load it with its own loader")
    if not report.is_clean():
        raise ModelLoadError(_refusal(p, report))
    if not trust:
        raise ModelLoadError(f"{p.name} is a pickle-based {fmt} file; its scan is clean, but loading still runs "
                             "its pickle: pass --trust to load it")
    try:
        if fmt in ("pytorch-zip", "pytorch-legacy"):
            return torch_load(p, report.files[0].globals)
        if fmt == "pytorch-tar":
            raise ModelLoadError(f"{p.name} uses PyTorch's pre-1.0 tar format, which torch cannot load with "
                                 "weights_only=True; re-save it with a current torch")
        return _restricted_load(p, fmt)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure becomes one actionable line
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load {p.name}: {message[:300]}") from None


def resolve_allowed(names: list[str]) -> list[Any]:
    """Import the allow-listed globals a scan found (never anything else)."""
    objects = []
    for full in names:
        module, _, name = full.rpartition(".")
        if not module or judge(module, name).severity is not None:
            continue
        try:
            obj = importlib.import_module(module)
            for part in name.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError):
            continue
        objects.append(obj)
    return objects


def torch_load(path: Path, names: list[str]) -> Any:
    """torch.load(weights_only=True), extended with the allow-listed classes the scan saw (e.g. nn layers)."""
    import torch

    extra = [o for o in resolve_allowed(names) if callable(o)]
    with torch.serialization.safe_globals(extra):
        return torch.load(path, map_location="cpu", weights_only=True)


class _AllowListFind:
    """`find_class` that resolves allow-listed names only, as a second line behind the scan."""

    def find_class(self, module: str, name: str) -> Any:
        verdict = judge(module, name, 2)  # 2: also accept the Python 2 names the unpickler maps itself
        if verdict.severity is not None:
            raise pickle.UnpicklingError(f"{module}.{name} is not on the allow-list")
        return super().find_class(module, name)  # type: ignore[misc]


class _RestrictedUnpickler(_AllowListFind, pickle.Unpickler):
    pass


def _restricted_load(path: Path, fmt: str) -> Any:
    raw = path.read_bytes()
    kind = compression_of(raw[:16])
    if kind is not None:
        try:
            raw = inflate(raw, kind, DEFAULT_LIMITS.max_member_bytes)
        except InflateError as exc:
            raise ModelLoadError(f"cannot decompress {path.name}: {exc}") from None
    if fmt == "joblib":
        return _joblib_load(raw, str(path))
    return _RestrictedUnpickler(io.BytesIO(raw)).load()


def _joblib_load(raw: bytes, filename: str) -> Any:
    from joblib.numpy_pickle import NumpyUnpickler

    class _Restricted(_AllowListFind, NumpyUnpickler):
        pass

    handle = io.BytesIO(raw)
    try:
        unpickler = _Restricted(filename, handle, True)
    except TypeError:  # joblib < 1.5 has no ensure_native_byte_order argument
        unpickler = _Restricted(filename, handle)
    return unpickler.load()
