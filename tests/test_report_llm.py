"""The language-model section of the reports: per-probe tables with the measured numbers, example transcripts that
are escaped and cut, a page that stays self-contained, and classifier-only reports left exactly as they were."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pytest

from bastion.assess.assessment import Assessment
from bastion.attacks.llm.injection import Inject
from bastion.attacks.llm.jailbreak import Jailbreak
from bastion.attacks.llm.jailbreak_prompts import behaviours, overrefusal_prompts
from bastion.attacks.llm.leakage import Leak
from bastion.core.results import Finding, Result
from bastion.evaluation.metrics import roc_summary, wilson_interval
from bastion.families.base import FamilyReport
from bastion.report import render, write_reports
from bastion.report.llm_section import MAX_TEXT, clip, interval, llm_probes, pct

SCRIPT, IMG = "<script>alert(1)</script>", '"><img src=x onerror=alert(1)>'
HOSTILE = f"{SCRIPT} {IMG}"
LEAK_TECHNIQUES = ["direct", "encoding", "multiturn"]


class _Hostile:
    """A chat target whose every reply carries live-looking HTML; it repeats its system prompt (so leaks the canary)
    on every third query, obeys an injected "reply only with" on every other query and otherwise echoes the
    user's request (an echo is not obedience), each with a long hostile tail."""

    def __init__(self) -> None:
        self.queries = 0

    def chat(self, messages, max_new_tokens=None):
        self.queries += 1
        if messages[0]["role"] == "system" and "secret code" in messages[0]["content"]:
            text = messages[0]["content"] if self.queries % 3 == 0 else "I cannot share that."
            return SimpleNamespace(text=f"{text} {HOSTILE}")
        goal = re.search(r'reply only with "([^"]+)"', messages[-1]["content"], re.IGNORECASE)
        if goal and self.queries % 2 == 0:
            return SimpleNamespace(text=f"{goal.group(1)} {HOSTILE} " + "x" * 600)
        return SimpleNamespace(text=f"{messages[-1]['content']} {HOSTILE} " + "x" * 600)


