"""The OpenAI-compatible endpoint target against a real server on 127.0.0.1 (a tiny LM behind the stdlib server of
bastion.lm.openai_server) and against hostile servers: every failure is one TargetError/ModelLoadError line."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("transformers")

from bastion.cli.main import run  # noqa: E402
from bastion.core.errors import AccessError, ModelLoadError, ParameterError, QueryBudgetExceeded  # noqa: E402
from bastion.lm import TargetError, open_lm  # noqa: E402
from bastion.lm.chat_format import render_fallback  # noqa: E402
from bastion.lm.endpoint_target import MAX_BODY  # noqa: E402
from bastion.lm.hf_target import HFTarget  # noqa: E402
from bastion.lm.openai_server import serve_lm  # noqa: E402
from bastion.lm.tiny import TinyLM  # noqa: E402

SYSTEM = "Key 31."


@pytest.fixture(scope="module")
def server():
    prompt = render_fallback([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}])
    model, tok = TinyLM(epochs=30, block=64, seed=1).train([prompt + SYSTEM + "\n<user>\n"] * 16)
    local = HFTarget.from_model(model, tok)
    srv, url = serve_lm(local, name="tiny")
    yield url, local
    srv.shutdown()


def test_round_trip_with_tokens_and_logprobs(server, monkeypatch):
    url, local = server
    monkeypatch.setenv("TINY_KEY", "s3cret")
    lm = open_lm(url, system_prompt=SYSTEM, api_key_env="TINY_KEY", max_queries=2)
    assert lm.access == "text" and lm.model_name == "tiny"
    reply = lm.chat([{"role": "user", "content": "hi"}], max_new_tokens=20)
    expected = local.chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}],
                          max_new_tokens=20)
    assert reply.text == expected.text == SYSTEM and reply.finished == "stop"
    assert (reply.prompt_tokens, reply.completion_tokens) == (expected.prompt_tokens, expected.completion_tokens)
    assert reply.logprobs == pytest.approx(expected.logprobs) and lm.offers_logprobs
    raw = lm.complete("<user>\n", max_new_tokens=5)
    assert raw.completion_tokens == 5 and raw.finished == "length"
    assert lm.queries == 2 and lm.completion_tokens == reply.completion_tokens + 5
    with pytest.raises(QueryBudgetExceeded):
        lm.chat([{"role": "user", "content": "hi"}])
    assert lm.queries == 2
    with pytest.raises(AccessError, match="text-only"):
        lm.model_and_tokenizer()
    with pytest.raises(ParameterError, match="NO_SUCH_KEY"):
        open_lm(url, api_key_env="NO_SUCH_KEY")


class _Hostile(BaseHTTPRequestHandler):
    """Answers /v1/models properly, then misbehaves on completions as the path's mode says."""

    mode = "ok"

    def log_message(self, *args):
        pass

    def _body(self, code, body: bytes):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        self._body(200, b'{"data": [{"id": "m"}]}')

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        mode = type(self).mode
        if mode == "huge":
            self._body(200, b'{"choices": "' + b"x" * (MAX_BODY + 10) + b'"}')
        elif mode == "notjson":
            self._body(200, b"<html>oops</html>")
        elif mode == "500":
            self._body(500, b'{"error": "boom"}')
        elif mode == "types":
            self._body(200, json.dumps({"choices": [{"message": {"content": 42}}]}).encode())
        elif mode == "numbers":
            self._body(200, json.dumps({"choices": [{"message": {"content": "ok"}}],
                                        "usage": {"prompt_tokens": 10**30, "completion_tokens": 1}}).encode())
        elif mode == "bigint":
            self._body(200, b'{"choices": [], "x": ' + b"9" * 5000 + b"}")
        elif mode == "nochoices":
            self._body(200, b'{"usage": {}}')
        elif mode == "redirect":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()


@pytest.fixture(scope="module")
def hostile():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


@pytest.mark.parametrize("mode, message", [
    ("huge", "larger than 8 MiB"), ("notjson", "not JSON"), ("500", "HTTP 500"), ("types", "not a string"),
    ("numbers", "invalid prompt_tokens"), ("bigint", "not JSON"), ("nochoices", "no 'choices'"),
    ("redirect", "redirected"),
])
def test_hostile_server_gives_one_line(hostile, mode, message):
    _Hostile.mode = mode
    lm = open_lm(hostile, max_queries=5)
    with pytest.raises(TargetError, match=message) as err:
        lm.chat([{"role": "user", "content": "hi"}])
    assert "\n" not in str(err.value) and len(str(err.value)) < 400
    assert lm.queries == 0  # a failed query is not counted as answered


def test_unreachable_and_bad_urls(capsys):
    with pytest.raises(ModelLoadError, match="cannot open"):
        open_lm("http://127.0.0.1:9/v1", timeout=2)
    with pytest.raises(ModelLoadError, match="not an endpoint URL"):
        open_lm("http://127.0.0.1:9/v1?x=1")
    with pytest.raises(SystemExit) as exit_:
        run(["attack", "llm", "exposure", "http://127.0.0.1:9/v1", "--secret", "1", "--timeout", "2"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and "cannot open" in err
