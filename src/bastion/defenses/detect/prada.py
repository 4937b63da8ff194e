"""PRADA: detecting model-extraction query streams (Juuti, Szyller, Marchal & Asokan, "PRADA: Protecting
Against DNN Model Stealing Attacks", IEEE EuroS&P 2019).

For one client's stream of queries, PRADA keeps a growing set G_c per predicted class c. Each query x with
predicted class c gets d = min L2 distance to G_c; d joins the distance record D, and x joins G_c when d exceeds
the class threshold T_c = max(T_c, mean(D_Gc) − std(D_Gc)) over the distances that admitted earlier members.
Natural queries give normally distributed distances; synthetic ones (small steps from earlier queries, as in
Jacobian augmentation) do not. Once D holds `min_queries` values, the stream is flagged when the Shapiro-Wilk
statistic W of D (outliers beyond `outlier_std` standard deviations removed) falls below `delta`.

The paper tests from 100 distances on and tunes δ per model on benign traffic. The defaults here (δ = 0.96 from
200 distances) gave no false alarm on held-out benign streams of the 64-pixel digits while flagging Jacobian
streams; W over only 100 natural distances varied down to 0.94 there. `calibrate` sets δ from benign streams
of another model.

`QueryLog` is the API side: a Target wrapper that records every query and the label it answered.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats

from bastion.core.errors import ParameterError
from bastion.core.target import Access, Target


class QueryLog(Target):
    """A view of `base` (sharing its query counter) that records each query and its answered label."""

    def __init__(self, base: Target):
        super().__init__(base.n_classes, base.input_shape, base.bounds, base.device,
                         min(base.access, Access.SCORES), None, base.batch_size, base.name)
        self.base = base
        self.counter = base.counter
        self.output_kind = base.output_kind
        self._inputs: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = self.base._forward(x.detach())
        self._inputs.append(x.detach().reshape(len(x), -1).clone())
        self._labels.append(out.long() if self.output_kind == "labels" else out.argmax(dim=-1))
        return out

    def __len__(self) -> int:
        return sum(len(b) for b in self._inputs)

    @property
    def inputs(self) -> torch.Tensor:
        """Every logged query, flattened to (n, features), in arrival order."""
        if not self._inputs:
            return torch.zeros(0, int(np.prod(self.input_shape)), device=self.device)
        return torch.cat(self._inputs)

    @property
    def answers(self) -> torch.Tensor:
        """The label the API answered for each logged query."""
        return torch.cat(self._labels) if self._labels else torch.zeros(0, dtype=torch.long, device=self.device)


@dataclass
class PradaResult:
    """Verdict on one stream: whether and when it was flagged, and W at each check."""

    detected: bool
    detected_at: int | None
    n_queries: int
    min_w: float | None
    checks: list[tuple[int, float]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        return {"detected": self.detected, "detected_at": self.detected_at, "n_queries": self.n_queries,
                "min_w": self.min_w}


class PRADA:
    """PRADA detector over a query log: `detect(inputs, labels)` for one client's stream in arrival order."""

    def __init__(self, delta: float = 0.96, min_queries: int = 200, check_every: int = 10,
                 outlier_std: float = 3.0, block: int = 256):
        if not 0 < delta < 1:
            raise ParameterError(f"PRADA delta must lie in (0, 1), got {delta}")
        if min_queries < 3 or check_every < 1 or block < 1:
            raise ParameterError("PRADA needs min_queries >= 3, check_every >= 1 and block >= 1")
        self.delta, self.min_queries, self.check_every = float(delta), int(min_queries), int(check_every)
        self.outlier_std, self.block = float(outlier_std), int(block)

    def distances(self, inputs: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> np.ndarray:
        """The minimum distance recorded for each query (NaN for the first query of each class)."""
        x = torch.as_tensor(inputs, dtype=torch.float32).reshape(len(inputs), -1)
        c = torch.as_tensor(labels).long().to(x.device)
        n = len(x)
        record = np.full(n, np.nan)
        grown_x = x[:0]
        grown_c = c[:0]
        threshold: dict[int, float] = {}
        sums: dict[int, list[float]] = {}  # per class: [count, sum, sum of squares] of admitting distances
        for start in range(0, n, self.block):
            xb, cb = x[start:start + self.block], c[start:start + self.block]
            to_old = torch.cdist(xb, grown_x) if len(grown_x) else xb.new_full((len(xb), 0), 0.0)
            to_old = torch.where(cb[:, None] == grown_c[None, :], to_old, torch.full_like(to_old, float("inf")))
            old_min = (to_old.min(dim=1).values if len(grown_x) else xb.new_full((len(xb),), float("inf")))
            within = torch.cdist(xb, xb).cpu().numpy()
            old_min, labels_b = old_min.cpu().numpy(), cb.cpu().numpy()
            same = labels_b[:, None] == labels_b[None, :]
            admitted = np.zeros(len(xb), dtype=bool)
            for j in range(len(xb)):
                peers = admitted[:j] & same[j, :j]
                d = min(old_min[j], within[j, :j][peers].min()) if peers.any() else old_min[j]
                cls = int(labels_b[j])
                if not np.isfinite(d):  # first query of this class: it starts G_c
                    admitted[j] = True
                    threshold.setdefault(cls, 0.0)
                    continue
                record[start + j] = d
                if d > threshold.get(cls, 0.0):
                    admitted[j] = True
                    count, total, squares = sums.setdefault(cls, [0.0, 0.0, 0.0])
                    count, total, squares = count + 1, total + d, squares + d * d
                    sums[cls] = [count, total, squares]
                    mean = total / count
                    std = np.sqrt(max(squares / count - mean * mean, 0.0))
                    threshold[cls] = max(threshold.get(cls, 0.0), mean - std)
            keep = torch.as_tensor(admitted, device=x.device)
            grown_x, grown_c = torch.cat([grown_x, xb[keep]]), torch.cat([grown_c, cb[keep]])
        return record

    def statistic(self, distances: np.ndarray) -> float:
        """Shapiro-Wilk W of the distances, after removing outliers beyond `outlier_std` standard deviations."""
        d = distances[np.isfinite(distances)]
        if len(d) < 3:
            return 1.0
        std = d.std()
        if std > 0:
            d = d[np.abs(d - d.mean()) <= self.outlier_std * std]
        if len(d) < 3 or np.ptp(d) == 0:
            return 0.0 if len(d) >= 3 else 1.0  # identical distances are as far from normal as it gets
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns that p-values are approximate above 5000 samples
            return float(stats.shapiro(d).statistic)

    def detect(self, inputs: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> PradaResult:
        """Run the detector over a stream; `detected_at` is the number of queries seen when first flagged."""
        record = self.distances(inputs, labels)
        seen = np.cumsum(np.isfinite(record))
        checks: list[tuple[int, float]] = []
        detected_at = None
        for end in range(self.check_every, len(record) + 1, self.check_every):
            if seen[end - 1] < self.min_queries:
                continue
            w = self.statistic(record[:end])
            checks.append((end, w))
            if w < self.delta:
                detected_at = end
                break
        return PradaResult(detected_at is not None, detected_at, len(record),
                           min((w for _, w in checks), default=None), checks)

    def detect_log(self, log: QueryLog) -> PradaResult:
        return self.detect(log.inputs, log.answers)

    def calibrate(self, benign: Iterable[tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray]],
                  margin: float = 0.005) -> float:
        """Set `delta` just below the lowest W that any benign (inputs, labels) stream reaches; return it."""
        lowest = 1.0
        previous, self.delta = self.delta, 0.0  # with delta 0 nothing is flagged, so every check is recorded
        try:
            for inputs, labels in benign:
                lowest = min([lowest, *(w for _, w in self.detect(inputs, labels).checks)])
        finally:
            self.delta = previous
        if lowest - margin <= 0:
            raise ParameterError("PRADA calibration: the benign streams are too short or degenerate")
        self.delta = lowest - margin
        return self.delta
