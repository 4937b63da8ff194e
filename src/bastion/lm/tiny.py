"""Tiny character-level causal LMs trained on CPU in seconds: targets for tests and benchmarks of the LLM family.

A GPT-2 configuration (Radford et al., 2019) with one or two layers and a character vocabulary, trained with the
project's one training loop (`bastion.core.training.Trainer`) and saved as a Hugging Face folder (safetensors
weights, a fast tokenizer). Canaries (Carlini et al., "The Secret Sharer", USENIX Security 2019) can be inserted
into the training text a chosen number of times.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bastion.core.errors import ParameterError
from bastion.core.training import Trainer

EOS = "<eos>"
UNK = "<unk>"


def char_tokenizer(texts: list[str], extra: str = "0123456789") -> Any:
    """A fast character-level tokenizer over the characters of `texts` (plus `extra`); `<eos>` doubles as BOS/pad."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {UNK: 0, EOS: 1}
    for ch in sorted(set("".join(texts)) | set(extra)):
        vocab.setdefault(ch, len(vocab))
    raw = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    raw.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    raw.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=raw, unk_token=UNK, eos_token=EOS, bos_token=EOS, pad_token=EOS)


class _Logits(nn.Module):
    """Adapter for the shared Trainer: float token ids in, next-token logits (batch, time, vocab) out."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=x.long()).logits


def _next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)


def encode_blocks(tokenizer: Any, texts: list[str], block: int,
                  end_with_eos: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One row per text: `<eos>` + tokens (+ `<eos>` when `end_with_eos`: the model learns to stop), truncated to
    `block`, padded; targets are the next tokens (-100 = pad)."""
    bos = tokenizer.convert_tokens_to_ids(EOS)
    x = np.full((len(texts), block), bos, np.int64)
    y = np.full((len(texts), block), -100, np.int64)
    for i, text in enumerate(texts):
        ids = [bos, *tokenizer(text)["input_ids"], *([bos] if end_with_eos else [])][: block + 1]
        x[i, : len(ids) - 1] = ids[:-1]
        y[i, : len(ids) - 1] = ids[1:]
    return x, y


@dataclass
class TinyLM:
    """Hyper-parameters of a tiny GPT-2; `train` fits it on texts (+ canaries) and saves a HF folder."""

    n_layer: int = 1
    n_embd: int = 64
    n_head: int = 2
    block: int = 64
    epochs: int = 30
    lr: float = 3e-3
    batch_size: int = 32
    seed: int = 0
    end_with_eos: bool = False  # each text ends with <eos> (a model that stops, for the availability attacks)

    def train(self, texts: list[str], out_dir: str | Path | None = None, *,
              canaries: dict[str, int] | None = None, tokenizer: Any = None) -> tuple[nn.Module, Any]:
        """Train on `texts` plus each canary repeated k times; return (model, tokenizer), saved to `out_dir`."""
        from transformers import GPT2Config, GPT2LMHeadModel

        corpus = list(texts) + [c for c, k in (canaries or {}).items() for _ in range(int(k))]
        if not corpus:
            raise ParameterError("no training text")
        tokenizer = tokenizer or char_tokenizer(corpus)
        torch.manual_seed(self.seed)
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=self.block, n_embd=self.n_embd,
                            n_layer=self.n_layer, n_head=self.n_head, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = GPT2LMHeadModel(config)
        x, y = encode_blocks(tokenizer, corpus, self.block, self.end_with_eos)
        if self.epochs:
            Trainer(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, optimizer="adamw", seed=self.seed,
                    device="cpu", loss_fn=_next_token_loss, description="tiny LM").fit(_Logits(model), x, y)
        model.eval()
        if out_dir is not None:
            model.save_pretrained(str(out_dir), safe_serialization=True)
            tokenizer.save_pretrained(str(out_dir))
        return model, tokenizer
