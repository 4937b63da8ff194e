"""CPU execution choices for a white-box model: memory layout and the batch size of its passes.

Memory layout: channels-last where it is verified to compute the same function.

On CPU, PyTorch's oneDNN convolutions and pooling run markedly faster on NHWC ("channels last") tensors than on
NCHW ones (max-pooling most of all), which speeds up every attack step. The conversion changes no parameter value,
only strides, but code inside a model may depend on the layout (`x.view(n, -1)` after a convolution fails on a
channels-last tensor), so it is kept only when a forward and backward pass on a probe batch succeed and agree
with the original layout's output.

Batch size: on CPU a pass over a few hundred images is slower per image than over smaller chunks whose activations
stay in the processor's cache, while small models (MLPs) want large batches to amortise per-call overhead. The
automatic batch size keeps the largest activation of a chunk near `CPU_CHUNK_BYTES`, between 32 and 512 samples.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from bastion.core.errors import ParameterError

MemoryFormat = Literal["auto", "channels_last", "contiguous"]
FORMATS = ("auto", "channels_last", "contiguous")
CPU_CHUNK_BYTES = 2 * 1024 * 1024
MIN_BATCH, MAX_BATCH = 32, 512


def has_conv2d(model: nn.Module) -> bool:
    """Whether the model holds a 2-d convolution (TorchScript modules keep their original class name)."""
    return any(isinstance(m, nn.Conv2d) or getattr(m, "original_name", None) == "Conv2d" for m in model.modules())


def _probe(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = model(x)
        (grad,) = torch.autograd.grad(out.float().sum(), x, allow_unused=True)
    return out.detach() if grad is not None else out.detach() * float("nan")


def apply_memory_format(model: nn.Module, input_shape: Sequence[int], device: torch.device,
                        mode: str = "auto") -> str:
    """Convert `model` in place to channels-last when `mode` asks for it (auto: CPU convolutional models on
    image inputs) and a probe pass agrees with the original layout; return the layout in use."""
    if mode not in FORMATS:
        raise ParameterError(f"memory_format must be one of {', '.join(FORMATS)}, got {mode!r}")
    # auto leaves TorchScript alone: its backward cannot be kept channels-last (no hooks), which loses the gain
    scripted = any(isinstance(m, torch.jit.ScriptModule) for m in model.modules())
    wanted = mode == "channels_last" or (mode == "auto" and device.type == "cpu" and not scripted)
    if not wanted or len(input_shape) != 3 or not has_conv2d(model):
        if mode == "contiguous":  # undo an earlier target's conversion of the same module
            model.to(memory_format=torch.contiguous_format)
        return "contiguous"
    probe = torch.rand(4, *input_shape, generator=torch.Generator().manual_seed(0)).to(device)
    try:
        before = _probe(model, probe)
        model.to(memory_format=torch.channels_last)
        after = _probe(model, probe.contiguous(memory_format=torch.channels_last))
        same = before.shape == after.shape and torch.allclose(before, after, rtol=1e-4, atol=1e-5)
    except Exception:  # an optimisation must never break the target: keep the layout as it was
        same = False
    if not same:
        model.to(memory_format=torch.contiguous_format)
        return "contiguous"
    _keep_gradients_channels_last(model)
    return "channels_last"


def _to_channels_last(grad: torch.Tensor) -> torch.Tensor:
    return grad.contiguous(memory_format=torch.channels_last)


def _gradient_hook(_module: nn.Module, _inputs: object, output: object) -> None:
    if (isinstance(output, torch.Tensor) and output.requires_grad and output.dim() == 4
            and output.is_contiguous(memory_format=torch.channels_last)):
        output.register_hook(_to_channels_last)


_HOOKED: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def _keep_gradients_channels_last(model: nn.Module) -> None:
    """Gradients flowing back into a channels-last activation from a flattening `view` arrive in NCHW, and
    max-pooling's CPU backward then converts its saved input to NCHW on every call; converting the (smaller)
    incoming gradient instead keeps the whole backward pass channels-last. Values are unchanged."""
    leaves = [m for m in model.modules() if not list(m.children()) and not isinstance(m, torch.jit.ScriptModule)]
    for module in leaves:
        if module not in _HOOKED:
            module.register_forward_hook(_gradient_hook)
            _HOOKED.add(module)


def largest_activation(model: nn.Module, input_shape: Sequence[int], device: torch.device) -> int:
    """Bytes per sample of the largest tensor a gradient pass keeps for its backward (the input at least), from
    one probe pass on 2 samples; works alike for eager, TorchScript and exported models. 0 if the probe fails."""
    sizes = [4 * int(torch.Size(input_shape).numel())]

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.dim() > 0 and len(t) == 2:
            sizes.append(t.element_size() * t[0].numel())
        return t

    x = torch.zeros(2, *input_shape, device=device, requires_grad=True)
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x)
    except Exception:  # the probe failed: the caller falls back to the default batch size
        return 0
    return max(sizes)


def auto_batch_size(model: nn.Module, input_shape: Sequence[int], device: torch.device) -> int:
    """The batch size of a model's passes: 512 on accelerators, cache-sized chunks on CPU (see module doc)."""
    if device.type != "cpu":
        return MAX_BATCH
    largest = largest_activation(model, input_shape, device)
    if largest <= 0:
        return MAX_BATCH
    return int(min(MAX_BATCH, max(MIN_BATCH, CPU_CHUNK_BYTES // largest)))
