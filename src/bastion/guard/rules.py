"""The guard's rules, per API key: input checks, token-bucket rate limits and budgets, the extraction monitor,
the adversarial-input and backdoor-trigger detectors, and output hardening.

- Extraction: PRADA (Juuti et al., EuroS&P 2019; `bastion.defenses.detect.prada.PRADA`) over the key's recent
  queries, and a query-distribution detector: the share of the key's queries whose distance to the nearest
  reference sample (`--data`) exceeds the `ood_quantile` of held-out reference samples' own distances. Natural
  traffic sits near the data; Knockoff Nets' surrogate queries (Orekondy et al., CVPR 2019) and Jacobian
  augmentation's synthetic steps (Papernot et al., AsiaCCS 2017) do not. And a stateful query detector (Chen,
  Carlini & Wagner, AsiaCCS-SPAI 2020; `guard.stateful`): too many of the key's queries close to its earlier ones.
- Adversarial inputs: feature squeezing (Xu, Evans & Qi, NDSS 2018): the L1 distance between the prediction for
  x and for its bit-depth-reduced (and, for images, 2x2 median-smoothed) copy; the threshold is the (1 - fpr)
  quantile of that score on `--data`.
- Backdoor triggers: STRIP (Gao et al., ACSAC 2019; `bastion.defenses.detect.strip.STRIP.entropy`): the mean
  entropy over copies superimposed with reference samples; below the `frr` quantile on `--data` is a trigger.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bastion.core.data import Dataset
from bastion.core.target import Target
from bastion.defenses.detect.prada import PRADA
from bastion.defenses.postprocess import OutputDefense, harden
from bastion.guard.backend import ModelInfo
from bastion.guard.guard_policy import ExtractionRules, Tier
from bastion.guard.stateful import SharedQueries, StatefulDetector, calibrate


class Refused(Exception):
    """A request the guard answers with a 4xx: `status`, one-line `message`, the `rule` that refused it."""

    def __init__(self, status: int, message: str, rule: str, retry_after: float | None = None):
        super().__init__(message)
        self.status, self.message, self.rule, self.retry_after = status, message, rule, retry_after


def check_inputs(raw: object, info: ModelInfo, tier: Tier) -> np.ndarray:
    """The request's inputs as a float32 array of shape (n, *input_shape), or Refused (400/413/422)."""
    if not isinstance(raw, dict) or "inputs" not in raw:
        raise Refused(400, 'expected a JSON object {"inputs": [...]}', "input.schema")
    try:
        with np.errstate(over="ignore"):  # numbers beyond float32 become inf, refused below
            x = np.asarray(raw["inputs"], dtype=np.float32)
    except (ValueError, TypeError, OverflowError):
        raise Refused(422, "inputs must be a (nested) list of numbers of one shape", "input.dtype") from None
    if x.dtype != np.float32 or x.ndim == 0:
        raise Refused(422, "inputs must be a list of inputs", "input.dtype")
    if x.shape[1:] != info.input_shape:
        if x.shape == info.input_shape:
            raise Refused(422, f"inputs must be a batch: wrap the one input in a list (shape (1, "
                          f"{', '.join(map(str, info.input_shape))}))", "input.shape")
        raise Refused(422, f"inputs have shape {list(x.shape)}; expected (n, {', '.join(map(str, info.input_shape))})",
                      "input.shape")
    if len(x) == 0:
        raise Refused(422, "inputs is empty", "input.shape")
    if len(x) > tier.inputs.max_batch:
        raise Refused(413, f"{len(x)} inputs in one request; this tier allows {tier.inputs.max_batch}", "input.size")
    if not np.all(np.isfinite(x)):
        raise Refused(422, "inputs contain NaN or infinite values", "input.nan")
    low, high = info.bounds
    if tier.inputs.check_range and (x.min() < low or x.max() > high):
        raise Refused(422, f"inputs must lie in [{low:g}, {high:g}]; got values in [{x.min():g}, {x.max():g}]",
                      "input.range")
    return x


