"""The one-call Python API (issue 15): `bastion.assess(model, data, ...)` returns the Assessment, and it agrees
with the path the CLI takes (`assess_inputs` on prepared inputs) on the same seed."""

from __future__ import annotations

import pytest
import yaml

import bastion
from bastion.core.errors import ParameterError

# Two cheap families: FGSM on 40 samples and the LOSS attack; the rest switched off.
PLAN = {"families": {"evasion": {"n_samples": 40, "shards": 1, "sanity": False, "attacks": {"fgsm": {}}},
                     "privacy": {"n_members": 40, "n_nonmembers": 40, "attacks": {"loss": {"n_bootstrap": 20}}},
                     "extraction": False, "backdoor": False, "supply_chain": False,
                     # availability measures time: not a pure function of the seed, so it sits the comparison out
                     "availability": False}}


def _figures(a) -> dict:
    return {f.family: (f.status, f.grade, sorted((x.severity, x.title) for x in f.findings), f.headline)
            for f in a.families}


def test_bastion_assess_from_files_matches_prepared_inputs(cancer_demo, tmp_path):
    from bastion.assess.api import assess_inputs
    from bastion.demo.run import demo_inputs
    from bastion.families import registry

    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(PLAN), encoding="utf-8")
    a = bastion.assess(cancer_demo.model_path, cancer_demo.test_path, train_data=cancer_demo.train_path,
                       arch="bastion.demo.run:breast_cancer_mlp",
                       plan=plan_file, device="cpu", seed=5)
    assert a.seed == 5 and a.plan["device"] == "cpu"
    families = {f.family: f for f in a.families}
    assert list(families) == list(registry())
    assert families["evasion"].status == "assessed" and families["privacy"].status == "assessed"
    assert families["extraction"].status == "skipped" and families["availability"].status == "skipped"
    assert 0.5 < families["evasion"].headline["clean_accuracy"] <= 1.0
    assert a.inputs["data"]["path"] == str(cancer_demo.test_path)
    b = assess_inputs(demo_inputs(cancer_demo, "cpu"), plan=PLAN, seed=5, device="cpu")
    assert _figures(a) == _figures(b)


def test_bastion_assess_refuses_a_bad_plan(cancer_demo):
    with pytest.raises(ParameterError, match="unknown family"):
        bastion.assess(cancer_demo.model_path, cancer_demo.test, plan={"families": {"nope": {}}}, device="cpu")
