"""Bastion's model metadata (`bastion.json`): class count, input shape, bounds and class names.

It travels inside saved models (TorchScript and torch.export extra files, ONNX metadata_props, the safetensors
header), so that a model can be attacked without restating its shapes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from bastion.core.errors import ModelLoadError

METADATA_KEY = "bastion.json"


@dataclass
class ModelMetadata:
    n_classes: int | None = None
    input_shape: list[int] | None = None
    bounds: list[float] | None = None
    class_names: list[str] = field(default_factory=list)
    name: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes | None) -> ModelMetadata:
        if not text:
            return cls()
        try:
            raw: Any = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"corrupt {METADATA_KEY} in the model file ({exc})") from None
        if not isinstance(raw, dict):
            raise ModelLoadError(f"corrupt {METADATA_KEY} in the model file (not an object)")
        known = {k: raw[k] for k in ("n_classes", "input_shape", "bounds", "class_names", "name") if k in raw}
        return cls(**known)
