"""Constructor parameters of attacks and defenses: as JSON values (scikit-learn's `get_params` convention), parsed
from `--name value` text, and checked against the constructor when an object is built from them."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from bastion.core.errors import ParameterError


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


def parse_value(text: str) -> Any:
    """'3' -> 3, '0.5' -> 0.5, 'true' -> True, 'none' -> None, 'a,b' -> list of parsed values, else the text."""
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered in ("none", "null"):
        return None
    if "," in text:
        return [parse_value(part) for part in text.split(",") if part.strip()]
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_extra(args: list[str]) -> dict[str, Any]:
    """Turn ['--step-size', '0.1', '--targeted', '--eps=0.1,0.2'] into {'step_size': 0.1, 'targeted': True, ...}."""
    params: dict[str, Any] = {}
    i = 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--") or len(token) < 3:
            raise ParameterError(f"unexpected argument {token!r}; parameters look like --name value")
        key, sep, value = token[2:].partition("=")
        key = key.replace("-", "_")
        if not sep:
            if i + 1 < len(args) and not (args[i + 1].startswith("--") and len(args[i + 1]) > 2):
                value, i = args[i + 1], i + 1
            else:
                value = "true"
        params[key] = parse_value(value)
        i += 1
    return params


def construct(cls: type, params: dict[str, Any], what: str) -> Any:
    """Instantiate `cls(**params)`, naming the valid parameters when one is unknown."""
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        valid = ", ".join("--" + p.replace("_", "-") for p in accepted) or "none"
        raise ParameterError(f"{what} has no parameter {', '.join('--' + u.replace('_', '-') for u in unknown)}; "
                             f"valid: {valid}")
    try:
        return cls(**params)
    except TypeError as exc:
        raise ParameterError(f"{what}: {exc}") from None


def accepts(cls: type, name: str) -> bool:
    """Whether `cls.__init__` takes a parameter called `name`."""
    return name in inspect.signature(cls.__init__).parameters
