"""Model factories named as `module:function` (e.g. `bastion.demo.models:digits_cnn`)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path

from torch import nn

from bastion.core.errors import ModelLoadError


def resolve_factory(spec: str | Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """Import `module:function` (a `.py` path works as the module too) and return the callable."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or ":" not in spec:
        raise ModelLoadError(f"--arch must look like module:factory, got {spec!r}")
    module_name, _, attr = spec.rpartition(":")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).resolve()
            if not path.exists():
                raise ModelLoadError(f"--arch: no such file {module_name}")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[path.stem] = module
            module_spec.loader.exec_module(module)
        else:
            if "" not in sys.path:
                sys.path.insert(0, "")
            module = importlib.import_module(module_name)
    except ModelLoadError:
        raise
    except Exception as exc:  # an import error of user code is bad input, reported in one line
        raise ModelLoadError(f"--arch: cannot import {module_name!r} ({type(exc).__name__}: {exc})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelLoadError(f"--arch: {module_name!r} has no callable {attr!r}")
    return factory


def build(spec: str | Callable[[], nn.Module]) -> nn.Module:
    """Call a factory and check that it returns an nn.Module."""
    model = resolve_factory(spec)()
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"--arch factory returned {type(model).__name__}, not a torch.nn.Module")
    return model