@dataclass
class TokenBucket:
    """`rate` tokens per second up to `burst`; `take(n)` returns the seconds to wait (0: allowed, tokens spent)."""

    rate: float
    burst: float
    tokens: float = -1.0
    stamp: float = field(default_factory=time.monotonic)

    def take(self, n: float, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        if self.tokens < 0:
            self.tokens = self.burst
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if n <= self.tokens:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate


class Reference:
    """Reference data (`--data`) for the distribution detector, STRIP overlays and detector calibration."""

    def __init__(self, data: Dataset, seed: int = 0, max_samples: int = 2000):
        x = np.asarray(data.x, dtype=np.float32)
        order = np.random.default_rng(seed).permutation(len(x))[:max_samples]
        half = max(1, len(order) // 2)
        self.index = torch.as_tensor(x[order[:half]]).reshape(half, -1)
        self.index_t = self.index.numpy().astype(np.float64).T.copy()  # (features, half) for one matrix product
        self.index_sq = (self.index_t ** 2).sum(0)
        self.held_out = torch.as_tensor(x[order[half:]] if len(order) > half else x[order[:half]])
        self.pool = torch.as_tensor(x[order[:half]])
        self.held_out_distance = self.nearest(self.held_out.numpy())
        self.thresholds: dict[tuple[int, int, float], float] = {}
        self.lock = threading.Lock()

    def stateful_threshold(self, k: int, buffer: int, quantile: float) -> float:
        """The stateful detector's threshold, calibrated once on the held-out half (`guard.stateful.calibrate`)."""
        with self.lock:
            found = self.thresholds.get((k, buffer, quantile))
            if found is None:
                found = self.thresholds[k, buffer, quantile] = calibrate(self.held_out.numpy(), k, buffer, quantile)
            return found

    def nearest(self, x: np.ndarray) -> np.ndarray:
        """Each input's L2 distance to its nearest reference sample (|x|^2 + |r|^2 - 2 x.r in float64)."""
        flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        out = [np.sqrt(np.maximum(((c ** 2).sum(1)[:, None] + self.index_sq[None, :] - 2 * c @ self.index_t)
                                  .min(1), 0.0)) for c in (flat[i:i + 512] for i in range(0, len(flat), 512))]
        return np.concatenate(out).astype(np.float32)


class _Ring:
    """A class's growing set: its most recent `size` members (a ring buffer) and the distance to the nearest one."""

    def __init__(self, first: np.ndarray, size: int):
        self.rows = np.empty((min(size, 64), len(first)))
        self.rows[0], self.count, self.size = first, 1, size

    def append(self, x: np.ndarray) -> None:
        if self.count < self.size and self.count == len(self.rows):
            self.rows = np.concatenate([self.rows, np.empty((min(self.size, 2 * self.count) - self.count,
                                                             self.rows.shape[1]))])
        self.rows[self.count % self.size] = x
        self.count += 1

    def nearest(self, x: np.ndarray) -> float:
        diff = self.rows[:min(self.count, self.size)] - x
        return float(np.sqrt(np.einsum("ij,ij->i", diff, diff).min()))


class IncrementalPRADA:
    """PRADA's per-query update (Juuti et al., EuroS&P 2019, Algorithm 1) kept between requests: each query costs one
    distance computation against its class's growing set G_c instead of re-running the detector over the window.

    Same rule as `bastion.defenses.detect.prada.PRADA.distances` (d = min L2 distance to G_c; x joins G_c when
    d > T_c; T_c = max(T_c, mean - std of the admitting distances)); for a long-lived key the growing sets and the
    distance record keep their most recent `window` entries. The Shapiro-Wilk check (`PRADA.statistic`) runs
    every `check_every` recorded distances once `min_queries` are recorded.
    """

    def __init__(self, delta: float, min_queries: int, window: int, check_every: int = 50):
        self.test = PRADA(delta, min_queries)
        self.window, self.check_every = window, check_every
        self.grown: dict[int, _Ring] = {}
        self.threshold: dict[int, float] = {}
        self.sums: dict[int, list[float]] = {}
        self.record: deque[float] = deque(maxlen=window)
        self.recorded = 0
        self.checked = 0

    def add(self, x: np.ndarray, cls: int) -> float | None:
        """One query (flattened) with its answered class; its recorded distance (None for a class's first)."""
        members = self.grown.get(cls)
        if members is None:
            self.grown[cls] = _Ring(x, self.window)
            self.threshold.setdefault(cls, 0.0)
            return None
        d = members.nearest(x)
        self.record.append(d)
        self.recorded += 1
        if d > self.threshold[cls]:
            members.append(x)
            count, total, squares = self.sums.get(cls, [0.0, 0.0, 0.0])
            count, total, squares = count + 1, total + d, squares + d * d
            self.sums[cls] = [count, total, squares]
            mean = total / count
            self.threshold[cls] = max(self.threshold[cls], mean - float(np.sqrt(max(squares / count - mean ** 2, 0))))
        return d

    def observe(self, x: np.ndarray, labels: np.ndarray) -> bool:
        """Add a batch; whether the stream is flagged now (W below delta at a check)."""
        flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        for row, cls in zip(flat, np.asarray(labels).astype(int).tolist(), strict=True):
            self.add(row, cls)
        if self.recorded < self.test.min_queries or self.recorded - self.checked < self.check_every:
            return False
        self.checked = self.recorded
        return self.test.statistic(np.fromiter(self.record, float)) < self.test.delta


class ExtractionMonitor:
    """One key's stream: PRADA (incremental) and the out-of-distribution share over its last `window` queries, and
    the stateful detector over its last `stateful_buffer` queries (and the tier's `shared` ones, with scope tier)."""

    def __init__(self, rules: ExtractionRules, reference: Reference | None, shared: SharedQueries | None = None):
        self.rules = rules
        self.prada = (None if rules.prada_delta is None
                      else IncrementalPRADA(rules.prada_delta, rules.prada_min_queries, rules.window))
        self.reference = reference
        self.ood_threshold = (None if reference is None or rules.ood_share is None
                              else float(np.quantile(reference.held_out_distance, rules.ood_quantile)))
        self.stateful = (None if reference is None or rules.stateful_quantile is None else StatefulDetector(
            reference.stateful_threshold(rules.stateful_k, rules.stateful_buffer, rules.stateful_quantile),
            rules.stateful_k, rules.stateful_hits, rules.stateful_buffer, shared))
        self.batches: deque[tuple[int, int]] = deque()  # (inputs, of which far) per batch in the window
        self.in_window = 0
        self.far_in_window = 0
        self.seen = 0
        self.flagged: list[str] = []  # the detectors that flagged this stream (sticky)
        self.flagged_at: int | None = None

    def observe(self, x: np.ndarray, labels: np.ndarray) -> list[str]:
        """Add a batch; return the detectors that flag the stream now (empty: not flagged)."""
        r = self.rules
        far = (self.reference.nearest(x) > self.ood_threshold if self.ood_threshold is not None
               and self.reference is not None else np.zeros(len(x), dtype=bool))
        self.batches.append((len(x), int(far.sum())))
        self.in_window += len(x)
        self.far_in_window += int(far.sum())
        self.seen += len(x)
        while len(self.batches) > 1 and self.in_window - self.batches[0][0] >= r.window:
            n, n_far = self.batches.popleft()
            self.in_window -= n
            self.far_in_window -= n_far
        hits: list[str] = []
        if (r.ood_share is not None and self.ood_threshold is not None and self.seen >= r.ood_min_queries
                and self.far_in_window / self.in_window > r.ood_share):
            hits.append("extraction.distribution")
        if self.prada is not None and self.prada.observe(x, labels):
            hits.append("extraction.prada")
        if self.stateful is not None and self.stateful.observe(x):
            hits.append("extraction.stateful")
        if hits and not self.flagged:
            self.flagged_at = self.seen
        self.flagged = sorted(set(self.flagged) | set(hits))
        return hits


class Detectors:
    """Feature squeezing and STRIP scores of inputs, with thresholds calibrated on reference data."""

    def __init__(self, target: Target, reference: Reference, squeeze_bits: set[int], strip_overlays: set[int],
                 seed: int = 0):
        self.target, self.reference, self.seed = target, reference, seed
        calibration = reference.held_out[:500]
        self.squeeze_scores = {b: self.squeeze(calibration.numpy(), b) for b in squeeze_bits}
        self.strip_scores = {k: self.strip(calibration.numpy(), k) for k in strip_overlays}

    def squeeze(self, x: np.ndarray, bits: int) -> np.ndarray:
        """Xu et al.'s score: max L1 distance between p(x) and p(squeezed x) over the squeezers."""
        from bastion.defenses.preprocess.transforms import MedianSmooth, bit_depth

        t = torch.as_tensor(x)
        p = self.target.probabilities(t)
        squeezers = [bit_depth(bits, self.target.bounds)]
        if len(self.target.input_shape) >= 2 and min(self.target.input_shape[-2:]) >= 4:
            squeezers.append(MedianSmooth(2, self.target.bounds))
        with torch.no_grad():
            scores = [(self.target.probabilities(s(t)) - p).abs().sum(-1) for s in squeezers]
        return torch.stack(scores).amax(0).numpy()

    def strip(self, x: np.ndarray, overlays: int) -> np.ndarray:
        """STRIP entropy (nats) of each input over `overlays` superimposed reference samples."""
        from bastion.defenses.detect.strip import STRIP

        gen = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            return STRIP(overlays).entropy(self.target, torch.as_tensor(x), self.reference.pool, gen).numpy()

    def check(self, x: np.ndarray, tier: Tier) -> list[str]:
        """The detectors that flag any input of the batch."""
        d, hits = tier.detectors, []
        if d.squeeze_fpr is not None:
            threshold = np.quantile(self.squeeze_scores[d.squeeze_bits], 1 - d.squeeze_fpr)
            if (self.squeeze(x, d.squeeze_bits) > threshold).any():
                hits.append("adversarial.squeeze")
        if d.strip_frr is not None:
            threshold = np.quantile(self.strip_scores[d.strip_overlays], d.strip_frr)
            if (self.strip(x, d.strip_overlays) < threshold).any():
                hits.append("backdoor.strip")
        return hits


class KeyState:
    """Everything the guard tracks for one API key."""

    def __init__(self, tier: Tier, reference: Reference | None, used: int = 0,
                 shared: SharedQueries | None = None):
        self.tier = tier
        self.lock = threading.Lock()  # held briefly: counters, queues, verdicts
        self.monitor_lock = threading.Lock()  # one monitor run at a time, in order; never needed to answer
        self.running: Any = None  # the asyncio future of a monitor run in progress (set by the app)
        self.bucket = None if tier.rate.per_second is None else TokenBucket(tier.rate.per_second, tier.rate.burst)
        self.throttle: TokenBucket | None = None
        self.used = used
        self.monitor = ExtractionMonitor(tier.extraction, reference, shared)
        self.blocked = False
        self.degraded = False  # answers go through the tier's extraction.degrade_output from now on
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []  # answered, not yet monitored (inputs, labels)
        self.pending_n = 0
        self.found: list[str] = []  # rule hits of monitor runs since the key's last request (logged with the next)

    @property
    def monitored(self) -> bool:
        rules = self.tier.extraction
        return (rules.prada_delta is not None or self.monitor.ood_threshold is not None
                or self.monitor.stateful is not None)

    def gather(self, x: np.ndarray, labels: np.ndarray) -> bool:
        """Queue an answered batch for the monitors (call under `lock`); whether a monitor run is due."""
        if not self.monitored:
            return False
        self.pending.append((x, labels))
        self.pending_n += len(x)
        return self.pending_n >= self.tier.extraction.monitor_batch

    def run_monitors(self, due_only: bool = True) -> None:
        """Run the monitors on the queued queries (when `monitor_batch` are queued, or any with due_only=False)
        and apply the tier's action; the hits wait in `found` for the key's next request. The key's `lock` is held
        only to take the queue and to apply the verdict, so the key's requests are answered while it runs."""
        with self.monitor_lock:
            with self.lock:
                if not self.pending or (self.pending_n < self.tier.extraction.monitor_batch and due_only):
                    return
                x = np.concatenate([p[0] for p in self.pending])
                labels = np.concatenate([p[1] for p in self.pending])
                self.pending, self.pending_n = [], 0
            flagged = self.monitor.observe(x, labels)
            with self.lock:
                response = self.respond(flagged)
                self.found += flagged + ([response] if response else [])

    def settle(self) -> list[str]:
        """A due monitor run that has not happened yet, then the hits not yet logged."""
        self.run_monitors()
        with self.lock:
            return self.take_found()

    def take_found(self) -> list[str]:
        """The monitors' hits not yet logged, handed to the request being answered (call under `lock`)."""
        found, self.found = self.found, []
        return found

    def admit(self, n: int) -> None:
        """Budget, block and rate checks before inference (Refused 403/429)."""
        if self.blocked:
            raise Refused(403, "this key is blocked: its queries look like model extraction", "extraction.block")
        budget = self.tier.rate.budget
        if budget is not None and self.used + n > budget:
            raise Refused(429, f"query budget of {budget} spent ({self.used} used)", "rate.budget")
        for bucket, rule in ((self.bucket, "rate.limit"), (self.throttle, "extraction.throttle")):
            if bucket is not None:
                if n > bucket.burst:
                    raise Refused(429, f"{n} inputs exceed this key's burst of {bucket.burst:g}", rule)
                wait = bucket.take(n)
                if wait > 0:
                    raise Refused(429, f"rate limit: retry in {wait:.2f} s", rule, retry_after=wait)
        self.used += n

    def respond(self, hits: list[str]) -> str | None:
        """Apply the tier's extraction action to a flagged stream; the rule hit it adds."""
        if not hits:
            return None
        rules = self.tier.extraction
        if rules.action == "block":
            self.blocked = True
            return "extraction.block"
        if rules.action == "degrade":
            self.degraded = True
            return "extraction.degrade"
        if rules.action == "throttle" and self.throttle is None:
            self.throttle = TokenBucket(rules.throttle_per_second, max(1.0, rules.throttle_per_second))
            return "extraction.throttle"
        return "extraction.alert"


def hardener(target: Target, spec: str | None) -> OutputDefense | None:
    """The output defense of a tier's `output` spec (None: answers go out as computed)."""
    return None if spec is None else harden(target, spec)
