"""One registry: attacks, defenses and threat families register under a short name used by the CLI and plans."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any, TypeVar

from bastion.core.errors import BastionError

C = TypeVar("C")

KINDS = ("attacks", "defenses", "families")
# Packages whose modules register entries when imported.
_PACKAGES = {
    "attacks": "bastion.attacks",
    "defenses": "bastion.defenses",
    "families": "bastion.families",
}
_entries: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in KINDS}
_loaded: set[str] = set()


def register(kind: str, name: str, family: str | None = None, summary: str = "") -> Callable[[C], C]:
    """Class decorator: register `cls` as `kind/name` (e.g. `@register("attacks", "pgd", family="evasion")`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown registry kind {kind!r}")

    def decorator(cls: C) -> C:
        key = f"{family}/{name}" if family else name
        doc = (getattr(cls, "__doc__", "") or "").strip().splitlines()
        _entries[kind][key] = {
            "name": name,
            "family": family,
            "cls": cls,
            "summary": summary or (doc[0] if doc else ""),
        }
        return cls

    return decorator


def _load(kind: str) -> None:
    """Import every module below the kind's package so that their decorators run (once)."""
    if kind in _loaded:
        return
    _loaded.add(kind)
    try:
        package = importlib.import_module(_PACKAGES[kind])
    except ModuleNotFoundError:
        return
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)


def get(kind: str, name: str, family: str | None = None) -> Any:
    """The class registered as `kind/[family/]name`; a clear error listing the valid names otherwise.

    With a family, an entry whose module is already imported is returned without importing the whole kind (the
    sandboxed worker imports only the module of its attack)."""
    if family and f"{family}/{name}" in _entries[kind]:
        return _entries[kind][f"{family}/{name}"]["cls"]
    _load(kind)
    if family:
        entry = _entries[kind].get(f"{family}/{name}")
    else:
        matches = [e for e in _entries[kind].values() if e["name"] == name]
        entry = matches[0] if len(matches) == 1 else None
    if entry is None:
        valid = sorted(e["name"] for e in _entries[kind].values() if not family or e["family"] == family)
        where = f"{family} {kind}" if family else kind
        raise BastionError(f"unknown {where[:-1]} {name!r}; known: {', '.join(valid) or 'none'}")
    return entry["cls"]


def entries(kind: str, family: str | None = None) -> list[dict[str, Any]]:
    """Registered entries of a kind (optionally one family), sorted by family and name."""
    _load(kind)
    rows = [e for e in _entries[kind].values() if family is None or e["family"] == family]
    return sorted(rows, key=lambda e: (e["family"] or "", e["name"]))


def families(kind: str) -> list[str]:
    """The families that have at least one entry of this kind."""
    return sorted({e["family"] for e in entries(kind) if e["family"]})
