"""Report formats: self-contained HTML with every section and plot, lossless JSON, SARIF 2.1.0 valid against a
vendored schema, Markdown for pull requests."""

from __future__ import annotations

import copy
import json
import re
from html.parser import HTMLParser

import pytest

from bastion.assess.assessment import Assessment
from bastion.core.results import Finding
from bastion.families.base import FamilyReport
from bastion.report import FILE_NAMES, render, write_reports
from bastion.report.json_report import load_report
from bastion.report.sarif import to_sarif

from .assess_fixtures import cancer_inputs, demo_run, quick_assessment, quick_plan  # noqa: F401
from .sarif_schema import SCHEMA, validate

SECTIONS = ["summary", "family-evasion", "family-privacy", "family-extraction", "family-backdoor",
            "family-supply_chain", "sanity", "mitigations", "reproducibility"]
PLOTS = {"digits-cnn": ["robustness-curve", "roc-loglog", "fidelity-queries", "anomaly-index", "scan-findings"],
         "breast-cancer-mlp": ["robustness-curve", "roc-loglog", "fidelity-queries", "scan-findings"]}


class Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids, self.tags, self.urls = set(), [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        for name in ("src", "srcset", "data", "poster"):
            if attrs.get(name):
                self.urls.append(attrs[name])
        if tag == "link" and attrs.get("href"):
            self.urls.append(attrs["href"])


@pytest.mark.parametrize("model", list(PLOTS))
def test_html_is_self_contained_with_every_section_and_plot(demo_run, model):  # noqa: F811
    out, _, _ = demo_run
    text = (out / model / "report.html").read_text()
    page = Collector()
    page.feed(text)
    assert set(SECTIONS) <= page.ids
    assert {f"plot-{p}" for p in PLOTS[model]} <= page.ids
    assert page.urls and all(u.startswith("data:image/png;base64,") for u in page.urls)
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    assert not re.search(r"url\(|@import", text)
    for word in ("Executive summary", "Recommended mitigations", "Reproducibility", "MITRE ATLAS", "seed"):
        assert word in text


def test_html_escapes_untrusted_text():
    evil = "<script>alert(1)</script>"
    fam = FamilyReport("evasion", "Evasion", "assessed", grade="D", findings=[
        Finding(title=evil, family="evasion", severity="high", metric="m", evidence={"x": evil},
                description=evil, recommendation=evil)])
    a = Assessment(run_id="r", created="2024-01-01T00:00:00+00:00", status="complete", families=[fam],
                   inputs={"model": evil}, grade="D")
    text = render(a, "html")
    assert "<script>" not in text and "&lt;script&gt;" in text


def test_json_report_round_trips(quick_assessment, tmp_path):  # noqa: F811
    a, _ = quick_assessment
    paths = write_reports(a, tmp_path, ("json",))
    data = json.loads(paths["json"].read_text())
    assert data["schema"] == "bastion-assessment/1" and data["summary"]["grade"] == a.grade
    assert load_report(paths["json"].read_text()).to_dict() == a.to_dict()
    assert (tmp_path / "plan.yaml").exists()


def test_sarif_is_valid_and_complete(demo_run):  # noqa: F811
    out, assessments, _ = demo_run
    for a, model in zip(assessments[:2], PLOTS, strict=True):  # the classifiers (the third is Gemma)
        log = json.loads((out / model / FILE_NAMES["sarif"]).read_text())
        assert validate(log) == []
        run = log["runs"][0]
        rules = run["tool"]["driver"]["rules"]
        assert len(run["results"]) == sum(len(f.findings) for f in a.families)
        for result in run["results"]:
            assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
            if result["kind"] != "fail":
                assert result["level"] == "none"  # SARIF 3.27.9: only failures carry a level
            assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        assert run["invocations"][0]["executionSuccessful"] is a.complete


def test_sarif_schema_rejects_broken_logs(quick_assessment):  # noqa: F811
    a, _ = quick_assessment
    log = to_sarif(a)
    assert validate(log) == []
    broken = copy.deepcopy(log)
    broken["version"] = "2.0.0"
    broken["runs"][0]["results"][0]["level"] = "fatal"
    del broken["runs"][0]["results"][0]["message"]
    broken["runs"][0]["tool"]["driver"]["rules"][0]["ID"] = "typo"
    errors = "\n".join(validate(broken))
    for expected in ("version", "fatal", "message", "'ID'"):
        assert expected in errors


def test_vendored_schema_agrees_with_jsonschema(quick_assessment):  # noqa: F811
    jsonschema = pytest.importorskip("jsonschema")
    a, _ = quick_assessment
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.Draft7Validator(SCHEMA).validate(to_sarif(a))


def test_markdown_summary(quick_assessment):  # noqa: F811
    a, _ = quick_assessment
    text = render(a, "md")
    assert text.startswith(f"## Bastion assessment of `{a.title}`: grade **{a.grade}**")
    for fam in a.families:
        assert f"| {fam.title} | {fam.grade} |" in text
    assert "### Findings above info" in text and "### Sanity checks" in text
