"""LM availability: EOS suppression lengthens a tiny LM's replies, over-generation reaches the cap, and a capped
target is reported as capped (ratios flagged as lower bounds, the cap as a high finding), never as unbounded.

The tiny LM answers "q: cat? a:" with the reversed word and stops (EOS), and knows a long mode ("count: 1 2 3 ...").
Nothing here asserts a time.
"""

from __future__ import annotations

import random

import pytest

from bastion.attacks.availability.lm import EOSSuppress, Overgen, generation_stats
from bastion.core.errors import ParameterError
from bastion.families.availability_verdicts import judge_availability
from bastion.lm.hf_target import HFTarget
from bastion.lm.tiny import TinyLM

WORDS = ["cat", "dog", "sun", "red", "blue", "tree", "fish", "bird", "moon", "star", "rain", "book"]
FAST = {"n_bootstrap": 100}


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory):
    rng = random.Random(0)
    texts = []
    for i in range(240):
        word = rng.choice(WORDS)
        texts.append(f"q: {word}? a: {word[::-1]}.")
        if i % 4 == 0:
            k = rng.randint(0, 5)
            texts.append("count: " + " ".join(str((k + j) % 10) for j in range(12)) + ".")
    folder = tmp_path_factory.mktemp("avail-lm") / "lm"
    model, tokenizer = TinyLM(epochs=15, block=32, end_with_eos=True, seed=0).train(texts, folder)
    return folder, HFTarget.from_model(model, tokenizer)


@pytest.fixture(scope="module")
def tiny_lm(tiny_lm_dir):
    return tiny_lm_dir[1]


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


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    from bastion.cli.main import run

    with pytest.raises(SystemExit) as done:
        run(list(args))
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


def test_cli_overgen_and_eos_suppress_through_attack_availability(tiny_lm_dir, tmp_path, capsys):
    import json

    folder = str(tiny_lm_dir[0])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    library = tmp_path / "library.txt"
    library.write_text("count: 1 2\n")
    code, out, err = _cli(capsys, "attack", "availability", "overgen", folder, "--data", str(prompts), "--library",
                          str(library), "--mode", "complete", "--max-new-tokens", "8", "--n-bootstrap", "50",
                          "--json", "--fail-on", "high")
    result = json.loads(out)
    assert code == 1, err  # the cap is reached: a high finding fails the run
    assert result["attack"] == "overgen" and result["metrics"]["max_new_tokens"] == 8
    assert result["metrics"]["caps"][0]["attack_fraction"] == 1.0
    assert any(f["metric"] == "generation cap_reached" and f["severity"] == "high" for f in result["findings"])
    code, out, err = _cli(capsys, "attack", "availability", "eos-suppress", folder, "--data", str(prompts),
                          "--suffix-len", "4", "--steps", "2", "--top-k", "4", "--batch", "4", "--horizon", "4",
                          "--n-fit", "1", "--init", "a", "--max-new-tokens", "8", "--n-bootstrap", "50", "--json")
    result = json.loads(out)
    assert code == 0, err
    assert len(result["metrics"]["suffix_ids"]) == 4 and result["metrics"]["n"] == len(PROMPTS)
    code, out, err = _cli(capsys, "defend", "generation-cap", folder, "--data", str(prompts), "--library",
                          str(library), "--mode", "complete", "--max-new-tokens", "8", "--cap", "3",
                          "--n-bootstrap", "50", "--json")
    result = json.loads(out)
    assert code == 0, err
    assert result["metrics"]["before"]["attack_tokens"] == 8 and result["metrics"]["after"]["attack_tokens"] == 3
    assert result["findings"] and result["findings"][0]["family"] == "availability"


def test_cli_lm_attacks_refuse_bad_input_in_one_line(tiny_lm_dir, tmp_path, capsys):
    from bastion.demo.early_exit import EarlyExitCNN, save_early_exit

    folder = str(tiny_lm_dir[0])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("q: cat? a:\n")
    classifier = save_early_exit(EarlyExitCNN(), tmp_path / "ee.pt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    cases = [
        (["overgen", folder], "natural prompts are needed"),
        (["overgen", folder, "--data", str(tmp_path / "missing.txt")], "cannot read it"),
        (["overgen", folder, "--data", str(empty)], "no prompts"),
        (["overgen", folder, "--data", str(prompts), "--placement", "everywhere"], "placement"),
        (["overgen", folder, "--data", str(prompts), "--steps", "3"], "unknown option"),
        (["eos-suppress", folder, "--data", str(prompts), "--steps", "many"], "must be an integer"),
        (["overgen", str(classifier), "--data", str(prompts)], ""),
    ]
    for args, message in cases:
        code, _, err = _cli(capsys, "attack", "availability", *args)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (args, err)
        assert message in err, (args, err)


