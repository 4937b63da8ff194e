"""Bastion's model metadata (`bastion.json`): class count, input shape, bounds and class names.

It travels inside saved models (TorchScript and torch.export extra files, ONNX metadata_props, the safetensors
header), so that a model can be attacked without restating its shapes. The text comes from a file (or an HTTP
endpoint) and is hostile until `check_metadata` has passed every field."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from bastion.core.errors import ModelLoadError

METADATA_KEY = "bastion.json"
MAX_CLASSES = 1_000_000
MAX_INPUT_DIMS = 8
MAX_INPUT_ELEMENTS = 2**28
MAX_METADATA_BYTES = 1024 * 1024


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def check_n_classes(value: Any, where: str) -> int:
    if not _is_int(value) or not 1 <= value <= MAX_CLASSES:
        raise ModelLoadError(f"{where}: n_classes must be a whole number in [1, {MAX_CLASSES}], got {value!r:.60}")
    return value


def check_input_shape(value: Any, where: str) -> list[int]:
    if (not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_INPUT_DIMS
            or not all(_is_int(d) and d >= 1 for d in value)):
        raise ModelLoadError(f"{where}: input_shape must be a list of 1 to {MAX_INPUT_DIMS} positive whole numbers, "
                             f"got {value!r:.60}")
    if math.prod(value) > MAX_INPUT_ELEMENTS:
        raise ModelLoadError(f"{where}: input_shape {list(value)} has more than {MAX_INPUT_ELEMENTS} elements")
    return list(value)


def check_bounds(value: Any, where: str) -> list[float]:
    if (not isinstance(value, (list, tuple)) or len(value) != 2 or not all(_is_number(v) for v in value)
            or not value[0] < value[1]):
        raise ModelLoadError(f"{where}: bounds must be two finite numbers [low, high] with low < high, "
                             f"got {value!r:.60}")
    return [float(value[0]), float(value[1])]


def check_metadata(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """The known fields of a metadata object, each checked for type and range (a ModelLoadError names the field)."""
    out: dict[str, Any] = {}
    if raw.get("n_classes") is not None:
        out["n_classes"] = check_n_classes(raw["n_classes"], where)
    if raw.get("input_shape") is not None:
        out["input_shape"] = check_input_shape(raw["input_shape"], where)
    if raw.get("bounds") is not None:
        out["bounds"] = check_bounds(raw["bounds"], where)
    if "class_names" in raw:
        names = raw["class_names"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) > MAX_CLASSES:
            raise ModelLoadError(f"{where}: class_names must be a list of strings")
        out["class_names"] = names
    if "name" in raw:
        if not isinstance(raw["name"], str):
            raise ModelLoadError(f"{where}: name must be a string, got {raw['name']!r:.60}")
        out["name"] = raw["name"]
    return out


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
        if not isinstance(text, (str, bytes)):
            raise ModelLoadError(f"corrupt {METADATA_KEY} in the model file (not a JSON string)")
        if len(text) > MAX_METADATA_BYTES:
            raise ModelLoadError(f"corrupt {METADATA_KEY} in the model file (larger than {MAX_METADATA_BYTES} bytes)")
        try:
            raw: Any = json.loads(text)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ModelLoadError(f"corrupt {METADATA_KEY} in the model file ({exc})") from None
        if not isinstance(raw, dict):
            raise ModelLoadError(f"corrupt {METADATA_KEY} in the model file (not an object)")
        return cls(**check_metadata(raw, f"{METADATA_KEY} in the model file"))
