"""The report's figures, drawn with matplotlib's Agg canvas (no pyplot state) into base64 PNG data URIs."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bastion.families import registry
from bastion.families.base import FamilyReport
from bastion.families.grading import count_by_severity

SEVERITY_COLORS = {"critical": "#7f1d1d", "high": "#dc2626", "medium": "#f59e0b", "low": "#0ea5e9", "info": "#94a3b8"}


@dataclass
class Plot:
    """One figure: a title, a caption and the PNG as a data URI."""

    id: str
    title: str
    caption: str
    uri: str


def _figure(width: float = 6.0, height: float = 3.6) -> tuple[Figure, object]:
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _encode(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def robustness_curve(report: FamilyReport) -> Plot | None:
    """Robust accuracy against epsilon, one line per attack, clean accuracy dashed."""
    results = [r for r in report.results if isinstance(r.metrics.get("robust_accuracy"), list)]
    if not results:
        return None
    fig, ax = _figure()
    clean = results[0].metrics.get("clean_accuracy")
    norm = results[0].metrics.get("norm", "")
    for r in results:
        eps = [p["eps"] for p in r.metrics["robust_accuracy"]]
        acc = [p["robust_accuracy"] for p in r.metrics["robust_accuracy"]]
        ax.plot([0.0, *eps], [r.metrics.get("clean_accuracy", clean), *acc], marker="o", label=r.attack)
    if clean is not None:
        ax.axhline(clean, linestyle="--", color="#64748b", label="clean accuracy")
    ax.set_xlabel(f"epsilon ({norm})")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="best", fontsize=8)
    return Plot("robustness-curve", "Robustness curve",
                "Accuracy under attack at each perturbation budget (lower is worse).", _encode(fig))


def roc_loglog(report: FamilyReport) -> Plot | None:
    """Membership-inference ROC on log-log axes (the low-FPR regime is what matters)."""
    results = [r for r in report.results if r.metrics.get("roc_curve")]
    if not results:
        return None
    fig, ax = _figure()
    low = 1.0
    for r in results:
        fpr = np.asarray(r.metrics["roc_curve"]["fpr"], float)
        tpr = np.asarray(r.metrics["roc_curve"]["tpr"], float)
        keep = (fpr > 0) & (tpr > 0)
        if keep.any():
            low = min(low, float(fpr[keep].min()))
            ax.plot(fpr[keep], tpr[keep], label=f"{r.attack} (AUC {r.metrics.get('auc', float('nan')):.3f})")
    grid = np.geomspace(low, 1.0, 50)
    ax.plot(grid, grid, linestyle="--", color="#64748b", label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right", fontsize=8)
    return Plot("roc-loglog", "Membership inference ROC (log-log)",
                "True positives at each false-positive rate; curves above the diagonal at low FPR leak.", _encode(fig))


def fidelity_vs_queries(report: FamilyReport) -> Plot | None:
    """Fidelity (agreement with the model) of stolen copies against the number of queries."""
    series = []
    for r in report.results:
        rows = [row for row in r.metrics.get("curve") or [] if row.get("fidelity") is not None]
        if rows:
            series.append((r.attack, rows))
    if not series:
        return None
    fig, ax = _figure()
    for attack, rows in series:
        queries = [row.get("queries", row.get("budget")) for row in rows]
        ax.plot(queries, [row["fidelity"] for row in rows], marker="o", label=f"{attack} fidelity")
        if all(row.get("accuracy") is not None for row in rows):
            ax.plot(queries, [row["accuracy"] for row in rows], marker=".", linestyle=":",
                    label=f"{attack} copy accuracy")
    ax.set_xscale("log")
    ax.set_xlabel("queries to the model")
    ax.set_ylabel("fidelity / accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="best", fontsize=8)
    return Plot("fidelity-queries", "Fidelity vs queries",
                "How closely a copy trained on the API's answers agrees with the model.", _encode(fig))


def anomaly_index(report: FamilyReport) -> Plot | None:
    """Neural Cleanse anomaly index per class (small-trigger side), flagged above the threshold."""
    results = [r for r in report.results if "anomaly_index" in r.metrics]
    if not results:
        return None
    r = results[0]
    if r.metrics.get("decision") == "null" and r.metrics.get("mask_l1"):
        return trigger_sizes(r.metrics)
    index = np.asarray(r.metrics["anomaly_index"], float)
    norms = np.asarray(r.metrics.get("mask_l1", []), float)
    small = norms < np.median(norms) if len(norms) == len(index) else np.ones(len(index), bool)
    shown = np.where(small, index, 0.0)
    threshold = float(r.metrics.get("threshold", 2.0))
    flagged = set(r.metrics.get("flagged_classes", []))
    fig, ax = _figure()
    colors = [SEVERITY_COLORS["critical"] if c in flagged else "#3b82f6" for c in range(len(index))]
    ax.bar(np.arange(len(index)), shown, color=colors)
    ax.axhline(threshold, linestyle="--", color="#dc2626", label=f"threshold {threshold:g}")
    ax.set_xticks(np.arange(len(index)))
    ax.set_xlabel("class")
    ax.set_ylabel("anomaly index")
    ax.legend(loc="best", fontsize=8)
    return Plot("anomaly-index", "Neural Cleanse anomaly index",
                "Classes whose reverse-engineered trigger is abnormally small (above the line) look backdoored.",
                _encode(fig))


def trigger_sizes(metrics: dict) -> Plot:
    """Neural Cleanse's trigger size per class under the null decision: flagged and confirmed classes red,
    flagged but unconfirmed ones amber; the caption gives the smallest class's p-value."""
    norms = np.asarray(metrics["mask_l1"], float)
    flagged, unconfirmed = set(metrics.get("flagged_classes", [])), set(metrics.get("unconfirmed_classes", []))
    colors = [SEVERITY_COLORS["critical"] if c in flagged else SEVERITY_COLORS["medium"] if c in unconfirmed
              else "#3b82f6" for c in range(len(norms))]
    fig, ax = _figure()
    ax.bar(np.arange(len(norms)), norms, color=colors)
    reference = metrics.get("reference_mask_l1")
    if reference:  # the same class's size on the known-clean reference model(s)
        ax.plot(np.arange(len(norms)), reference, "_", color="#111827", markersize=18, mew=2,
                label="clean reference")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xticks(np.arange(len(norms)))
    ax.set_xlabel("class")
    ax.set_ylabel("trigger mask size (L1)")
    top, p_value = metrics.get("null_top_class"), metrics.get("null_p_value", 1.0)
    calibrated = "" if not reference else (
        f" Black ticks: each class's size on the clean reference; relative to it the smallest is class "
        f"{metrics['reference_top_class']}, p = {metrics['reference_p_value']:.2g}; a class small on both is a "
        "natural feature of the task, not a flag.")
    return Plot("anomaly-index", "Neural Cleanse trigger size per class",
                f"A backdoor target needs a far smaller trigger than the other classes. Smallest: class {top}, "
                f"p = {p_value:.2g} under the null fitted to the other classes (flagged below "
                f"{metrics.get('significance', 0.05):g}). Red: flagged and confirmed; amber: flagged, not confirmed."
                + calibrated, _encode(fig))


