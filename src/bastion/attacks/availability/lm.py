"""Language-model availability: generated tokens and seconds per request, EOS suppression and over-generation.

Requests go through the target's own path (`bastion.lm.LMTarget`: `complete` for raw continuation, `chat` through
the chat template), so the same measurement works on a local model and on an OpenAI-compatible endpoint. Per
request: the generated tokens, the seconds to the last token, and whether the request ran into the cap (the reply
ended with `finished == "length"`: `max_new_tokens` or the end of the context window; or `"deadline"`: the target's
enforced deadline stopped it, counted apart as `cut` too). A capped request's real
length is unknown, so the ratios of a run with capped requests are lower bounds and the result says so — never an
amplification without bound.

Attacks:
- `eos-suppress` (white-box): a suffix appended to the prompts, optimised to keep every end-of-sequence token
  (EOS and the template's end-of-turn) from winning along the model's own continuation — the "EOS escape" objective
  of Engorgio (Dong et al., "Engorgio: An Arbitrary-Length Output Attack against Large Language Models", 2024)
  searched with greedy coordinate gradients (Zou et al., "Universal and Transferable Adversarial Attacks on Aligned
  Language Models", 2023): token gradients of the one-hot suffix propose the top-k substitutions per position, a
  batch of single-token swaps is evaluated exactly and the best kept.
- `overgen` (black-box, any target): a library of over-generation instructions (repeat forever, count, enumerate,
  never stop), alone or appended to the natural prompts.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch

from bastion.attacks.availability.lm_prompts import OVERGEN_PROMPTS
from bastion.attacks.availability.measure import percentiles_ms, ratio
from bastion.attacks.base import Attack
from bastion.core.errors import BudgetSpent, ParameterError
from bastion.core.registry import register
from bastion.core.results import Result
from bastion.core.target import Access
from bastion.lm import MAX_NEW_TOKENS, LMTarget

MODES = ("complete", "chat")
MARK = "\u2063EOS-SUFFIX\u2063"  # placeholder split out of the rendered chat prompt


def as_lm_target(target: Any) -> LMTarget:
    """An `LMTarget` as is; a `(model, tokenizer)` pair or an object with `.model`/`.tokenizer` wrapped in memory."""
    if isinstance(target, LMTarget):
        return target
    from bastion.attacks.llm.token_scores import model_and_tokenizer
    from bastion.lm.hf_target import HFTarget

    model, tokenizer = model_and_tokenizer(target)
    return HFTarget.from_model(model, tokenizer)


def request(target: LMTarget, prompt: str, mode: str, max_new_tokens: int) -> Any:
    """One request as a client sends it: a raw continuation or a chat turn; returns the target's `Reply`."""
    if mode == "chat":
        return target.chat([{"role": "user", "content": prompt}], max_new_tokens=max_new_tokens)
    return target.complete(prompt, max_new_tokens=max_new_tokens)


def generation_stats(target: LMTarget, prompts: list[str], mode: str, max_new_tokens: int) -> dict[str, np.ndarray]:
    """Per request: generated tokens, seconds to the last token, whether it was capped (a generation or deadline
    limit stopped it) and whether the deadline did (`cut`)."""
    replies = [request(target, prompt, mode, max_new_tokens) for prompt in prompts]
    return _stats(replies)


