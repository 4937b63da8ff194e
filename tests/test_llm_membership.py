"""LM membership inference (LOSS, zlib, Min-K%, Min-K%++, reference) on tiny character LMs, and its CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")

from bastion.attacks.llm.membership import LMMembership  # noqa: E402
from bastion.cli.main import run  # noqa: E402
from bastion.families import judged  # noqa: E402
from bastion.lm.tiny import TinyLM, char_tokenizer  # noqa: E402

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "big", "small", "red", "blue", "house", "tree"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(WORDS, 7)) for _ in range(80)]
    members, nonmembers = texts[:40], texts[40:]
    tok = char_tokenizer(texts)
    root = tmp_path_factory.mktemp("lms")
    overfit = TinyLM(epochs=25, n_embd=48, block=48, seed=0).train(members, root / "overfit", tokenizer=tok)
    untrained = TinyLM(epochs=0, n_embd=48, block=48, seed=1).train(members, root / "untrained", tokenizer=tok)
    other = TinyLM(epochs=0, n_embd=48, block=48, seed=1).train(["xyz q"], root / "other")  # its own tokenizer
    (root / "members.txt").write_text("\n".join(members) + "\n")
    (root / "nonmembers.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in nonmembers) + "\n")
    (root / "empty.txt").write_text("\n")
    return {"root": root, "members": members, "nonmembers": nonmembers, "overfit": overfit,
            "untrained": untrained, "other": other}


def test_overfitted_model_leaks_membership(corpus):
    result = LMMembership(n_bootstrap=50).run(corpus["overfit"], members=corpus["members"],
                                              nonmembers=corpus["nonmembers"], reference=corpus["untrained"])
    scores = result.metrics["scores"]
    assert set(scores) == {"loss", "zlib", "min_k", "min_k_pp", "reference"}
    assert scores["loss"]["auc"] > 0.75 and scores["loss"]["auc_ci"][0] > 0.5
    assert scores["reference"]["auc"] > 0.75
    assert not result.findings  # the attack measures; the llm family judges
    findings = judged(result).findings
    assert findings and findings[0].family == "llm" and findings[0].severity != "info"
    assert findings[0].owasp == ["LLM02:2025 Sensitive Information Disclosure"] and findings[0].atlas == [
        "AML.T0024.000"]


def test_untrained_or_reference_equal_model_is_at_chance(corpus):
    same = LMMembership(n_bootstrap=20).run(corpus["overfit"], members=corpus["members"],
                                            nonmembers=corpus["nonmembers"], reference=corpus["overfit"])
    assert same.metrics["scores"]["reference"]["auc"] == pytest.approx(0.5)  # calibrated by itself: no signal
    blank = LMMembership(n_bootstrap=20).run(corpus["untrained"], members=corpus["members"],
                                             nonmembers=corpus["nonmembers"])
    assert 0.3 < blank.metrics["scores"]["loss"]["auc"] < 0.7


def test_cli_json(corpus, capsys):
    root = corpus["root"]
    with pytest.raises(SystemExit) as exit_:
        run(["attack", "llm", "membership", str(root / "overfit"), "--members", str(root / "members.txt"),
             "--nonmembers", str(root / "nonmembers.jsonl"), "--reference", str(root / "untrained"),
             "--n-bootstrap", "10", "--json"])
    assert exit_.value.code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["family"] == "llm" and out["metrics"]["scores"]["reference"]["auc"] > 0.75


@pytest.mark.parametrize(("extra", "message"), [
    (["--members", "empty.txt"], "has no records"),
    (["--members", "members.txt", "--reference", "other"], "tokenizer differs"),
    (["--members", "missing.txt"], "does not exist"),
    (["--members", "members.txt", "--k", "two"], "must be a number"),
])
def test_cli_bad_input_is_one_line_and_exit_2(corpus, capsys, extra, message):
    root = corpus["root"]
    args = [a if a.startswith("--") or a == "two" else str(root / a) for a in extra]
    with pytest.raises(SystemExit) as exit_:
        run(["attack", "llm", "membership", str(root / "overfit"), "--nonmembers", str(root / "nonmembers.jsonl"),
             *args])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and message in err and len(err.splitlines()) == 1
