"""Randomized smoothing: prediction and L2 certification (Cohen, Rosenfeld & Kolter, "Certified Adversarial
Robustness via Randomized Smoothing", ICML 2019).

The smoothed classifier g(x) = argmax_c P(f(x + δ) = c), δ ~ N(0, σ²I), is robust within the L2 radius
σ·Φ⁻¹(p_A) around x whenever the top class has probability p_A > ½. Both procedures are Monte Carlo estimates
with a guaranteed error rate α:

- PREDICT draws n noisy copies, counts the two most frequent classes n_A and n_B, and returns the top class only
  if a two-sided binomial test of n_A against n_A + n_B at ½ has p-value ≤ α (abstains otherwise);
- CERTIFY guesses the top class ĉ_A from n0 draws, counts it in n fresh draws, takes the one-sided
  Clopper-Pearson lower bound p_A of its probability at level 1 − α, and certifies radius σ·Φ⁻¹(p_A) when
  p_A ≥ ½ (abstains otherwise).

Noise is drawn on the target's device by a seeded generator, and one forward pass covers several images and
several draws at once (`batch_size` noisy inputs per pass). Counting needs labels only, so the base classifier
may be any target, a black box included.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import beta, binom, norm
from torch import nn

from bastion.core.errors import ParameterError
from bastion.core.target import Target
from bastion.defenses.preprocess.transforms import decided_by

ABSTAIN = -1


def clopper_pearson_lower(successes: np.ndarray, trials: int, alpha: float) -> np.ndarray:
    """One-sided (1 − α) Clopper-Pearson lower bound of a binomial proportion: the p with P(X ≥ k | p) = α."""
    k = np.asarray(successes, dtype=np.float64)
    safe = np.maximum(k, 1.0)
    return np.where(k > 0, beta.ppf(alpha, safe, trials - k + 1), 0.0)


def binomial_test(top: np.ndarray, runner_up: np.ndarray) -> np.ndarray:
    """Two-sided p-value of `top` successes in `top + runner_up` trials at p = ½ (exact, symmetric)."""
    top, runner_up = np.asarray(top, np.int64), np.asarray(runner_up, np.int64)
    trials = top + runner_up
    low = np.minimum(top, runner_up)
    return np.minimum(1.0, 2.0 * binom.cdf(low, trials, 0.5))


@dataclass
class Certificate:
    """Per-sample outcome of CERTIFY: prediction (−1 abstains), L2 radius (0 when abstaining), evidence."""

    prediction: np.ndarray
    radius: np.ndarray
    p_lower: np.ndarray
    counts: np.ndarray

    def certified_accuracy(self, y: np.ndarray, radii: list[float]) -> list[dict[str, float]]:
        """Fraction of samples classified correctly with a certified radius of at least r, for each r."""
        correct = self.prediction == np.asarray(y)
        return [{"radius": float(r), "certified_accuracy": float(np.mean(correct & (self.radius >= r)))}
                for r in radii]


class SmoothedClassifier:
    """Cohen et al.'s smoothed classifier around a base `target` with Gaussian noise of standard deviation σ."""

    def __init__(self, target: Target, sigma: float, batch_size: int = 1024, seed: int = 0):
        if sigma <= 0 or batch_size < 1:
            raise ParameterError("randomized smoothing needs sigma > 0 and batch_size >= 1")
        self.target, self.sigma, self.batch_size, self.seed = target, float(sigma), int(batch_size), int(seed)
        self.generator = torch.Generator(device=target.device).manual_seed(self.seed)

    def counts(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """Class counts (m, n_classes) of the base classifier on n noisy copies of each of the m inputs."""
        x = torch.as_tensor(x, dtype=torch.float32, device=self.target.device)
        m, shape = len(x), tuple(x.shape[1:])
        counts = torch.zeros(m, self.target.n_classes, dtype=torch.long, device=x.device)
        block = min(m, self.batch_size)
        for lo in range(0, m, block):
            xb = x[lo:lo + block]
            per_pass = max(1, self.batch_size // len(xb))
            done = 0
            while done < n:
                k = min(per_pass, n - done)
                noise = torch.randn((k, len(xb), *shape), generator=self.generator, device=x.device)
                noisy = (xb.unsqueeze(0) + self.sigma * noise).reshape(k * len(xb), *shape)
                labels = self.target.labels(noisy).view(k, len(xb))
                counts[lo:lo + block] += F.one_hot(labels, self.target.n_classes).sum(0)
                done += k
        return counts

    def predict(self, x: torch.Tensor, n: int, alpha: float) -> np.ndarray:
        """PREDICT: the top class of n draws, or −1 (abstain) when the binomial test cannot separate it at α."""
        counts = self.counts(x, n)
        top2 = counts.topk(2, dim=1)
        p_value = binomial_test(top2.values[:, 0].cpu().numpy(), top2.values[:, 1].cpu().numpy())
        prediction = top2.indices[:, 0].cpu().numpy()
        return np.where(p_value <= alpha, prediction, ABSTAIN)

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float) -> Certificate:
        """CERTIFY: ĉ_A from n0 draws, its Clopper-Pearson lower bound from n fresh draws, radius σ·Φ⁻¹(p_A)."""
        guess = self.counts(x, n0).argmax(dim=1)
        counts = self.counts(x, n)
        n_a = counts.gather(1, guess[:, None]).squeeze(1).cpu().numpy()
        p_lower = clopper_pearson_lower(n_a, n, alpha)
        certified = p_lower >= 0.5
        radius = np.where(certified, self.sigma * norm.ppf(np.clip(p_lower, 0.5, 1.0)), 0.0)
        prediction = np.where(certified, guess.cpu().numpy(), ABSTAIN)
        return Certificate(prediction, radius, p_lower, counts.cpu().numpy())


class SmoothedModel(nn.Module):
    """The smoothed classifier as one module, for export and for attacks: log vote frequencies over `samples`
    Gaussian draws per input (random on every call).

    With `straight_through` (BPDA), it returns the log of the mean softmax over the noisy copies (the soft smoothed
    classifier of Salman et al., NeurIPS 2019) ranked as the votes (`preprocess.transforms.decided_by`): the
    votes' decisions with a useful gradient for adaptive attacks (BPDA + EOT)."""

    def __init__(self, base: nn.Module, sigma: float, n_classes: int, samples: int = 32):
        super().__init__()
        if sigma <= 0 or samples < 1:
            raise ParameterError("a smoothed model needs sigma > 0 and at least one sample")
        self.base, self.sigma, self.n_classes, self.samples = base, float(sigma), int(n_classes), int(samples)
        self.straight_through = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, n = self.samples, x.shape[0]
        copies = x.repeat(k, *[1] * (x.dim() - 1))
        logits = self.base(copies + self.sigma * torch.randn_like(copies)).view(k, n, self.n_classes)
        votes = F.one_hot(logits.argmax(-1), self.n_classes).to(x.dtype).mean(0).clamp_min(1e-6).log()
        if self.straight_through:
            soft = logits.softmax(-1).mean(0).clamp_min(1e-12).log()
            return decided_by(soft, votes)
        return votes
