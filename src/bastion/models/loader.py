"""Find a model file's format from its bytes and load it as a Target.

TorchScript, torch.export (`.pt2`), `.safetensors` with a `module:factory`, ONNX (onnxruntime), scikit-learn `.skops`
and `http(s)://` prediction endpoints. Pickle-based files (PyTorch zip/legacy, joblib, raw pickle) go through the
supply-chain scanner and load only when the scan is clean and the user passed `--trust`.
"""

from __future__ import annotations

from pathlib import Path

from bastion.core.data import Dataset, align_classes, bounds_problem
from bastion.core.errors import DataError, ModelLoadError
from bastion.core.target import Access, Target
from bastion.models.metadata import ModelMetadata
from bastion.supplychain.detect import PICKLE_FORMATS, detect_format

LOADABLE = frozenset({"torchscript", "torch-export", "skops", "pytorch-zip", "safetensors", "onnx"})


def sniff_format(path: str | Path) -> str:
    """One of: http, torchscript, torch-export, skops, pytorch-zip, safetensors, onnx, pickle, unknown.

    The format comes from the scanner's sniffer (`supplychain.detect.detect_format`, a bounded read), so the
    loader and the scanner never disagree on what a file is; other pickle-based formats load as `pickle`."""
    text = str(path)
    if text.startswith(("http://", "https://")):
        return "http"
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model not found: {path}")
    fmt = detect_format(path)
    if fmt in LOADABLE:
        return fmt
    return "pickle" if fmt in PICKLE_FORMATS else "unknown"


def load_target(
    path: str | Path,
    data: Dataset | None = None,
    arch: str | None = None,
    device: str = "auto",
    trust: bool = False,
    max_queries: int | None = None,
    bounds: tuple[float, float] | None = None,
    access: str | Access | None = None,
    batch_size: int | None = None,
) -> Target:
    """Load MODEL as a Target. `data` supplies the input shape and bounds when the file does not carry them."""
    from bastion.core.device import resolve_device

    resolve_device(device)  # an unknown or absent device is reported as such, not as a corrupt model
    fmt = sniff_format(path)
    if fmt == "unknown":
        raise ModelLoadError(
            f"{path}: unknown model format (expected TorchScript, .pt2, .safetensors, ONNX, .skops or an http URL)"
        )
    if fmt == "safetensors" and not arch:
        raise ModelLoadError(f"{path}: a .safetensors file holds weights only; pass --arch module:factory")
    from bastion.models import backends

    loader = backends.LOADERS[fmt]
    sizing = {} if batch_size is None else {"batch_size": batch_size}  # None: each backend's own default
    # every backend builds its target with the budget and its name (file name, or the URL) in the constructor
    target = loader(path, data=data, arch=arch, device=device, trust=trust, bounds=bounds, max_queries=max_queries,
                    **sizing)
    if access is not None:
        target = target.restrict(access)
    return target


def resolve_shape_and_bounds(meta: ModelMetadata, data: Dataset | None, bounds: tuple[float, float] | None,
                             path: str | Path) -> tuple[tuple[int, ...], tuple[float, float]]:
    """Input shape and bounds from, in order: the caller, the model's metadata, the data."""
    shape = tuple(meta.input_shape) if meta.input_shape else (data.input_shape if data is not None else None)
    if shape is None:
        raise ModelLoadError(f"{path}: the model does not record its input shape; pass --data")
    if bounds is None:
        bounds = tuple(meta.bounds) if meta.bounds else (data.bounds() if data is not None else (0.0, 1.0))
    bounds = (float(bounds[0]), float(bounds[1]))
    if data is not None:  # the data must be in the model's class order and units: say so when it is not
        align_classes(data, list(meta.class_names or []))
        problem = bounds_problem(data, bounds)
        if problem:
            raise DataError(problem)
    return shape, bounds
