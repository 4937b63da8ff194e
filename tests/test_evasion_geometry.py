"""The geometry under the attacks: FAB's hyperplane-box projections against a generic solver, Lp projections,
APGD's checkpoints, Square's schedule, the epsilon search's bookkeeping, and the check verdicts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linprog, minimize

from bastion.attacks.evasion.apgd import checkpoints
from bastion.attacks.evasion.hyperplane import project_hyperplane_box
from bastion.attacks.evasion.losses import dlr_loss, margin
from bastion.attacks.evasion.norms import lp_norm, project
from bastion.attacks.evasion.square import pyramid, square_fraction
from bastion.evaluation import checks as C
from bastion.families.evasion import check_finding


def _reference(w: np.ndarray, c: float, lo: np.ndarray, hi: np.ndarray, norm: str) -> float:
    """The minimal norm by a generic solver: LPs for L1 and L∞, SLSQP for L2."""
    d = len(w)
    if norm == "l1":  # δ = p − q, p, q ≥ 0: min Σp + Σq
        res = linprog(np.ones(2 * d), A_eq=np.concatenate([w, -w])[None], b_eq=[c],
                      bounds=[(0, max(h, 0)) for h in hi] + [(0, max(-l_, 0)) for l_ in lo])
        return res.fun
    if norm == "linf":  # variables δ and t: min t, |δ_i| ≤ t
        cost = np.r_[np.zeros(d), 1.0]
        a_ub = np.block([[np.eye(d), -np.ones((d, 1))], [-np.eye(d), -np.ones((d, 1))]])
        res = linprog(cost, A_ub=a_ub, b_ub=np.zeros(2 * d), A_eq=np.r_[w, 0.0][None], b_eq=[c],
                      bounds=[(lo[i], hi[i]) for i in range(d)] + [(0, None)])
        return res.fun
    res = minimize(lambda v: v @ v, np.zeros(d), jac=lambda v: 2 * v, method="SLSQP",
                   constraints=[{"type": "eq", "fun": lambda v: w @ v - c, "jac": lambda v: w}],
                   bounds=list(zip(lo, hi, strict=True)), options={"ftol": 1e-12, "maxiter": 500})
    return float(np.sqrt(res.fun))


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_hyperplane_box_projection_is_minimal_and_feasible(norm):
    gen = np.random.default_rng(0)
    n, d = 12, 8
    w = gen.normal(size=(n, d))
    x = gen.uniform(size=(n, d))
    lo, hi = -x, 1 - x
    c = gen.uniform(0.05, 0.6, size=n) * np.abs(w).sum(1) * 0.3 * np.where(gen.uniform(size=n) < 0.3, -1, 1)
    delta = project_hyperplane_box(*(torch.tensor(a, dtype=torch.float64) for a in (w, c, lo, hi)), norm).numpy()
    assert np.allclose((w * delta).sum(1), c, atol=1e-8)
    assert (delta >= lo - 1e-12).all() and (delta <= hi + 1e-12).all()
    ours = lp_norm(torch.tensor(delta), norm).numpy()
    for i in range(n):
        assert ours[i] == pytest.approx(_reference(w[i], c[i], lo[i], hi[i], norm), rel=1e-4, abs=1e-7)


def test_hyperplane_out_of_reach_saturates():
    w = torch.tensor([[1.0, -2.0]])
    delta = project_hyperplane_box(w, torch.tensor([100.0]), torch.tensor([[-0.5, -0.5]]),
                                   torch.tensor([[0.5, 0.5]]), "linf")
    assert torch.allclose(delta, torch.tensor([[0.5, -0.5]]))


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_projection_onto_lp_balls(norm):
    gen = torch.Generator().manual_seed(0)
    delta = torch.randn(50, 1, 8, 8, generator=gen)
    eps = torch.rand(50, generator=gen) + 0.1
    out = project(delta, eps, norm)
    assert (lp_norm(out, norm) <= eps * (1 + 1e-5)).all()
    inside = lp_norm(delta, norm) <= eps
    assert torch.allclose(out[inside], delta[inside])
    # a projection is idempotent and moves no coordinate away from zero
    assert torch.allclose(project(out, eps, norm), out, atol=1e-6)
    assert (out.abs() <= delta.abs() + 1e-6).all()


def test_apgd_checkpoints_follow_the_paper():
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_square_schedule_and_pattern():
    assert square_fraction(0.8, 5, 10000) == 0.8
    assert square_fraction(0.8, 11, 10000) == 0.4
    assert square_fraction(0.8, 100, 1000) == 0.8 / 2 ** 4  # rescaled: iteration 100 of 1,000 is 1,000 of 10,000
    pattern = pyramid(4, 4, torch.device("cpu"))
    assert pattern.shape == (4, 4) and pattern[0].sum() > 0 > pattern[-1].sum()


def test_losses():
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 1.0, 0.5]])
    y = torch.tensor([0, 0])
    assert torch.allclose(margin(logits, y), torch.tensor([2.0, -2.0]))
    # DLR is invariant to shifting and scaling the logits
    assert torch.allclose(dlr_loss(logits, y), dlr_loss(3 * logits + 7, y), atol=1e-6)
    t = torch.tensor([1, 2])
    assert torch.allclose(dlr_loss(logits, y, t), dlr_loss(2 * logits - 1, y, t), atol=1e-6)


def test_check_verdicts():
    rising = [{"eps": 0.1, "robust_accuracy": 0.5}, {"eps": 0.2, "robust_accuracy": 0.6}]
    assert not C.check_monotone(rising, 0.5, 0.1, 0.1).passed
    assert not C.check_monotone(rising[:1], 0.5, 0.5, 0.1).passed  # far above chance at a huge eps
    assert C.check_monotone(rising[:1], 0.5, 0.1, 0.1).passed
    few = C.check_black_box({"square": 1}, n=500)
    many = C.check_black_box({"square": 40}, n=500)
    assert not few.passed and check_finding(few.summary()).severity == "low"
    assert not many.passed and check_finding(many.summary()).severity == "high"
    assert C.check_black_box({"square": 0}, n=500).passed
    assert not C.check_dlr(3, untargeted=False, targeted=True).passed
    assert C.check_dlr(4, untargeted=True, targeted=True).passed
    assert not C.check_convergence(0.5, 0.4, 64).passed and C.check_convergence(0.5, 0.49, 64).passed
    finding = check_finding(C.check_unbounded(0.9, 50).summary())
    assert finding.metric == "sanity_check_7" and finding.family == "evasion" and "AML.T0043" in finding.atlas
