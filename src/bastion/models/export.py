"""Saving models with their metadata: TorchScript (`.pt`), torch.export (`.pt2`), ONNX and safetensors."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bastion.core.errors import ParameterError
from bastion.models.metadata import METADATA_KEY, ModelMetadata

FORMATS = {".pt": "torchscript", ".ts": "torchscript", ".pt2": "torch-export", ".onnx": "onnx",
           ".safetensors": "safetensors"}


def save_model(model: nn.Module, path: str | Path, meta: ModelMetadata, fmt: str | None = None) -> Path:
    """Write `model` in the format named by `fmt` or by the file suffix; return the path written."""
    path = Path(path)
    fmt = fmt or FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ParameterError(f"{path}: choose a suffix among {', '.join(FORMATS)}")
    if not meta.input_shape:
        raise ParameterError("saving a model needs its input shape in the metadata")
    from bastion.models.torch_backend import PlainModule

    while isinstance(model, PlainModule):  # save what was loaded, not the wrapper (weight names stay unprefixed)
        model = model.inner
    model = model.eval().cpu()
    example = torch.zeros(2, *meta.input_shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torchscript":
        scripted = model
        if not isinstance(model, torch.jit.ScriptModule):
            scripted = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(scripted, str(path), _extra_files={METADATA_KEY: meta.to_json()})
    elif fmt == "torch-export":
        if isinstance(model, torch.jit.ScriptModule):
            raise ParameterError("a TorchScript model cannot be re-exported as .pt2: save it as .pt, .onnx or "
                                 ".safetensors")
        batch = torch.export.Dim("batch", min=1, max=1 << 20)
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(path), extra_files={METADATA_KEY: meta.to_json()})
    elif fmt == "onnx":
        _save_onnx(model, example, path, meta)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(path), metadata={METADATA_KEY: meta.to_json()})
    else:
        raise ParameterError(f"unknown model format {fmt!r}")
    return path


def _save_onnx(model: nn.Module, example: torch.Tensor, path: Path, meta: ModelMetadata) -> None:
    import warnings

    from bastion.models.onnx_proto import append_metadata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    append_metadata(path, METADATA_KEY, meta.to_json())
