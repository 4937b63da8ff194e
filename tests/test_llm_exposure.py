"""Canary exposure and k-extractability on a tiny character LM (Carlini et al. 2019; 2021)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")

from bastion.attacks.llm.exposure import CanaryExposure, exposure_exact, exposure_extrapolated  # noqa: E402
from bastion.core.errors import ParameterError  # noqa: E402
from bastion.families import judged  # noqa: E402
from bastion.lm.tiny import TinyLM  # noqa: E402

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "big", "small", "red", "blue", "house", "tree"]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, 6)) for _ in range(40)]
    # one model, two canaries: 472 inserted once, 981 inserted 20 times
    folder = tmp_path_factory.mktemp("canary") / "lm"
    model, tok = TinyLM(epochs=8, n_embd=48, block=40, seed=0).train(
        texts, folder, canaries={"my pin is 472": 1, "my pin is 981": 20})
    return model, tok, texts, folder


def test_exposure_rises_with_repetitions(lm):
    model, tok, *_ = lm
    attack = CanaryExposure(length=3)
    once_result, often_result = attack.run((model, tok), secret="472"), attack.run((model, tok), secret="981")
    once, often = once_result.metrics, often_result.metrics
    assert once["exact"] and once["n_candidates"] == 1000
    assert often["exposure"] > once["exposure"] + 2
    assert often["exposure"] > 0.75 * often["max_exposure"]
    # the llm family judges: the often-repeated canary is memorised (high, LLM02), the other is not high
    high = judged(often_result).findings[0]
    assert high.severity == "high" and high.family == "llm" and high.owasp == [
        "LLM02:2025 Sensitive Information Disclosure"]
    assert judged(once_result).findings[0].severity != "high"


def test_extrapolated_exposure_tracks_the_exact_one(lm):
    model, tok, *_ = lm
    exact = CanaryExposure(length=3).run((model, tok), secret="981").metrics["exposure"]
    sampled = CanaryExposure(length=3, max_enumerate=10, n_samples=400).run((model, tok), secret="981").metrics
    assert not sampled["exact"]
    assert abs(sampled["exposure"] - exact) < 3


def test_exposure_formulas():
    px = np.arange(1024, dtype=float)
    assert exposure_exact(0.0, px) == pytest.approx(10.0)  # rank 1 of 2^10
    assert exposure_exact(1023.0, px) == pytest.approx(0.0)
    sample = np.random.default_rng(0).normal(50, 5, 5000)
    assert exposure_extrapolated(50.0, sample) == pytest.approx(1.0, abs=0.1)  # the median: half are lower


def test_repeated_training_texts_are_extractable(lm):
    model, tok, *_ = lm
    metrics = CanaryExposure(length=3, prefix_tokens=10, suffix_tokens=3).run(
        (model, tok), secret="981", texts=["my pin is 981", "my pin is 472"]).metrics
    assert metrics["n_texts"] == 2 and metrics["extractable_examples"][:1] == [0]


def test_bad_secret_is_a_parameter_error(lm):
    model, tok, *_ = lm
    with pytest.raises(ParameterError, match="3 characters"):
        CanaryExposure(length=3).run((model, tok), secret="12a4")


def test_cli_exposure_json_and_bad_option(lm, capsys):
    from bastion.cli.main import run

    folder = lm[3]
    with pytest.raises(SystemExit) as exit_:
        run(["attack", "llm", "exposure", str(folder), "--secret", "981", "--json"])
    assert exit_.value.code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metrics"]["exact"] and out["metrics"]["exposure"] > 7
    with pytest.raises(SystemExit) as exit_:
        run(["attack", "llm", "exposure", str(folder), "--secret", "981", "--bogus", "1"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "unknown option '--bogus'" in err and len(err.splitlines()) == 1
