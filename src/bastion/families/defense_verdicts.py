"""Defense verdicts: findings from what a hardening, repair, certification or training defense measured.

Defenses only measure (`bastion.defenses`); their results (family "defense") are judged here by
`bastion.families.judged`. A defense is judged like an attack: the headline is its robust accuracy gain under the
same adaptive attack (Athalye, Carlini & Wagner, ICML 2018, for BPDA/EOT and gradient masking), its residual
backdoor (DER of Zhu et al., 2023) or the privacy it buys (DP-SGD, Abadi et al., CCS 2016).
"""

from __future__ import annotations

from typing import Any

from bastion.core.results import Finding, Result
from bastion.evaluation.privacy_verdicts import privacy_finding
from bastion.evaluation.scoring import EVASION_ATLAS, EVASION_OWASP

MASKING_TOLERANCE = 0.1  # a naive robust accuracy this much above the adaptive one is gradient masking
COMPARED = ("clean_accuracy_before", "clean_accuracy_after", "robust_accuracy_before", "robust_accuracy_after",
            "evaluation")


def defense_findings(result: Result) -> list[Finding]:
    """The findings of one defense result, in the order the defense measured them: the before/after comparison,
    then what its training or repair measured."""
    m, name = result.metrics, result.attack
    findings: list[Finding] = []
    if name == "smooth":
        findings.append(smoothing_headline(result))
    if "robust_accuracy_gain" in m:
        findings += comparison_findings(what_of(result), m)
    for judge in (_early_stop, _dp_sgd, _repair):
        findings += judge(result)
    return findings


def what_of(result: Result) -> str:
    """How the titles name the defense: the evaluated view's name, recorded by the comparison."""
    if result.attack == "smooth":
        return f"smoothing (sigma={result.params['sigma']:g})"
    return str((result.metrics.get("evaluation") or {}).get("defense", result.attack))


def comparison_findings(what: str, metrics: dict[str, Any]) -> list[Finding]:
    """The robust accuracy gain (`gain_finding`) and, when the defended model was also attacked naively, gradient
    masking (`masking_finding`)."""
    evaluation = metrics.get("evaluation") or {}
    findings = [gain_finding(what, metrics, str(evaluation.get("norm", "linf")))]
    if "robust_accuracy_after_naive" in metrics:
        masking = masking_finding(what, metrics, str(evaluation.get("adaptive", "")))
        if masking is not None:
            findings.append(masking)
    return findings


def _compared(metrics: dict[str, Any]) -> dict[str, Any]:
    evidence = {k: metrics[k] for k in COMPARED}
    evidence["evaluation"] = {k: v for k, v in evidence["evaluation"].items() if k != "defense"}
    return evidence


def gain_finding(what: str, metrics: dict[str, Any], norm: str) -> Finding:
    """The headline: robust accuracy gain at the largest epsilon and the clean accuracy it cost."""
    last_gain = metrics["robust_accuracy_gain"][-1]
    before, after = metrics["robust_accuracy_before"][-1], metrics["robust_accuracy_after"][-1]
    cost = metrics["clean_accuracy_cost"]
    robust = last_gain["gain"] >= 0.05
    severity = "info" if robust and cost < 0.05 else "low" if robust else "medium"
    if (metrics.get("evaluation") or {}).get("after") == "certificate":
        return _certified_gain_finding(what, metrics, norm, robust, cost)
    return Finding(
        title=(f"{what}: robust accuracy {before['robust_accuracy']:.1%} -> {after['robust_accuracy']:.1%} at "
               f"{norm} eps={last_gain['eps']:g}, clean accuracy cost {cost:+.1%}"),
        family="evasion", severity=severity,  # type: ignore[arg-type]
        metric="robust_accuracy_gain", value=last_gain["gain"], threshold=0.05, evidence=_compared(metrics),
        atlas=EVASION_ATLAS, owasp=EVASION_OWASP,
        description=("Measured by attacking the model before and after the defense with the same adaptive attack."
                     if robust else "The defense gives no meaningful robustness under adaptive attack."),
        recommendation="" if robust else "Use adversarial training or randomized smoothing for robustness.",
    )


