"""Constructor parameters of attacks and defenses as JSON values (scikit-learn's `get_params` convention)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any


def json_safe(value: Any) -> Any:
    """A parameter value as JSON: a function or class becomes `module:qualname`, a path its string, a model or
    other object `<TypeName>`; numbers, strings, booleans, None and lists/dicts of them pass through."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if inspect.isfunction(value) or inspect.isclass(value) or inspect.ismethod(value):
        return f"{getattr(value, '__module__', '?')}:{getattr(value, '__qualname__', repr(value))}"
    return f"<{type(value).__name__}>"


def constructor_params(obj: object) -> dict[str, Any]:
    """The values of `obj`'s constructor parameters, stored under the same attribute names, as JSON values."""
    names = [p for p in inspect.signature(type(obj).__init__).parameters if p not in ("self", "args", "kwargs")]
    return {n: json_safe(getattr(obj, n)) for n in names if hasattr(obj, n)}
