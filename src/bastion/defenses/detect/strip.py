"""STRIP: at inference, a triggered input keeps its prediction when other images are superimposed on it."""

from __future__ import annotations

import time
from typing import Any

import torch

from bastion.core.data import Dataset, validate_for_model
from bastion.core.errors import ParameterError
from bastion.core.registry import register
from bastion.core.target import Access, Target
from bastion.defenses.base import Defense, require_data
from bastion.evaluation.metrics import auc, roc_curve


@register("defenses", "strip", family="detect",
          summary="flag triggered inputs at inference by their entropy under superimposition (Gao 2019)")
class STRIP(Defense):
    """STRIP (Gao et al., "STRIP: A Defence Against Trojan Attacks on Deep Neural Networks", ACSAC 2019).

    Each input is superimposed with `n_overlays` random clean inputs (x + x_clean − low, clipped to the bounds,
    the paper's additive blend) and the mean entropy of the model's predictions over these copies is its score:
    a clean input's prediction scatters, a triggered input's stays on the target class (low entropy). The
    detection threshold is the `frr` quantile of the entropies of clean inputs, so that fraction of clean inputs
    is rejected. `data` (clean) is split in two: one half supplies the overlays and the threshold, the other
    measures the false-rejection rate actually reached. `suspect` inputs (e.g. triggered test inputs) are screened:
    the fraction flagged is the detection rate, and AUROC compares them with the held-out clean half.
    Needs only scores (probabilities): works on black-box models.

    Example:
        >>> from bastion.defenses.detect.strip import STRIP
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> suspect = load_dataset("suspect.npz")
        >>> result = STRIP(n_overlays=20).run(target, data, suspect=suspect)
        >>> from bastion.families import judged  # the threat family judges what the run measured
        >>> judged(result).findings
    """

    name = "strip"
    family = "detect"
    threat = "backdoor"
    requires = Access.SCORES
    dataset_params = ("suspect",)

    def __init__(self, n_overlays: int = 20, *, frr: float = 0.01, batch_size: int = 256, seed: int = 0):
        if n_overlays < 1 or batch_size < 1:
            raise ParameterError("n_overlays and batch_size must be at least 1")
        if not 0 < frr < 0.5:
            raise ParameterError(f"frr must lie in (0, 0.5), got {frr}")
        self.n_overlays, self.frr, self.batch_size, self.seed = int(n_overlays), float(frr), int(batch_size), seed

    def entropy(self, target: Target, x: torch.Tensor, pool: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Mean prediction entropy (nats) of each input over `n_overlays` superimposed copies, shape (n,)."""
        lo, hi = target.bounds
        out = []
        for chunk in x.split(max(1, self.batch_size // self.n_overlays)):
            pick = torch.randint(len(pool), (len(chunk), self.n_overlays), generator=gen).to(x.device)
            mixed = (chunk[:, None] + pool[pick] - lo).clamp(lo, hi)
            probs = target.probabilities(mixed.reshape(-1, *chunk.shape[1:])).clamp_min(1e-12)
            out.append(-(probs * probs.log()).sum(-1).view(len(chunk), -1).mean(1))
        return torch.cat(out)

    def run(self, target: Target, data: Dataset | None = None, suspect: Dataset | None = None,
            **_: Dataset) -> Any:
        self.check_access(target)
        data = require_data(data, self.name, "--data CLEAN_DATA")
        for d in (data, suspect):
            if d is not None:
                validate_for_model(d, target.n_classes, target.input_shape, target.bounds)
        if len(data) < 4:
            raise ParameterError("STRIP needs at least 4 clean inputs (half for overlays, half to check the FRR)")
        start, before = time.perf_counter(), target.queries
        gen = torch.Generator().manual_seed(int(self.seed))
        x = torch.as_tensor(data.x, dtype=torch.float32, device=target.device)
        x = x[torch.randperm(len(x), generator=gen).to(x.device)]
        pool, held = x[: len(x) // 2], x[len(x) // 2:]
        with torch.no_grad():
            calib = self.entropy(target, pool, pool, gen)
            threshold = torch.quantile(calib, self.frr)
            clean = self.entropy(target, held, pool, gen)
        metrics: dict[str, Any] = {
            "threshold": float(threshold), "frr_target": self.frr, "frr": float((clean < threshold).float().mean()),
            "clean_entropy_mean": float(clean.mean()), "n_clean": len(data),
        }
        if suspect is not None and len(suspect):
            xs = torch.as_tensor(suspect.x, dtype=torch.float32, device=target.device)
            with torch.no_grad():
                scores = self.entropy(target, xs, pool, gen)
            flagged = scores < threshold
            fpr, tpr = roc_curve(-scores.cpu().numpy(), -clean.cpu().numpy())
            metrics.update({"detection_rate": float(flagged.float().mean()), "n_suspect": len(suspect),
                            "suspect_entropy_mean": float(scores.mean()), "auroc": auc(fpr, tpr)})
            self.flagged_ = flagged.cpu().numpy()
        return self.result(target, metrics, start, before)
