"""LMTarget on local Hugging Face folders: greedy generation, counting and budget, refusals, sandboxed templates,
and the `bastion attack llm` entry."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from bastion.cli.main import run  # noqa: E402
from bastion.core.errors import ModelLoadError, ParameterError, QueryBudgetExceeded  # noqa: E402
from bastion.lm import Sampling, open_lm  # noqa: E402
from bastion.lm.chat_format import render_fallback, render_template  # noqa: E402
from bastion.lm.tiny import TinyLM  # noqa: E402

SYSTEM = "The code is 4711."
USER = "hi"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny LM trained to answer in the fallback chat format by repeating its system prompt."""
    out = tmp_path_factory.mktemp("lm") / "echo"
    prompt = render_fallback([{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}])
    TinyLM(epochs=40, block=96, seed=0).train([prompt + SYSTEM + "\n<user>\n"] * 16, out)
    return out


def test_fallback_format_is_exact():
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]
    assert render_fallback(msgs) == "<system>\nS\n<user>\nU\n<assistant>\nA\n<assistant>\n"
    assert render_fallback(msgs[:2], add_generation_prompt=False) == "<system>\nS\n<user>\nU\n"
    with pytest.raises(ParameterError, match="role"):
        render_fallback([{"role": "tool", "content": "x"}])


def test_greedy_chat_is_deterministic_and_counted(folder):
    lm = open_lm(folder, system_prompt=SYSTEM)
    assert lm.access == "white-box" and lm.render([{"role": "user", "content": USER}]).startswith("<system>\n")
    first = lm.chat([{"role": "user", "content": USER}], max_new_tokens=24)
    second = lm.chat([{"role": "user", "content": USER}], max_new_tokens=24)
    assert first.text == second.text == SYSTEM  # the trained answer, cut at the next turn
    assert first.finished == "stop" and first.completion_tokens > len(SYSTEM)
    assert len(first.logprobs) == first.completion_tokens and max(first.logprobs) <= 0
    assert lm.queries == 2 and lm.prompt_tokens == 2 * first.prompt_tokens
    assert lm.completion_tokens == first.completion_tokens + second.completion_tokens
    # without the system prompt the answer differs; a length stop is reported as such
    other = open_lm(folder).chat([{"role": "user", "content": USER}], max_new_tokens=3)
    assert other.finished == "length" and other.completion_tokens == 3
    model, tokenizer = lm.model_and_tokenizer()
    assert isinstance(model, torch.nn.Module) and tokenizer.eos_token == "<eos>"


def test_sampling_is_seeded(folder):
    def texts(seed):
        lm = open_lm(folder, sampling=Sampling(temperature=5.0, seed=seed, max_new_tokens=12))
        return [lm.complete("<user>\n").text for _ in range(3)]
    assert texts(1) == texts(1) and texts(1) != texts(2)


def test_budget_stops_before_the_model_and_keeps_counts(folder):
    lm = open_lm(folder, system_prompt=SYSTEM, max_queries=2)
    lm.chat([{"role": "user", "content": USER}], max_new_tokens=4)
    lm.complete("<user>", max_new_tokens=4)
    used = (lm.queries, lm.prompt_tokens, lm.completion_tokens)
    with pytest.raises(QueryBudgetExceeded, match="2 of 2"):
        lm.chat([{"role": "user", "content": USER}])
    assert (lm.queries, lm.prompt_tokens, lm.completion_tokens) == used == (2, used[1], 8)
    with pytest.raises(ParameterError, match="max_new_tokens"):
        open_lm(folder).complete("x", max_new_tokens=10**6)


