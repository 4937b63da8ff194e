"""Format name -> loader function."""

from __future__ import annotations

from pathlib import Path

from bastion.core.data import Dataset
from bastion.core.errors import ModelLoadError
from bastion.core.target import Target
from bastion.models.http_backend import load_http
from bastion.models.metadata import ModelMetadata
from bastion.models.onnx_backend import load_onnx
from bastion.models.sklearn_backend import load_skops
from bastion.models.torch_backend import _target, load_export, load_safetensors, load_torchscript


def load_pickled_model(path: Path, data: Dataset | None = None, trust: bool = False, device: str = "auto",
                       bounds: tuple[float, float] | None = None, batch_size: int | None = None,
                       arch: str | None = None, max_queries: int | None = None,
                       **_: object) -> Target:
    """Pickle-based files: scanned first, loaded only when the scan is clean and `trust` is set. They may hold a
    torch module, a state dict (with `--arch`) or a fitted scikit-learn classifier (joblib or pickle)."""
    from torch import nn

    from bastion.models.estimator import estimator_target, is_estimator
    from bastion.models.factory import build
    from bastion.supplychain import load_pickled

    obj = load_pickled(Path(path), trust=trust)
    if is_estimator(obj):
        return estimator_target(obj, Path(path), data, bounds, batch_size, max_queries)
    if isinstance(obj, nn.Module):
        return _target(obj, ModelMetadata(), Path(path), data, bounds, device, batch_size, max_queries)
    if isinstance(obj, dict) and arch:
        model = build(arch)
        try:
            model.load_state_dict(obj, strict=True)
        except RuntimeError as exc:
            raise ModelLoadError(f"{path}: state dict does not fit --arch {arch} ({exc})") from None
        return _target(model, ModelMetadata(), Path(path), data, bounds, device, batch_size, max_queries)
    raise ModelLoadError(
        f"{path}: holds a {type(obj).__name__}; expected a torch.nn.Module, a state dict with --arch or a fitted "
        "scikit-learn classifier"
    )


LOADERS = {
    "torchscript": lambda p, **kw: load_torchscript(Path(p), **kw),
    "torch-export": lambda p, **kw: load_export(Path(p), **kw),
    "safetensors": lambda p, **kw: load_safetensors(Path(p), **kw),
    "onnx": lambda p, **kw: load_onnx(Path(p), **kw),
    "skops": lambda p, **kw: load_skops(Path(p), **kw),
    "http": lambda p, **kw: load_http(str(p), **kw),
    "pytorch-zip": load_pickled_model,
    "pickle": load_pickled_model,
}
