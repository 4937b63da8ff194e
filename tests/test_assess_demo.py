"""`bastion demo`: the full assessment of both embedded demo models, every family, with nothing from the network
(the fixture refuses every outgoing connection while the demo runs)."""

from __future__ import annotations

from bastion.store import RunStore

from .assess_fixtures import demo_run  # noqa: F401


def test_demo_assesses_every_family_of_both_models(demo_run):  # noqa: F811
    out, assessments, store_path = demo_run
    assert [a.title for a in assessments] == ["digits-cnn.pt2", "breast-cancer-mlp.pt2", "gemma-3-270m-q4_k_m.gguf"]
    for a in assessments[:2]:
        assert a.complete
        for fam in a.families:
            if fam.family == "llm":
                assert fam.status == "skipped" and fam.reason == "not applicable: not a language model"
                continue
            assert fam.status == "assessed" and fam.results, (a.title, fam.family, fam.reason, fam.errors)
        assert a.environment["packages"]["torch"]
    digits = assessments[0]
    scanners = {r.attack for r in digits.family("backdoor").results}
    assert "neural-cleanse" in scanners
    scanned = digits.family("supply_chain").results[0].metrics["files"]
    assert len(scanned) == 3 and all(f["sha256"] for f in scanned)  # model + train and test data files
    for name in ("digits-cnn", "breast-cancer-mlp"):
        assert (out / name / "report.html").exists() and (out / name / "report.sarif").exists()
    index = (out / "index.html").read_text()
    assert 'href="digits-cnn/report.html"' in index and 'href="breast-cancer-mlp/report.html"' in index
    assert (out / "summary.md").read_text().count("## Bastion assessment") == 3
    with RunStore(store_path) as store:
        assert {r["id"] for r in store.list_runs()} == {a.run_id for a in assessments}


def test_demo_assesses_gemma_as_a_deployed_language_model(demo_run):  # noqa: F811
    out, assessments, _ = demo_run
    gemma = assessments[2]
    assert gemma.complete and gemma.model["kind"] == "language-model" and gemma.model["white_box"]
    llm = gemma.family("llm")
    assert llm.status == "assessed" and {r.attack for r in llm.results} == {"leak", "inject", "jailbreak"}
    metrics = {f.metric for f in llm.findings}
    assert {"system-prompt leak rate", "injection success rate"} <= metrics
    assert gemma.family("supply_chain").status == "assessed"  # the GGUF file was scanned
    assert [r.attack for r in gemma.family("availability").results] == ["overgen"]
    assert gemma.family("evasion").reason == "not applicable: a language model"
    assert (out / "gemma-3-270m" / "report.html").exists() and 'href="gemma-3-270m/report.html"' in (
        out / "index.html").read_text()
