"""PyTorch formats: TorchScript, torch.export (`.pt2`) and safetensors weights with a model factory."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bastion.core.data import Dataset
from bastion.core.device import resolve_device
from bastion.core.errors import ModelLoadError
from bastion.core.target import TorchTarget
from bastion.models.factory import build
from bastion.models.loader import resolve_shape_and_bounds
from bastion.models.metadata import METADATA_KEY, ModelMetadata
from bastion.supplychain.code_formats import refuse_unless_trusted
from bastion.supplychain.tensor_checks import read_safetensors_header


def _target(model: nn.Module, meta: ModelMetadata, path: Path, data: Dataset | None,
            bounds: tuple[float, float] | None, device: str, batch_size: int | None,
            max_queries: int | None = None) -> TorchTarget:
    shape, bounds = resolve_shape_and_bounds(meta, data, bounds, path)
    try:
        return TorchTarget(model, shape, n_classes=meta.n_classes, bounds=bounds, device=device,
                           max_queries=max_queries, batch_size=batch_size, name=path.name)
    except RuntimeError as exc:
        raise ModelLoadError(f"{path}: the model does not accept inputs of shape {shape} ({exc})") from None


def load_torchscript(path: Path, data: Dataset | None = None, device: str = "auto",
                     bounds: tuple[float, float] | None = None, batch_size: int | None = None, trust: bool = False,
                     max_queries: int | None = None, **_: object) -> TorchTarget:
    """TorchScript runs its own code (forward, a scripted __setstate__ at load): scanned first, refused on a high
    or critical finding unless `trust`."""
    refuse_unless_trusted(path, "torchscript", trust)
    extra = {METADATA_KEY: ""}
    try:
        model = torch.jit.load(str(path), map_location=resolve_device(device), _extra_files=extra)
    except Exception as exc:  # torch raises RuntimeError or ValueError for corrupt archives
        raise ModelLoadError(f"{path}: corrupt TorchScript file ({type(exc).__name__})") from None
    meta = ModelMetadata.from_json(extra[METADATA_KEY])
    return _target(PlainModule(model), meta, path, data, bounds, device, batch_size, max_queries)


class PlainModule(nn.Module):
    """A loaded TorchScript or exported module inside an ordinary one.

    Callers can then treat every loaded model alike: `requires_grad_` works parameter by parameter (ScriptModules
    refuse it), and `.train()`/`.eval()` never fail (exported graphs refuse them; their mode is fixed at export)."""

    def __init__(self, module: nn.Module, fixed_batch: int | None = None):
        super().__init__()
        self.inner = module
        self.fixed_batch = fixed_batch  # an exported graph with a static batch size: inputs go in chunks of it

    def train(self, mode: bool = True) -> PlainModule:
        self.training = mode
        if isinstance(self.inner, torch.jit.ScriptModule):  # an exported graph's mode is fixed at export
            self.inner.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.fixed_batch
        if n is None or x.shape[0] == n:
            return self.inner(x)
        outputs = []
        for start in range(0, x.shape[0], n):  # the last chunk is padded with copies of its last row, then trimmed
            chunk = x[start:start + n]
            pad = n - chunk.shape[0]
            if pad:
                chunk = torch.cat([chunk, chunk[-1:].expand(pad, *chunk.shape[1:])])
            outputs.append(self.inner(chunk)[: n - pad])
        return torch.cat(outputs)


def static_batch(program: torch.export.ExportedProgram) -> int | None:
    """The batch size an exported graph was fixed to (its first input's leading dimension is a plain int), or None
    when that dimension is dynamic."""
    names = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in names:
            value = node.meta.get("val")
            shape = getattr(value, "shape", None)
            return int(shape[0]) if shape is not None and len(shape) and isinstance(shape[0], int) else None
    return None


def exported_in_training_mode(program: torch.export.ExportedProgram) -> bool:
    """Whether an exported graph behaves as in training mode: an op with a `training`/`train` flag (batch norm,
    dropout) set to True. A graph without such ops behaves the same in both modes and counts as eval."""
    for node in program.graph.nodes:
        schema = getattr(node.target, "_schema", None) if node.op == "call_function" else None
        if schema is None:
            continue
        for index, argument in enumerate(schema.arguments):
            if argument.name in ("training", "train"):
                value = node.args[index] if index < len(node.args) else node.kwargs.get(argument.name)
                if value is True:
                    return True
    return False


def load_export(path: Path, data: Dataset | None = None, device: str = "auto",
                bounds: tuple[float, float] | None = None, batch_size: int | None = None, trust: bool = False,
                max_queries: int | None = None, **_: object) -> TorchTarget:
    """torch.export.load unpickles use_pickle payloads, opaque constants and (on fallback) sample inputs: the
    archive is scanned first, refused on a high or critical finding unless `trust`."""
    refuse_unless_trusted(path, "torch-export", trust)
    extra = {METADATA_KEY: ""}
    try:
        program = torch.export.load(str(path), extra_files=extra)
        module = PlainModule(program.module(), static_batch(program))
    except Exception as exc:  # corrupt or incompatible archive
        raise ModelLoadError(f"{path}: corrupt torch.export file ({type(exc).__name__}: {exc})") from None
    exported_training = exported_in_training_mode(program)
    for sub in module.inner.modules():  # program.module() says training=True whatever the graph does
        sub.training = exported_training
    meta = ModelMetadata.from_json(extra[METADATA_KEY])
    resolve_shape_and_bounds(meta, data, bounds, path)  # one clear error line when the shape is unknown
    if module.fixed_batch is not None and batch_size is None:
        batch_size = module.fixed_batch  # whole chunks where the caller batches; PlainModule pads the rest
    return _target(module, meta, path, data, bounds, device, batch_size, max_queries)


def load_safetensors(path: Path, arch: str | None = None, data: Dataset | None = None, device: str = "auto",
                     bounds: tuple[float, float] | None = None, batch_size: int | None = None,
                     max_queries: int | None = None, **_: object) -> TorchTarget:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    header = read_safetensors_header(path)
    strings = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(header, dict) or not isinstance(strings or {}, dict):
        raise ModelLoadError(f"{path}: corrupt safetensors header (not a JSON object of tensors and __metadata__)")
    meta = ModelMetadata.from_json((strings or {}).get(METADATA_KEY))
    model = build(arch)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: corrupt safetensors file ({exc})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise ModelLoadError(f"{path}: weights do not fit --arch {arch} ({first})") from None
    return _target(model, meta, path, data, bounds, device, batch_size, max_queries)
