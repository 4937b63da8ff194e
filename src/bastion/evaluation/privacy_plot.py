"""Log-log ROC plot of membership attacks (the form Carlini et al. 2022 recommend: low FPR is what matters)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bastion.evaluation.metrics import roc_curve


def roc_loglog_png(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path | None = None,
                   title: str = "Membership inference ROC", min_rate: float | None = None) -> bytes:
    """Plot {name: (fpr, tpr)} on log-log axes with the chance diagonal; return PNG bytes (and write `path`).

    Curves may also be given as (member scores, non-member scores) through `curves_from_scores`."""
    from matplotlib.figure import Figure  # object API: no pyplot, no global backend state (renders with Agg)

    fig = Figure(figsize=(4.8, 4.2), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    floor = min_rate
    if floor is None:
        positives = [f[f > 0].min() for f, _ in curves.values() if (f > 0).any()]
        floor = max(1e-5, min(positives, default=1e-3) / 2)
    for name, (fpr, tpr) in curves.items():
        fpr, tpr = np.clip(np.asarray(fpr), floor, 1), np.clip(np.asarray(tpr), floor, 1)
        ax.plot(fpr, tpr, label=name, linewidth=1.4)
    ax.plot([floor, 1], [floor, 1], linestyle="--", color="grey", linewidth=0.8, label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor, 1)
    ax.set_ylim(floor, 1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.grid(True, which="major", linewidth=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def curves_from_results(results: Mapping[str, dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: Result metrics (or the result's dict)} -> {name: (fpr, tpr)} from their stored `roc`."""
    out = {}
    for name, result in results.items():
        roc = result.get("metrics", result)["roc"]
        out[name] = (np.asarray(roc["fpr"]), np.asarray(roc["tpr"]))
    return out


def curves_from_scores(scores: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, tuple[np.ndarray,
                                                                                              np.ndarray]]:
    """{name: (member scores, non-member scores)} -> {name: (fpr, tpr)}."""
    return {name: roc_curve(m, n) for name, (m, n) in scores.items()}
