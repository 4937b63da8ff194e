"""Learning-based extraction: a substitute trained on the API's answers (shared by copycat, knockoff, jacobian)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import ClassVar

import torch
from torch import nn

from bastion.attacks.extraction.base import ExtractionAttack
from bastion.attacks.extraction.selection import active_rounds, kcenter_greedy, least_margin, standardised
from bastion.attacks.extraction.substitute import as_targets, make_trainer, substitute_factory
from bastion.core.data import Dataset
from bastion.core.errors import ParameterError
from bastion.core.target import Access, Target


class LearningExtraction(ExtractionAttack):
    """Base of attacks that train a substitute. `soft`: train on scores ("auto": when the API returns them)."""

    default_soft: ClassVar[bool | str] = "auto"
    seed_size: int | None = None  # k-center seed set of active sampling (None: 20 per class)

    def __init__(self, budget: int | str | Sequence[int] | None = 1000,
                 *, arch: str | Callable[[], nn.Module] | None = None, soft: bool | str | None = None, epochs: int = 50,
                 batch_size: int = 64, lr: float = 1e-3, min_steps: int = 300, defense: str | None = None,
                 monitor: bool = True, ood_samples: int = 1000, transfer_eps: float = 0.1, transfer_samples: int = 500,
                 seed: int = 0):
        super().__init__(budget, defense=defense, monitor=monitor, ood_samples=ood_samples, transfer_eps=transfer_eps,
                         transfer_samples=transfer_samples, seed=seed)
        soft = self.default_soft if soft is None else soft
        if soft not in (True, False, "auto"):
            raise ParameterError(f"soft must be true, false or auto, got {soft!r}")
        if epochs < 1 or batch_size < 1 or lr <= 0 or min_steps < 0:
            raise ParameterError("epochs and batch_size must be >= 1, lr > 0 and min_steps >= 0")
        self.arch, self.soft = arch, soft
        self.epochs, self.batch_size, self.lr, self.min_steps = int(epochs), int(batch_size), float(lr), int(min_steps)

    def use_scores(self, api: Target) -> bool:
        """Whether substitutes train on scores; asking for scores from a label-only API is an AccessError."""
        if self.soft is True:
            api.require(Access.SCORES, f"extraction attack '{self.name}' with soft=true")
            return True
        return self.soft == "auto" and api.access >= Access.SCORES

    def ask(self, api: Target, x: torch.Tensor, soft: bool) -> torch.Tensor:
        """The API's answers for x: probability rows when `soft`, else labels."""
        return as_targets(api.probabilities(x) if soft else api.labels(x), soft)

    def factory(self, api: Target, reference: torch.Tensor | None) -> Callable[[], nn.Module]:
        """Fresh substitutes whose initial weights depend on the attack's seed only (not on the global RNG)."""
        make = substitute_factory(self.arch, api.input_shape, api.n_classes, reference)

        def seeded() -> nn.Module:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                return make()

        return seeded

    def train(self, model: nn.Module, x: torch.Tensor, targets: torch.Tensor, soft: bool,
              device: torch.device, optimizer: torch.optim.Optimizer | None = None,
              epochs: int | None = None, min_steps: int | None = None) -> nn.Module:
        """Fit `model` on (x, targets) with the shared Trainer: `epochs`, but at least `min_steps` steps."""
        trainer = make_trainer(self.epochs if epochs is None else epochs, self.batch_size, self.lr,
                               self.min_steps if min_steps is None else min_steps, len(x), self.seed, device, soft)
        return trainer.fit(model, x, targets, optimizer=optimizer)

    @staticmethod
    def pool_tensor(pool: Dataset, device: torch.device) -> torch.Tensor:
        return torch.as_tensor(pool.x, dtype=torch.float32, device=device)

    def check_pool_size(self, pool: Dataset, budgets: list[int]) -> None:
        if budgets[-1] > len(pool):
            raise ParameterError(f"extraction attack '{self.name}': the pool has {len(pool)} inputs, fewer than the "
                                 f"budget of {budgets[-1]} queries; give a larger --pool or a smaller --budget")

    def sample_and_train(self, api: Target, pool: Dataset, budgets: list[int],
                         sampling: str = "random") -> Iterator[tuple[int, nn.Module]]:
        """Query the pool in a `sampling` order (see `selection`), train a fresh copy per budget."""
        self.check_pool_size(pool, budgets)
        soft = self.use_scores(api)
        x_pool = self.pool_tensor(pool, api.device)
        factory = self.factory(api, x_pool)
        if sampling == "active":
            yield from self.active(api, x_pool, budgets, soft, factory)
            return
        if sampling == "kcenter":
            order = kcenter_greedy(standardised(x_pool), budgets[-1], generator=self.generator())
        else:
            order = torch.randperm(len(pool), generator=self.generator())[:budgets[-1]].to(api.device)
        x = x_pool[order]
        answers, spent = [], 0
        for budget in budgets:
            answers.append(self.ask(api, x[spent:budget], soft))
            spent = budget
            yield budget, self.train(factory(), x[:budget], torch.cat(answers), soft, api.device)

    def active(self, api: Target, x_pool: torch.Tensor, budgets: list[int], soft: bool,
               factory: Callable[[], nn.Module]) -> Iterator[tuple[int, nn.Module]]:
        """ActiveThief rounds: a k-center seed set, then the inputs of least margin under the current copy."""
        rounds = active_rounds(budgets, api.n_classes, self.seed_size)
        chosen = kcenter_greedy(standardised(x_pool), rounds[0], generator=self.generator())
        answers = self.ask(api, x_pool[chosen], soft)
        self.rounds_ = rounds
        copy: nn.Module | None = None
        for size in rounds:
            if size > len(chosen):
                assert copy is not None  # the first round is the seed set itself
                new = least_margin(copy, x_pool, chosen, size - len(chosen))
                answers = torch.cat([answers, self.ask(api, x_pool[new], soft)])
                chosen = torch.cat([chosen, new])
            copy = self.train(factory(), x_pool[chosen], answers, soft, api.device)
            if size in budgets:
                yield size, copy
