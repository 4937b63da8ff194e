"""The stages of `auto` and the cascade that runs them on still-robust points."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from bastion.attacks.evasion.apgd import APGDCE, APGDDLR, APGDT
from bastion.attacks.evasion.base import EvasionAttack
from bastion.attacks.evasion.fab import FAB, FABT
from bastion.attacks.evasion.hopskipjump import HopSkipJump
from bastion.attacks.evasion.search import valid_examples
from bastion.attacks.evasion.square import Square
from bastion.attacks.evasion.transfer import Transfer
from bastion.core.target import Access, Target

# Budgets of the standard cascade (AutoAttack "standard" uses 100 iterations, 9 target classes for APGD-T and
# FAB-T, and 5,000 Square queries; see docs/benchmarks/evasion.md for the measured strength of these choices).
STEPS = 100
APGD_TARGETS = 3
FAB_TARGETS = 1
SQUARE_QUERIES = 1000
STRONG_SQUARE_QUERIES = 5000
HSJ_STEPS = 40


@dataclass
class Stage:
    """One attack of the cascade, the view of the model it attacks, and whether it uses gradients."""

    name: str
    attack: EvasionAttack
    view: Target
    white_box: bool


@dataclass
class Cascade:
    """Runs its stages in order, each only on the samples that no earlier stage broke (judged on `judge`)."""

    stages: list[Stage]
    judge: Target
    norm: str
    broken: dict[str, int] = field(default_factory=dict)
    beaten: dict[str, int] = field(default_factory=dict)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        best = x.clone()
        robust = torch.ones(len(x), dtype=torch.bool, device=x.device)
        white = any(s.white_box for s in self.stages)
        for stage in self.stages:
            idx = robust.nonzero().flatten()
            if len(idx) == 0:
                break
            adv = stage.attack.perturb(stage.view, x[idx], y[idx], eps[idx]).float()
            ok = (self.judge.labels(adv) != y[idx]) & valid_examples(x[idx], adv, eps[idx], self.norm,
                                                                      self.judge.bounds)
            best[idx[ok]] = adv[ok]
            robust[idx[ok]] = False
            count = int(ok.sum())
            self.broken[stage.name] = self.broken.get(stage.name, 0) + count
            if white and not stage.white_box:
                self.beaten[stage.name] = self.beaten.get(stage.name, 0) + count
        return best


def standard_stages(eps: list[float], norm: str, seed: int, n_classes: int, judge: Target,
                    gradients: Target | None, strong: bool, transfer: Transfer | None) -> list[Stage]:
    """The cascade for the access the target grants.

    gradients: APGD-CE → APGD-T (APGD-DLR with 3 classes, none with 2) → FAB-T (FAB with 2 classes) → Square;
    scores: Square; labels: HopSkipJump; then transfer when a surrogate is given. `strong` (gradients look
    masked) gives Square its full 5,000 queries."""
    common: dict[str, Any] = {"eps": eps, "norm": norm, "seed": seed}
    stages: list[Stage] = []
    if gradients is not None:
        stages.append(Stage("apgd-ce", APGDCE(steps=STEPS, **common), gradients, True))
        if n_classes >= 4:
            stages.append(Stage("apgd-t", APGDT(steps=STEPS, n_targets=APGD_TARGETS, **common), gradients, True))
        elif n_classes == 3:
            stages.append(Stage("apgd-dlr", APGDDLR(steps=STEPS, **common), gradients, True))
        fab = FABT(steps=STEPS, n_targets=FAB_TARGETS, **common) if n_classes >= 3 else FAB(steps=STEPS, **common)
        stages.append(Stage(fab.name, fab, gradients, True))
    if judge.access >= Access.SCORES and norm in Square.norms:
        queries = SQUARE_QUERIES if (gradients is not None and not strong) else STRONG_SQUARE_QUERIES
        stages.append(Stage("square", Square(queries=queries, **common), judge, False))
    elif judge.access < Access.SCORES and norm in HopSkipJump.norms:
        stages.append(Stage("hopskipjump", HopSkipJump(steps=HSJ_STEPS, **common), judge, False))
    if transfer is not None:
        stages.append(Stage("transfer", transfer, judge, False))
    return stages


def escalation_stages(eps: list[float], norm: str, seed: int, judge: Target, gradients: Target | None,
                      black_box: bool) -> list[Stage]:
    """Extra attacks once a check has failed: APGD-CE with 3 fresh restarts, and (`black_box`, when gradients
    look masked) Square with 5,000 queries."""
    common: dict[str, Any] = {"eps": eps, "norm": norm, "seed": seed + 101}
    stages: list[Stage] = []
    if gradients is not None:
        stages.append(Stage("apgd-ce-restarts", APGDCE(steps=STEPS, restarts=3, **common), gradients, True))
    if black_box and judge.access >= Access.SCORES and norm in Square.norms:
        stages.append(Stage("square-5000", Square(queries=STRONG_SQUARE_QUERIES, **common), judge, False))
    return stages


def quick_attack(eps: float, norm: str, seed: int, judge: Target, gradients: Target | None,
                 steps: int = 20) -> EvasionAttack:
    """A short attack for the checks: APGD-CE with gradients, else Square (scores) or HopSkipJump (labels)."""
    if gradients is not None:
        return APGDCE(eps=eps, norm=norm, steps=steps, seed=seed)
    if judge.access >= Access.SCORES and norm in Square.norms:
        return Square(eps=eps, norm=norm, queries=25 * steps, seed=seed)
    return HopSkipJump(eps=eps, norm=norm, steps=max(1, steps // 2), init_evals=50, seed=seed)
