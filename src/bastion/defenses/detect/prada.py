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

`QueryLog` is the API side: a Target wrapper that records every query and the label it answered. `PradaMonitor`
is the registered defense (`bastion defend prada MODEL --queries STREAM [--data BENIGN]`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats

from bastion.core.data import Dataset
from bastion.core.errors import ParameterError
from bastion.core.registry import register
from bastion.core.results import Result
from bastion.core.target import Access, Target, TargetView
from bastion.defenses.base import Defense


class QueryLog(TargetView):
    """A view of `base` (sharing its query counter) that records each query and its answered label."""

    def __init__(self, base: Target):
        super().__init__(base, access=min(base.access, Access.SCORES))
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


@register("defenses", "prada", family="detect")
class PradaMonitor(Defense):
    """PRADA query-stream monitor: is this client's stream of queries a model-extraction attack?

    `--queries STREAM` holds one client's queries in arrival order (its labels are ignored: the model's own
    answers are used, as the API would have logged them). `--data BENIGN` (optional) is ordinary traffic: with
    `calibrate=true` δ is set just below the lowest W of `n_benign` random orderings of it, and the false-alarm
    rate of the chosen δ on those orderings is reported either way.

    Reference: Juuti, Szyller, Marchal & Asokan, "PRADA: Protecting Against DNN Model Stealing Attacks", IEEE EuroS&P
    2019.

    Example:
        >>> from bastion.defenses.detect.prada import PradaMonitor
        >>> from bastion import load_dataset
        >>> from bastion.models import load_target
        >>> target, data = load_target("model.pt2"), load_dataset("test.npz")
        >>> queries = load_dataset("queries.npz")
        >>> result = PradaMonitor(delta=0.96).run(target, data, queries=queries)
        >>> from bastion.families import judged  # the threat family judges what the run measured
        >>> judged(result).findings
    """

    name = "prada"
    family = "detect"
    threat = "extraction"
    requires = Access.LABELS
    dataset_params = ("queries",)

    def __init__(self, delta: float = 0.96, *, min_queries: int = 200, check_every: int = 10,
                 calibrate: bool = False, n_benign: int = 5, seed: int = 0):
        PRADA(delta, min_queries, check_every)  # validates the detector's parameters
        if n_benign < 1:
            raise ParameterError("n_benign must be at least 1")
        self.delta, self.min_queries, self.check_every = float(delta), int(min_queries), int(check_every)
        self.calibrate, self.n_benign, self.seed = bool(calibrate), int(n_benign), int(seed)

    def _benign(self, target: Target, data: Dataset) -> list[tuple[torch.Tensor, torch.Tensor]]:
        x = torch.as_tensor(data.x, dtype=torch.float32, device=target.device)
        labels = target.labels(x)
        streams = []
        for i in range(self.n_benign):
            order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed + i)).to(x.device)
            streams.append((x[order].reshape(len(x), -1), labels[order]))
        return streams

    def run(self, target: Target, data: Dataset | None = None, queries: Dataset | None = None,
            **_: Dataset) -> Result:
        self.check_access(target)
        if queries is None:
            raise ParameterError("prada needs the client's query stream: pass --queries STREAM")
        if self.calibrate and data is None:
            raise ParameterError("prada calibration needs benign traffic: pass --data BENIGN")
        start, before = time.perf_counter(), target.queries
        detector = PRADA(self.delta, self.min_queries, self.check_every)
        benign = self._benign(target, data) if data is not None else []
        if self.calibrate:
            detector.calibrate(benign)
        stream = torch.as_tensor(queries.x, dtype=torch.float32, device=target.device)
        verdict = detector.detect(stream.reshape(len(stream), -1), target.labels(stream))
        metrics: dict[str, Any] = {**verdict.to_dict(), "delta": detector.delta}
        if benign:
            metrics["benign_false_alarm_rate"] = float(np.mean([detector.detect(x, y).detected for x, y in benign]))
        return self.result(target, metrics, start, before)
