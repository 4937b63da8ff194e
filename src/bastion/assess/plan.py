"""The assessment plan: which threat families run, with which attacks, budgets and epsilons.

A plan is YAML (see docs/plan.md). `default_plan` (in `bastion.assess.defaults`) asks every registered family
for its table, sized to the data, the model's access and the device; a user's plan file is merged onto it key by
key (an `attacks` table replaces the default one) and validated here against the schema each family plug-in
declares: unknown families, keys, attack names or parameters are one-line errors before any work.
"""

from __future__ import annotations

import copy
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bastion.core import registry as core_registry
from bastion.core.errors import ParameterError
from bastion.families import registry
from bastion.families.base import Key

PLAN_VERSION = 1


def family_names() -> tuple[str, ...]:
    """The registered threat families, in plan order (`bastion.families.registry()` is the source of truth)."""
    return tuple(registry())


def schema_of(family: str) -> dict[str, Key]:
    """The plan keys of one family, declared by its plug-in."""
    return registry()[family].schema


TOP_KEYS = {
    "version": Key("int", f"plan format version (currently {PLAN_VERSION})", minimum=1, maximum=PLAN_VERSION),
    "seed": Key("int", "seed of every random choice: the same seed gives the same findings", minimum=0,
                maximum=2**32 - 1),
    "device": Key("str", "auto, cpu, cuda or cuda:N"),
    "families": Key("table", "one table per threat family"),
}
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _norm_key(key: Any, where: str) -> str:
    if not isinstance(key, str):
        raise ParameterError(f"plan: {where}: keys must be strings, got {key!r}")
    return key.strip().replace("-", "_")


def _check_number(value: Any, spec: Key, where: str, integer: bool) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and value != int(value)):
        raise ParameterError(f"plan: {where} must be {'an integer' if integer else 'a number'}, got {value!r}")
    value = int(value) if integer else float(value)
    if spec.minimum is not None and (value <= spec.minimum if spec.exclusive_min else value < spec.minimum):
        raise ParameterError(f"plan: {where} must be {'>' if spec.exclusive_min else '>='} {spec.minimum:g}, "
                             f"got {value!r}")
    if spec.maximum is not None and value > spec.maximum:
        raise ParameterError(f"plan: {where} must be <= {spec.maximum:g}, got {value!r}")
    return value


def _check_value(value: Any, spec: Key, where: str) -> Any:
    """The validated (and normalised) value of one key."""
    kind = spec.kind
    if kind == "bool":
        if not isinstance(value, bool):
            raise ParameterError(f"plan: {where} must be true or false, got {value!r}")
        return value
    if kind in ("int", "float"):
        return _check_number(value, spec, where, kind == "int")
    if kind == "str":
        if not isinstance(value, str) or (spec.choices and value not in spec.choices):
            valid = f"one of {', '.join(spec.choices)}" if spec.choices else "a string"
            raise ParameterError(f"plan: {where} must be {valid}, got {value!r}")
        return value
    if kind in ("floats", "ints", "strs"):
        items = value if isinstance(value, list) else [value]
        if not items and kind != "strs":
            raise ParameterError(f"plan: {where} must not be empty")
        if kind == "strs":
            if not all(isinstance(v, str) for v in items):
                raise ParameterError(f"plan: {where} must be a list of strings")
            return list(items)
        out = [_check_number(v, spec, f"{where}[{i}]", kind == "ints") for i, v in enumerate(items)]
        return sorted(set(out))
    if kind == "attacks":
        return _check_attacks(value, where)
    raise ParameterError(f"plan: {where}: unsupported key kind {kind}")  # pragma: no cover


def _check_attacks(value: Any, where: str) -> dict[str, dict[str, Any]]:
    """`[fgsm, pgd]` or `{pgd: {steps: 20}}` -> {name: {param: value}} (parameter names use underscores)."""
    if isinstance(value, list):
        value = {name: {} for name in value}
    if not isinstance(value, dict):
        raise ParameterError(f"plan: {where} must be a list of names or a table name -> parameters")
    out: dict[str, dict[str, Any]] = {}
    for name, params in value.items():
        if not isinstance(name, str):
            raise ParameterError(f"plan: {where}: attack names must be strings, got {name!r}")
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise ParameterError(f"plan: {where}.{name} must be a table of parameters, got {params!r}")
        out[name] = {_norm_key(k, f"{where}.{name}"): v for k, v in params.items()}
    return out


def check_attack_names(family: str, attacks: dict[str, dict[str, Any]], where: str) -> None:
    """Every name must be registered for the family, every parameter accepted by its constructor."""
    plugin = registry()[family]
    kind, reg_family = plugin.sources[where.rsplit(".", 1)[-1]]
    for name, params in attacks.items():
        try:
            cls = core_registry.get(kind, name, reg_family)
        except Exception as exc:
            raise ParameterError(f"plan: {where}: {exc}") from None
        accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        for param in params:
            if param in plugin.injected:
                raise ParameterError(f"plan: {where}.{name}.{param} is set by the plan itself "
                                     f"(use the family's keys and the top-level seed)")
            if param not in accepted:
                raise ParameterError(f"plan: {where}.{name} has no parameter {param!r}; valid: "
                                     f"{', '.join(p for p in accepted if p not in plugin.injected)}")