def scan_findings(report: FamilyReport) -> Plot | None:
    """Supply-chain findings by severity."""
    if not report.results:
        return None
    counts = count_by_severity(report.findings)
    fig, ax = _figure(5.0, 2.6)
    names = list(counts)
    ax.barh(names, [counts[n] for n in names], color=[SEVERITY_COLORS[n] for n in names])
    ax.set_xlim(0, max(1, *counts.values()) * 1.1)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if not any(counts.values()):
        ax.text(0.5, 0.5, "no findings", transform=ax.transAxes, ha="center", va="center", color="#16a34a",
                fontsize=12)
    ax.set_xlabel("findings")
    ax.invert_yaxis()
    files = sum(len(r.metrics.get("files", [])) for r in report.results)
    return Plot("scan-findings", "Scan findings",
                f"Findings of the symbolic scan over {files} file(s), by severity.", _encode(fig))


def availability_distributions(report: FamilyReport) -> Plot | None:
    """Per-input latency and activation density (or tokens per request), natural vs attack, one box pair each."""
    panels = []
    for unit, key in (("latency per input (ms)", "latency_ms"), ("activation density", "density"),
                      ("generated tokens per request", "tokens")):
        pairs = [(r.attack, r.samples.get(f"natural_{key}"), r.samples.get(f"attack_{key}")) for r in report.results]
        pairs = [(name, nat, att) for name, nat, att in pairs if nat and att]
        if pairs:
            panels.append((unit, pairs))
    if not panels:
        return None
    fig = Figure(figsize=(3.4 * len(panels), 3.6), dpi=110)
    FigureCanvasAgg(fig)
    for k, (unit, pairs) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        ax.grid(True, alpha=0.3)
        data = [np.asarray(v, float) for _, nat, att in pairs for v in (nat, att)]
        boxes = ax.boxplot(data, patch_artist=True, widths=0.6)
        for i, patch in enumerate(boxes["boxes"]):
            patch.set_facecolor("#94a3b8" if i % 2 == 0 else SEVERITY_COLORS["high"])
        ax.set_xticks(np.arange(1, len(data) + 1))
        ax.set_xticklabels([f"{name}\n{side}" for name, _, _ in pairs for side in ("natural", "attack")], fontsize=7)
        ax.set_ylabel(unit)
    return Plot("availability-distributions", "Natural vs attack inputs",
                "Per-input cost of natural inputs (grey) and of the attack's inputs (red): latency, activation "
                "density (the energy proxy of sponge examples) and tokens per request.", _encode(fig))


