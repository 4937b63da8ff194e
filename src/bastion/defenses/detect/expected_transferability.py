"""Expected transferability (ET): does a trigger reverse-engineered on ONE clean image carry over to the others?

Xiang, Miller & Kesidis, "Post-Training Detection of Backdoor Attacks for Two-Class and Multi-Attack Scenarios"
(ICLR 2022, arXiv:2201.08474). For a putative target class t, a minimal backdoor pattern is reverse-engineered on
a single clean image x_n of another class so that x_n is classified t; the pattern's transferability p_n is the
fraction of the other clean images (of classes other than t) that the same pattern sends to t; ET is the mean of
p_n over the source images. A backdoor is a pattern that sends most inputs to t, so the minimal pattern of one
image tends to be (part of) it and transfers; for a class that is no target, a per-image minimal pattern is
specific to its image and transfers to few others. The paper derives the data-independent threshold 1/2: t is
detected as a backdoor target when ET > 1/2. Because the reverse-engineering is random, each image's pattern is
estimated repeatedly from random starts and p_n counts the other images sent to t by at least one of the
patterns so far; the repetitions stop once p_n has not grown for `patience` consecutive rounds (the paper's
stopping rule, its τ). The pattern here has Neural Cleanse's form (the paper's patch-replacement
reverse-engineering): x' = (1 − m)·x + m·p, minimising cross-entropy to t + λ·|m|₁ with λ switched on once x_n
is classified t and adapted as in Neural Cleanse; the smallest mask that still sends x_n to t is kept.
`min_prob` > 0 (not in the paper) makes that one-image trigger reach softmax probability `min_prob` on x_n
instead of a bare crossing: on small models the paper's minimal crossing is mostly an adversarial pattern that
transfers little for any class, backdoor target or not (docs/benchmarks/poisoning.md §7.5 measures both).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bastion.defenses.detect.trigger_opt import CostSchedule, decode

THRESHOLD = 0.5  # the paper's constant detection threshold on ET


def reverse_each(model: torch.nn.Module, x: torch.Tensor, target: int, bounds: tuple[float, float], *,
                 steps: int, lr: float, init_cost: float, cost_multiplier: float, patience: int,
                 gen: torch.Generator, min_prob: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One mask and pattern per input of `x` (each optimised on its own input only, all in one batch) that sends
    that input to `target` with the smallest mask L1 found; an input never sent there keeps its last trigger."""
    u, shape = len(x), x.shape[1:]
    mask_shape = (1, *shape[1:]) if len(shape) == 3 else tuple(shape)
    mask_raw = torch.zeros(u, *mask_shape, device=x.device).requires_grad_(True)
    pattern_raw = (torch.rand(u, *shape, generator=gen) * 2 - 1).to(x.device).requires_grad_(True)
    opt = torch.optim.Adam([mask_raw, pattern_raw], lr=lr, betas=(0.5, 0.9))
    labels = torch.full((u,), int(target), dtype=torch.long, device=x.device)
    schedule = CostSchedule(u, init_cost, cost_multiplier, patience, x.device)
    best_norm = torch.full((u,), float("inf"), device=x.device)
    best_mask, best_pattern = torch.zeros(u, *mask_shape, device=x.device), torch.zeros_like(x)
    for _ in range(steps):
        mask, pattern = decode(mask_raw, pattern_raw, bounds)
        logits = model((1 - mask) * x + mask * pattern)
        norm = mask.flatten(1).sum(1)
        loss = F.cross_entropy(logits, labels, reduction="none") + schedule.cost * norm
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        with torch.no_grad():
            hit = (logits.argmax(-1) == labels) & (F.softmax(logits, -1)[:, target] >= min_prob)
            better = hit & (norm < best_norm)
            best_norm = torch.where(better, norm, best_norm)
            best_mask[better], best_pattern[better] = mask[better], pattern[better]
        schedule.update(hit)
    with torch.no_grad():
        missing = torch.isinf(best_norm)
        last_mask, last_pattern = decode(mask_raw, pattern_raw, bounds)
        best_mask[missing], best_pattern[missing] = last_mask[missing], last_pattern[missing]
    return best_mask.detach(), best_pattern.detach()


