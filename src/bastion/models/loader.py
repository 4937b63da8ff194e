"""Find a model file's format from its bytes and load it as a Target.

TorchScript, torch.export (`.pt2`), `.safetensors` with a `module:factory`, ONNX (onnxruntime), scikit-learn `.skops`
and `http(s)://` prediction endpoints. Pickle-based files (PyTorch zip/legacy, joblib, raw pickle) go through the
supply-chain scanner and load only when the scan is clean and the user passed `--trust`.
"""

from __future__ import annotations

from pathlib import Path

from bastion.core.data import Dataset, align_classes, bounds_problem
from bastion.core.errors import DataError, ModelLoadError
from bastion.core.notices import say_once
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
    guessed = bounds is None and not meta.bounds and data is not None  # the model does not say: the data's own
    if bounds is None:
        bounds = tuple(meta.bounds) if meta.bounds else (data.bounds() if data is not None else (0.0, 1.0))
    bounds = (float(bounds[0]), float(bounds[1]))
    if data is not None:  # the data must be in the model's class order and units: say so when it is not
        for note in guessed_input_notes(data, meta, guessed):
            say_once(f"warning: {note}")
        align_classes(data, list(meta.class_names or []))
        problem = bounds_problem(data, bounds)
        if problem:
            raise DataError(problem)
    return shape, bounds


def guessed_input_notes(data: Dataset, meta: ModelMetadata, bounds_guessed: bool) -> list[str]:
    """What Bastion had to guess about `data` because the model records neither its bounds nor its classes:
    image values up to 255 taken as the model's units, and an image folder's alphabetical class order."""
    from bastion.core.image_data import class_folder_order

    notes = []
    lo, hi = float(data.x.min()), float(data.x.max())
    if bounds_guessed and data.x.ndim >= 3 and lo >= 0.0 and 1.5 < hi <= 255.0:  # images, not tabular columns
        notes.append(f"{data.name}: values in [{lo:g}, {hi:g}] look like 8-bit pixels and the model records no "
                     f"input bounds, so they are taken as [{lo:g}, {hi:g}] (eps in those units); if the model was "
                     "trained on [0, 1], divide the data by 255")
    names = list(data.class_names)
    if (not meta.class_names and len(names) > 1 and not all(n.isdigit() for n in names)
            and names == class_folder_order(names)):
        notes.append(f"{data.name}: the model records no class names, so the classes are taken in alphabetical "
                     f"order ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}); if the model orders "
                     "them otherwise, pass --classes in its order")
    return notes
