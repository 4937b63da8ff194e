"""Does a class's own clean data rely on the region of its reverse-engineered trigger?

A confirmation of a class that a trigger scan flags (Bastion's own test; the idea that the clean image with the
trigger area removed must keep its label is TABOR's R3 term, Guo et al., arXiv:1908.01763, used there as a
regulariser while reverse-engineering on other classes' inputs). A backdoor trigger is a shortcut learned from
inputs of other classes relabelled to the target: the target's genuine inputs never carried it, so their label
does not rest on the trigger's region, and a backdoored model leans to the target whatever fills that region.
A naturally easy class's small trigger sits on the class's own evidence (a stroke of a digit, an edge of an
object): fill that region with content of other classes and its inputs lose their label. The statistic is the
fraction of the class's correctly classified clean inputs that keep their label when the trigger's mask region
is filled with the same region of `draws` random clean inputs of other classes; the class is confirmed when
most keep it (> 1/2, a majority, fixed before any measurement as ET's 1/2 is). It is measured in
docs/benchmarks/poisoning.md §7.6: it settles a digits class that the null flags on a clean model, and it does
not settle Fashion-MNIST's bag, whose evidence is spread over the whole object.
"""

from __future__ import annotations

import torch

from bastion.core.training import predict

THRESHOLD = 0.5  # a majority of the class's own inputs keep their label


@torch.no_grad()
def region_keep(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cls: int, mask: torch.Tensor, *,
                draws: int = 8, max_inputs: int = 256, seed: int = 0, pred: torch.Tensor | None = None) -> float:
    """Fraction of class `cls`'s correctly classified inputs of `x` (at most `max_inputs`) still classified
    `cls` when the region of `mask` (shape of one input, channels shared) is filled from `draws` random inputs
    of other classes each; NaN when the class has no correctly classified input or no other class is present.
    `pred` (the model's labels for `x`) saves a pass when several classes are tested."""
    pred = predict(model, x) if pred is None else pred
    own = x[(y == cls) & (pred == cls)][:max_inputs]
    others = x[y != cls]
    if not len(own) or not len(others):
        return float("nan")
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(others), (len(own), draws), generator=gen).to(x.device)
    filled = ((1 - mask) * own[:, None] + mask * others[pick]).flatten(0, 1)
    kept = predict(model, filled) == cls
    return float(kept.float().mean())
