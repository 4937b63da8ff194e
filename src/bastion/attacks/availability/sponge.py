"""Sponge examples (Shumailov et al., "Sponge Examples: Energy-Latency Attacks on Neural Networks", EuroS&P 2021).

White-box (`sponge`): gradient ascent on the inputs to maximise the activations the hardware has to compute — the
summed squared activation magnitude (`objective="l2"`) or a differentiable surrogate of the number of non-zero
activations (`objective="l0"`: σ(z/τ) of each activation layer's input z, which tends to the indicator z > 0 as
τ → 0; the paper's L0 approximation plays the same role). Steps are steepest-ascent steps in the budget's norm,
projected onto the optional Lp ball around each natural input and clipped to the model's input bounds.

Black-box (`sponge-ga`): the paper's genetic algorithm — a population seeded from natural inputs, fitness measured
on the model (activation density when readable, else per-input latency), the fittest fraction kept, children by
uniform crossover of two parents and Gaussian mutation, projected like above. Returns the fittest individuals.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from bastion.attacks.availability import measure
from bastion.attacks.availability.base import AvailabilityAttack, check_budget, refuse_huge_eps
from bastion.attacks.evasion.norms import ascent_step, project
from bastion.core.errors import ParameterError
from bastion.core.registry import register
from bastion.core.target import Access, Target


def constrain(x: torch.Tensor, natural: torch.Tensor, eps: float | None, norm: str, target: Target) -> torch.Tensor:
    """Project `x` onto the eps-ball around `natural` (when a budget is set) and clip to the target's bounds."""
    if eps is not None:
        delta = project(x - natural, torch.full((len(x),), eps, device=x.device), norm)
        x = natural + delta
    return x.clamp(*target.bounds)


def sponge_objective(acts: list[tuple[torch.Tensor, torch.Tensor]], objective: str, tau: float) -> torch.Tensor:
    """Per-sample objective to maximise, shape (n,): mean over layers of the layer's mean term."""
    if len({len(post) for _, post in acts}) > 1:
        raise ParameterError("the model runs some activation layers on part of the batch only (early exits): the "
                             "sponge needs every layer on every input; attack its TorchScript export or use "
                             "early-exit")
    terms = []
    for pre, post in acts:
        term = torch.sigmoid(pre / tau) if objective == "l0" else post.square()
        terms.append(term.flatten(1).mean(1))
    return torch.stack(terms).mean(0)


