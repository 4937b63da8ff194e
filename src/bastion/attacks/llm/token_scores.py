"""White-box access to a causal LM for the LLM attacks: loading, per-token log-probabilities and text files.

Works on anything with `.model` (a causal LM returning `.logits`) and `.tokenizer` (a Hugging Face tokenizer),
or on a plain `(model, tokenizer)` pair.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bastion.core.errors import ParameterError


@dataclass
class TokenStats:
    """Per text: log p of each actual next token, and the mean and std of log p under the model's distribution."""

    logp: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray


def model_and_tokenizer(target: Any) -> tuple[Any, Any]:
    """The (torch model, tokenizer) behind a white-box LM target (an `LMTarget`, an object with `.model` and
    `.tokenizer`, or a pair), or a clear error."""
    if isinstance(target, tuple) and len(target) == 2:
        return target
    if callable(getattr(target, "model_and_tokenizer", None)):
        return target.model_and_tokenizer()
    model, tokenizer = getattr(target, "model", None), getattr(target, "tokenizer", None)
    if model is None or tokenizer is None:
        raise ParameterError("this LLM attack needs white-box access (a local model folder with its tokenizer)")
    return model, tokenizer


def load_lm(path: str | Path, trust: bool = False) -> tuple[Any, Any]:
    """A local Hugging Face folder or GGUF file as (model, tokenizer): the one LM loader, `bastion.lm.hf_target`
    (scanned first, safetensors/GGUF only unless `trust`, never remote code)."""
    from bastion.lm.hf_target import load_hf

    return load_hf(path, trust)


def read_texts(path: str | Path, what: str) -> list[str]:
    """One record per line, or JSON lines (the `text` field, or a JSON string); blank lines skipped."""
    file = Path(path)
    if not file.is_file():
        raise ParameterError(f"{what} file {path} does not exist")
    texts: list[str] = []
    for n, line in enumerate(file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        if file.suffix == ".jsonl":
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ParameterError(f"{path}:{n}: not JSON ({exc.msg})") from exc
            item = item.get("text") if isinstance(item, dict) else item
            if not isinstance(item, str):
                raise ParameterError(f"{path}:{n}: expected a string or an object with a 'text' field")
            line = item
        texts.append(line)
    if not texts:
        raise ParameterError(f"{what} file {path} has no records")
    return texts


def encode(tokenizer: Any, text: str, max_tokens: int) -> list[int]:
    """BOS (when the tokenizer has one) + the text's tokens, at most `max_tokens` + 1 ids."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return ([bos] if bos is not None else []) + ids[:max_tokens]


@torch.no_grad()
def token_stats(model: Any, tokenizer: Any, texts: list[str], max_tokens: int = 256,
                batch_size: int = 16) -> list[TokenStats]:
    """Next-token statistics of each text (teacher forcing), batched with right padding."""
    device = next(model.parameters()).device
    limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    if limit:
        max_tokens = min(max_tokens, int(limit) - 1)
    rows = [encode(tokenizer, t, max_tokens) for t in texts]
    out: list[TokenStats] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = max(len(r) for r in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, r in enumerate(chunk):
            ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
        logp = torch.log_softmax(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.double(), -1)
        p = logp.exp()
        mu = (p * logp).sum(-1)
        sigma = ((p * logp.square()).sum(-1) - mu.square()).clamp_min(1e-12).sqrt()
        for i, r in enumerate(chunk):
            n = len(r) - 1
            if n < 1:
                raise ParameterError(f"record {start + i + 1} is empty after tokenisation")
            nxt = torch.tensor(r[1:], device=device)
            out.append(TokenStats(logp[i, :n].gather(-1, nxt[:, None]).squeeze(-1).cpu().numpy(),
                                  mu[i, :n].cpu().numpy(), sigma[i, :n].cpu().numpy()))
    return out


def check_same_tokenizer(a: Any, b: Any) -> None:
    """The reference model must share the target's vocabulary so that per-token losses are comparable."""
    if a.get_vocab() != b.get_vocab():
        raise ParameterError("the reference model's tokenizer differs from the target's (vocabularies do not match)")
