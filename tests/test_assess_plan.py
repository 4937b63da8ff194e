"""The assessment plan: validation, merging, YAML, defaults sized to the data and the model's access."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from bastion.assess.defaults import class_distance, default_plan
from bastion.assess.plan import Plan, family_names, read_plan_file, schema_markdown
from bastion.core.data import Dataset
from bastion.core.errors import ParameterError
from bastion.families.inputs import Inputs

from .assess_fixtures import cancer_inputs, quick_plan  # noqa: F401

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plan.md"


@pytest.fixture(scope="module")
def base(quick_plan):  # noqa: F811
    return quick_plan


@pytest.mark.parametrize("override, message", [
    ({"familes": {}}, "unknown key 'familes'"),
    ({"families": {"evasoin": {}}}, "unknown family 'evasoin'"),
    ({"families": {"evasion": {"epz": [0.1]}}}, "has no key 'epz'"),
    ({"families": {"evasion": {"eps": [0.1, -1]}}}, "eps[1] must be > 0"),
    ({"families": {"evasion": {"eps": "big"}}}, "must be a number"),
    ({"families": {"evasion": {"norm": "l7"}}}, "norm must be one of linf, l2, l1"),
    ({"families": {"evasion": {"n_samples": 2.5}}}, "must be an integer"),
    ({"families": {"evasion": {"attacks": {"pgdd": {}}}}}, "unknown evasion attack 'pgdd'"),
    ({"families": {"evasion": {"attacks": {"pgd": {"stepz": 3}}}}}, "has no parameter 'stepz'"),
    ({"families": {"evasion": {"attacks": {"pgd": {"eps": 3}}}}}, "is set by the plan itself"),
    ({"families": {"privacy": {"attacks": ["lira", "nope"]}}}, "unknown privacy attack 'nope'"),
    ({"families": {"extraction": {"pool_fraction": 0.95}}}, "pool_fraction must be <= 0.9"),
    ({"families": {"backdoor": {"scanners": {"neural-cleanse": {"stepz": 1}}}}}, "has no parameter 'stepz'"),
    ({"families": {"supply_chain": {"paths": [1]}}}, "list of strings"),
    ({"device": "tpu"}, "device must be auto"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"version": 2}, "version must be <= 1"),
])
def test_invalid_plans_are_one_line_errors(base, override, message):
    with pytest.raises(ParameterError) as err:
        base.merged(override)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_merge_replaces_attack_tables_and_keeps_other_keys(base):
    plan = base.merged({"families": {"evasion": {"attacks": ["fgsm"], "eps": [0.5, 0.1]},
                                     "privacy": False, "supply-chain": {"paths": ["x.pt"]}}})
    assert plan.section("evasion")["attacks"] == {"fgsm": {}}
    assert plan.section("evasion")["eps"] == [0.1, 0.5]  # sorted
    assert plan.section("evasion")["n_samples"] == base.section("evasion")["n_samples"]
    assert not plan.enabled("privacy") and plan.enabled("extraction")
    assert plan.section("supply_chain")["paths"] == ["x.pt"]


def test_yaml_round_trip(base, tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(base.to_yaml())
    again = Plan.from_dict(read_plan_file(path))
    assert again == base


def test_plan_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("families: [1, 2\n")
    with pytest.raises(ParameterError, match="not valid YAML"):
        read_plan_file(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ParameterError, match="table"):
        read_plan_file(bad)
    with pytest.raises(ParameterError, match="not found"):
        read_plan_file(tmp_path / "missing.yaml")


def test_incomplete_plan_from_dict_is_refused():
    with pytest.raises(ParameterError, match="lacks"):
        Plan.from_dict({"families": {"evasion": {"enabled": True, "eps": [0.1]}}})


def test_defaults_cover_every_family_and_fit_the_access(cancer_inputs):  # noqa: F811
    info = cancer_inputs.describe()
    plan = default_plan(cancer_inputs, info)
    assert all(plan.enabled(f) for f in family_names() if f != "llm")
    assert not plan.enabled("llm")  # a classifier: the language-model family is off (the report says why)
    ev = plan.section("evasion")
    assert ev["norm"] == "l2" and "pgd" in ev["attacks"]  # feature vectors, white box
    assert "lira" in plan.section("privacy")["attacks"]  # --arch given: reference models possible
    assert "neural-cleanse" not in plan.section("backdoor")["scanners"]  # 2 classes: no anomaly index
    pool = round(0.5 * len(cancer_inputs.data))
    assert max(plan.section("extraction")["budgets"]) == pool
    # a label-only API: no gradient or score attacks anywhere
    labels_only = Inputs(model=cancer_inputs.model, data=cancer_inputs.data, access="labels", device="cpu")
    info = labels_only.describe()
    plan = default_plan(labels_only, info)
    assert "pgd" not in plan.section("evasion")["attacks"]
    assert "loss" not in plan.section("privacy")["attacks"]
    assert plan.section("privacy")["n_members"] >= 2


def test_default_eps_scale_with_the_data(cancer_inputs):  # noqa: F811
    info = cancer_inputs.describe()
    eps = default_plan(cancer_inputs, info).section("evasion")["eps"]
    scaled = Inputs(model=cancer_inputs.model, data=Dataset(cancer_inputs.data.x * 1.0, cancer_inputs.data.y),
                    device="cpu")
    assert eps == sorted(eps) and len(eps) == 4
    d = class_distance(scaled.data.x, scaled.data.y, "l2", 0)
    assert eps[-1] == pytest.approx(0.4 * d, rel=0.05)
    # ten times larger features: ten times larger epsilons
    d10 = class_distance(scaled.data.x * 10, scaled.data.y, "l2", 0)
    assert d10 == pytest.approx(10 * d, rel=1e-6)


def test_class_distance_on_a_known_layout():
    x = np.array([[0.0], [0.1], [1.0], [1.2]], dtype=np.float32)
    y = np.array([0, 0, 1, 1])
    # nearest other-class distances: 1.0, 0.9, 0.9, 1.1 -> median 0.95
    assert class_distance(x, y, "l2", 0) == pytest.approx(0.95)


def test_docs_plan_reference_is_in_sync():
    text = DOCS.read_text()
    assert schema_markdown() in text, "docs/plan.md must embed plan.schema_markdown() verbatim"
    for family in family_names():
        assert re.search(rf"\b{family}\b", text)


def test_docs_example_plan_is_valid(base):
    import yaml

    block = DOCS.read_text().split("```yaml", 1)[1].split("```", 1)[0]
    plan = base.merged(yaml.safe_load(block))
    assert plan.section("evasion")["attacks"]["pgd"] == {"steps": 50, "restarts": 2}
    assert plan.section("extraction")["attacks"] == {"knockoff": {}, "copycat": {}}


def test_budgets_follow_the_decided_device_not_the_machine(cancer_inputs):  # noqa: F811
    """Issue 15: on a machine with a GPU (the model loaded on cuda), a plan that says `device: cpu` gets the
    CPU-sized budgets; `auto` sizes for the GPU. The CLI decides the device before it builds the plan, once."""
    from dataclasses import replace

    from bastion.assess.api import build_plan, choose_device

    on_gpu = replace(cancer_inputs.describe(), device="cuda")  # the fake "GPU available" switch
    cpu = default_plan(cancer_inputs, on_gpu, seed=0, device="cpu")
    gpu = default_plan(cancer_inputs, on_gpu, seed=0, device="auto")
    assert cpu.section("evasion")["attacks"]["pgd"]["steps"] == 20
    assert gpu.section("evasion")["attacks"]["pgd"]["steps"] == 50
    assert cpu.section("privacy")["attacks"]["lira"]["n_reference"] == 4
    assert gpu.section("privacy")["attacks"]["lira"]["n_reference"] == 8
    override = {"device": "cpu", "seed": 4}
    device = choose_device(None, override)
    plan = build_plan(cancer_inputs, on_gpu, override, None, device)
    assert (plan.device, plan.seed) == ("cpu", 4)
    assert plan.section("evasion")["attacks"]["pgd"]["steps"] == 20
    assert choose_device("cuda", override) == "cuda"
