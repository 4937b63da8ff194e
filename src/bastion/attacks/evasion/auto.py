"""`auto`: a parameter-free, self-checking robustness evaluation (THREATS.md §1).

The cascade of AutoAttack "standard" (Croce & Hein, ICML 2020: APGD-CE, APGD-T, FAB-T, Square), run on
still-robust points at each sample's epsilon with the work shared across epsilons (`search.EpsSearch`), adapted
to the access the target grants (scores: Square; labels: HopSkipJump; plus a transfer attack when a surrogate
is given). Around it run the ten sanity checks of `bastion.evaluation.checks`:

- before attacking, checks 1-3: a randomised forward pass switches every attack to EOT (the mean of
  `EOT_SAMPLES` passes); zero gradients, probability outputs or a cut graph switch gradient attacks to BPDA
  through the layers whose gradient vanishes, and give Square its full budget;
- after, checks 4-9 (FGSM, random noise, a very large and an unbounded epsilon, twice the iterations); any
  example they find counts, and a failure of checks 5-9 escalates: APGD-CE with fresh restarts and Square with
  5,000 queries re-attack every sample still robust.

Robust accuracy at each eps is the share of samples that no attack broke with a valid example (checked in
float32); every check's outcome is in `metrics["sanity_checks"]` (the evasion family judges a failed one
into a finding).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from bastion.attacks.evasion.base import EvasionAttack, as_eps
from bastion.attacks.evasion.cascade import Cascade, escalation_stages, quick_attack, standard_stages
from bastion.attacks.evasion.gradient import FGSM
from bastion.attacks.evasion.norms import lp_norm
from bastion.attacks.evasion.search import EpsSearch
from bastion.attacks.evasion.transfer import Transfer
from bastion.attacks.evasion.wrappers import BPDATarget, EOTTarget, masking_modules
from bastion.core.data import Dataset
from bastion.core.errors import BudgetSpent, ParameterError
from bastion.core.registry import register
from bastion.core.results import Result
from bastion.core.target import Access, Target, TorchTarget
from bastion.evaluation import checks as C

EOT_SAMPLES = 10
CHECK_SAMPLES = 64  # subsample of the checks that run attacks (6, 7, 8)
NOISE_DRAWS = 10


class Plan:
    """What the pre-attack checks decided: the judged view, the gradient view, and why."""

    def __init__(self, target: Target):
        self.judge: Target = target
        self.gradients: Target | None = target if target.access >= Access.GRADIENTS else None
        self.checks: list[C.Check] = []
        self.escalations: list[str] = []
        self.masked = False


@register("attacks", "auto", family="evasion",
          summary="Self-checking ensemble ≥ AutoAttack standard, with the ten sanity checks")
class AutoAttack(EvasionAttack):
    """Parameter-free ensemble at least as strong as AutoAttack "standard", with automatic sanity checks and
    escalation (EOT, BPDA, black-box and transfer attacks); see the module docstring. `surrogate` (a model path
    or nn.Module) adds a transfer stage; `checks=False` skips the checks.

    Reference: Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
    attacks", ICML 2020.

    Example:
        >>> from bastion.attacks.evasion.auto import AutoAttack
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> result = AutoAttack(eps=0.0314).run(target, data)
        >>> result.metrics["robust_accuracy"]
    """

    name = "auto"
    requires = Access.LABELS

    def __init__(self, eps: float | str | Sequence[float] = 8 / 255, *, norm: str = "linf",
                 surrogate: str | nn.Module | None = None, checks: bool = True, seed: int = 0):
        super().__init__(eps, norm=norm, seed=seed)
        self.surrogate, self.checks = surrogate, bool(checks)
        self._cascade: Cascade | None = None

    def perturb(self, target: Target, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
        if self._cascade is None:
            raise ParameterError("call run() first: auto builds its cascade from the target's checks")
        return self._cascade(x, y, as_eps(eps, x))

    # -- the evaluation ---------------------------------------------------------------------------------------
    def run(self, target: Target, data: Dataset, **_: Any) -> Result:
        x, y = self.prepare(target, data)
        if target.access < Access.SCORES and self.norm == "l1":
            raise ParameterError("auto on a label-only target supports the linf and l2 norms (HopSkipJump)")
        start, queries = time.perf_counter(), target.queries
        plan = self._plan(target, x, y)
        transfer = None
        if self.surrogate is not None:
            transfer = Transfer(self.surrogate, eps=self.eps, norm=self.norm, seed=self.seed).bind(target, data)
        stages = standard_stages(self.eps, self.norm, self.seed, target.n_classes, plan.judge, plan.gradients,
                                 plan.masked, transfer)
        plan.checks.append(C.check_dlr(target.n_classes, any(s.name == "apgd-dlr" for s in stages),
                                       any(s.name == "apgd-t" for s in stages)))
        self._cascade = Cascade(stages, plan.judge, self.norm)
        ran = [s.name for s in stages]

        def part(xs: torch.Tensor, ys: torch.Tensor) -> EpsSearch:
            search = EpsSearch(plan.judge, xs, ys, self.eps, self.norm)
            if search.k > 1 and plan.gradients is not None:
                search.prepass(plan.gradients)
            self.probe(plan.judge, search)
            return search

        search = self.batched(plan.judge, x, y, part)  # in batches it can keep when a budget or deadline stops it
        if self.checks and bool(search.correct.any()) and not search.stopped:
            try:
                ran += self._post_checks(plan, search)
            except BudgetSpent as exc:
                search.stopped = f"{exc} during the sanity checks after the attacks"
        extra = {
            "sanity_checks": [c.summary() for c in plan.checks],
            "escalations": plan.escalations,
            "stages": dict(self._cascade.broken),
            "attacks": ran,
        }
        return self.result(plan.judge, search, start, queries, extra)

    def _plan(self, target: Target, x: torch.Tensor, y: torch.Tensor) -> Plan:
        """Checks 1-3 and the views they call for (EOT for randomness, BPDA for vanishing gradients)."""
        plan = Plan(target)
        if not self.checks:
            return plan
        setup, forward = C.check_setup(target, x), C.check_forward(target, x)
        plan.checks += [setup, forward]
        if forward.evidence.get("random"):
            plan.judge = EOTTarget(target, EOT_SAMPLES)
            plan.gradients = plan.judge if plan.gradients is not None else None
            plan.escalations.append(f"EOT over {EOT_SAMPLES} forward passes (randomised model)")
        grads = C.check_gradients(plan.gradients, x, y) if plan.gradients is not None else \
            C.Check(3, True, "no gradient access: not applicable")
        plan.checks.append(grads)
        plan.masked = (not grads.passed) or bool(setup.evidence.get("probability_outputs")) \
            or bool(forward.evidence.get("graph_cut")) or bool(forward.evidence.get("autograd_calls"))
        if plan.masked and isinstance(target, TorchTarget) and plan.gradients is not None:
            modules = masking_modules(target, x[:256])
            if modules:
                bpda = BPDATarget(target, modules)
                plan.gradients = EOTTarget(bpda, EOT_SAMPLES) if forward.evidence.get("random") else bpda
                plan.escalations.append(f"BPDA (identity) through {', '.join(modules)}")
        if plan.masked:
            plan.escalations.append("Square with its full query budget (gradients look masked)")
        return plan

    def _post_checks(self, plan: Plan, search: EpsSearch) -> list[str]:
        """Checks 4-9; every example they find is recorded; a failure of 5-9 escalates. Returns the names of the
        escalation attacks run."""
        n_correct = int(search.correct.sum())
        plan.checks.append(C.check_constraints(search.violations))
        beaten = self._single_step(plan, search)
        plan.checks.append(C.check_single_step(beaten, n_correct) if plan.gradients is not None
                           else C.Check(5, True, "no gradient access: not applicable"))
        assert self._cascade is not None
        noise = self._noise(search)
        plan.checks.append(self._large_eps(plan, search))
        plan.checks.append(self._unbounded(plan, search))
        plan.checks.append(self._convergence(plan, search))
        black_box = C.check_black_box({**self._cascade.beaten, "random noise": noise}, n_correct)
        plan.checks.append(black_box)
        failed = {c.id for c in plan.checks if not c.passed}
        masked = bool(failed & {5, 6, 7}) or bool(black_box.evidence.get("masking"))
        stages = escalation_stages(self.eps, self.norm, self.seed, plan.judge, plan.gradients, black_box=masked)
        if (masked or 8 in failed) and stages:
            why = "gradients look masked" if masked else "more iterations still found examples"
            plan.escalations.append(f"re-attack with {', '.join(s.name for s in stages)} ({why})")
            self._cascade.stages = stages
            search.robust_upto[:] = -1
            self.probe(plan.judge, search)
            return [s.name for s in stages]
        return []

    def _subsample(self, mask: torch.Tensor, k: int = CHECK_SAMPLES) -> torch.Tensor:
        idx = mask.nonzero().flatten()
        if len(idx) <= k:
            return idx
        pick = torch.randperm(len(idx), generator=self.generator(7))[:k].to(idx.device)
        return idx[pick.sort().values]

    def _single_step(self, plan: Plan, search: EpsSearch) -> int:
        """Check 5: FGSM at every eps on the samples still robust there."""
        if plan.gradients is None:
            return 0
        beaten, fgsm = 0, FGSM(eps=self.eps, norm=self.norm)
        for k in range(search.k):
            idx = search.robust_mask(k).nonzero().flatten()
            if len(idx):
                adv = fgsm.perturb(plan.gradients, search.x[idx], search.y[idx], search.eps[k])
                beaten += int(search.record(idx, torch.full_like(idx, k), adv).sum())
        return beaten

    def _noise(self, search: EpsSearch) -> int:
        """Part of check 9: random points on each eps sphere (forward passes only)."""
        beaten, gen = 0, self.generator(11)
        lo, hi = search.target.bounds
        for k in range(search.k):
            idx = search.robust_mask(k).nonzero().flatten()
            for _ in range(NOISE_DRAWS):
                if len(idx) == 0:
                    break
                x0 = search.x[idx]
                noise = torch.randn(x0.shape, generator=gen).to(x0.device)
                if self.norm == "linf":
                    noise = noise.sign()
                noise = noise / lp_norm(noise, self.norm).clamp_min(1e-12).view(-1, *[1] * (x0.dim() - 1))
                fooled = search.record(idx, torch.full_like(idx, k), (x0 + noise * search.eps[k]).clamp(lo, hi))
                beaten += int(fooled.sum())
                idx = idx[~fooled]
        return beaten

    def _span(self, search: EpsSearch) -> float:
        """The largest distance between two inputs in the attack norm."""
        lo, hi = search.target.bounds
        d = search.x[0].numel()
        return (hi - lo) * {"linf": 1.0, "l2": d ** 0.5, "l1": float(d)}[self.norm]

    def _try(self, plan: Plan, search: EpsSearch, idx: torch.Tensor, top: float, steps: int = 20) -> torch.Tensor:
        """Short attacks on samples idx at a ladder of budgets from twice the largest eps up to `top` (×4 per
        rung: one huge first step can jump over every adversarial region), judged on the model; returns the
        fooled mask."""
        fooled = torch.zeros(len(idx), dtype=torch.bool, device=idx.device)
        view = plan.gradients if plan.gradients is not None else plan.judge
        rungs, eps = [], 2 * max(self.eps)
        while eps < top and len(rungs) < 6:
            rungs.append(eps)
            eps *= 4
        for eps in [*rungs, top]:
            left = (~fooled).nonzero().flatten()
            if len(left) == 0:
                break
            attack = quick_attack(eps, self.norm, self.seed + 3, plan.judge, plan.gradients, steps)
            sub = idx[left]
            adv = attack.perturb(view, search.x[sub], search.y[sub], eps).float()
            fooled[left] = plan.judge.labels(adv) != search.y[sub]
        return fooled

    def _left(self, plan: Plan, search: EpsSearch, top: float) -> tuple[float, int]:
        """Share of the correctly classified samples still robust with budget `top`: samples broken at a smaller
        eps are broken there too, survivors of the largest eps (a subsample) are attacked again; and how many
        were attacked."""
        survivors = search.robust_mask(search.k - 1)
        idx = self._subsample(survivors)
        if len(idx) == 0:
            return 0.0, 0
        fooled = self._try(plan, search, idx, top)
        share = float(survivors.sum()) / float(search.correct.sum())
        return share * float((~fooled).float().mean()), len(idx)

    def _large_eps(self, plan: Plan, search: EpsSearch) -> C.Check:
        """Check 6: the curve never rises, and at half the input span accuracy falls to chance."""
        large = 0.5 * self._span(search)
        left, _ = self._left(plan, search, large)
        accuracy = float(search.correct.float().mean()) * left
        return C.check_monotone(search.curve(), large, accuracy, 1.0 / search.target.n_classes)

    def _unbounded(self, plan: Plan, search: EpsSearch) -> C.Check:
        """Check 7: with the whole input span as the budget every sample must fall."""
        left, _ = self._left(plan, search, self._span(search))
        return C.check_unbounded(1.0 - left, int(search.correct.sum()))

    def _convergence(self, plan: Plan, search: EpsSearch) -> C.Check:
        """Check 8: survivors at the largest eps attacked again with twice the iterations and a new seed."""
        last = search.k - 1
        idx = self._subsample(search.robust_mask(last))
        if len(idx) == 0:
            return C.Check(8, True, "no sample survived the largest eps")
        attack = quick_attack(float(search.eps[last]), self.norm, self.seed + 5, plan.judge, plan.gradients,
                              steps=200)
        view = plan.gradients if plan.gradients is not None else plan.judge
        before = float(search.robust_mask(last).float().mean())
        adv = attack.perturb(view, search.x[idx], search.y[idx], search.eps[last])
        fooled = search.record(idx, torch.full_like(idx, last), adv)
        estimate = before * (1 - float(fooled.float().mean()))  # the drop on the subsample, scaled to all
        return C.check_convergence(before, estimate, len(idx), tolerance=0.02)