@register("attacks", "sponge", family="availability")
class Sponge(AvailabilityAttack):
    """White-box sponge examples: gradient ascent on activation density (`objective` l0) or magnitude (l2).

    `steps` ascent steps of size `step` (a fraction of the input range, or of `eps` when set) under the optional
    budget `eps` in norm `norm`; `tau` is the temperature of the L0 surrogate (Shumailov et al., EuroS&P 2021).
    `max_density` makes the attack adaptive to a density detector whose threshold it knows
    (`bastion defend sponge-detect`): the kept iterate is the densest one whose measured density stays at or below it.

    Example:
        >>> result = Sponge(steps=100, objective="l0").run(target, data)  # doctest: +SKIP
    """

    name = "sponge"
    requires = Access.GRADIENTS

    def __init__(self, *, eps: float | None = None, norm: str = "linf", objective: str = "l0", steps: int = 100,
                 step: float = 0.02, tau: float = 0.1, max_density: float | None = None, repeats: int = 5,
                 warmup: int = 3, threads: int = 1, energy: bool = True, n_bootstrap: int = 1000, seed: int = 0):
        super().__init__(repeats=repeats, warmup=warmup, threads=threads, energy=energy, n_bootstrap=n_bootstrap,
                         seed=seed)
        self.eps, self.norm = check_budget(eps, norm)
        if max_density is not None and not 0 < float(max_density) <= 1:
            raise ParameterError(f"max_density must be in (0, 1] (or unset), got {max_density}")
        self.max_density = None if max_density is None else float(max_density)
        if objective not in ("l0", "l2"):
            raise ParameterError(f"objective must be l0 (density surrogate) or l2 (magnitude), got {objective!r}")
        if steps < 1 or not 0 < step <= 1 or tau <= 0:
            raise ParameterError("steps must be >= 1, step in (0, 1] and tau > 0")
        self.objective, self.steps, self.step, self.tau = objective, int(steps), float(step), float(tau)

    def craft(self, target: Target, x: torch.Tensor) -> torch.Tensor:
        refuse_huge_eps(self.eps, self.norm, target)
        probe = measure.ActivationProbe(measure.white_box_model(target, "sponge"))
        scale = self.eps if self.eps is not None else target.bounds[1] - target.bounds[0]
        size = torch.full((len(x),), self.step * scale, device=x.device)
        if self.norm != "linf":  # an L2/L1 step of the same per-coordinate size
            size = size * float(np.prod(target.input_shape)) ** (0.5 if self.norm == "l2" else 1.0)
        adv, best = x.clone(), x.clone()
        best_value = torch.full((len(x),), -float("inf"), device=x.device)
        for _ in range(self.steps):
            adv.requires_grad_(True)
            target.counter.charge(len(adv))
            acts = probe(adv)
            value = sponge_objective(acts, self.objective, self.tau)
            grad, = torch.autograd.grad(value.sum(), adv)
            with torch.no_grad():
                better = (value.detach() > best_value) & self._admissible(acts)
                best[better], best_value[better] = adv.detach()[better], value.detach()[better]
                adv = constrain(adv.detach() + ascent_step(grad, size, self.norm), x, self.eps, self.norm, target)
        with torch.no_grad():  # the last iterate counts too
            acts = probe(adv)
            value = sponge_objective(acts, self.objective, self.tau)
            better = (value > best_value) & self._admissible(acts)
            best[better] = adv[better]
        return best

    def _admissible(self, acts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Which inputs keep their measured density at or below `max_density` (all, without it)."""
        if self.max_density is None:
            return torch.ones(len(acts[0][1]), dtype=torch.bool, device=acts[0][1].device)
        nonzero = sum((post.detach().abs() > measure.ZERO).flatten(1).sum(1) for _, post in acts)
        total = sum(post[0].numel() for _, post in acts)
        return nonzero / total <= self.max_density


@register("attacks", "sponge-ga", family="availability")
class SpongeGA(AvailabilityAttack):
    """Black-box sponge examples by the paper's genetic algorithm (fitness: density, or latency when the target
    gives no activations or `fitness` is latency).

    `generations` rounds over a population of `population` inputs; the fittest `elite` fraction survive; children
    mix two parents coordinate-wise and get Gaussian noise of scale `mutation` (fraction of the input range) on a
    `mutation_rate` fraction of their coordinates; `eps`/`norm` optionally bound the distance to natural inputs
    (Shumailov et al., EuroS&P 2021).

    Example:
        >>> result = SpongeGA(population=64, generations=30, fitness="density").run(target, data)  # doctest: +SKIP
    """

    name = "sponge-ga"
    requires = Access.LABELS

    def __init__(self, *, fitness: str = "auto", population: int = 64, generations: int = 30, elite: float = 0.25,
                 mutation: float = 0.1, mutation_rate: float = 0.1, eps: float | None = None, norm: str = "linf",
                 repeats: int = 5, warmup: int = 3, threads: int = 1, energy: bool = True, n_bootstrap: int = 1000,
                 seed: int = 0):
        super().__init__(repeats=repeats, warmup=warmup, threads=threads, energy=energy, n_bootstrap=n_bootstrap,
                         seed=seed)
        if fitness not in ("auto", "density", "latency"):
            raise ParameterError(f"fitness must be auto, density or latency, got {fitness!r}")
        if population < 4 or generations < 1 or not 0 < elite < 1 or not 0 < mutation_rate <= 1 or mutation < 0:
            raise ParameterError("population >= 4, generations >= 1, elite and mutation_rate in (0, 1), mutation >= 0")
        self.fitness, self.population, self.generations = fitness, int(population), int(generations)
        self.elite, self.mutation, self.mutation_rate = float(elite), float(mutation), float(mutation_rate)
        self.eps, self.norm = check_budget(eps, norm)
        self.fitness_used_ = ""
        self.history_: list[float] = []

    def _fitness_fn(self, target: Target) -> Any:
        model = getattr(target, "model", None)
        if self.fitness != "latency" and target.access >= Access.GRADIENTS and model is not None:
            try:
                probe = measure.ActivationProbe(model)
            except ParameterError:
                probe = None
            if probe is not None:
                self.fitness_used_ = "density"

                def density(x: torch.Tensor) -> torch.Tensor:
                    target.counter.charge(len(x))
                    return torch.as_tensor(probe.density(x)[0])

                return density
        if self.fitness == "density":
            raise ParameterError("density fitness needs a white-box model with readable activation layers")
        self.fitness_used_ = "latency"

        def latency(x: torch.Tensor) -> torch.Tensor:
            return torch.as_tensor(measure.latencies(target, x, repeats=3, warmup=1, threads=self.threads))

        return latency

    def craft(self, target: Target, x: torch.Tensor) -> torch.Tensor:
        refuse_huge_eps(self.eps, self.norm, target)
        fit = self._fitness_fn(target)
        gen = torch.Generator().manual_seed(self.seed)
        width = target.bounds[1] - target.bounds[0]
        pick = torch.randint(len(x), (self.population,), generator=gen)
        anchors, pop = x[pick], x[pick].clone()
        scores = fit(pop)
        keep = max(2, int(round(self.elite * self.population)))
        start = time.perf_counter()
        for _ in range(self.generations):
            order = scores.argsort(descending=True)
            parents, anchor_p = pop[order[:keep]], anchors[order[:keep]]
            n_child = self.population - keep
            a = torch.randint(keep, (n_child,), generator=gen)
            b = torch.randint(keep, (n_child,), generator=gen)
            mask = (torch.rand((n_child, *x.shape[1:]), generator=gen) < 0.5).to(x.device)
            child = torch.where(mask, parents[a], parents[b])
            mutate = (torch.rand(child.shape, generator=gen) < self.mutation_rate).to(x.device)
            noise = torch.randn(child.shape, generator=gen).to(x.device) * self.mutation * width
            child = constrain(child + mutate * noise, anchor_p[a], self.eps, self.norm, target)
            pop = torch.cat([parents, child])
            anchors = torch.cat([anchor_p, anchor_p[a]])
            scores = torch.cat([scores[order[:keep]], fit(child)])
            self.history_.append(float(scores.max()))
        self.seconds_ = time.perf_counter() - start
        best = scores.argsort(descending=True)
        return pop[best[torch.arange(len(x)) % len(pop)]]  # the fittest individuals, as many as natural inputs

    def details(self) -> dict[str, Any]:
        return {"fitness": self.fitness_used_, "best_fitness_per_generation": self.history_}
