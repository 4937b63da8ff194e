"""What the output defenses and the PRADA monitor do against each extraction attack.

`defense_table` runs every attack against every output defense at the same budgets; `detection_table` runs
PRADA over several query streams of each attack and over benign streams of natural inputs, and reports the
detection rate per attack and the false-alarm rate (the "benign" rows). Both return plain rows (dicts) for
reports and benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from bastion.attacks.extraction.base import ExtractionAttack
from bastion.core.data import Dataset
from bastion.core.target import Target
from bastion.defenses.detect.prada import PRADA


def with_params(attack: ExtractionAttack, **changes: Any) -> ExtractionAttack:
    """A fresh copy of `attack` with some parameters changed (scikit-learn's clone-and-set)."""
    return type(attack)(**{**attack.get_params(), **changes})


def defense_table(target: Target, data: Dataset, pool: Dataset, attacks: dict[str, ExtractionAttack],
                  defenses: Sequence[str | None]) -> list[dict[str, Any]]:
    """One row per (attack, defense, budget): fidelity, accuracy, transfer success, and the API's own accuracy.

    A defense that the attack cannot work with (e.g. scores taken away from equation solving) gives a row with
    `error` set instead of metrics."""
    rows = []
    for defense in defenses:
        for label, attack in attacks.items():
            variant = with_params(attack, defense=defense, monitor=False)
            try:
                result = variant.run(target, data, pool=pool)
            except Exception as exc:  # noqa: BLE001 - an attack defeated by a defense is a result, not a crash
                rows.append({"attack": label, "defense": defense or "none", "error": str(exc)})
                continue
            for point in result.metrics["curve"]:
                rows.append({"attack": label, "defense": defense or "none", "budget": point["budget"],
                             "fidelity": point["fidelity"], "accuracy": point["accuracy"],
                             "transfer_success": point["transfer_success"],
                             "api_accuracy": result.metrics.get("api_accuracy", result.metrics["victim_accuracy"]),
                             "seconds": result.seconds})
    return rows


def benign_streams(target: Target, natural: Dataset, n_streams: int, length: int,
                   seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random orderings of natural inputs (what ordinary clients send), labelled by the model."""
    x = torch.as_tensor(natural.x, dtype=torch.float32)
    streams = []
    for i in range(n_streams):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + i))[:length]
        chosen = x[order]
        streams.append((chosen.reshape(len(chosen), -1), target.labels(chosen).cpu()))
    return streams


def detection_table(target: Target, data: Dataset, pool: Dataset, attacks: dict[str, ExtractionAttack],
                    seeds: Sequence[int], benign: list[tuple[torch.Tensor, torch.Tensor]],
                    detectors: dict[str, PRADA] | None = None) -> list[dict[str, Any]]:
    """Detection rate of each PRADA setting per attack (one stream per seed) and its false-alarm rate on the
    benign streams. Each attack runs once per seed; every detector reads the same query logs."""
    detectors = detectors or {"prada": PRADA()}
    logs: dict[str, list] = {}
    for label, attack in attacks.items():
        for seed in seeds:
            variant = with_params(attack, seed=seed, monitor=False, transfer_samples=0, ood_samples=0)
            variant.run(target, data, pool=pool)
            logs.setdefault(label, []).append((variant.query_log_.inputs, variant.query_log_.answers))
    logs["benign"] = benign
    rows = []
    for name, detector in detectors.items():
        for label, streams in logs.items():
            verdicts = [detector.detect(x, y) for x, y in streams]
            first = sorted(v.detected_at for v in verdicts if v.detected)
            rows.append({"detector": name, "stream": label, "streams": len(streams), "flagged": len(first),
                         "rate": len(first) / max(1, len(streams)),
                         "median_detected_at": first[len(first) // 2] if first else None})
    return rows
