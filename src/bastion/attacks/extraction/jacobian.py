"""Jacobian-based dataset augmentation (Papernot, McDaniel, Goodfellow, Jha, Celik & Swami, "Practical Black-Box
Attacks against Machine Learning", AsiaCCS 2017).

Starting from a small seed set S₀ drawn from the pool and labelled by the API, each substitute round trains the
substitute F on S_ρ and adds synthetic points x + λ_ρ·sign(∇ₓF(x)[Õ(x)]) for x ∈ S_ρ, where Õ(x) is the API's
label and λ_ρ = λ·(−1)^⌊ρ/τ⌋ (the periodic step size of Section 6). Each round at most doubles the set; under a
budget, the points to augment are a random subset of S_ρ (the paper's reservoir sampling), so that every budget
is spent exactly. The copy at each budget is trained afresh on everything queried so far.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from bastion.attacks.extraction.learning import LearningExtraction
from bastion.core.data import Dataset
from bastion.core.errors import ParameterError
from bastion.core.registry import register
from bastion.core.target import Target


def jacobian_step(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, step: float,
                  bounds: tuple[float, float]) -> torch.Tensor:
    """x + step·sign(∂F(x)[label]/∂x), clipped to the bounds (one batched backward pass)."""
    model.eval()
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        chosen = model(x).gather(1, labels[:, None]).sum()
        (grad,) = torch.autograd.grad(chosen, x)
    return (x.detach() + step * grad.sign()).clamp(*bounds)


@register("attacks", "jacobian", family="extraction")
class JacobianAugmentation(LearningExtraction):
    """Papernot's substitute training with Jacobian-based dataset augmentation.

    Reference: Papernot et al., "Practical Black-Box Attacks against Machine Learning", AsiaCCS 2017.

    Example:
        >>> from bastion.attacks.extraction.jacobian import JacobianAugmentation
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> pool = load_dataset("pool.npz")
        >>> result = JacobianAugmentation(budget=1000).run(target, data, pool=pool)
        >>> result.metrics["fidelity"]
    """

    name = "jacobian"

    def __init__(self, budget: int | str | Sequence[int] | None = 1000, *, n_seed: int | None = None,
                 step: float = 0.1, tau: int = 3, round_epochs: int = 10,
                 arch: str | Callable[[], nn.Module] | None = None, soft: bool | str | None = None, epochs: int = 50,
                 batch_size: int = 64, lr: float = 1e-3, min_steps: int = 300, defense: str | None = None,
                 monitor: bool = True, ood_samples: int = 1000, transfer_eps: float = 0.1,
                 transfer_samples: int = 500, seed: int = 0):
        super().__init__(budget, arch=arch, soft=soft, epochs=epochs, batch_size=batch_size, lr=lr, min_steps=min_steps,
                         defense=defense, monitor=monitor, ood_samples=ood_samples,
                         transfer_eps=transfer_eps, transfer_samples=transfer_samples, seed=seed)
        if n_seed is not None and n_seed < 1:
            raise ParameterError("n_seed must be at least 1")
        if step <= 0 or tau < 1 or round_epochs < 1:
            raise ParameterError("step must be positive, tau and round_epochs at least 1")
        self.n_seed, self.step, self.tau, self.round_epochs = n_seed, float(step), int(tau), int(round_epochs)

    def extract(self, api: Target, pool: Dataset | None, budgets: list[int]) -> Iterator[tuple[int, nn.Module]]:
        assert pool is not None  # run() refuses a missing pool
        device, gen = api.device, self.generator()
        soft = self.use_scores(api)
        x_pool = self.pool_tensor(pool, device)
        n_seed = min(self.n_seed or 10 * api.n_classes, len(pool), budgets[0])
        x = x_pool[torch.randperm(len(pool), generator=gen)[:n_seed].to(device)]
        answers = self.ask(api, x, soft)
        factory = self.factory(api, x_pool)
        substitute, rounds = factory(), 0
        lo, hi = api.bounds
        for budget in budgets:
            while len(x) < budget:
                substitute = self.train(substitute, x, answers, soft, device, epochs=self.round_epochs)
                parents = torch.randperm(len(x), generator=gen)[:budget - len(x)].to(device)
                labels = answers[parents].argmax(-1) if soft else answers[parents]
                sign = -1.0 if (rounds // self.tau) % 2 else 1.0
                new = jacobian_step(substitute, x[parents], labels, sign * self.step * (hi - lo), (lo, hi))
                x, answers = torch.cat([x, new]), torch.cat([answers, self.ask(api, new, soft)])
                rounds += 1
            yield budget, self.train(factory(), x, answers, soft, device)
        self.rounds_ = rounds

    def extra_metrics(self) -> dict:
        return {"augmentation_rounds": getattr(self, "rounds_", 0)}
