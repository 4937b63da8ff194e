"""The one metrics module: ROC and TPR at low FPR with bootstrap intervals, fidelity, attack success, DER."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bastion.core.errors import ParameterError

DEFAULT_FPRS = (0.01, 0.001, 0.0001)


def roc_curve(scores_members: np.ndarray, scores_nonmembers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) for 'member if score >= t' over every threshold; higher score means more likely positive."""
    pos = np.asarray(scores_members, dtype=np.float64).ravel()
    neg = np.asarray(scores_nonmembers, dtype=np.float64).ravel()
    if len(pos) == 0 or len(neg) == 0:
        raise ParameterError("ROC needs at least one positive and one negative score")
    scores = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    distinct = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
    tps = np.cumsum(labels)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / len(pos)]
    fpr = np.r_[0.0, fps / len(neg)]
    return fpr, tpr


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under a ROC curve (trapezoids)."""
    return float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(tpr, fpr))


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target_fpr: float) -> float:
    """Highest TPR over thresholds whose FPR is at most `target_fpr`."""
    ok = fpr <= target_fpr + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


@dataclass
class Interval:
    estimate: float
    low: float
    high: float


@dataclass
class RocSummary:
    """AUC and TPR at each FPR, each with a bootstrap confidence interval, plus the curve itself."""

    auc: Interval
    tpr_at_fpr: dict[float, Interval]
    fpr: np.ndarray = field(repr=False)
    tpr: np.ndarray = field(repr=False)

    def to_metrics(self) -> dict:
        return {
            "auc": self.auc.estimate,
            "auc_ci": [self.auc.low, self.auc.high],
            "tpr_at_fpr": [
                {"fpr": f, "tpr": i.estimate, "ci": [i.low, i.high]} for f, i in sorted(self.tpr_at_fpr.items())
            ],
        }


def roc_summary(scores_members: np.ndarray, scores_nonmembers: np.ndarray, fprs: tuple[float, ...] = DEFAULT_FPRS,
                n_bootstrap: int = 200, confidence: float = 0.95, seed: int = 0) -> RocSummary:
    """ROC metrics with percentile-bootstrap intervals (members and non-members resampled separately)."""
    pos, neg = np.asarray(scores_members, float).ravel(), np.asarray(scores_nonmembers, float).ravel()
    fpr, tpr = roc_curve(pos, neg)
    point_auc = auc(fpr, tpr)
    point_tpr = {f: tpr_at_fpr(fpr, tpr, f) for f in fprs}
    rng = np.random.default_rng(seed)
    boot_auc, boot_tpr = [], {f: [] for f in fprs}
    for _ in range(n_bootstrap):
        bf, bt = roc_curve(rng.choice(pos, len(pos)), rng.choice(neg, len(neg)))
        boot_auc.append(auc(bf, bt))
        for f in fprs:
            boot_tpr[f].append(tpr_at_fpr(bf, bt, f))
    alpha = (1 - confidence) / 2

    def interval(point: float, samples: list[float]) -> Interval:
        if not samples:
            return Interval(point, point, point)
        lo, hi = np.quantile(samples, [alpha, 1 - alpha])
        return Interval(point, float(min(lo, point)), float(max(hi, point)))

    return RocSummary(interval(point_auc, boot_auc), {f: interval(point_tpr[f], boot_tpr[f]) for f in fprs}, fpr, tpr)


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of predictions equal to the labels."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    return float((predictions == labels).mean()) if len(labels) else 0.0


def fidelity(copy_predictions: np.ndarray, victim_predictions: np.ndarray) -> float:
    """Agreement of a copy with its victim: the fraction of inputs given the same label."""
    return accuracy(copy_predictions, victim_predictions)


def attack_success_rate(predictions: np.ndarray, target_labels: np.ndarray) -> float:
    """Fraction of triggered inputs classified as the attacker's target label."""
    return accuracy(predictions, target_labels)


def defense_effectiveness_rating(asr_bd: float, asr_def: float, ca_bd: float, ca_def: float) -> float:
    """DER = [max(0, ASR_bd − ASR_def) − max(0, CA_bd − CA_def) + 1] / 2 (BackdoorBench, Wu et al. 2022)."""
    return (max(0.0, asr_bd - asr_def) - max(0.0, ca_bd - ca_def) + 1.0) / 2.0


def detection_rates(flagged: np.ndarray, is_poison: np.ndarray) -> dict[str, float]:
    """TPR and FPR of a boolean detector against known ground truth."""
    flagged, is_poison = np.asarray(flagged, bool), np.asarray(is_poison, bool)
    tpr = float(flagged[is_poison].mean()) if is_poison.any() else 0.0
    fpr = float(flagged[~is_poison].mean()) if (~is_poison).any() else 0.0
    return {"tpr": tpr, "fpr": fpr}


def bootstrap_ratio(numerator: np.ndarray, denominator: np.ndarray, n_bootstrap: int = 1000,
                    confidence: float = 0.95, seed: int = 0) -> Interval:
    """mean(numerator) / mean(denominator) with a percentile-bootstrap interval (the two samples resampled
    separately), e.g. the amplification of attack inputs' latency over natural inputs'. A zero denominator mean
    gives an infinite ratio (and interval) unless the numerator's mean is zero too (ratio 1)."""
    num = np.asarray(numerator, dtype=np.float64).ravel()
    den = np.asarray(denominator, dtype=np.float64).ravel()
    if len(num) == 0 or len(den) == 0:
        raise ParameterError("a ratio needs at least one value on each side")

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        top, bottom = a.mean(axis=-1), b.mean(axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = top / bottom
        return np.where(bottom == 0, np.where(top == 0, 1.0, np.inf), out)

    point = float(ratio(num, den))
    rng = np.random.default_rng(seed)
    boot = ratio(rng.choice(num, (n_bootstrap, len(num))), rng.choice(den, (n_bootstrap, len(den))))
    alpha = (1 - confidence) / 2
    if not n_bootstrap:
        return Interval(point, point, point)
    ordered = np.sort(boot)  # order statistics: infinite resamples stay infinite (no interpolation between them)
    lo, hi = ordered[int(alpha * (n_bootstrap - 1))], ordered[int(np.ceil((1 - alpha) * (n_bootstrap - 1)))]
    return Interval(point, float(min(lo, point)), float(max(hi, point)))


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """A proportion successes/n with the Wilson score interval (Wilson, JASA 1927): sound near 0 and 1 and for
    small n, unlike the normal approximation. n = 0 gives the uninformative interval [0, 1] around 0."""
    from scipy.stats import norm

    if isinstance(n, bool) or int(n) != n or n < 0 or not 0 <= successes <= n:
        raise ParameterError(f"a proportion needs 0 <= successes <= n, got {successes}/{n}")
    if n == 0:
        return Interval(0.0, 0.0, 1.0)
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if successes == 0 else float(max(0.0, centre - half))
    high = 1.0 if successes == n else float(min(1.0, centre + half))
    return Interval(p, low, high)
