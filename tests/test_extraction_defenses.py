"""Output-hardening wrappers and the PRADA monitor against extraction attacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bastion.attacks.extraction import Copycat, JacobianAugmentation, KnockoffNets
from bastion.attacks.extraction.study import benign_streams, defense_table, detection_table
from bastion.core.data import Dataset
from bastion.core.errors import AccessError, ParameterError
from bastion.core.target import Access, FunctionTarget
from bastion.defenses.detect.prada import PRADA, PradaMonitor, QueryLog
from bastion.defenses.postprocess import (
    LabelOnly,
    PredictionPoisoning,
    ReverseSigmoid,
    Rounding,
    TopK,
    harden,
    mad_perturb,
    unwrap,
)
from bastion.families import judged
from bastion.models import load_target
from tests.extraction_fixtures import FAST

PROBS = np.array([[0.7, 0.2, 0.1], [0.05, 0.15, 0.8], [0.34, 0.33, 0.33]])


def fixed_api() -> FunctionTarget:
    return FunctionTarget(lambda x: PROBS[x[:, 0].astype(int)], 3, (1,), "probabilities", bounds=(0, 2))


@pytest.fixture(scope="module")
def digits(digits_demo):
    return digits_demo, load_target(digits_demo.model_path, device="cpu")


def test_truncation_wrappers():
    api, x = fixed_api(), np.array([[0.0], [1.0], [2.0]], dtype=np.float32)
    assert torch.allclose(Rounding(api, 1).probabilities(x), torch.tensor([[0.7, 0.2, 0.1], [0.0, 0.2, 0.8],
                                                                             [0.3, 0.3, 0.3]]))
    top = TopK(api, 1).probabilities(x)
    assert (top > 0).sum(1).tolist() == [1, 1, 1] and top.argmax(1).tolist() == [0, 2, 0]
    assert torch.allclose(TopK(api, 2, renormalize=True).probabilities(x).sum(1), torch.ones(3))
    labels_only = LabelOnly(api)
    assert labels_only.access == Access.LABELS and labels_only.labels(x).tolist() == [0, 2, 0]
    with pytest.raises(AccessError):
        labels_only.probabilities(x)
    with pytest.raises(AccessError):
        Rounding(labels_only)
    assert api.queries == 3 + 3 + 3 + 3  # wrappers share the counter; each sample counted once
    assert unwrap(Rounding(TopK(api, 2))) is api
    with pytest.raises(ParameterError):
        harden(api, "blur:3")
    with pytest.raises(ParameterError):
        TopK(api, 4)


def test_reverse_sigmoid_is_a_deceptive_perturbation():
    base = torch.tensor([[0.9, 0.09, 0.01], [0.99, 0.009, 0.001], [0.4, 0.35, 0.25]])
    api = FunctionTarget(lambda x: base.numpy()[x[:, 0].astype(int)], 3, (1,), bounds=(0, 2))
    out = ReverseSigmoid(api, beta=1.0, gamma=0.2).probabilities(np.array([[0.0], [1.0], [2.0]], np.float32))
    assert torch.allclose(out.sum(1), torch.ones(3), atol=1e-6)
    assert out.argmax(1).tolist() == [0, 0, 0]
    assert not torch.allclose(out, base, atol=0.05)
    assert out[1, 0] < out[0, 0]  # a more confident answer comes back less confident: not monotone


def test_mad_moves_within_epsilon_and_argmax_variant_keeps_labels():
    gen = torch.Generator().manual_seed(0)
    y = torch.softmax(3 * torch.randn(200, 5, generator=gen, dtype=torch.float64), dim=1)
    p = torch.full_like(y, 0.2)
    for eps in (0.2, 1.0):
        out = mad_perturb(y, p, eps)
        assert torch.allclose(out.sum(1), torch.ones(200, dtype=torch.float64))
        assert (out >= 0).all() and ((out - y).abs().sum(1) <= eps + 1e-9).all()
        kept = mad_perturb(y, p, eps, argmax_preserving=True)
        assert (kept.argmax(1) == y.argmax(1)).all()
    # with a uniform surrogate, MAD pushes mass to the least likely class
    assert (mad_perturb(y, p, 0.5).argmax(1) != y.argmax(1)).any()
    assert ((mad_perturb(y, p, 0.1) - y).argmax(1) == y.argmin(1)).all()
    with pytest.raises(ParameterError):
        PredictionPoisoning(fixed_api(), epsilon=3)


def test_label_only_and_poisoning_lower_fidelity_at_fixed_budget(digits):
    demo, target = digits
    attacks = {"knockoff": KnockoffNets(budget=50, **FAST)}
    rows = []
    for seed in (0, 1):
        attacks["knockoff"].seed = seed
        rows += defense_table(target, demo.test, demo.train, attacks, [None, "label_only", "poisoning:1.0"])
    fidelity = {d: np.mean([r["fidelity"] for r in rows if r["defense"] == d])
                for d in ("none", "label_only", "poisoning:1.0")}
    assert fidelity["label_only"] < fidelity["none"] - 0.02
    assert fidelity["poisoning:1.0"] < fidelity["none"] - 0.2
    api_accuracy = {r["defense"]: r["api_accuracy"] for r in rows}
    assert api_accuracy["label_only"] == api_accuracy["none"] > 0.9  # label-only costs no accuracy


def test_prada_distances_match_the_definition():
    gen = torch.Generator().manual_seed(3)
    x, c = torch.rand(60, 4, generator=gen), torch.randint(0, 3, (60,), generator=gen)
    detector = PRADA(block=7)  # blocks smaller than the stream exercise the incremental path
    fast = detector.distances(x, c)
    grown: dict[int, list[int]] = {}
    threshold: dict[int, float] = {}
    admitted_d: dict[int, list[float]] = {}
    for i in range(60):
        k = int(c[i])
        if k not in grown:
            grown[k] = [i]
            assert np.isnan(fast[i])
            continue
        d = float(torch.cdist(x[i:i + 1], x[grown[k]]).min())
        assert fast[i] == pytest.approx(d, rel=1e-5)
        if d > threshold.get(k, 0.0):
            grown[k].append(i)
            admitted_d.setdefault(k, []).append(d)
            threshold[k] = max(threshold.get(k, 0.0), np.mean(admitted_d[k]) - np.std(admitted_d[k]))


def test_prada_flags_jacobian_streams_not_benign_ones(digits):
    demo, target = digits
    attacks = {"jacobian": JacobianAugmentation(budget=500, n_seed=50, round_epochs=3, epochs=5, min_steps=50),
               "copycat": Copycat(budget=500, epochs=1, min_steps=1)}
    rows = detection_table(target, demo.test, demo.train, attacks, seeds=(0, 1),
                           benign=benign_streams(target, demo.train, 4, 500))
    by = {r["stream"]: r for r in rows}
    assert by["jacobian"]["rate"] == 1.0 and by["jacobian"]["median_detected_at"] <= 300
    assert by["benign"]["rate"] == 0.0 and by["benign"]["streams"] == 4
    assert by["copycat"]["rate"] == 0.0  # natural queries look benign: PRADA's known blind spot


def test_prada_calibration_and_query_log(digits):
    demo, target = digits
    log = QueryLog(target)
    log.labels(demo.test.x[:30])
    assert len(log) == 30 and log.inputs.shape == (30, 64) and target.queries >= 30
    assert torch.equal(log.answers, target.labels(demo.test.x[:30]))
    detector = PRADA(min_queries=100)
    delta = detector.calibrate(benign_streams(target, demo.train, 3, 300))
    assert 0.5 < delta < 1.0 and detector.delta == delta
    assert not any(detector.detect(x, y).detected for x, y in benign_streams(target, demo.train, 3, 300))


def test_prada_monitor_defense_flags_a_logged_jacobian_stream(digits):
    demo, target = digits
    attack = JacobianAugmentation(budget=400, n_seed=50, round_epochs=3, epochs=5, min_steps=50, monitor=False,
                                  transfer_samples=0, ood_samples=0)
    attack.run(target, demo.test, pool=demo.train)
    logged = attack.query_log_.inputs.reshape(-1, 1, 8, 8).numpy()
    stream = Dataset(logged, np.zeros(len(logged), dtype=np.int64))
    result = PradaMonitor(n_benign=3).run(target, demo.train, queries=stream)
    assert result.family == "extraction" and result.attack == "prada"
    assert result.metrics["detected"] and result.metrics["benign_false_alarm_rate"] == 0.0
    assert judged(result).findings[0].severity == "high"
    natural = Dataset(demo.train.x[:400], demo.train.y[:400])
    calibrated = PradaMonitor(calibrate=True, n_benign=3).run(target, demo.train, queries=natural)
    assert not calibrated.metrics["detected"] and judged(calibrated).findings[0].severity == "info"
    with pytest.raises(ParameterError, match="--queries"):
        PradaMonitor().run(target, demo.train)
