"""`bastion defend generation-cap LM --data PROMPTS --cap N` (dispatched by `bastion.cli.llm`, which opens the LM
target): a lower generation cap re-measured against over-generation and natural prompts."""

from __future__ import annotations

from typing import Any

from bastion.attacks.availability.lm_cli import COMMON, _common, _prompts, read_prompts
from bastion.attacks.llm.probe_options import integer, parse_args
from bastion.core.results import Result
from bastion.defenses.availability.request_limits import GenerationCap

CAP = COMMON | {"cap", "library"}


def run_generation_cap_cli(target: Any, args: list[str], seed: int) -> Result:
    """`bastion defend generation-cap LM --data PROMPTS --cap N [--max-new-tokens BASE]`: over-generation and
    natural prompts measured at the base cap and at the lower one (what the cap saves, what it truncates)."""
    opts = parse_args("generation-cap", args, CAP)
    library = read_prompts(opts["library"], "--library") if "library" in opts else None
    common = _common(target, opts, "chat", seed)
    defense = GenerationCap(cap=integer(opts, "cap", max(1, common["max_new_tokens"] // 4)),
                            base_cap=common["max_new_tokens"], mode=common["mode"], library=library,
                            n_bootstrap=common["n_bootstrap"], seed=seed)
    return defense.run(target, prompts=_prompts(opts))