@torch.no_grad()
def sends_to(model: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor,
             target: int) -> torch.Tensor:
    """hits[u, j]: trigger u applied to image j is classified `target`; shape (len(mask), len(x))."""
    stamped = (1 - mask[:, None]) * x[None] + (mask * pattern)[:, None]
    pred = torch.cat([model(chunk).argmax(-1) for chunk in stamped.reshape(-1, *x.shape[1:]).split(4096)])
    return (pred.view(len(mask), len(x)) == target).cpu()


def eligible(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, target: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the clean images of classes other than `target` that the model classifies correctly, and their
    softmax confidence."""
    with torch.no_grad():
        prob = torch.cat([F.softmax(model(c), -1) for c in x.split(4096)])
    conf, pred = prob.max(-1)
    idx = torch.nonzero((pred == y) & (y != target)).flatten()
    return idx, conf[idx]


def source_images(conf: torch.Tensor, n_images: int, min_confidence: float, gen: torch.Generator) -> torch.Tensor:
    """Positions (into `conf`) of up to `n_images` source images drawn at random among those with confidence ≥
    `min_confidence` (the paper keeps confidently correct images; when too few pass, the most confident of the
    others fill up)."""
    conf = conf.cpu()
    high = torch.nonzero(conf >= min_confidence).flatten()
    chosen = high[torch.randperm(len(high), generator=gen)[:n_images]]
    if len(chosen) < n_images:
        low = torch.nonzero(conf < min_confidence).flatten()
        chosen = torch.cat([chosen, low[conf[low].argsort(descending=True)][: n_images - len(chosen)]])
    return chosen


def expected_transferability(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, target: int,
                             bounds: tuple[float, float], *, n_images: int = 20, patience: int = 4,
                             max_rounds: int = 16, min_confidence: float = 0.99, steps: int = 200,
                             lr: float = 0.2, init_cost: float = 1e-3, cost_multiplier: float = 1.5,
                             cost_patience: int = 10, seed: int = 0, min_prob: float = 0.0) -> dict[str, object]:
    """ET of class `target` on clean `x`, `y` (module docstring). A source image's pattern is applied to every
    other clean image of the other classes that the model classifies correctly (the expectation over X' of the
    paper's definition, estimated on all the clean images at hand); `p_sources` is the same fraction over the
    other source images only. Returns {"et", "et_sources", "p", "p_sources", "rounds"}. Rounds are computed
    `patience` at a time in one batch (independent random starts); each image's p_n is frozen at the round where it
    had not grown for `patience` rounds, or at `max_rounds`. Fewer than 2 usable images: ET 0."""
    gen = torch.Generator().manual_seed(seed)
    pool, conf = eligible(model, x, y, target)
    src = source_images(conf, n_images, min_confidence, gen)
    n, m = len(src), len(pool)
    if n < 2:
        return {"et": 0.0, "et_sources": 0.0, "p": [], "p_sources": [], "rounds": 0}
    xs, xe = x[pool[src.to(pool.device)]], x[pool]
    others = torch.ones(n, m, dtype=torch.bool)
    others[torch.arange(n), src] = False
    covered = torch.zeros(n, m, dtype=torch.bool)  # covered[i, j]: a pattern of source i sent image j to target
    best, stable = torch.zeros(2, n), torch.zeros(n, dtype=torch.long)
    done, final = torch.zeros(n, dtype=torch.bool), torch.zeros(2, n)
    rounds = 0
    while rounds < max_rounds and not bool(done.all()):
        block = min(patience, max_rounds - rounds)
        units = xs.repeat(block, *([1] * (xs.dim() - 1)))  # round-major: unit r*n + i is source i, round r
        mask, pattern = reverse_each(model, units, target, bounds, steps=steps, lr=lr, init_cost=init_cost,
                                     cost_multiplier=cost_multiplier, patience=cost_patience, gen=gen,
                                     min_prob=min_prob)
        hits = sends_to(model, xe, mask, pattern, target).view(block, n, m)
        for r in range(block):
            covered |= hits[r] & others
            p = torch.stack([covered.sum(1).float() / (m - 1), covered[:, src].sum(1).float() / (n - 1)])
            grew = p[0] > best[0]
            stable = torch.where(grew, 0, stable + 1)
            best = torch.maximum(best, p)
            stop = ~done & (stable >= patience)
            final[:, stop], done = best[:, stop], done | stop
            rounds += 1
    final[:, ~done] = best[:, ~done]
    return {"et": float(final[0].mean()), "et_sources": float(final[1].mean()), "p": final[0].tolist(),
            "p_sources": final[1].tolist(), "rounds": rounds}