def test_generation_cap_bounds_overgeneration_and_counts_truncated_natural_replies(tiny_lm):
    from bastion.defenses.availability.request_limits import GenerationCap
    from bastion.families import judged

    defense = GenerationCap(cap=4, base_cap=12, mode="complete", library=["count: 1 2"], n_bootstrap=50)
    result = defense.run(tiny_lm, prompts=PROMPTS)  # the tiny LM's long mode stands in for over-generation
    before, after = result.metrics["before"], result.metrics["after"]
    assert before["attack_tokens"] == 12 and after["attack_tokens"] == 4  # reached either cap: bounded by it
    assert after["tokens_ratio"]["estimate"] < before["tokens_ratio"]["estimate"]
    assert 0.0 <= result.metrics["natural_truncated"] <= 1.0
    assert result.metrics["natural_tokens_lost"] >= 0
    finding = judged(result).findings[0]
    assert finding.metric == "residual_tokens_ratio" and "12 -> 4" in finding.title
    with pytest.raises(ParameterError):
        GenerationCap(cap=64, base_cap=32)


def test_overgen_selection_keeps_the_prompts_that_draw_the_most_tokens():
    from bastion.lm.lm_target import LMTarget, Reply

    class Echo(LMTarget):
        """Echoes the user turn word by word (a base model in a chat format), up to the cap."""

        def _chat(self, messages, max_new_tokens):
            words = messages[-1]["content"].split()
            n = min(len(words), max_new_tokens)
            return Reply(" ".join(words[:n]), len(words), n, "length" if n == max_new_tokens else "stop", 0.0)

    natural = ["What is 2 + 2?", "Name a colour.", "Say hi.", "Is ice cold?"]
    plain = Overgen(max_new_tokens=30, n_bootstrap=100).run(Echo("echo"), prompts=natural)
    chosen = Overgen(max_new_tokens=30, n_bootstrap=100, select=2)
    result = chosen.run(Echo("echo"), prompts=natural)
    capped = result.samples["attack_capped"]
    assert sum(capped) == len(natural) > sum(plain.samples["attack_capped"])  # every selected prompt reaches the cap
    assert len(result.metrics["selection"]) == 13 and result.metrics["selection"][0]["tokens"] == 30
    assert result.queries == 13 + 2 * len(natural)  # the trials are counted
    with pytest.raises(ParameterError, match="select"):
        Overgen(select=-1)


@pytest.fixture()
def ticking_clock(monkeypatch):
    """The deadline's clock advances one second per reading (one reading per generated token): deterministic."""
    from bastion.lm import hf_target

    ticks = iter(range(10**6))
    monkeypatch.setattr(hf_target, "_clock", lambda: float(next(ticks)))


def test_an_enforced_deadline_stops_generation(tiny_lm, ticking_clock):
    lm = HFTarget.from_model(*tiny_lm.model_and_tokenizer())
    free = lm.complete("count: 1 2", max_new_tokens=12)
    assert free.finished == "length" and free.completion_tokens == 12
    lm.deadline_s = 3.5  # the 4th token's check sees 4 s passed
    cut = lm.complete("count: 1 2", max_new_tokens=12)
    assert cut.finished == "deadline" and cut.completion_tokens == 4
    assert cut.text and free.text.startswith(cut.text)  # the same reply, stopped early
    lm.deadline_s = 8.5
    short = lm.complete("q: cat? a:", max_new_tokens=12)  # a reply that ends before the deadline is untouched
    assert short.finished == "stop" and short.completion_tokens < 8
    lm.deadline_s = 3.5
    stats = generation_stats(lm, ["count: 1 2"], "complete", 12)
    assert stats["capped"].all() and stats["cut"].all()  # a deadline stop is a cap reached, counted as a cut


