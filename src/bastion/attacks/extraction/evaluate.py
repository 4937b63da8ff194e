"""How good a stolen copy is: fidelity (in and out of distribution), accuracy, and transfer of adversarial examples.

Fidelity is agreement with the victim's labels on the evaluation data (in distribution) and on inputs drawn
uniformly from the input bounds (out of distribution, Tramèr et al. 2016). Adversarial examples are crafted with
PGD on the copy (white-box) and count as transferred when the victim, which classified the clean input
correctly, misclassifies them. Evaluation queries go through an uncounted view of the victim: they are the tool's
measurement, not the attacker's spend, and are reported separately.
"""

from __future__ import annotations

import torch
from torch import nn

from bastion.attacks.evasion.gradient import PGD
from bastion.core.data import Dataset
from bastion.core.target import QueryCounter, Target, TargetView, TorchTarget
from bastion.core.training import predict


def uncounted(target: Target) -> Target:
    """A view of `target` with its own, unlimited counter."""
    return TargetView(target, name=target.name, counter=QueryCounter())


class Evaluation:
    """Victim answers on the evaluation data, computed once, against which each copy is scored."""

    def __init__(self, victim: Target, data: Dataset, ood_samples: int = 1000, transfer_eps: float = 0.1,
                 transfer_samples: int = 500, transfer_steps: int = 10, seed: int = 0):
        self.victim = uncounted(victim)
        device = victim.device
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.as_tensor(data.x, dtype=torch.float32, device=device)
        self.y = torch.as_tensor(data.y, dtype=torch.long, device=device)
        lo, hi = victim.bounds
        self.x_ood = (lo + (hi - lo) * torch.rand(ood_samples, *victim.input_shape, generator=gen)).to(device)
        self.victim_labels = self.victim.labels(self.x)
        self.victim_ood = self.victim.labels(self.x_ood) if ood_samples else self.victim_labels[:0]
        correct = (self.victim_labels == self.y).nonzero().flatten()[:transfer_samples]
        self.x_transfer, self.y_transfer = self.x[correct], self.y[correct]
        self.eps = transfer_eps * (hi - lo)
        self.steps = transfer_steps
        self.seed = seed
        self.victim_accuracy = float((self.victim_labels == self.y).float().mean())

    @property
    def queries(self) -> int:
        """Victim queries spent on measurement (not charged to the attacker)."""
        return self.victim.queries

    def accuracy_of(self, api: Target) -> float:
        """Accuracy of another API (e.g. the hardened one) on the evaluation data, without charging it."""
        return float((uncounted(api).labels(self.x) == self.y).float().mean())

    def score(self, model: nn.Module) -> dict[str, float]:
        """fidelity, fidelity_ood, accuracy and transfer_success of one copy."""
        model = model.to(self.x.device).eval()
        copy_labels = predict(model, self.x)
        row = {
            "fidelity": float((copy_labels == self.victim_labels).float().mean()),
            "fidelity_ood": float((predict(model, self.x_ood) == self.victim_ood).float().mean())
            if len(self.x_ood) else float("nan"),
            "accuracy": float((copy_labels == self.y).float().mean()),
        }
        row["transfer_success"] = self.transfer(model)
        return row

    def transfer(self, model: nn.Module) -> float:
        """Fraction of PGD examples crafted on the copy that the victim misclassifies."""
        if len(self.x_transfer) == 0 or self.eps <= 0:
            return float("nan")
        copy = TorchTarget(model, self.victim.input_shape, self.victim.n_classes, self.victim.bounds,
                           self.x.device, name="stolen copy")
        pgd = PGD(eps=self.eps, steps=self.steps, seed=self.seed)
        x_adv = pgd.perturb(copy, self.x_transfer, self.y_transfer, self.eps)
        return float((self.victim.labels(x_adv) != self.y_transfer).float().mean())
