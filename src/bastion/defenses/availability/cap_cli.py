"""`bastion defend generation-cap|generation-deadline LM --data PROMPTS ...` (dispatched by `bastion.cli.llm`, which
opens the LM target): a lower generation cap, or an enforced deadline, re-measured against over-generation and
natural prompts."""

from __future__ import annotations

import math
from typing import Any

from bastion.attacks.availability.lm_cli import COMMON, common_options, natural_prompts, read_prompts
from bastion.attacks.llm.probe_options import integer, parse_args
from bastion.core.errors import ParameterError
from bastion.core.results import Result
from bastion.defenses.availability.request_limits import GenerationCap, GenerationDeadline

CAP = COMMON | {"cap", "library"}
DEADLINE = COMMON | {"deadline-s", "deadline-x", "library", "select"}


def _seconds(opts: dict[str, str], key: str) -> float | None:
    if key not in opts:
        return None
    try:
        value = float(opts[key])
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ParameterError(f"--{key} must be a number of seconds, got {opts[key]!r}")
    return value


def run_generation_cap_cli(target: Any, args: list[str], seed: int) -> Result:
    """`bastion defend generation-cap LM --data PROMPTS --cap N [--max-new-tokens BASE]`: over-generation and
    natural prompts measured at the base cap and at the lower one (what the cap saves, what it truncates)."""
    opts = parse_args("generation-cap", args, CAP)
    library = read_prompts(opts["library"], "--library") if "library" in opts else None
    common = common_options(target, opts, "chat", seed)
    defense = GenerationCap(cap=integer(opts, "cap", max(1, common["max_new_tokens"] // 4)),
                            base_cap=common["max_new_tokens"], mode=common["mode"], library=library,
                            n_bootstrap=common["n_bootstrap"], seed=seed)
    return defense.run(target, prompts=natural_prompts(opts))


def run_generation_deadline_cli(target: Any, args: list[str], seed: int) -> Result:
    """`bastion defend generation-deadline LM --data PROMPTS [--deadline-s S | --deadline-x X] [--select K]`:
    over-generation and natural prompts measured without and with generation stopped at the deadline (default
    2 × the natural p99)."""
    opts = parse_args("generation-deadline", args, DEADLINE)
    library = read_prompts(opts["library"], "--library") if "library" in opts else None
    common = common_options(target, opts, "chat", seed)
    x = _seconds(opts, "deadline-x")
    defense = GenerationDeadline(deadline_s=_seconds(opts, "deadline-s"), deadline_x=2.0 if x is None else x,
                                 max_new_tokens=common["max_new_tokens"], mode=common["mode"], library=library,
                                 select=integer(opts, "select", 0), n_bootstrap=common["n_bootstrap"], seed=seed)
    return defense.run(target, prompts=natural_prompts(opts))
