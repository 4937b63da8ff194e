"""Output hardening: Target wrappers that change what a prediction API returns.

`harden(target, "rounding:2")` builds one from a short spec (used by the CLI's `--defense` parameter):
`label_only`, `rounding[:decimals]`, `top_k[:k]`, `reverse_sigmoid[:beta[:gamma]]`,
`poisoning[:epsilon]` and `poisoning_argmax[:epsilon]`.
"""

from __future__ import annotations

from collections.abc import Callable

from bastion.core.errors import ParameterError
from bastion.core.target import Target
from bastion.defenses.postprocess.base import OutputDefense, base_probabilities, unwrap
from bastion.defenses.postprocess.poisoning import PredictionPoisoning, mad_perturb
from bastion.defenses.postprocess.reverse_sigmoid import ReverseSigmoid
from bastion.defenses.postprocess.truncation import LabelOnly, Rounding, TopK

OUTPUT_DEFENSES: dict[str, Callable[..., OutputDefense]] = {
    "label_only": LabelOnly,
    "rounding": lambda t, d=2: Rounding(t, decimals=int(d)),
    "top_k": lambda t, k=1: TopK(t, k=int(k)),
    "reverse_sigmoid": lambda t, beta=1.0, gamma=0.1: ReverseSigmoid(t, float(beta), float(gamma)),
    "poisoning": lambda t, eps=0.5: PredictionPoisoning(t, float(eps)),
    "poisoning_argmax": lambda t, eps=0.5: PredictionPoisoning(t, float(eps), argmax_preserving=True),
}


def harden(target: Target, spec: str) -> OutputDefense:
    """Wrap `target` in the output defense named by `spec` ("name" or "name:arg[:arg]")."""
    name, *args = str(spec).strip().split(":")
    key = name.strip().lower().replace("-", "_")
    if key not in OUTPUT_DEFENSES:
        raise ParameterError(f"unknown output defense {name!r}; known: {', '.join(OUTPUT_DEFENSES)}")
    try:
        return OUTPUT_DEFENSES[key](target, *[a for a in args if a])
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"output defense {spec!r}: {exc}") from None


__all__ = ["OUTPUT_DEFENSES", "LabelOnly", "OutputDefense", "PredictionPoisoning", "ReverseSigmoid", "Rounding",
           "TopK", "base_probabilities", "harden", "mad_perturb", "unwrap"]
