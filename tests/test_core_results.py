"""Results and findings: lossless JSON round trip; the registry."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.core import registry
from bastion.core.errors import BastionError
from bastion.core.results import Finding, Result, severity_rank

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**9, 10**9),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)


@given(metrics=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
       severity=st.sampled_from(["info", "low", "medium", "high", "critical"]),
       queries=st.integers(0, 10**9), seconds=st.floats(0, 1e6))
def test_attack_result_round_trips_through_json(metrics, severity, queries, seconds):
    finding = Finding("t", "evasion", severity, "robust_accuracy", 0.5, 0.9, {"curve": [1, 2]}, ["AML.T0043"])
    result = Result("evasion", "pgd", {"eps": [0.1]}, metrics, queries, seconds, "cpu", [finding])
    again = Result.from_json(result.to_json())
    assert again == result
    assert again.to_dict() == result.to_dict()


def test_numpy_values_become_plain_json():
    result = Result("evasion", "pgd", metrics={"a": np.float32(0.5), "b": np.arange(3), "c": np.int64(4)})
    assert Result.from_json(result.to_json()).metrics == {"a": 0.5, "b": [0, 1, 2], "c": 4}


def test_severity_is_validated_and_ordered():
    with pytest.raises(ValueError):
        Finding("t", "evasion", "catastrophic", "m")  # type: ignore[arg-type]
    assert severity_rank("critical") > severity_rank("high") > severity_rank("info")
    result = Result("evasion", "x", findings=[Finding("a", "e", "low", "m"), Finding("b", "e", "high", "m")])
    assert result.worst_severity() == "high"
    assert Result("evasion", "x").worst_severity() is None


def test_registry_maps_short_names_to_classes():
    from bastion.attacks.evasion.gradient import FGSM, PGD

    assert registry.get("attacks", "pgd", "evasion") is PGD
    assert registry.get("attacks", "fgsm") is FGSM
    names = {e["name"] for e in registry.entries("attacks", "evasion")}
    assert {"fgsm", "pgd"} <= names
    with pytest.raises(BastionError, match="known: .*pgd"):
        registry.get("attacks", "nonexistent", "evasion")


def test_parameters_of_attacks_and_defenses_are_json_values(tmp_path):
    import json
    from pathlib import Path

    from bastion.attacks.evasion.transfer import Transfer
    from bastion.attacks.extraction import Copycat
    from bastion.defenses.training.adversarial import PGDAdversarialTraining
    from bastion.demo.models import digits_cnn

    params = Copycat(arch=digits_cnn, budget=[10, 20]).get_params()
    assert params["arch"] == "bastion.demo.models:digits_cnn" and params["budget"] == [10, 20]
    assert Transfer(surrogate=digits_cnn()).get_params()["surrogate"] == "<Sequential>"
    assert Transfer(surrogate=Path(tmp_path / "s.pt")).get_params()["surrogate"] == str(tmp_path / "s.pt")
    json.dumps(PGDAdversarialTraining().get_params())
