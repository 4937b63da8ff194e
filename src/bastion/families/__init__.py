"""Threat-family plug-ins: one module per family (evasion, privacy, extraction, backdoor, supply_chain).

Each module registers a `Family` subclass (`bastion.families.base`) with `@register("families", NAME)`; the plan
schema, the default plan, the jobs, the judging, the mitigations and the report's figures of `bastion assess` are
all read from `registry()`. Adding a family is adding one module here (docs/architecture.md shows one).
"""

from __future__ import annotations

from bastion.families.base import Family, get_family, judged, registry

__all__ = ["Family", "get_family", "judged", "registry"]
