"""The extraction family's verdicts: findings from the fidelity curves of extraction attacks and from PRADA's
query-stream test (attacks and detectors only measure; `ExtractionFamily.judge` calls these)."""

from __future__ import annotations

from typing import Any

from bastion.core.results import Finding, Result

EXTRACTION_ATLAS = ["AML.T0024.002", "AML.T0005"]
EXTRACTION_OWASP = ["ML05:2023 Model Theft"]


def severity_of(fidelity: float, budget: int) -> str:
    """Critical when a near-perfect copy (fidelity ≥ 0.9) costs at most 1,000 queries."""
    if fidelity >= 0.9:
        return "critical" if budget <= 1000 else "high"
    if fidelity >= 0.75:
        return "medium"
    return "low" if fidelity >= 0.5 else "info"


def agreement_words(fidelity: float) -> str:
    """How much of the model a copy of this fidelity reproduces, in words that follow the number."""
    if fidelity >= 0.9:
        return f"agrees with the model on almost every input ({fidelity:.1%})"
    if fidelity >= 0.75:
        return f"agrees with the model on most inputs ({fidelity:.1%})"
    if fidelity >= 0.5:
        return f"agrees with the model on only {fidelity:.1%} of inputs: a partial copy"
    return f"agrees with the model on only {fidelity:.1%} of inputs: extraction failed at this budget"


def copy_finding(attack: str, rows: list[dict[str, Any]], metrics: dict[str, Any]) -> Finding:
    """The fidelity of the copy at the largest budget reached."""
    last = rows[-1]
    detected = (metrics.get("prada") or {}).get("detected")
    return Finding(
        title=f"{attack} copies the model with {last['fidelity']:.1%} fidelity from {last['queries']} queries",
        family="extraction",
        severity=severity_of(last["fidelity"], last["queries"]),  # type: ignore[arg-type]
        metric="fidelity",
        value=last["fidelity"],
        threshold=0.9,
        evidence={"attack": attack, "curve": rows, "access": metrics["access"],
                  "defense": metrics.get("defense"), "prada_detected": detected},
        atlas=EXTRACTION_ATLAS,
        owasp=EXTRACTION_OWASP,
        description=f"A copy made from the prediction API's answers {agreement_words(last['fidelity'])}; "
                    f"{last['transfer_success']:.1%} of adversarial examples crafted on the copy transfer "
                    "to the model at the largest budget.",
        recommendation="Return labels or rounded top-k scores only, rate-limit and monitor query streams "
                       "(PRADA), and consider prediction poisoning; re-assess with the defense in place.",
    )


def assumption_note(result: Result) -> str | None:
    """Why the fidelity of an equation-solving or path-finding copy measures the attack's misfit, if it does."""
    m = result.metrics
    if result.attack == "tree" and m.get("stopped") == "not a single tree":
        return (f"path finding's assumption does not hold: {m['boxes_inconsistent']} of {m['boxes_checked']} boxes "
                "answer differently inside, so the model is not a single decision tree (a random forest or "
                "boosted ensemble?); exploration stopped and the fidelity measures the attack's misfit. Use "
                "knockoff or copycat for ensembles.")
    if result.attack == "equation" and m.get("assumption_holds") is False:
        residual = m.get("check_residual")
        residual = "no usable answer" if residual in (None, float("inf")) else f"relative residual {residual:.2g}"
        return (f"equation solving's assumption does not hold: the answers are not those of a logistic "
                f"model over the queried range, or are rounded ({residual}, {m['saturated_answers']} saturated "
                "answers); the fidelity measures the attack's misfit, not the model's resistance to extraction. "
                "Pass --pool with typical inputs, or use knockoff or copycat.")
    return None


def prada_finding(metrics: dict[str, Any]) -> Finding:
    """PRADA's verdict on a client's query stream (Juuti et al. 2019)."""
    detected, w = metrics["detected"], metrics.get("min_w")
    return Finding(
        title=f"PRADA {'flags' if detected else 'does not flag'} the query stream "
              f"({metrics['n_queries']} queries, lowest W {w if w is not None else 'n/a'})",
        family="extraction", severity="high" if detected else "info", metric="shapiro_wilk_w",
        value=w, threshold=metrics["delta"], evidence=dict(metrics),
        atlas=["AML.T0024.002"], owasp=["ML05:2023 Model Theft"],
        description="Minimum distances between a client's queries are far from normally distributed, as when "
                    "queries are synthesised from earlier ones (Jacobian augmentation)." if detected
                    else "The stream's distance profile looks like natural traffic; PRADA does not see "
                         "extraction from natural inputs (Knockoff Nets, copycat).",
        recommendation="Throttle or block the client and review its queries." if detected else "",
    )


def extraction_findings(result: Result) -> list[Finding]:
    """The findings of one measured extraction result (an attack's fidelity curve, or PRADA's test)."""
    m = result.metrics
    if result.attack == "prada":
        return [prada_finding(m)]
    rows = m.get("curve") or []
    if not rows:
        return []
    finding = copy_finding(result.attack, rows, m)
    note = assumption_note(result)
    if note:
        finding.description = f"{note} {finding.description}"
        finding.evidence["assumption_holds"] = False
    elif result.attack == "tree" and m.get("stopped") == "deadline":
        finding.description = (f"Exploration stopped at the {result.params.get('deadline'):g} s deadline with "
                               f"{m['boxes']} boxes: the copy is partial. " + finding.description)
    return [finding]
