"""Model inversion recovers class representatives; attribute inference finds what an overfit model memorised."""

from __future__ import annotations

import numpy as np
import pytest

from bastion.attacks.privacy.attribute import AttributeInference, candidate_values
from bastion.attacks.privacy.inversion import ModelInversion
from bastion.core.data import Dataset
from bastion.core.errors import DataError, ParameterError
from bastion.core.results import Result
from bastion.core.target import TorchTarget
from bastion.core.training import Trainer, seed_everything
from bastion.demo.models import tabular_mlp
from bastion.families import judged
from tests.privacy_fixtures import digits_split, mlp, overfit_target, single_thread


def test_inversion_recovers_every_digit_with_gradients():
    _, nonmembers, population = digits_split()
    with single_thread():
        result = ModelInversion().run(overfit_target(), population)
    assert result.metrics["matching_rate"] >= 0.9
    assert result.metrics["similarity"] > result.metrics["similarity_to_other_classes"] + 0.3
    assert min(result.metrics["confidence"]) > 0.9
    assert np.array(result.metrics["representatives"]).shape == (10, 64)
    assert judged(result).findings[0].severity == "high" and result.metrics["gradient"] == "exact"
    assert Result.from_json(result.to_json()).to_dict() == result.to_dict()


def test_inversion_works_from_scores_alone():
    _, _, population = digits_split()
    with single_thread():
        result = ModelInversion(steps=100, classes="0,3,7").run(overfit_target().restrict("scores"), population)
    assert result.metrics["gradient"] == "estimated"
    assert result.metrics["classes"] == [0, 3, 7]
    assert result.metrics["matching_rate"] >= 2 / 3
    assert result.queries > 100 * 3 * 2 * 25  # antithetic probes per step


def test_inversion_of_an_untrained_model_finds_nothing():
    _, _, population = digits_split()
    seed_everything(0)
    with single_thread():
        result = ModelInversion(steps=100).run(TorchTarget(mlp(), (64,), device="cpu"), population)
    assert result.metrics["similarity"] < 0.3
    assert judged(result).findings[0].severity in ("info", "low")


def test_inversion_needs_data_and_valid_classes():
    with pytest.raises(DataError):
        ModelInversion().run(overfit_target())
    _, _, population = digits_split()
    with pytest.raises(ParameterError):
        ModelInversion(classes=[42]).run(overfit_target(), population)


def _sensitive_data() -> tuple[Dataset, Dataset, Dataset]:
    """Six public features and a sensitive category (column 6) that shifts the label."""
    rng = np.random.default_rng(0)
    n = 1200
    s = rng.integers(0, 4, n)
    other = rng.normal(size=(n, 6))
    logits = np.stack([other[:, 0] + 1.5 * (s == k) - other[:, 1] * (k - 1.5) for k in range(4)], 1)
    y = (logits + 1.5 * rng.gumbel(size=(n, 4))).argmax(1)
    x = np.concatenate([other, s[:, None]], 1).astype(np.float32)
    return Dataset(x[:300], y[:300]), Dataset(x[300:600], y[300:600]), Dataset(x[600:], y[600:])


def _tabular_target(members: Dataset, epochs: int) -> TorchTarget:
    seed_everything(0)
    model = tabular_mlp(7, 4, members.x.mean(0), members.x.std(0), hidden=128)
    with single_thread():
        Trainer(epochs=epochs, batch_size=32, seed=0, device="cpu").fit(model, members.x, members.y)
    return TorchTarget(model, (7,), device="cpu")


def test_attribute_inference_exposes_an_overfit_model():
    members, nonmembers, population = _sensitive_data()
    target = _tabular_target(members, epochs=300)
    result = AttributeInference(attribute=6).run(target, members=members, nonmembers=nonmembers,
                                                 population=population)
    assert result.metrics["n_values"] == 4  # a categorical attribute is tried value by value
    assert result.metrics["advantage"] > 0.15 and result.metrics["advantage_ci"][0] > 0.1
    assert result.metrics["accuracy_members"] > result.metrics["baseline_accuracy"] + 0.2
    assert judged(result).findings[0].severity in ("medium", "high")
    assert result.queries == 600 * 4


def test_attribute_inference_on_records_the_model_never_saw_has_no_advantage():
    members, nonmembers, population = _sensitive_data()
    target = _tabular_target(population.subset(slice(0, 300)), epochs=300)  # no "member" is a member
    result = AttributeInference(attribute=6).run(target, members=members, nonmembers=nonmembers)
    low, high = result.metrics["advantage_ci"]
    assert low < 0.03 and high - low < 0.2  # consistent with no advantage (sample composition varies)
    assert judged(result).findings[0].severity in ("info", "low")


def test_attribute_candidates_and_errors():
    values, edges = candidate_values(np.arange(100, dtype=float), 5)
    assert len(values) == 5 and np.all(np.diff(values) > 0)
    assert np.bincount(np.digitize(np.arange(100), edges)).min() > 0  # no empty bin
    members, nonmembers, _ = _sensitive_data()
    with pytest.raises(ParameterError):
        AttributeInference(attribute=9).run(_tabular_target(members, 1), members=members, nonmembers=nonmembers)
    with pytest.raises(DataError, match="--nonmembers"):
        AttributeInference().run(_tabular_target(members, 1), members=members)
