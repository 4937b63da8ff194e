"""Membership inference against causal LMs: LOSS, zlib ratio, Min-K%, Min-K%++ and a reference-model attack.

Every score is "higher = more likely a training record", scored with the shared ROC metrics (TPR at low FPR with
bootstrap intervals, AUC) of `bastion.evaluation.metrics`.
"""

from __future__ import annotations

import time
import zlib
from typing import Any, ClassVar

import numpy as np

from bastion.attacks.base import Attack
from bastion.attacks.privacy.base import check_int, most_at_risk, roc_points
from bastion.core.errors import ParameterError
from bastion.core.registry import register
from bastion.core.results import Result
from bastion.core.target import Access
from bastion.evaluation.metrics import roc_summary

from .token_scores import TokenStats, check_same_tokenizer, model_and_tokenizer, token_stats

SCORES = ("loss", "zlib", "min_k", "min_k_pp", "reference")


def loss_score(s: TokenStats) -> float:
    """LOSS (Yeom et al., CSF 2018): the mean token log-likelihood."""
    return float(s.logp.mean())


def zlib_score(s: TokenStats, text: str) -> float:
    """zlib ratio (Carlini et al., USENIX Security 2021): log-perplexity relative to the zlib entropy of the text."""
    return float(s.logp.mean() / max(len(zlib.compress(text.encode("utf-8"))), 1))


def _lowest_mean(values: np.ndarray, k: float) -> float:
    n = max(1, int(np.ceil(len(values) * k)))
    return float(np.sort(values)[:n].mean())


def min_k_score(s: TokenStats, k: float) -> float:
    """Min-K% Prob (Shi et al., ICLR 2024): the mean log-probability of the k% least likely tokens."""
    return _lowest_mean(s.logp, k)


def min_k_pp_score(s: TokenStats, k: float) -> float:
    """Min-K%++ (Zhang et al., 2024): the same over (log p(x_t) - mu_t) / sigma_t, normalised by the next-token
    distribution's mean and standard deviation of log p."""
    return _lowest_mean((s.logp - s.mu) / s.sigma, k)


@register("attacks", "membership", family="llm")
class LMMembership(Attack):
    """Membership inference on a causal LM from its per-token likelihoods; reports every score side by side.

    Scores: LOSS (Yeom et al., CSF 2018), zlib ratio and the reference-model ratio (Carlini et al., "Extracting
    Training Data from Large Language Models", USENIX Security 2021; Mireshghallah et al., EMNLP 2022), Min-K%
    (Shi et al., ICLR 2024) and Min-K%++ (Zhang et al., 2024). The reference score (target log-likelihood minus a
    reference LM's, same tokenizer) runs only when a reference model is given.

    Example:
        >>> from bastion.attacks.llm.membership import LMMembership
        >>> from bastion.attacks.llm.token_scores import load_lm
        >>> target = load_lm("my-model/")
        >>> result = LMMembership(k=0.2).run(target, members=["a training line"], nonmembers=["an unseen line"])
        >>> result.metrics["scores"]["loss"]["auc"]
    """

    family: ClassVar[str] = "llm"
    name: ClassVar[str] = "membership"
    requires: ClassVar[Access] = Access.GRADIENTS  # white-box: logits over the whole vocabulary

    def __init__(self, k: float = 0.2, *, max_tokens: int = 256, n_bootstrap: int = 200, seed: int = 0):
        if not 0 < float(k) <= 1:
            raise ParameterError("k (the Min-K% fraction) must be in (0, 1]")
        self.k = float(k)
        self.max_tokens = check_int(max_tokens, "max_tokens", 1)
        self.n_bootstrap = check_int(n_bootstrap, "n_bootstrap", 0)
        self.seed = int(seed)

    def scores(self, target: Any, texts: list[str], reference: Any = None) -> dict[str, np.ndarray]:
        """Every score of every text (higher = more likely a member)."""
        model, tokenizer = model_and_tokenizer(target)
        stats = token_stats(model, tokenizer, texts, self.max_tokens)
        out = {
            "loss": np.array([loss_score(s) for s in stats]),
            "zlib": np.array([zlib_score(s, t) for s, t in zip(stats, texts, strict=True)]),
            "min_k": np.array([min_k_score(s, self.k) for s in stats]),
            "min_k_pp": np.array([min_k_pp_score(s, self.k) for s in stats]),
        }
        if reference is not None:
            ref_model, ref_tokenizer = model_and_tokenizer(reference)
            check_same_tokenizer(tokenizer, ref_tokenizer)
            ref = token_stats(ref_model, ref_tokenizer, texts, self.max_tokens)
            out["reference"] = out["loss"] - np.array([loss_score(s) for s in ref])
        return out

    def run(self, target: Any, data: Any = None, *, members: list[str] | None = None,
            nonmembers: list[str] | None = None, reference: Any = None, **_: Any) -> Result:
        """Score members and non-members; the headline (and the finding) is the best score's TPR at 1% FPR."""
        if not members or not nonmembers:
            raise ParameterError("LM membership inference needs non-empty member and non-member texts")
        start = time.perf_counter()
        scored = self.scores(target, list(members) + list(nonmembers), reference)
        n = len(members)
        per_score: dict[str, Any] = {}
        for name, values in scored.items():
            summary = roc_summary(values[:n], values[n:], n_bootstrap=self.n_bootstrap, seed=self.seed)
            per_score[name] = {**summary.to_metrics(), "roc": roc_points(summary.fpr, summary.tpr, len(values) - n)}
        best = max(per_score, key=lambda s: (_tpr1(per_score[s]), per_score[s]["auc"]))
        metrics = {**{k: v for k, v in per_score[best].items() if k != "roc"}, "best_score": best,
                   "scores": per_score, "n_members": n, "n_nonmembers": len(nonmembers),
                   "fpr_resolution": 1.0 / len(nonmembers), "most_at_risk": most_at_risk(scored[best][:n])}
        return Result(family=self.family, attack=self.name, params=self.get_params(), metrics=metrics,
                      queries=len(scored["loss"]), seconds=time.perf_counter() - start)


def _tpr1(metrics: dict[str, Any]) -> float:
    return next((row["tpr"] for row in metrics["tpr_at_fpr"] if abs(row["fpr"] - 0.01) < 1e-12), 0.0)
