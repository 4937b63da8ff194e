"""`bastion attack llm leak|inject` on an untrained tiny LM folder: JSON result, bad input exits 2."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from bastion.cli.main import run  # noqa: E402
from bastion.lm.tiny import TinyLM, char_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("leaklm")
    chars = "".join(chr(c) for c in range(32, 127)) + "\n"
    TinyLM(epochs=0, n_embd=16, block=768, seed=0).train([chars], root / "lm", tokenizer=char_tokenizer([chars]))
    (root / "system.txt").write_text("You are the support bot of Acme.")
    return root


@pytest.mark.parametrize("probe,extra", [("leak", ["--techniques", "direct"]),
                                         ("inject", ["--techniques", "ignore_previous", "--tasks", "classify"])])
def test_cli_json(lm, capsys, probe, extra):
    with pytest.raises(SystemExit) as exit_:
        run(["attack", "llm", probe, str(lm / "lm"), "--system-prompt", str(lm / "system.txt"),
             "--max-new-tokens", "4", *extra, "--json"])
    assert exit_.value.code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["family"] == "llm" and out["attack"] == probe and out["metrics"]["overall"]["n"] > 0


def test_cli_bad_technique_exit_2(lm, capsys):
    with pytest.raises(SystemExit) as exit_:
        run(["attack", "llm", "leak", str(lm / "lm"), "--techniques", "telepathy"])
    assert exit_.value.code == 2
    assert "unknown leak technique" in capsys.readouterr().err