def _certified_gain_finding(what: str, metrics: dict[str, Any], norm: str, robust: bool, cost: float) -> Finding:
    """The gain when the defended model is judged by its certificate: the certified accuracy is a lower bound and
    the attack on the original an upper bound, so their difference bounds the gain from below and is never read
    as a loss."""
    gain = metrics["robust_accuracy_gain"][-1]
    before, after = metrics["robust_accuracy_before"][-1], metrics["robust_accuracy_after"][-1]
    title = (f"{what}: certified robust accuracy (a lower bound) {after['robust_accuracy']:.1%} at {norm} "
             f"eps={gain['eps']:g}, against at most {before['robust_accuracy']:.1%} before (an attack's upper "
             f"bound): gain at least {gain['gain']:+.1%}, clean accuracy cost {cost:+.1%}")
    return Finding(
        title=title, family="evasion", severity="info" if robust and cost < 0.05 else "low",
        metric="robust_accuracy_gain_lower_bound", value=gain["gain"], threshold=0.05, evidence=_compared(metrics),
        atlas=EVASION_ATLAS, owasp=EVASION_OWASP,
        description=("A certified lower bound compared with an attack's upper bound: the true gain is at least "
                     "this much." if robust else "A certified lower bound compared with an attack's upper bound: "
                     "inconclusive (not a measured loss); attack the smoothed model (attack_smoothed) for a "
                     "like-for-like figure."),
    )


def masking_finding(what: str, metrics: dict[str, Any], used: str) -> Finding | None:
    """A Finding when the naive attack reports much more robustness than the adaptive one (gradient masking)."""
    naive, adaptive = metrics["robust_accuracy_after_naive"], metrics["robust_accuracy_after"]
    gaps = [n["robust_accuracy"] - a["robust_accuracy"] for n, a in zip(naive, adaptive, strict=True)]
    worst = max(range(len(gaps)), key=gaps.__getitem__)
    if gaps[worst] < MASKING_TOLERANCE:
        return None
    eps = naive[worst]["eps"]
    return Finding(
        title=(f"{what} masks gradients: robust accuracy {naive[worst]['robust_accuracy']:.1%} under a naive attack "
               f"but {adaptive[worst]['robust_accuracy']:.1%} under {used.upper()} at eps={eps:g}"),
        family="evasion", severity="high", metric="masked_robust_accuracy", value=gaps[worst],
        threshold=MASKING_TOLERANCE, evidence={"naive": naive, "adaptive": adaptive, "adaptive_method": used},
        atlas=EVASION_ATLAS, owasp=EVASION_OWASP,
        description="The defense only hides the gradient; an adaptive attacker breaks it (Athalye et al. 2018).",
        recommendation="Do not count this defense as robustness; use adversarial training or certification.",
    )


def smoothing_headline(result: Result) -> Finding:
    """Randomized smoothing (Cohen et al., ICML 2019): its certified accuracy curve, or its accuracy and abstention."""
    m, sigma = result.metrics, result.params["sigma"]
    if "certified_accuracy" in m:
        best = max(m["certified_accuracy"], key=lambda r: r["radius"] * (r["certified_accuracy"] > 0))
        title = (f"smoothing (sigma={sigma:g}): certified accuracy "
                 + ", ".join(f"{r['certified_accuracy']:.1%} at r={r['radius']:g}" for r in m["certified_accuracy"]))
        return Finding(title=title, family="evasion", severity="info", metric="certified_accuracy",
                       value=best["certified_accuracy"], evidence={"curve": m["certified_accuracy"],
                                                                   "alpha": result.params["alpha"],
                                                                   "n": result.params["n"]})
    return Finding(title=f"smoothing (sigma={sigma:g}): accuracy {m['clean_accuracy_after']:.1%}, "
                         f"abstains on {m['abstain_rate']:.1%}",
                   family="evasion", severity="info", metric="clean_accuracy_after", value=m["clean_accuracy_after"])


def _early_stop(result: Result) -> list[Finding]:
    """Adversarial training stopped at catastrophic overfitting (Wong et al., ICLR 2020; Rice et al., ICML 2020)."""
    m = result.metrics
    stopped, history = m.get("early_stopped_at_epoch"), m.get("monitor_robust_accuracy") or []
    if stopped is None or not history:
        return []
    return [Finding(
        title=f"{result.attack}: robust accuracy collapsed at epoch {stopped} (catastrophic overfitting); the "
              f"weights of epoch {m['best_epoch']} were kept",
        family="evasion", severity="info", metric="monitor_robust_accuracy", value=history[-1],
        threshold=max(history), evidence={"monitor_robust_accuracy": history},
        recommendation="Lower the learning rate or the step size, or use PGD-AT.")]


