"""Knockoff Nets (Orekondy, Schiele & Fritz, "Knockoff Nets: Stealing Functionality of Black-Box Models",
CVPR 2019).

The attacker builds a transfer set by querying images from a large pool and trains a knockoff on the API's
answers (its scores when available). Two sampling strategies:

- random: inputs drawn uniformly from the pool;
- adaptive: the pool's labels act as the arms of a gradient bandit (Sutton & Barto): arm z is pulled with
  probability π(z) = softmax(H)(z), an unused pool input of that label is queried, and the reward (certainty:
  margin between the top two scores; diversity: Σ_k max(0, y_k − ȳ_k) against the recent answers; loss:
  cross-entropy between the answer and the online knockoff's prediction; each standardised with running
  statistics) updates H(z) ← H(z) + α(r − r̄)(1[z] − π). The online knockoff takes one step per batch of
  `query_batch` queries; the copy at each budget is trained afresh on the whole transfer set, as in the paper.

Beyond the paper, `kcenter` (Sener & Savarese's greedy coreset) and `active` (ActiveThief's k-center seed set then
margin-sampling rounds, Pal et al., AAAI 2020) choose the pool inputs as `bastion.attacks.extraction.selection`
describes; `random` always means a uniform draw.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from bastion.attacks.extraction.learning import LearningExtraction
from bastion.attacks.extraction.selection import SAMPLINGS
from bastion.core.data import Dataset
from bastion.core.errors import ParameterError
from bastion.core.registry import register
from bastion.core.target import Target

REWARDS = ("certainty", "diversity", "loss")


class RunningStats:
    """Running mean and standard deviation of each reward component (for standardisation)."""

    def __init__(self, n: int, device: torch.device):
        self.count = torch.zeros((), device=device, dtype=torch.float64)
        self.total = torch.zeros(n, device=device, dtype=torch.float64)
        self.squares = torch.zeros(n, device=device, dtype=torch.float64)

    def update_and_standardise(self, values: torch.Tensor) -> torch.Tensor:
        v = values.double()
        self.count += len(v)
        self.total += v.sum(0)
        self.squares += (v * v).sum(0)
        mean = self.total / self.count
        std = (self.squares / self.count - mean * mean).clamp_min(0).sqrt()
        return ((v - mean) / torch.where(std > 1e-8, std, torch.ones_like(std))).float()


def rewards(answers: torch.Tensor, predicted: torch.Tensor, recent: torch.Tensor) -> torch.Tensor:
    """Certainty, diversity and loss rewards of a batch: shape (n, 3)."""
    top2 = answers.topk(min(2, answers.shape[-1]), dim=-1).values
    certainty = top2[:, 0] - top2[:, -1]
    mean_recent = recent.mean(dim=0) if len(recent) else answers.mean(dim=0)
    diversity = (answers - mean_recent).clamp_min(0).sum(dim=-1)
    loss = -(answers * predicted.clamp_min(1e-12).log()).sum(dim=-1)
    return torch.stack([certainty, diversity, loss], dim=-1)


@register("attacks", "knockoff", family="extraction")
class KnockoffNets(LearningExtraction):
    """Knockoff Nets with random or adaptive (gradient-bandit) sampling of the pool (or kcenter / active).

    Reference: Orekondy, Schiele & Fritz, "Knockoff Nets: Stealing Functionality of Black-Box Models", CVPR 2019.

    Example:
        >>> from bastion.attacks.extraction.knockoff import KnockoffNets
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> pool = load_dataset("pool.npz")
        >>> result = KnockoffNets(budget=1000).run(target, data, pool=pool)
        >>> result.metrics["fidelity"]
    """

    name = "knockoff"

    def __init__(self, budget: int | str | Sequence[int] | None = 1000, *, sampling: str = "random",
                 reward: str = "all", query_batch: int = 32, bandit_lr: float = 0.1, window: int = 100,
                 arch: str | Callable[[], nn.Module] | None = None, soft: bool | str | None = None, epochs: int = 50,
                 batch_size: int = 64, lr: float = 1e-3, min_steps: int = 300, defense: str | None = None,
                 monitor: bool = True, ood_samples: int = 1000, transfer_eps: float = 0.1,
                 transfer_samples: int = 500, seed: int = 0, seed_size: int | None = None):
        super().__init__(budget, arch=arch, soft=soft, epochs=epochs, batch_size=batch_size, lr=lr, min_steps=min_steps,
                         defense=defense, monitor=monitor, ood_samples=ood_samples,
                         transfer_eps=transfer_eps, transfer_samples=transfer_samples, seed=seed)
        if sampling not in ("adaptive", *SAMPLINGS):
            raise ParameterError(f"sampling must be random, adaptive, kcenter or active; got {sampling!r}")
        if seed_size is not None and seed_size < 1:
            raise ParameterError(f"seed_size must be >= 1, got {seed_size}")
        self.seed_size = seed_size
        if reward != "all" and reward not in REWARDS:
            raise ParameterError(f"reward must be all, {', '.join(REWARDS)}; got {reward!r}")
        if query_batch < 1 or bandit_lr <= 0 or window < 1:
            raise ParameterError("query_batch and window must be >= 1 and bandit_lr > 0")
        self.sampling, self.reward, self.query_batch = sampling, reward, int(query_batch)
        self.bandit_lr, self.window = float(bandit_lr), int(window)

    def extract(self, api: Target, pool: Dataset | None, budgets: list[int]) -> Iterator[tuple[int, nn.Module]]:
        assert pool is not None  # run() refuses a missing pool
        if self.sampling == "adaptive":
            yield from self.adaptive(api, pool, budgets)
        else:
            yield from self.sample_and_train(api, pool, budgets, self.sampling)

    def adaptive(self, api: Target, pool: Dataset, budgets: list[int]) -> Iterator[tuple[int, nn.Module]]:
        self.check_pool_size(pool, budgets)
        device, gen = api.device, self.generator()
        soft = self.use_scores(api)
        x_pool = self.pool_tensor(pool, device)
        arms = torch.as_tensor(pool.y, dtype=torch.long)
        n_arms = int(arms.max()) + 1
        shuffled = torch.randperm(len(pool), generator=gen)
        order = shuffled[torch.argsort(arms[shuffled], stable=True)]  # pool indices grouped by arm, random within
        sizes = torch.bincount(arms, minlength=n_arms)
        starts, used = sizes.cumsum(0) - sizes, torch.zeros(n_arms, dtype=torch.long)
        preference, baseline, pulls = torch.zeros(n_arms), torch.zeros(()), torch.zeros(())
        stats = RunningStats(len(REWARDS), device)
        pick = list(range(len(REWARDS))) if self.reward == "all" else [REWARDS.index(self.reward)]
        factory = self.factory(api, x_pool)
        online = factory().to(device)
        optimizer = torch.optim.Adam(online.parameters(), lr=self.lr)
        xs, answers, recent = [], [], torch.zeros(0, api.n_classes, device=device)
        spent = 0
        self.arm_pulls_ = torch.zeros(n_arms, dtype=torch.long)
        for budget in budgets:
            while spent < budget:
                policy = preference.masked_fill(used >= sizes, -float("inf")).softmax(dim=0)
                n_draw = min(self.query_batch, budget - spent)
                drawn = torch.multinomial(policy, n_draw, True, generator=gen).sort().values
                counts = torch.bincount(drawn, minlength=n_arms)
                rank = torch.arange(len(drawn)) - (counts.cumsum(0) - counts)[drawn]
                ok = used[drawn] + rank < sizes[drawn]  # an arm cannot give more inputs than it has left
                drawn = drawn[ok]
                index = order[starts[drawn] + used[drawn] + rank[ok]].to(device)
                used += torch.bincount(drawn, minlength=n_arms)
                self.arm_pulls_ += torch.bincount(drawn, minlength=n_arms)
                xb = x_pool[index]
                yb = self.ask(api, xb, soft)
                probs = yb if soft else nn.functional.one_hot(yb, api.n_classes).float()
                with torch.no_grad():
                    predicted = online.eval()(xb).softmax(dim=-1)
                reward = stats.update_and_standardise(rewards(probs, predicted, recent))[:, pick].sum(-1).cpu()
                advantage = reward - baseline
                chosen = nn.functional.one_hot(drawn, n_arms).float()
                preference += self.bandit_lr * (advantage[:, None] * (chosen - policy[None, :])).mean(dim=0)
                baseline = (baseline * pulls + reward.sum()) / (pulls + len(reward))
                pulls += len(reward)
                self.train(online, xb, yb, soft, device, optimizer=optimizer, epochs=1, min_steps=0)
                xs.append(xb)
                answers.append(yb)
                recent = torch.cat([recent, probs])[-self.window:]
                spent += len(xb)
            yield budget, self.train(factory(), torch.cat(xs), torch.cat(answers), soft, device)

    def extra_metrics(self) -> dict:
        if self.sampling != "adaptive" or not hasattr(self, "arm_pulls_"):
            return {}
        return {"arm_pulls": self.arm_pulls_.tolist()}