class _Page(HTMLParser):
    """Tags, attributes, element ids and the rows (cell texts) of every table with a class, from a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags, self.attrs, self.ids, self.urls = [], [], set(), []
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        self.attrs += list(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        self.urls += [attrs[k] for k in ("src", "srcset", "data", "poster") if attrs.get(k)]
        if tag == "link" and attrs.get("href"):
            self.urls.append(attrs["href"])
        if tag == "table" and attrs.get("class"):
            self._table = attrs["class"].split()[0]
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._table:
            self.tables[self._table][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def results():
    target = _Hostile()
    leak = Leak(techniques=LEAK_TECHNIQUES, examples=2).run(target, canary="ZX-ABCDEFGH")
    inject = Inject(techniques=["ignore_previous", "delimiters"], examples=2).run(
        _Hostile(), canary="PWNED-1234ABCD")
    jail = Jailbreak(techniques=["direct", "roleplay"], n_bootstrap=100).run(
        _Hostile(), behaviours=behaviours("bastion")[:3], benign=overrefusal_prompts(4))
    return {"leak": leak, "inject": inject, "jailbreak": jail}


def _membership() -> Result:
    """A membership result shaped as `LMMembership` writes it (scores per name, TPR at FPR rows, AUC)."""
    rng = np.random.default_rng(0)
    scores = {}
    for name, shift in (("loss", 0.5), ("min_k", 2.0)):
        summary = roc_summary(rng.normal(shift, 1, 200), rng.normal(0, 1, 200), n_bootstrap=20, seed=0)
        scores[name] = summary.to_metrics()
    return Result(family="llm", attack="membership", metrics={**scores["min_k"], "best_score": "min_k",
                                                              "scores": scores, "n_members": 200,
                                                              "n_nonmembers": 200, "fpr_resolution": 1 / 200})


def _assessment(families: list[FamilyReport], kind: str = "language-model") -> Assessment:
    return Assessment(run_id="r1", created="2026-12-05T00:00:00", status="complete", seed=3, grade="C",
                      model={"path": "m.gguf", "format": "gguf", "access": "white-box", "kind": kind,
                             "n_classes": 0, "input_shape": []},
                      inputs={"model": "m.gguf", "language_model": True,
                              "system_prompt": {"path": "prompt.txt", "sha256": "0" * 64},
                              "texts": {"members": {"path": "in.txt", "n": 200},
                                        "nonmembers": {"path": None, "n": 0}}},
                      families=families)


def _llm_family(results: dict[str, Result], extra: list[Result] = ()) -> FamilyReport:
    finding = Finding(title=f"System prompt leaked {SCRIPT}", family="llm", severity="high", metric="leak.rate",
                      value=0.33, evidence={"reply": HOSTILE}, owasp=["LLM07:2025 System Prompt Leakage"])
    return FamilyReport(family="llm", title="Language models (injection, leakage, jailbreaks)", status="assessed",
                        grade="D", findings=[finding], results=[*results.values(), *extra])


@pytest.fixture(scope="module")
def written(results, tmp_path_factory):
    out = tmp_path_factory.mktemp("llm-report")
    a = _assessment([_llm_family(results, [_membership()])])
    paths = write_reports(a, out)
    return paths, paths["html"].read_text(encoding="utf-8")


def _table(page: _Page, name: str) -> dict[str, list[str]]:
    rows = page.tables[name]
    return {row[0]: row[1:] for row in rows[1:]}


def test_leak_table_shows_every_technique_with_its_measured_rate(results, written):
    _, html = written
    page = _Page()
    page.feed(html)
    assert {"family-llm", "llm-leak", "llm-inject", "llm-jailbreak", "llm-membership"} <= page.ids
    cells = results["leak"].samples["cells"]
    table = _table(page, "llm-leak")
    assert list(table) == LEAK_TECHNIQUES
    for t in LEAK_TECHNIQUES:
        mine = [c for c in cells if c["technique"] == t]
        k, iv = sum(c["leaked"] for c in mine), wilson_interval(sum(c["leaked"] for c in mine), len(mine))
        assert table[t][:3] == [f"{k}/{len(mine)}", pct(iv.estimate), interval([iv.low, iv.high])]
    total = sum(c["leaked"] for c in cells)
    assert 0 < total < len(cells)  # the target leaked on some prompts only: rows differ
    assert f"{total}/{len(cells)}" in html


def test_inject_tables_per_technique_placement_and_baseline(results, written):
    _, html = written
    page = _Page()
    page.feed(html)
    m = results["inject"].metrics
    for kind in ("technique", "placement", "task"):
        table = _table(page, f"llm-inject-{kind}")
        assert set(table) == set(m[kind + "s"])
        for name, row in m[kind + "s"].items():
            assert table[name] == [f"{row['successes']}/{row['n']}", pct(row["rate"]), interval(row["interval"])]
    baseline = _table(page, "llm-inject-baseline")
    assert {k: v[0] for k, v in baseline.items()} == {k: f"{v['successes']}/{v['n']}" for k, v in m["baseline"].items()}
    assert m["overall"]["successes"] > 0 and m["overall"]["echoes"] > 0  # obeyed on some, echoed on others


def test_jailbreak_raw_beside_corrected_and_the_judge_card(results, written):
    _, html = written
    page = _Page()
    page.feed(html)
    m = results["jailbreak"].metrics
    table = _table(page, "llm-jailbreak")
    for name, row in m["techniques"].items():
        assert table[name] == [f"{row['successes']}/{row['n']}", pct(row["raw"]), interval(row["raw_interval"]),
                               pct(row["corrected"]), interval(row["corrected_interval"])]
    assert table["any technique (per behaviour)"][0] == f"{m['overall']['successes']}/{m['overall']['n']}"
    card = m["judge"]
    confusion = _table(page, "llm-judge")
    assert confusion["labelled harmful"] == [f"TP {card['tp']}", f"FN {card['fn']}"]
    assert confusion["labelled harmless"] == [f"FP {card['fp']}", f"TN {card['tn']}"]
    text = " ".join(re.sub(r"<[^>]+>", "", html).split())
    assert f"sensitivity {pct(card['sensitivity'])} {interval(card['sensitivity_interval'])}" in text
    assert f"specificity {pct(card['specificity'])} {interval(card['specificity_interval'])}" in text
    assert "False refusal on benign look-alike prompts" in html and pct(m["false_refusal_overall"]["rate"]) in html


def test_membership_tpr_at_one_percent_and_auc_per_score(written):
    _, html = written
    page = _Page()
    page.feed(html)
    table = _table(page, "llm-membership")
    m = _membership().metrics
    assert set(table) == {"loss", "min_k (best)"}
    tpr1 = next(r for r in m["scores"]["loss"]["tpr_at_fpr"] if r["fpr"] == 0.01)
    assert table["loss"][0] == pct(tpr1["tpr"]) and table["loss"][3] == f"{m['scores']['loss']['auc']:.4g}"


def test_hostile_replies_are_escaped_cut_and_the_page_stays_offline(written):
    paths, html = written
    page = _Page()
    page.feed(html)
    assert "script" not in page.tags and "iframe" not in page.tags and "<img src=x" not in html
    assert not [a for a in page.attrs if a.lower().startswith("on")]  # no event handler attribute anywhere
    assert SCRIPT not in html and 'onerror=alert(1)>' not in html.replace("&gt;", "")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    assert "example transcripts" in html and "leaked</span>" in html
    # replies are cut at MAX_TEXT characters with a visible ellipsis (the echoing target writes 600+ x's)
    assert "x" * MAX_TEXT not in html and "x…" in html
    assert all(u.startswith("data:image/png;base64,") for u in page.urls)  # figures inline, nothing fetched
    assert "<link" not in html and not re.search(r"url\(|@import", html)
    md = paths["md"].read_text(encoding="utf-8")
    assert "### Language-model probes" in md and "<script" not in md and "<img" not in md
    assert "bastion assess m.gguf --train-data in.txt --system-prompt prompt.txt --plan plan.yaml" in html


def test_the_report_rebuilt_from_its_json_shows_the_same_section(written):
    from bastion.report.json_report import load_report

    paths, html = written
    assert render(load_report(paths["json"].read_text(encoding="utf-8")), "html") == html


def test_markdown_has_one_compact_table_per_probe(results, written):
    paths, _ = written
    md = paths["md"].read_text(encoding="utf-8")
    section = md.split("### Language-model probes", 1)[1]
    for probe in ("leak", "inject", "jailbreak", "membership"):
        assert f"**{probe}**" in section
    overall = results["leak"].metrics["overall"]
    assert f"| overall | {overall['leaks']}/{overall['n']} | {pct(overall['rate'])} |" in section.replace("\\", "")
    assert "TP " in section and "(best)" in section
    assert "alert" not in section  # no transcript in the summary


def test_clip_shows_hidden_characters_and_marks_the_cut():
    assert clip("a\u202eb\x00c") == "a\\u202eb\\u0000c"
    assert clip("y" * 500) == "y" * MAX_TEXT + "…" and clip(None) == ""


def test_classifier_only_and_probe_less_reports_are_unchanged(monkeypatch, results):
    evasion = FamilyReport(family="evasion", title="Evasion", status="assessed", grade="B",
                           results=[Result(family="evasion", attack="pgd", metrics={"overall": {"rate": 0.5}})])
    classifier = _assessment([evasion], kind="classifier")
    other = _assessment([FamilyReport(family="llm", title="Language models", status="assessed",
                                      results=[Result(family="llm", attack="gcg", metrics={"asr": 0.1})])])
    assert llm_probes(evasion) == [] and llm_probes(other.families[0]) == []
    before = {(name, fmt): render(a, fmt) for name, a in (("classifier", classifier), ("other", other))
              for fmt in ("html", "md")}
    import bastion.report.html as html_module
    import bastion.report.markdown as md_module

    monkeypatch.setattr(html_module, "LLM_TEMPLATE", "")
    monkeypatch.setattr(md_module, "_llm_tables", lambda probes: [])
    after = {(name, fmt): render(a, fmt) for name, a in (("classifier", classifier), ("other", other))
             for fmt in ("html", "md")}
    assert before == after  # the LLM section adds nothing where there is no probe to show
    assert "Language-model probes" not in before["classifier", "html"]
    assert "classes" in before["classifier", "html"] and "language model" not in before["classifier", "html"]


def test_report_renders_in_chromium_without_live_tags(written, tmp_path):
    from .test_report_chromium import browse, console_messages

    paths, _ = written
    run = browse(paths["html"], tmp_path, "--dump-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    assert console_messages(run.stderr) == []
    dom = _Page()
    dom.feed(run.stdout)
    assert {"llm-leak", "llm-inject", "llm-jailbreak", "llm-membership"} <= dom.ids
    assert "script" not in dom.tags and all(u.startswith("data:image/png;base64,") for u in dom.urls)
    assert not [a for a in dom.attrs if a.lower().startswith("on")]