def _dp_sgd(result: Result) -> list[Finding]:
    """DP-SGD's guarantee (Abadi et al., CCS 2016), its architecture change, a weak delta, and the membership
    inference measured before and after."""
    m = result.metrics
    if result.attack != "dp-sgd" or "epsilon" not in m:
        return []
    findings = [privacy_finding(
        title=f"dp-sgd: trained with (ε = {m['epsilon']:.3g}, δ = {m['delta']:g})-differential privacy "
              f"(σ = {m['noise_multiplier']:.3g}, q = {m['sample_rate']:.3g}, {m['steps']} steps, "
              f"{m['accountant'].upper()} accountant)",
        severity="info", metric="epsilon", value=m["epsilon"],
        threshold=result.params.get("target_epsilon"),
        evidence={k: m[k] for k in ("noise_multiplier", "sample_rate", "steps", "max_grad_norm")})]
    replaced = m.get("layers_replaced") or []
    if replaced:
        findings.append(privacy_finding(
            title=f"dp-sgd replaced {len(replaced)} BatchNorm layer(s) by GroupNorm: BatchNorm mixes the samples "
                  "of a batch, which per-sample privacy cannot allow",
            severity="info", metric="layers_replaced", value=float(len(replaced)),
            evidence={"layers": replaced},
            recommendation="The hardened model's architecture differs: save it as .pt or .onnx, or give "
                           "--arch a factory that uses GroupNorm before saving .safetensors."))
    n = m.get("n_train")
    if n and m["delta"] >= 1.0 / n:
        findings.append(privacy_finding(
            title=f"dp-sgd: delta {m['delta']:g} is not below 1/n = {1 / n:.3g}; the guarantee is weak",
            severity="medium", metric="delta", value=m["delta"], threshold=1.0 / n,
            recommendation="Choose delta well below 1/n (e.g. 1/(10·n))."))
    if "membership" in m:
        ms = m["membership"]
        before, after = ms["before"], ms["after"]
        findings.append(privacy_finding(
            title=f"dp-sgd: {ms['attack']} membership TPR at 1% FPR {before['tpr_at_1pct_fpr']:.1%} -> "
                  f"{after['tpr_at_1pct_fpr']:.1%}, AUC {before['auc']:.3f} -> {after['auc']:.3f}",
            severity="info", metric="tpr_at_1pct_fpr_change", value=ms["tpr_at_1pct_fpr_change"],
            evidence=ms, description="The 'before' model is assumed to have been trained on the same training "
                                     "records."))
    return findings


def _repair(result: Result) -> list[Finding]:
    """A backdoor repair: residual attack success and clean accuracy, with the DER when triggered inputs were
    given."""
    m = result.metrics
    if not (isinstance(m.get("before"), dict) and isinstance(m.get("after"), dict)):
        return []
    return [repair_finding(result.attack, m)]


def repair_finding(defense: str, metrics: dict[str, Any]) -> Finding:
    """The repaired model's residual backdoor (high at 50% attack success, medium at 20%)."""
    before, after = metrics["before"], metrics["after"]
    ca = f"clean accuracy {before['clean_accuracy']:.1%} → {after['clean_accuracy']:.1%}"
    if "der" not in metrics:
        return Finding(title=f"{defense}: {ca} (no triggered inputs given to measure the backdoor)",
                       family="backdoor", severity="info", metric="clean_accuracy", value=after["clean_accuracy"],
                       threshold=before["clean_accuracy"], evidence=metrics)
    asr = after["attack_success_rate"]
    return Finding(
        title=f"{defense}: attack success {before['attack_success_rate']:.1%} → {asr:.1%}, {ca}, "
              f"DER {metrics['der']:.2f}",
        family="backdoor", severity="high" if asr >= 0.5 else "medium" if asr >= 0.2 else "info",
        metric="attack_success_rate", value=asr, threshold=before["attack_success_rate"], evidence=metrics,
        atlas=["AML.T0018"], owasp=["ML10:2023 Model Poisoning"],
        description="The repaired model's residual backdoor, measured on triggered inputs.",
        recommendation="Deploy the repaired model only if the residual attack success is acceptable; "
                       "otherwise retrain from vetted data.",
    )

