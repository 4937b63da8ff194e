"""Which pool inputs an extraction attacker queries: uniform, k-center coreset, or active rounds.

- `random`: a uniformly random order of the pool.
- `kcenter`: the greedy k-center coreset of Sener & Savarese ("Active Learning for Convolutional Neural Networks:
  A Core-Set Approach", ICLR 2018) in the pool's standardised input space: each query is the pool input farthest
  from every input queried so far, so that b queries cover the pool with the smallest radius the greedy 2-approximation
  finds. Greedy picks are nested, so the first b of them are the coreset for budget b.
- `active`: the active-learning loop of ActiveThief (Pal, Gupta, Shukla, Kanade, Shevade & Ganapathy, "ActiveThief:
  Model Extraction Using Active Learning and Unannotated Public Data", AAAI 2020): a k-center seed set, then rounds
  in which the copy trained on everything queried so far picks the unqueried pool inputs it is least sure of, by
  margin between its two most probable classes (margin sampling, Scheffer, Decomain & Wrobel, "Active Hidden Markov
  Models for Information Extraction", IDA 2001), and the copy is retrained afresh on the enlarged transfer set.
"""

from __future__ import annotations

import math

import torch
from torch import nn

SAMPLINGS = ("random", "kcenter", "active")
GROWTH = 4  # an active round at most quadruples the transfer set
SEED_PER_CLASS = 20  # default size of the k-center seed set of active sampling, per class


def standardised(x: torch.Tensor) -> torch.Tensor:
    """Flattened inputs scaled feature-wise by the pool's own statistics (the attacker knows its pool)."""
    flat = x.reshape(len(x), -1).float()
    return (flat - flat.mean(dim=0)) / flat.std(dim=0).clamp_min(1e-6)


@torch.no_grad()
def kcenter_greedy(features: torch.Tensor, n: int, chosen: torch.Tensor | None = None,
                   generator: torch.Generator | None = None, chunk: int = 4096) -> torch.Tensor:
    """Indices of `n` new centers, in pick order: each is the point farthest from all centers so far.

    `chosen` (indices) are the centers already held; without them the first center is a random point. The
    distance of every point to its nearest center is kept and updated once per pick (batched over the points).
    """
    n_points = len(features)
    nearest = torch.full((n_points,), float("inf"), device=features.device)
    if chosen is not None and len(chosen):
        for centers in features[chosen].split(chunk):
            nearest = torch.minimum(nearest, torch.cdist(features, centers).min(dim=1).values)
        nearest[chosen] = -1.0
    picks = torch.empty(n, dtype=torch.long, device=features.device)
    for i in range(n):
        if i == 0 and not torch.isfinite(nearest).any():
            pick = torch.randint(n_points, (1,), generator=generator).to(features.device)[0]
        else:
            pick = nearest.argmax()
        picks[i] = pick
        nearest = torch.minimum(nearest, (features - features[pick]).pow(2).sum(dim=1).sqrt())
        nearest[pick] = -1.0  # never picked twice, even among duplicates
    return picks


@torch.no_grad()
def least_margin(model: nn.Module, x: torch.Tensor, queried: torch.Tensor, n: int,
                 batch_size: int = 4096) -> torch.Tensor:
    """Indices of the `n` unqueried inputs with the smallest top-1 minus top-2 probability of `model`."""
    model.eval()
    probs = torch.cat([model(chunk).softmax(dim=-1) for chunk in x.split(batch_size)])
    top2 = probs.topk(min(2, probs.shape[-1]), dim=-1).values
    margin = top2[:, 0] - top2[:, -1]
    margin[queried] = float("inf")
    return margin.topk(n, largest=False).indices


def active_rounds(budgets: list[int], n_classes: int, seed_size: int | None = None) -> list[int]:
    """Sizes of the transfer set after each round: the budgets, with rounds inserted so that each at most
    quadruples the set, starting from a seed of `seed_size` (default 20 per class, at most the first budget)."""
    seed = min(budgets[0], seed_size or SEED_PER_CLASS * n_classes)
    rounds = [seed]
    for budget in budgets:
        inserted = []
        step = budget
        while math.ceil(step / GROWTH) > rounds[-1]:
            step = math.ceil(step / GROWTH)
            inserted.append(step)
        rounds += sorted(inserted) + ([budget] if budget > rounds[-1] else [])
    return rounds