def test_a_deadline_is_refused_where_it_cannot_be_enforced(tiny_lm):
    from bastion.lm.lm_target import LMTarget

    class Remote(LMTarget):
        def _chat(self, messages, max_new_tokens):
            raise AssertionError("not called")

    with pytest.raises(ParameterError, match="cannot stop a generation"):
        Remote("remote").deadline_s = 1.0
    for bad in (0, -1.0, float("nan"), True, "2"):
        with pytest.raises(ParameterError, match="deadline_s"):
            HFTarget.from_model(*tiny_lm.model_and_tokenizer()).deadline_s = bad
    from bastion.defenses.availability.request_limits import GenerationDeadline

    with pytest.raises(ParameterError, match="cannot stop a generation"):
        GenerationDeadline(deadline_s=1.0).run(Remote("remote"), prompts=["hi"])
    with pytest.raises(ParameterError):
        GenerationDeadline(deadline_x=0.5)


def test_cli_generation_deadline_cuts_over_generation(tiny_lm_dir, tmp_path, capsys, ticking_clock):
    import json

    folder = str(tiny_lm_dir[0])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    library = tmp_path / "library.txt"
    library.write_text("count: 1 2\n")
    code, out, err = _cli(capsys, "defend", "generation-deadline", folder, "--data", str(prompts), "--library",
                          str(library), "--mode", "complete", "--max-new-tokens", "12", "--deadline-s", "6.5",
                          "--n-bootstrap", "50", "--json")
    assert code == 0, err
    m = json.loads(out)["metrics"]
    assert m["enforced"] and m["deadline_s"] == 6.5
    assert m["before"]["attack_tokens"] == 12 and m["before"]["attack_cut"] == 0.0
    assert m["after"]["attack_tokens"] == 7 and m["after"]["attack_cut"] == 1.0  # stopped at the 7th token's check
    assert m["natural_cut"] == 0.0 and m["natural_tokens_lost"] == 0.0  # the short natural answers end first
    finding = json.loads(out)["findings"][0]
    assert finding["metric"] == "residual_seconds_ratio" and "deadline 6.5 s (enforced)" in finding["title"]
    code, _, err = _cli(capsys, "defend", "generation-deadline", folder, "--data", str(prompts), "--deadline-s",
                        "soon")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--deadline-s" in err


@pytest.fixture(scope="module")
def chat_lm_dir(tmp_path_factory):
    """A barely trained tiny LM whose context holds the chat-format prompts of `bastion assess` (what it says does
    not matter here: the test checks that the mitigation jobs run and are judged)."""
    folder = tmp_path_factory.mktemp("chat-lm") / "lm"
    TinyLM(epochs=1, block=300, n_embd=32, seed=0).train([f"q: {w}? a: {w[::-1]}." for w in WORDS] * 4, folder)
    return folder


def test_availability_mitigations_run_as_assess_jobs(chat_lm_dir):
    import json

    from bastion.assess.api import assess
    from bastion.lm.lm_target import LMTarget, Reply
    from bastion.lm.openai_server import serve_lm

    plan = {"families": {"llm": False, "availability": {
        "n_samples": 2, "attacks": {"overgen": {"max_new_tokens": 8, "n_bootstrap": 20}},
        "mitigations": {"generation-cap": {"cap": 2, "base_cap": 8, "n_bootstrap": 20},
                        "generation-deadline": {"deadline_s": 600, "max_new_tokens": 8, "n_bootstrap": 20}}}}}
    a = assess(chat_lm_dir, plan=plan)
    avail = a.family("availability")
    by_name = {r.attack: r for r in avail.results}
    assert avail.status == "assessed" and set(by_name) == {"overgen", "generation-cap", "generation-deadline"}
    cap = by_name["generation-cap"].metrics
    assert cap["before"]["max_new_tokens"] == 8 and cap["after"]["attack_tokens"] <= 2
    deadline = by_name["generation-deadline"].metrics
    assert deadline["enforced"] and deadline["deadline_s"] == 600 and deadline["after"]["attack_cut"] == 0.0
    assert {"residual_tokens_ratio", "residual_seconds_ratio"} <= {f.metric for f in avail.findings}

    class Terse(LMTarget):
        def _chat(self, messages, max_new_tokens):
            return Reply("ok", 3, 1, "stop", 0.0)

    server, url = serve_lm(Terse("terse"))
    try:  # an endpoint cannot be held to a deadline by its client: the job says so
        b = assess(url, plan={"families": {"llm": False, "availability": {
            "n_samples": 2, "attacks": {}, "mitigations": {"generation-deadline": {"deadline_s": 5}}}}})
    finally:
        server.shutdown()
    assert "cannot stop a generation at a deadline" in json.dumps(b.family("availability").to_dict())
    with pytest.raises(ParameterError, match="not an availability mitigation"):
        assess(chat_lm_dir, plan={"families": {"llm": False, "availability": {"mitigations": {"strip": {}}}}})