def test_remote_code_and_pickled_weights_are_refused(folder, tmp_path):
    custom = tmp_path / "custom"
    shutil.copytree(folder, custom)
    config = json.loads((custom / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilLM"}
    (custom / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="auto_map.*trust_remote_code=False"):
        open_lm(custom)
    pickled = tmp_path / "pickled"
    shutil.copytree(folder, pickled)
    model, _ = open_lm(folder).model_and_tokenizer()
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="pickled.*--trust"):
        open_lm(pickled)
    trusted = open_lm(pickled, trust=True, system_prompt=SYSTEM)  # clean scan + weights-only unpickler
    assert trusted.chat([{"role": "user", "content": USER}], max_new_tokens=24).text == SYSTEM
    with pytest.raises(ModelLoadError, match="not a language model"):
        open_lm(pickled / "config.json")
    with pytest.raises(ModelLoadError, match="no such"):
        open_lm(tmp_path / "missing")


ESCAPE = "{{ ''.__class__.__mro__[1].__subclasses__() }}{% for m in messages %}{{ m.content }}{% endfor %}"


def test_template_escape_is_refused_and_sandboxed(folder, tmp_path, monkeypatch):
    msgs = [{"role": "user", "content": "x"}]
    with pytest.raises(ModelLoadError, match="refusing the model's chat template"):
        render_template(ESCAPE, msgs)
    # the syntax-tree judge bypassed: the immutable sandbox still stops the walk
    monkeypatch.setattr("bastion.supplychain.template_ast.template_problems", lambda source: [])
    with pytest.raises(ModelLoadError, match="cannot be rendered"):
        render_template("{{ ''.__class__.__mro__[1].__subclasses__() }}", msgs)
    with pytest.raises(ModelLoadError, match="cannot be rendered"):
        render_template("{{ messages.append(1) }}", msgs)  # immutable: no mutation of the inputs
    monkeypatch.undo()
    ok = render_template("{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
                         "{% if add_generation_prompt %}[assistant]{% endif %}", msgs, {"bos_token": "<s>"})
    assert ok == "<s>[user]x[assistant]"
    # a folder whose tokenizer config carries the escape is refused by the scan before loading
    evil = tmp_path / "evil"
    shutil.copytree(folder, evil)
    cfg = json.loads((evil / "tokenizer_config.json").read_text())
    cfg["chat_template"] = ESCAPE
    (evil / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="refusing to load evil"):
        open_lm(evil)


def test_cli_runs_probes_and_fails_in_one_line(folder, tmp_path, capsys):
    (tmp_path / "m.txt").write_text("hi there\n<user>\nhi\n")
    (tmp_path / "n.txt").write_text("zz qq\nxx yy\n")
    (tmp_path / "sys.txt").write_text(SYSTEM)
    with pytest.raises(SystemExit) as exit_:
        run(["attack", "llm", "membership", str(folder), "--members", str(tmp_path / "m.txt"), "--nonmembers",
             str(tmp_path / "n.txt"), "--n-bootstrap", "10", "--system-prompt", str(tmp_path / "sys.txt"),
             "--max-new-tokens", "8", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert exit_.value.code == 0 and out["params"]["target"]["access"] == "white-box"
    for argv, message in [
        (["attack", "llm", "membership", str(tmp_path / "nothing")], "no such model"),
        (["attack", "llm", "membership", str(tmp_path / "m.txt")], "not a language model"),
        (["attack", "llm", "membership", "http://127.0.0.1:9/v1"], "cannot open http://127.0.0.1:9/v1"),
        (["attack", "llm", "nonsense", str(folder)], "unknown llm probe"),
        (["attack", "llm", "exposure", str(folder), "--system-prompt", str(tmp_path / "no.txt")], "cannot read"),
        (["attack", "llm", "exposure", str(folder), "--max-new-tokens", "x"], "must be a number"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            run(argv)
        err = capsys.readouterr().err.strip()
        assert exit_.value.code == 2 and message in err and len(err.splitlines()) == 1, (argv, err)


def test_gguf_chat_template_is_read_from_the_header(tmp_path):
    gguf = pytest.importorskip("gguf", reason="needs the llm extra (gguf)")
    from bastion.lm.gguf_meta import gguf_chat_template, gguf_strings

    path = tmp_path / "meta.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_array("tokenizer.ggml.tokens", ["a", "bb", "ccc"])
    writer.add_uint32("llama.context_length", 64)
    writer.add_string("tokenizer.chat_template", "{% for m in messages %}{{ m.content }}{% endfor %}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    assert gguf_chat_template(path) == "{% for m in messages %}{{ m.content }}{% endfor %}"
    assert gguf_strings(path, {"general.architecture"}) == {"general.architecture": "llama"}
    (tmp_path / "cut.gguf").write_bytes(path.read_bytes()[:60])
    with pytest.raises(ModelLoadError, match="past the end"):
        gguf_chat_template(tmp_path / "cut.gguf")