def paired_stats(target: LMTarget, natural: list[str], attack: list[str], mode: str,
                 max_new_tokens: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Natural and attack requests sent in turns (pair by pair), so a spent query budget or deadline leaves as many
    of each; the statistics of the pairs answered."""
    pairs = []
    for nat, att in zip(natural, attack, strict=True):
        try:
            first = request(target, nat, mode, max_new_tokens)
            pairs.append((first, request(target, att, mode, max_new_tokens)))
        except BudgetSpent:
            break
    return _stats([p[0] for p in pairs]), _stats([p[1] for p in pairs])


def _stats(replies: list[Any]) -> dict[str, np.ndarray]:
    return {"tokens": np.asarray([r.completion_tokens for r in replies], float),
            "seconds": np.asarray([r.seconds for r in replies], float),
            "capped": np.asarray([r.finished in ("length", "deadline") for r in replies], bool),
            "cut": np.asarray([r.finished == "deadline" for r in replies], bool)}


def _summary(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(values.mean()) if len(values) else 0.0}


class GenerationAttack(Attack):
    """Base: craft attack prompts from natural prompts, then send both as requests and compare them.

    `mode` "complete" (raw continuation, base models) or "chat" (the target's chat template); `max_new_tokens` is
    the generation cap of every request."""

    family: ClassVar[str] = "availability"

    def __init__(self, *, mode: str = "complete", max_new_tokens: int = 64, n_bootstrap: int = 1000, seed: int = 0):
        if mode not in MODES:
            raise ParameterError(f"mode must be complete or chat, got {mode!r}")
        if isinstance(max_new_tokens, bool) or not 1 <= int(max_new_tokens) <= MAX_NEW_TOKENS or n_bootstrap < 0:
            raise ParameterError(f"max_new_tokens must be in [1, {MAX_NEW_TOKENS}] and n_bootstrap >= 0")
        self.mode, self.max_new_tokens = mode, int(max_new_tokens)
        self.n_bootstrap, self.seed = int(n_bootstrap), int(seed)

    @abstractmethod
    def craft(self, target: LMTarget, prompts: list[str]) -> list[str]:
        """The attack prompts, one per natural prompt."""

    def details(self) -> dict[str, Any]:
        return {}

    def run(self, target: Any, data: Any = None, *, prompts: list[str] | None = None, **_: Any) -> Result:
        """Measure the natural `prompts` and the attack's prompts as requests (tokens, seconds, cap)."""
        if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ParameterError("an LM availability attack needs natural prompts (non-empty lines of text)")
        lm = as_lm_target(target)
        if self.requires >= Access.GRADIENTS and lm.access != "white-box":
            raise ParameterError(f"{self.name} needs white-box access (a local folder or .gguf file), "
                                 f"not {lm.spec}")
        torch.manual_seed(self.seed)
        start = time.perf_counter()
        attack_prompts = self.craft(lm, list(prompts))
        natural, attack = paired_stats(lm, list(prompts), attack_prompts, self.mode, self.max_new_tokens)
        n = len(natural["tokens"])
        metrics = self.compare(natural, attack, n)
        metrics.update(self.details())
        status = "complete" if n == len(prompts) else "partial"
        return Result(family=self.family, attack=self.name, params=self.get_params(), metrics=metrics,
                      queries=lm.queries, seconds=time.perf_counter() - start, device=lm.describe()["backend"],
                      status=status, reason="" if status == "complete" else
                      f"query budget or deadline spent after {n} of {len(prompts)} prompt pairs",
                      samples={"natural_tokens": natural["tokens"].tolist(), "attack_tokens": attack["tokens"].tolist(),
                               "natural_latency_ms": (natural["seconds"] * 1e3).tolist(),
                               "attack_latency_ms": (attack["seconds"] * 1e3).tolist(),
                               "attack_capped": attack["capped"].tolist()})

    def compare(self, natural: dict[str, np.ndarray], attack: dict[str, np.ndarray], n: int) -> dict[str, Any]:
        """Tokens and milliseconds per request as ratios (lower bounds when requests were capped), and the cap."""
        if n == 0:
            raise ParameterError("no request pair could be measured (the query budget allows fewer than 2 requests)")
        nat = {k: v[:n] for k, v in natural.items()}
        att = {k: v[:n] for k, v in attack.items()}
        capped = bool(att["capped"].any())
        dims = []
        for key, unit, scale, summary in (("tokens", "tokens", 1.0, _summary), ("seconds", "ms", 1e3, percentiles_ms)):
            a, b = att[key] * scale, nat[key] * scale
            dims.append({"metric": key, "unit": unit, "natural": summary(b), "attack": summary(a),
                         "ratio": ratio(a, np.maximum(b, 1e-9), self.n_bootstrap, self.seed), "lower_bound": capped})
        fractions = {"natural_fraction": float(nat["capped"].mean()), "attack_fraction": float(att["capped"].mean())}
        reached = fractions["attack_fraction"] >= 0.5 and fractions["attack_fraction"] > fractions["natural_fraction"]
        metrics: dict[str, Any] = {
            "n": n, "mode": self.mode, "max_new_tokens": self.max_new_tokens, "capped": capped,
            "mean_tokens": {"natural": float(nat["tokens"].mean()), "attack": float(att["tokens"].mean())},
            "dimensions": dims,
            "caps": [{"name": "generation cap", "reached": reached, "cap": self.max_new_tokens, **fractions}]}
        if capped:
            cut = int(att["cut"].sum()) if "cut" in att else 0
            metrics["note"] = (f"{int(att['capped'].sum())} of {n} attack requests hit the cap (max_new_tokens="
                               f"{self.max_new_tokens}, the context window" + (f", or the deadline: {cut}" if cut
                                                                               else "") +
                               "): their real length is unknown, the ratios are lower bounds")
        return metrics


def _end_loss(model: Any, embeds: torch.Tensor, ends: torch.Tensor, start: int, loss: str) -> torch.Tensor:
    """Per sequence, over every position from `start` on (the suffix's end and the continuation): the mean hinge
    max(0, max_end z − max_other z + 1) (`margin`: an end token loses every greedy decision by a margin) or the mean
    probability of the end tokens (`prob`, Engorgio's EOS escape)."""
    logits = model(inputs_embeds=embeds).logits[:, start:].float()
    if loss == "prob":
        return logits.softmax(-1)[..., ends].sum(-1).mean(-1)
    other = logits.clone()
    other[..., ends] = -float("inf")
    return (logits[..., ends].amax(-1) - other.amax(-1) + 1.0).clamp_min(0).mean(-1)


def end_ids(target: LMTarget, tokenizer: Any) -> list[int]:
    """The token ids that end a reply: the target's EOS/end-of-turn set (HF targets), else the tokenizer's EOS."""
    ids = list(getattr(target, "eos_ids", None) or [])
    if not ids and tokenizer.eos_token_id is not None:
        ids = [tokenizer.eos_token_id]
    if not ids:
        raise ParameterError("the tokenizer has no EOS token: generation can only stop at the cap")
    return ids


@torch.no_grad()
def rollout(model: Any, prefix: torch.Tensor, ends: list[int], horizon: int) -> torch.Tensor:
    """The greedy continuations of the rows of `prefix` (b, t) for `horizon` tokens with every end token banned:
    the path greedy decoding takes while no end token wins, (b, horizon)."""
    limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    horizon = min(horizon, int(limit) - prefix.shape[1]) if limit else horizon
    if horizon < 1:
        raise ParameterError(f"a prompt of {prefix.shape[1]} tokens leaves no room in the model's context")
    out = model.generate(prefix, attention_mask=torch.ones_like(prefix), max_new_tokens=horizon, do_sample=False,
                         bad_words_ids=[[e] for e in ends], pad_token_id=ends[0], eos_token_id=None)
    return out[:, prefix.shape[1]:]

def segments(target: LMTarget, tokenizer: Any, prompt: str, mode: str) -> tuple[list[int], list[int]]:
    """Token ids before and after the suffix slot of one request: a raw continuation is BOS + prompt | (nothing);
    a chat turn is the rendered template split where the suffix ends the user's message."""
    from bastion.attacks.llm.token_scores import encode

    if mode == "complete":
        return encode(tokenizer, prompt, 1 << 30), []
    pre, post = target.render([{"role": "user", "content": prompt + MARK}]).split(MARK, 1)
    pre_ids = encode(tokenizer, pre, 1 << 30)
    if getattr(target, "template", None) is not None:  # a template writes its own BOS
        pre_ids = list(tokenizer(pre, add_special_tokens=False)["input_ids"])
    return pre_ids, list(tokenizer(post, add_special_tokens=False)["input_ids"])


@register("attacks", "eos-suppress", family="availability")
class EOSSuppress(GenerationAttack):
    """White-box EOS suppression: one universal suffix that keeps the model from ending its answer.

    Engorgio's EOS-escape objective (Dong et al., "Engorgio", 2024) on the model's own greedy continuation of
    `horizon` tokens (end tokens banned): `loss` "margin" (default) is a hinge on the best end token's logit margin
    over the best other token, the greedy-decoding form that stops spending effort where EOS already loses; "prob"
    is the mean end-token probability. Minimised over a `suffix_len`-token suffix by greedy coordinate gradient
    search (Zou et al., 2023): `steps` rounds of `batch` single-token swaps drawn from each position's `top_k`
    gradient candidates (only swaps whose text re-tokenises to the same ids) from `init` repeated, fitted on the
    first `n_fit` prompts. Every candidate is scored on its own greedy continuation (rolled out with the end tokens
    banned), so the objective is the one greedy decoding faces, not a stale teacher-forced text. The suffix is
    appended to every prompt as text and the requests go through the target (`mode` complete or chat).

    Example:
        >>> lm = HFTarget.from_model(model, tokenizer)  # doctest: +SKIP
        >>> result = EOSSuppress(suffix_len=8, steps=30).run(lm, prompts=["Hello"])  # doctest: +SKIP
    """

    name = "eos-suppress"
    requires = Access.GRADIENTS

    def __init__(self, *, suffix_len: int = 16, steps: int = 40, top_k: int = 32, batch: int = 64, horizon: int = 32,
                 n_fit: int = 4, loss: str = "margin", init: str = "!", mode: str = "complete",
                 max_new_tokens: int = 64, n_bootstrap: int = 1000, seed: int = 0):
        super().__init__(mode=mode, max_new_tokens=max_new_tokens, n_bootstrap=n_bootstrap, seed=seed)
        if min(suffix_len, steps, top_k, batch, horizon, n_fit) < 1:
            raise ParameterError("suffix_len, steps, top_k, batch, horizon and n_fit must be >= 1")
        if loss not in ("margin", "prob"):
            raise ParameterError(f"loss must be margin or prob, got {loss!r}")
        self.suffix_len, self.steps, self.top_k, self.batch = int(suffix_len), int(steps), int(top_k), int(batch)
        self.horizon, self.n_fit, self.loss = int(horizon), int(n_fit), loss
        if not isinstance(init, str):
            raise ParameterError("init must be a string (the suffix's starting token, repeated)")
        self.init = init
        self.suffix_: str = ""
        self.suffix_ids_: list[int] = []
        self.loss_: list[float] = []

    def _allowed(self, tokenizer: Any, vocab: int, device: torch.device) -> torch.Tensor:
        allowed = torch.ones(vocab, dtype=torch.bool)
        for special in tokenizer.all_special_ids:
            if 0 <= special < vocab:
                allowed[special] = False
        return allowed.to(device)

    def _start(self, tokenizer: Any, allowed: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The starting suffix: `init` repeated when it is one allowed token (GCG starts from "! ! ..."), else
        random allowed tokens."""
        ids = list(tokenizer(self.init, add_special_tokens=False)["input_ids"]) if self.init else []
        if len(ids) == 1 and bool(allowed[ids[0]]):
            return torch.full((self.suffix_len,), ids[0], dtype=torch.long, device=allowed.device)
        choices = torch.nonzero(allowed).flatten().cpu()
        return choices[torch.randint(len(choices), (self.suffix_len,), generator=gen)].to(allowed.device)

    def _retokenises(self, tokenizer: Any, candidates: torch.Tensor) -> torch.Tensor:
        """Which candidate suffixes survive decode -> encode unchanged (what the target will actually see)."""
        keep = [list(tokenizer(tokenizer.decode(c), add_special_tokens=False)["input_ids"]) == c
                for c in candidates.tolist()]
        return torch.tensor(keep, dtype=torch.bool, device=candidates.device)

    def craft(self, target: LMTarget, prompts: list[str]) -> list[str]:
        model, tokenizer = target.model_and_tokenizer()
        ends = end_ids(target, tokenizer)
        gen = torch.Generator().manual_seed(self.seed)
        emb = model.get_input_embeddings().weight
        vocab, device = emb.shape[0], emb.device
        ends_t = torch.tensor(ends, device=device)
        allowed = self._allowed(tokenizer, vocab, device)
        suffix = self._start(tokenizer, allowed, gen)
        fit = [segments(target, tokenizer, p, self.mode) for p in prompts[: self.n_fit]]
        current, conts = self._loss(model, emb, fit, suffix[None], ends_t)
        self.loss_ = [float(current[0])]  # the objective before the search, then after each round
        for _ in range(self.steps):
            grad = torch.zeros(self.suffix_len, vocab, device=device)
            for (pre, post), cont in zip(fit, conts, strict=True):
                one_hot = torch.nn.functional.one_hot(suffix, vocab).to(emb.dtype).requires_grad_(True)
                parts = [emb[torch.tensor(pre, device=device)], one_hot @ emb,
                         emb[torch.tensor(post, device=device, dtype=torch.long)], emb[cont[0]]]
                start = len(pre) + self.suffix_len + len(post) - 1
                loss = _end_loss(model, torch.cat(parts)[None], ends_t, start, self.loss)
                grad += torch.autograd.grad(loss.sum(), one_hot)[0]
            grad[:, ~allowed] = float("inf")
            top = (-grad).topk(min(self.top_k, int(allowed.sum())), dim=1).indices  # the most end-lowering swaps
            pos = torch.randint(self.suffix_len, (self.batch,), generator=gen).to(device)
            pick = torch.randint(top.shape[1], (self.batch,), generator=gen).to(device)
            candidates = suffix.repeat(self.batch, 1)
            candidates[torch.arange(self.batch, device=device), pos] = top[pos, pick]
            candidates = torch.unique(candidates[self._retokenises(tokenizer, candidates)], dim=0)
            if len(candidates):
                scores, cand_conts = self._loss(model, emb, fit, candidates, ends_t)
                best = int(scores.argmin())
                if float(scores[best]) < float(current[0]):  # the best single-token swap, when it lowers the loss
                    current, suffix = scores[best:best + 1], candidates[best].clone()
                    conts = [c[best:best + 1] for c in cand_conts]
            self.loss_.append(float(current[0]))
        self.suffix_ids_ = suffix.tolist()
        self.suffix_ = tokenizer.decode(self.suffix_ids_)
        return [p + self.suffix_ for p in prompts]

    def _loss(self, model: Any, emb: torch.Tensor, fit: list[tuple[list[int], list[int]]], suffixes: torch.Tensor,
              ends: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Mean end-token loss over the fitted prompts of each suffix in `suffixes` (b, suffix_len), each on its own
        greedy continuation; and those continuations, one (b, horizon) tensor per prompt."""
        scores = torch.zeros(len(suffixes), device=emb.device)
        b, conts = len(suffixes), []
        with torch.no_grad():
            for pre, post in fit:
                prefix = torch.cat([torch.tensor(pre, device=emb.device).repeat(b, 1), suffixes,
                                    torch.tensor(post, device=emb.device, dtype=torch.long).repeat(b, 1)], dim=1)
                cont = rollout(model, prefix, ends.tolist(), self.horizon)
                conts.append(cont)
                ids = torch.cat([prefix, cont], dim=1)
                scores += _end_loss(model, emb[ids], ends, prefix.shape[1] - 1, self.loss)
        return scores / len(fit), conts

    def details(self) -> dict[str, Any]:
        return {"suffix": self.suffix_, "suffix_ids": self.suffix_ids_, "eos_loss": self.loss_}


@register("attacks", "overgen", family="availability")
class Overgen(GenerationAttack):
    """Black-box over-generation prompts: instructions that ask for unbounded output (OWASP LLM10:2025 Unbounded
    Consumption; the over-generation prompts of Engorgio's baselines, Dong et al., 2024, and the reasoning detours
    of Kumar et al., "OverThink: Slowdown Attacks on Reasoning LLMs", 2025). Works on any target, endpoints too.

    `placement` "alone" sends each library prompt as a request (cycled to as many requests as natural prompts);
    "append" appends one to each natural prompt. `library` replaces the built-in prompts (a list of strings).
    `select` k > 0 is the black-box attacker's adaptive step: each library prompt is sent once first (queries
    counted), and only the k that drew the most tokens are used; the measured requests are sent afresh.

    Example:
        >>> result = Overgen(placement="alone", max_new_tokens=256).run(open_lm(url), prompts=["Hi"])  # doctest: +SKIP
    """

    name = "overgen"
    requires = Access.LABELS

    def __init__(self, *, placement: str = "alone", library: list[str] | None = None, mode: str = "chat",
                 max_new_tokens: int = 64, n_bootstrap: int = 1000, seed: int = 0, select: int = 0):
        super().__init__(mode=mode, max_new_tokens=max_new_tokens, n_bootstrap=n_bootstrap, seed=seed)
        if placement not in ("alone", "append"):
            raise ParameterError(f"placement must be alone or append, got {placement!r}")
        if library is not None and (not library or not all(isinstance(p, str) and p.strip() for p in library)):
            raise ParameterError("library must be a non-empty list of prompts")
        if isinstance(select, bool) or not isinstance(select, int) or select < 0:
            raise ParameterError(f"select must be a non-negative integer, got {select!r}")
        self.placement, self.library = placement, list(library) if library is not None else None
        self.select, self.selection_ = select, None

    def _selected(self, target: LMTarget, library: list[str]) -> list[str]:
        """The `select` library prompts that drew the most tokens (then the longest time) in one trial each."""
        tried = []
        for prompt in library:
            try:
                reply = request(target, prompt, self.mode, self.max_new_tokens)
            except BudgetSpent:  # the budget ends the trials: choose among those tried
                break
            tried.append((reply.completion_tokens, reply.seconds, prompt))
        if not tried:
            return library
        ranked = sorted(tried, key=lambda t: (-t[0], -t[1]))
        self.selection_ = [{"prompt": p[:120], "tokens": int(n)} for n, _, p in ranked]
        return [p for _, _, p in ranked[: self.select]]

    def details(self) -> dict[str, Any]:
        return {"selection": self.selection_} if self.selection_ is not None else {}

    def craft(self, target: LMTarget, prompts: list[str]) -> list[str]:
        library = self.library or list(OVERGEN_PROMPTS)
        if self.select:
            library = self._selected(target, library)
        picked = [library[i % len(library)] for i in range(len(prompts))]
        if self.placement == "alone":
            return picked
        return [f"{p} {extra}" for p, extra in zip(prompts, picked, strict=True)]
