"""Conversion of clean tensor files to safetensors, which holds data only and cannot run code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bastion.core.errors import ModelLoadError
from bastion.supplychain.scan_report import ScannedFile

CONVERTIBLE = frozenset({"pytorch-zip", "pytorch-legacy", "numpy", "npz"})


def _flatten(obj: Any, prefix: str, out: dict[str, Any], depth: int = 0) -> None:
    import torch

    if depth > 32:
        return
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, torch.Tensor):
        out[prefix or "tensor"] = obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _flatten(value, f"{prefix}.{key}" if prefix else str(key), out, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _flatten(value, f"{prefix}.{i}" if prefix else str(i), out, depth + 1)


def _torch_tensors(path: Path, globals_: list[str]) -> dict[str, Any]:
    from bastion.supplychain.load import torch_load

    tensors: dict[str, Any] = {}
    _flatten(torch_load(path, globals_), "", tensors)
    seen: set[tuple[int, int]] = set()
    for name, t in list(tensors.items()):
        t = t.detach().cpu().contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        tensors[name] = t.clone() if key in seen or t.is_sparse else t
        seen.add(key)
    return tensors


def safetensors_destination(scanned: ScannedFile, out_dir: str | Path | None = None) -> Path:
    """Where `convert_to_safetensors` writes a file: `<out_dir or its folder>/<stem>.safetensors`."""
    src = Path(scanned.path)
    return (Path(out_dir) if out_dir is not None else src.parent) / (src.stem + ".safetensors")


def is_conversion_of(dest: Path, scanned: ScannedFile) -> bool:
    """True when `dest` is a safetensors file that `bastion scan` converted from these very bytes."""
    from bastion.supplychain.tensor_checks import read_safetensors_header

    try:
        meta = read_safetensors_header(dest).get("__metadata__")
    except Exception:  # noqa: BLE001 - any unreadable header means "not our conversion"
        return False
    return (isinstance(meta, dict) and meta.get("converted_by") == "bastion scan"
            and meta.get("source_sha256") == scanned.sha256)


def convert_to_safetensors(scanned: ScannedFile, out_dir: str | Path | None = None) -> Path:
    """Write `<name>.safetensors` for a scanned tensor file (only call this for files whose scan is clean)."""
    src = Path(scanned.path)
    if scanned.format not in CONVERTIBLE:
        raise ModelLoadError(f"{src.name} is a {scanned.format} file: only PyTorch tensor files and NumPy "
                             "arrays can be converted to safetensors")
    dest = safetensors_destination(scanned, out_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.resolve() == src.resolve():
        raise ModelLoadError(f"refusing to overwrite {src} with its own conversion")
    metadata = {"source": src.name, "source_sha256": scanned.sha256, "converted_by": "bastion scan"}
    try:
        if scanned.format in ("numpy", "npz"):
            import numpy as np
            from safetensors.numpy import save_file as save_numpy

            loaded = np.load(src, allow_pickle=False)
            arrays = {"array": loaded} if scanned.format == "numpy" else {k: loaded[k] for k in loaded.files}
            save_numpy({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(dest), metadata=metadata)
        else:
            from safetensors.torch import save_file as save_torch

            tensors = _torch_tensors(src, scanned.globals)
            if not tensors:
                raise ModelLoadError(f"{src.name} holds no tensors to convert")
            save_torch(tensors, str(dest), metadata=metadata)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - conversion failures become one line for the user
        raise ModelLoadError(f"cannot convert {src.name}: {str(exc).splitlines()[0][:300] if str(exc) else exc!r}"
                             ) from None
    return dest
