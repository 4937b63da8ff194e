"""The family plug-ins (issue 15): the registry is the single source of truth, and adding a family is one module
(the worked example of docs/architecture.md, run here as written)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bastion.core import registry as core_registry
from bastion.families import get_family, registry
from bastion.families.base import Family
from bastion.report.plots import FIGURES

from .assess_fixtures import cancer_inputs  # noqa: F401

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def test_every_family_declares_its_contract():
    fams = registry()
    assert list(fams) == ["evasion", "privacy", "extraction", "backdoor", "supply_chain", "llm", "availability"]
    for name, cls in fams.items():
        assert issubclass(cls, Family) and cls.name == name and get_family(name) is cls
        assert cls.title and cls.atlas and cls.owasp and cls.mitigations
        assert cls.schema["enabled"].kind == "bool"
        assert cls.plots and all(p in FIGURES for p in cls.plots), name
        for key, spec in cls.schema.items():
            if spec.kind == "attacks":
                assert key in cls.sources, f"{name}.{key} names no registry source"


@pytest.fixture
def timing():
    """The docs' example family, registered for one test and removed after it."""
    code = re.search(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S).group(1)
    namespace: dict = {"__name__": "bastion.families.timing_example"}
    exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 - the project's own documentation
    yield namespace["TimingFamily"]
    core_registry._entries["families"].pop("timing", None)


def test_the_documented_family_plugs_in_with_one_module(timing, cancer_inputs):  # noqa: F811
    from bastion.assess.api import assess_inputs
    from bastion.assess.defaults import default_plan
    from bastion.assess.plan import schema_markdown

    assert list(registry())[-1] == "timing"
    info = cancer_inputs.describe()
    plan = default_plan(cancer_inputs, info, device="cpu")
    assert plan.section("timing") == {"enabled": True, "n_samples": 50, "max_ratio": 10.0}
    assert "`families.timing`:" in schema_markdown()
    others = {name: False for name in registry() if name != "timing"}
    a = assess_inputs(cancer_inputs, plan={"families": {**others, "timing": {"n_samples": 20, "max_ratio": 1.0}}},
                      device="cpu", info=info)
    report = {f.family: f for f in a.families}["timing"]
    assert report.status == "assessed" and report.title == "Timing (latency spread)"
    assert report.headline["latency.ratio"] >= 1.0
    assert [f.metric for f in report.findings] == ["latency_ratio"] and report.grade == "C"
