"""Leakage attack: decoders recover encoded canaries and reject near misses; a repeating target leaks, a refusing
one does not; Wilson intervals on known cases."""

import base64
import codecs
from types import SimpleNamespace

import pytest

from bastion.attacks.llm.leakage import Leak, canary_leaked, lcs_share, prompt_library
from bastion.core.errors import ParameterError
from bastion.evaluation.metrics import wilson_interval

CANARY = "ZX-K7Q2M9PA"


@pytest.mark.parametrize("reply,kind", [
    (f"Sure, the code is {CANARY}.", "plain"),
    (base64.b64encode(f"code {CANARY}".encode()).decode(), "base64"),
    (CANARY.encode().hex(), "hex"),
    (codecs.encode(CANARY, "rot_13"), "rot13"),
    (CANARY[::-1], "reversed"),
    (" ".join(CANARY), "plain"),  # normalisation drops spacing
    ("\n".join(CANARY), "plain"),
])
def test_decoders_recover_canary(reply, kind):
    assert canary_leaked(CANARY, reply) == kind


def test_fuzzy_and_near_miss():
    assert canary_leaked(CANARY, "the code is ZX-K7Q2M9PB") == "fuzzy:plain"  # one edit of 10
    assert canary_leaked(CANARY, "the code is ZX-K7Q2M9PB", fuzzy=0.0) is None
    assert canary_leaked(CANARY, "the code is ZX-AB12CD34") is None  # same shape, different secret
    assert canary_leaked(CANARY, "I cannot share that.") is None


def test_lcs_share():
    assert lcs_share("abcdef", "xxabcdyy") == pytest.approx(4 / 6)
    assert lcs_share("abc", "") == 0.0


def test_wilson_known_cases():
    iv = wilson_interval(5, 10)
    assert iv.estimate == 0.5 and iv.low == pytest.approx(0.2366, abs=1e-3) and iv.high == pytest.approx(0.7634,
                                                                                                            abs=1e-3)
    assert wilson_interval(0, 20).low == 0.0 and wilson_interval(0, 20).high == pytest.approx(0.1611, abs=1e-3)


class _Echo:
    """A target that repeats its system prompt (leaks) or refuses."""

    def __init__(self, leaks: bool):
        self.leaks, self.queries = leaks, 0

    def chat(self, messages, max_new_tokens=None):
        self.queries += 1
        text = messages[0]["content"] if self.leaks else "I'm sorry, I can't help with that."
        return SimpleNamespace(text=text)


def test_leak_flags_repeater_not_refuser():
    leaky = Leak().run(_Echo(True), canary=CANARY)
    safe = Leak().run(_Echo(False), canary=CANARY)
    assert leaky.metrics["overall"]["rate"] == 1.0 and leaky.metrics["overall"]["prompt_overlap"] == 1.0
    assert safe.metrics["overall"]["leaks"] == 0 and safe.metrics["overall"]["interval"][1] < 0.3
    n = len(prompt_library())
    multi = sum(len(p["turns"]) - 1 for p in prompt_library())
    assert leaky.queries == n + multi and len(leaky.samples["cells"]) == n
    assert set(leaky.metrics["techniques"]) == {"direct", "roleplay", "encoding", "continuation", "multiturn"}


def test_budget_gives_partial_and_bad_params():
    result = Leak(max_queries=3).run(_Echo(True), canary=CANARY)
    assert result.status == "partial" and result.queries == 3
    with pytest.raises(ParameterError):
        Leak(techniques=["nope"])
