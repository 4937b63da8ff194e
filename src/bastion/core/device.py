"""Device selection: `auto` picks CUDA when present, else the CPU."""

from __future__ import annotations

import torch

from bastion.core.errors import ParameterError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Return a torch.device for `auto`, `cpu`, `cuda` or `cuda:N`; a clear error if CUDA is asked but absent."""
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ParameterError("--device cuda was asked for but no CUDA device is available")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ParameterError(f"unknown device {device!r}: use auto, cpu or cuda")