@dataclass
class Plan:
    """A validated plan: seed, device and one table per family (all keys present)."""

    seed: int = 0
    device: str = "auto"
    families: dict[str, dict[str, Any]] = field(default_factory=dict)
    version: int = PLAN_VERSION

    def section(self, family: str) -> dict[str, Any]:
        return self.families.get(family, {"enabled": False})

    def enabled(self, family: str) -> bool:
        return bool(self.section(family).get("enabled"))

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "seed": self.seed, "device": self.device,
                "families": copy.deepcopy(self.families)}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def merged(self, override: dict[str, Any] | None) -> Plan:
        """This plan with `override` (a parsed plan file) applied on top, validated."""
        data = self.to_dict()
        for key, value in (override or {}).items():
            key = _norm_key(key, "top level")
            if key not in TOP_KEYS:
                raise ParameterError(f"plan: unknown key {key!r}; valid: {', '.join(TOP_KEYS)}")
            if key != "families":
                data[key] = value
                continue
            if not isinstance(value, dict):
                raise ParameterError("plan: families must be a table of family -> settings")
            for fam, settings in value.items():
                fam = _norm_key(fam, "families")
                if fam not in registry():
                    raise ParameterError(f"plan: unknown family {fam!r}; valid: {', '.join(family_names())}")
                if isinstance(settings, bool):  # `evasion: false` switches a family off
                    settings = {"enabled": settings}
                if not isinstance(settings, dict):
                    raise ParameterError(f"plan: families.{fam} must be a table or true/false")
                target = data["families"].setdefault(fam, {})
                for k, v in settings.items():
                    target[_norm_key(k, f"families.{fam}")] = v
        return Plan.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """Validate a complete plan dictionary (every family table, every key)."""
        if not isinstance(data, dict):
            raise ParameterError("plan: the file must hold a table (mapping) at the top level")
        top = {_norm_key(k, "top level"): v for k, v in data.items()}
        unknown = sorted(set(top) - set(TOP_KEYS))
        if unknown:
            raise ParameterError(f"plan: unknown key {unknown[0]!r}; valid: {', '.join(TOP_KEYS)}")
        version = _check_value(top.get("version", PLAN_VERSION), TOP_KEYS["version"], "version")
        seed = _check_value(top.get("seed", 0), TOP_KEYS["seed"], "seed")
        device = str(top.get("device", "auto")).strip().lower()
        if not _DEVICE.match(device):
            raise ParameterError(f"plan: device must be auto, cpu, cuda or cuda:N, got {top.get('device')!r}")
        families_in = top.get("families") or {}
        if not isinstance(families_in, dict):
            raise ParameterError("plan: families must be a table of family -> settings")
        families: dict[str, dict[str, Any]] = {}
        for fam, settings in families_in.items():
            fam = _norm_key(fam, "families")
            if fam not in registry():
                raise ParameterError(f"plan: unknown family {fam!r}; valid: {', '.join(family_names())}")
            families[fam] = _check_family(fam, settings)
        return cls(seed=seed, device=device, families=families, version=version)


def _check_family(fam: str, settings: Any) -> dict[str, Any]:
    if isinstance(settings, bool):
        settings = {"enabled": settings}
    if not isinstance(settings, dict):
        raise ParameterError(f"plan: families.{fam} must be a table or true/false")
    schema = schema_of(fam)
    out: dict[str, Any] = {}
    for key, value in settings.items():
        key = _norm_key(key, f"families.{fam}")
        if key not in schema:
            raise ParameterError(f"plan: families.{fam} has no key {key!r}; valid: {', '.join(schema)}")
        out[key] = _check_value(value, schema[key], f"families.{fam}.{key}")
    out.setdefault("enabled", True)
    if out["enabled"]:
        missing = [k for k in schema if k not in out]
        if missing:
            raise ParameterError(f"plan: families.{fam} lacks {', '.join(missing)}")
        for key, spec in schema.items():
            if spec.kind == "attacks":
                check_attack_names(fam, out[key], f"families.{fam}.{key}")
    return out


def read_plan_file(path: str | Path) -> dict[str, Any]:
    """Parse a YAML plan file (safe loader) into a dictionary; errors are one line."""
    path = Path(path)
    if not path.is_file():
        raise ParameterError(f"plan file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise ParameterError(f"plan {path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParameterError(f"plan {path}: the file must hold a table (mapping) at the top level")
    return data


def schema_markdown() -> str:
    """The plan keys as Markdown tables (docs/plan.md embeds this text; a test keeps them in sync)."""
    lines = ["| key | kind | meaning |", "|---|---|---|"]
    lines += [f"| `{k}` | {s.kind} | {s.doc} |" for k, s in TOP_KEYS.items()]
    for fam, plugin in registry().items():
        keys = plugin.schema
        lines += ["", f"`families.{fam}`:", "", "| key | kind | meaning |", "|---|---|---|"]
        for key, spec in keys.items():
            extra = f" ({', '.join(spec.choices)})" if spec.choices else ""
            lines.append(f"| `{key}` | {spec.kind} | {spec.doc}{extra} |")
    return "\n".join(lines)