def llm_rates(report: FamilyReport) -> Plot | None:
    """Success rate of each language-model probe's techniques with its 95% interval (leak, injection: Wilson;
    jailbreak: judge-corrected, bootstrap)."""
    rows = []
    for r in report.results:
        for technique, row in (r.metrics.get("techniques") or {}).items():
            if r.attack == "jailbreak":
                rate, interval = row.get("corrected"), row.get("corrected_interval")
            else:
                rate, interval = row.get("rate"), row.get("interval")
            if isinstance(rate, (int, float)) and interval:
                rows.append((f"{r.attack}: {technique}", float(rate), float(interval[0]), float(interval[1])))
    if not rows:
        return None
    fig, ax = _figure(6.0, 0.9 + 0.24 * len(rows))
    y = np.arange(len(rows))[::-1]
    rates = np.array([row[1] for row in rows])
    low = np.clip(rates - np.array([row[2] for row in rows]), 0, None)
    high = np.clip(np.array([row[3] for row in rows]) - rates, 0, None)
    ax.barh(y, rates, xerr=[low, high], color=SEVERITY_COLORS["high"], alpha=0.8, ecolor="#334155", capsize=2)
    ax.set_yticks(y)
    ax.set_yticklabels([row[0] for row in rows], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("success rate (95% interval)")
    return Plot("llm-rates", "Language-model probes: success per technique",
                "Share of attempts that leaked the planted canary, hijacked the task, or (jailbreaks, corrected "
                "for the judge's measured error) got harmful help, per technique, with 95% intervals.", _encode(fig))


# Every figure the report can draw, by name; each family names the ones it wants (`Family.plots`).
FIGURES: dict[str, Callable[[FamilyReport], Plot | None]] = {
    f.__name__: f for f in (robustness_curve, roc_loglog, fidelity_vs_queries, anomaly_index, scan_findings,
                            availability_distributions, llm_rates)}


def family_plots(report: FamilyReport) -> list[Plot]:
    """The figures the report's family asks for (none when it was skipped or is no longer registered)."""
    family = registry().get(report.family)
    plots = [FIGURES[name](report) for name in (family.plots if family else ()) if name in FIGURES]
    return [p for p in plots if p is not None]
