"""LM availability: EOS suppression lengthens a tiny LM's replies, over-generation reaches the cap, and a capped
target is reported as capped (ratios flagged as lower bounds, the cap as a high finding), never as unbounded.

The tiny LM answers "q: cat? a:" with the reversed word and stops (EOS), and knows a long mode ("count: 1 2 3 ...").
Nothing here asserts a time.
"""

from __future__ import annotations

import random

import pytest

from bastion.attacks.availability.judge import judge_availability
from bastion.attacks.availability.lm import EOSSuppress, Overgen, generation_stats
from bastion.core.errors import ParameterError
from bastion.lm.hf_target import HFTarget
from bastion.lm.tiny import TinyLM

WORDS = ["cat", "dog", "sun", "red", "blue", "tree", "fish", "bird", "moon", "star", "rain", "book"]
FAST = {"n_bootstrap": 100}


@pytest.fixture(scope="module")
def tiny_lm():
    rng = random.Random(0)
    texts = []
    for i in range(240):
        word = rng.choice(WORDS)
        texts.append(f"q: {word}? a: {word[::-1]}.")
        if i % 4 == 0:
            k = rng.randint(0, 5)
            texts.append("count: " + " ".join(str((k + j) % 10) for j in range(12)) + ".")
    model, tokenizer = TinyLM(epochs=15, block=32, end_with_eos=True, seed=0).train(texts)
    return HFTarget.from_model(model, tokenizer)


PROMPTS = [f"q: {w}? a:" for w in WORDS[:8]]


def test_the_tiny_lm_answers_briefly_and_stops(tiny_lm):
    stats = generation_stats(tiny_lm, PROMPTS, "complete", 16)
    assert not stats["capped"].any()
    assert stats["tokens"].mean() < 8


def test_eos_suppression_lengthens_the_replies(tiny_lm):
    attack = EOSSuppress(suffix_len=4, steps=30, top_k=16, batch=32, horizon=8, n_fit=3, init="a",
                         max_new_tokens=16, **FAST)
    result = attack.run(tiny_lm, prompts=PROMPTS)
    tokens = result.metrics["mean_tokens"]
    assert tokens["attack"] >= 2 * tokens["natural"], result.metrics
    assert result.metrics["eos_loss"][-1] < result.metrics["eos_loss"][0]  # the search lowered its objective
    assert len(result.metrics["suffix_ids"]) == 4 and result.metrics["suffix"] != "aaaa"
    # the unoptimised start ("aaaa") does not do it: the search is what lengthens the replies
    start = EOSSuppress(suffix_len=4, steps=1, top_k=1, batch=1, horizon=8, n_fit=3, init="a", max_new_tokens=16,
                        **FAST).run(tiny_lm, prompts=PROMPTS)
    assert start.metrics["mean_tokens"]["attack"] < tokens["attack"]


def test_a_capped_target_is_reported_as_capped_not_unbounded(tiny_lm):
    attack = Overgen(library=["count: 1 2"], mode="complete", max_new_tokens=8, **FAST)
    result = attack.run(tiny_lm, prompts=PROMPTS)
    cap = result.metrics["caps"][0]
    assert cap["reached"] and cap["attack_fraction"] == 1.0 and cap["natural_fraction"] == 0.0
    assert result.metrics["capped"] and "lower bounds" in result.metrics["note"]
    assert all(d["lower_bound"] for d in result.metrics["dimensions"])
    assert result.metrics["mean_tokens"]["attack"] == 8  # never more than the cap
    findings = judge_availability(result)
    capped = [f for f in findings if f.metric == "generation cap_reached"]
    assert capped and capped[0].severity == "high" and "AML.T0029" in capped[0].atlas
    assert any("LLM10" in o for o in capped[0].owasp)


def test_overgen_appends_and_counts_a_query_budget(tiny_lm):
    lm = HFTarget.from_model(*tiny_lm.model_and_tokenizer(), max_queries=5)
    result = Overgen(library=["count: 1 2"], placement="append", mode="complete", max_new_tokens=8,
                     **FAST).run(lm, prompts=PROMPTS)
    assert result.status == "partial" and result.metrics["n"] < len(PROMPTS)


def test_bad_parameters_and_inputs_are_refused(tiny_lm):
    with pytest.raises(ParameterError):
        Overgen(placement="everywhere")
    with pytest.raises(ParameterError):
        Overgen(mode="shout")
    with pytest.raises(ParameterError):
        EOSSuppress(loss="hinge")
    with pytest.raises(ParameterError):
        EOSSuppress(max_new_tokens=0)
    with pytest.raises(ParameterError):
        Overgen().run(tiny_lm, prompts=[])
