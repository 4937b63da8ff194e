"""DeepSloth: slowdown attack on early-exit networks (Hong et al., "A Panda? No, It's a Sloth: Slowdown Attacks on
Adaptive Multi-Exit Neural Network Inference", ICLR 2021).

The attack drives every internal classifier's softmax towards the uniform distribution, so that no early exit is
confident and each input runs to the full depth: PGD that minimises Σ_k KL(u ‖ softmax(f_k(x'))) over the early
exits k (u uniform), under an Lp budget `eps` around the natural input and within the model's input bounds.

The model must expose its exit policy: `exit_logits(x) -> list[Tensor]` (every exit, shallowest first; the last
is the final classifier) and `exit_depth(x) -> Tensor` (index of the exit taken), as the demo early-exit CNN
(`bastion.demo.early_exit`) does in eager and TorchScript form.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bastion.attacks.availability import measure
from bastion.attacks.availability.base import AvailabilityAttack, check_budget, refuse_huge_eps
from bastion.attacks.availability.sponge import constrain
from bastion.attacks.evasion.norms import ascent_step
from bastion.core.errors import ParameterError
from bastion.core.registry import register
from bastion.core.target import Access, Target


def exit_model(target: Target) -> nn.Module:
    """The loaded module with an exit policy (`exit_logits`, `exit_depth`), or a clear error."""
    from bastion.models.intermediate import unwrap

    model = unwrap(measure.white_box_model(target, "early-exit slowdown"))
    if not (hasattr(model, "exit_logits") and hasattr(model, "exit_depth")):
        raise ParameterError("the model has no early exits Bastion can read: it needs exit_logits(x) and "
                             "exit_depth(x) methods (see bastion.demo.early_exit)")
    return model


def uniform_kl(logits: torch.Tensor) -> torch.Tensor:
    """KL(u ‖ softmax(logits)) per input, u uniform over classes: −log C − mean_c log p_c."""
    log_p = F.log_softmax(logits, dim=-1)
    return -np.log(logits.shape[-1]) - log_p.mean(dim=-1)


@register("attacks", "early-exit", family="availability")
class EarlyExitSlowdown(AvailabilityAttack):
    """DeepSloth slowdown: PGD pushing every early exit towards uniform confidence so inputs reach full depth.

    `eps` budget in norm `norm` (input units), `steps` PGD steps of size `step` × eps (Hong et al., ICLR 2021).

    Example:
        >>> result = EarlyExitSlowdown(eps=0.2, steps=50).run(target, data)  # doctest: +SKIP
    """

    name = "early-exit"
    requires = Access.GRADIENTS

    def __init__(self, *, eps: float = 0.2, norm: str = "linf", steps: int = 50, step: float = 0.1,
                 repeats: int = 5, warmup: int = 3, threads: int = 1, energy: bool = True,
                 n_bootstrap: int = 1000, seed: int = 0):
        super().__init__(repeats=repeats, warmup=warmup, threads=threads, energy=energy, n_bootstrap=n_bootstrap,
                         seed=seed)
        eps_checked, self.norm = check_budget(eps, norm)
        if eps_checked is None:
            raise ParameterError("early-exit needs a budget eps")
        self.eps = eps_checked
        if steps < 1 or not 0 < step <= 1:
            raise ParameterError("steps must be >= 1 and step in (0, 1]")
        self.steps, self.step = int(steps), float(step)

    def craft(self, target: Target, x: torch.Tensor) -> torch.Tensor:
        refuse_huge_eps(self.eps, self.norm, target)
        model = exit_model(target)
        size = torch.full((len(x),), self.step * self.eps, device=x.device)
        adv, best = x.clone(), x.clone()
        best_loss = torch.full((len(x),), float("inf"), device=x.device)
        for _ in range(self.steps):
            adv.requires_grad_(True)
            target.counter.charge(len(adv))
            exits = model.exit_logits(adv)[:-1]
            loss = torch.stack([uniform_kl(e) for e in exits]).sum(0)
            grad, = torch.autograd.grad(loss.sum(), adv)
            with torch.no_grad():
                better = loss.detach() < best_loss
                best[better], best_loss[better] = adv.detach()[better], loss.detach()[better]
                adv = constrain(adv.detach() + ascent_step(-grad, size, self.norm), x, self.eps, self.norm, target)
        with torch.no_grad():
            loss = torch.stack([uniform_kl(e) for e in model.exit_logits(adv)[:-1]]).sum(0)
            better = loss < best_loss
            best[better] = adv[better]
        return best

    def extra_dimensions(self, target: Target, natural: torch.Tensor, attack: torch.Tensor) -> list[dict[str, Any]]:
        model = exit_model(target)
        with torch.no_grad():
            target.counter.charge(2 * len(natural))
            self.depth_ = (model.exit_depth(natural).cpu().numpy(), model.exit_depth(attack).cpu().numpy())
            n_exits = len(model.exit_logits(natural[:1]))
        self.n_exits_ = n_exits
        nat, att = (d + 1.0 for d in self.depth_)  # exits evaluated per input
        return [self._compare("depth", att, nat)]

    def details(self) -> dict[str, Any]:
        nat, att = self.depth_
        full = self.n_exits_ - 1
        fractions = {"natural_fraction": float((nat == full).mean()), "attack_fraction": float((att == full).mean())}
        histogram = {k: [int((d == i).sum()) for i in range(self.n_exits_)] for k, d in (("natural", nat),
                                                                                        ("attack", att))}
        reached = fractions["attack_fraction"] >= 0.5 and fractions["attack_fraction"] > fractions["natural_fraction"]
        return {"exits": self.n_exits_, "exit_histogram": histogram,
                "caps": [{"name": "full depth", "reached": reached, **fractions}]}
