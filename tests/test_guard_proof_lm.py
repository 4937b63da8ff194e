"""An OpenAI endpoint's finish reason survives into the Reply: a guard's in-band refusal (`content_filter`) stays
distinguishable from the model's own end of turn."""

from __future__ import annotations

import pytest

from bastion.lm.endpoint_target import parse_reply


def _reply(reason: object) -> dict:
    return {"choices": [{"message": {"role": "assistant", "content": "[refused by the guard: llm.injection]"},
                         "finish_reason": reason}], "usage": {"prompt_tokens": 12, "completion_tokens": 0}}


@pytest.mark.parametrize("reason, finished", [
    ("content_filter", "content_filter"), ("length", "length"), ("stop", "stop"), ("tool_calls", "stop"),
    (None, "stop"), (["content_filter"], "stop")])
def test_finish_reason_is_kept(reason, finished):
    assert parse_reply(_reply(reason), chat=True, where="test").finished == finished
